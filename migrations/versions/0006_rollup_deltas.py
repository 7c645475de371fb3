"""rollup_deltas: writers append each batch's rollup changes; `rollups.fold` applies them, so that
concurrent writers no longer update the same rollup rows in their transactions

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollup_deltas",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sentiment", sa.Text(), nullable=False),
        sa.Column("entities", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    # The code of 0005 keeps the rollups current in the write path: pending deltas are applied first.
    from sqlalchemy.orm import Session

    from worker import rollups

    session = Session(bind=op.get_bind())
    # 0007's downgrade has folded what today's code wrote; today's fold writes tables 0007 dropped.
    while session.execute(sa.text("SELECT 1 FROM rollup_deltas LIMIT 1")).first() and rollups.fold(session):
        pass
    session.flush()
    op.drop_table("rollup_deltas")
