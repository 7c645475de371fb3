"""reviews.language: the language detected at analysis (the language guard); an index on text_sha256,
by which imported labels find their review

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("reviews", sa.Column("language", sa.String(8), nullable=True))
    op.create_index("ix_reviews_language", "reviews", ["language"])
    op.create_index("ix_reviews_text_sha256", "reviews", ["text_sha256"])


def downgrade() -> None:
    import importlib

    views = importlib.import_module("migrations.versions.0004_dashboard_rollups")
    op.drop_index("ix_reviews_language", "reviews")
    op.drop_index("ix_reviews_text_sha256", "reviews")
    views._views()._drop_views()  # SQLite drops a column by copying the table, which views forbid
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("language")
    views._create_views()
