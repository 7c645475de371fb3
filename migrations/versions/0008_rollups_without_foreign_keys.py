"""the rollup tables lose their foreign keys to model_versions: derived rows, rebuilt from the
results, whose key checks cost the fold two trigger calls for every new rollup row (a third of its
time on PostgreSQL, bench/RESULTS.md, "The fold in one statement"); model versions are never deleted

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = {"sentiment_daily": ["model_version_id"], "sentiment_day_totals": ["model_version_id"],
          "product_totals": ["model_version_id"], "entity_daily": ["model_version_id", "sentiment_version_id"],
          "entity_totals": ["model_version_id", "sentiment_version_id"]}
# SQLite keeps foreign keys unnamed; batch mode rebuilds the table and names them by this pattern.
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        keys = sa.inspect(bind).get_foreign_keys(table)
        with op.batch_alter_table(table, naming_convention=NAMING) as batch:
            for key in keys:
                column = key["constrained_columns"][0]
                name = key["name"] or NAMING["fk"] % {"table_name": table, "column_0_name": column,
                                                      "referred_table_name": key["referred_table"]}
                batch.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    for table, columns in TABLES.items():
        with op.batch_alter_table(table, naming_convention=NAMING) as batch:
            for column in columns:
                # PostgreSQL's own name for the keys 0004 and 0007 made.
                batch.create_foreign_key(f"{table}_{column}_fkey", "model_versions", [column], ["id"])
