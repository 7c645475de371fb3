"""entity_totals and product_totals (each entity's mentions and each product's reviews over all days)
and sentiment_day_totals (each day over all products), kept by rollups.fold, and indexes of the daily
rollups by entity and by product: long ranges without summing every entity, product or product-day

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "entity_totals",
        sa.Column("label", sa.String(10), primary_key=True),
        sa.Column("entity_key", sa.Text(), primary_key=True),
        sa.Column("model_version_id", BigId, sa.ForeignKey("model_versions.id"), primary_key=True),
        sa.Column("sentiment_version_id", BigId, sa.ForeignKey("model_versions.id"), primary_key=True),
        sa.Column("mentions", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_entity_totals_rank", "entity_totals",
                    ["model_version_id", "sentiment_version_id", "label", "mentions"])
    # The sums ride in the indexes (PostgreSQL INCLUDE): a few keys' days are read from index pages alone.
    op.create_index("ix_entity_daily_entity_day", "entity_daily",
                    ["model_version_id", "sentiment_version_id", "label", "entity_key", "day"],
                    postgresql_include=["mentions", "reviews", "positive", "negative", "score_sum", "entity_score_sum"])
    op.create_table(
        "product_totals",
        sa.Column("product_id", sa.String(255), primary_key=True),
        sa.Column("model_version_id", BigId, sa.ForeignKey("model_versions.id"), primary_key=True),
        sa.Column("reviews", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_product_totals_rank", "product_totals", ["model_version_id", "reviews"])
    op.create_table(
        "sentiment_day_totals",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("model_version_id", BigId, sa.ForeignKey("model_versions.id"), primary_key=True),
        sa.Column("reviews", sa.BigInteger(), nullable=False),
        sa.Column("positive", sa.BigInteger(), nullable=False),
        sa.Column("negative", sa.BigInteger(), nullable=False),
        sa.Column("score_sum", sa.Float(), nullable=False),
    )
    op.create_index("ix_sentiment_day_totals_version_day", "sentiment_day_totals", ["model_version_id", "day"])
    op.create_index("ix_sentiment_daily_product_day", "sentiment_daily", ["model_version_id", "product_id", "day"],
                    postgresql_include=["reviews", "positive", "negative", "score_sum"])
    # Deltas still pending are folded later into both tables, so the totals start from the folded days.
    op.execute("INSERT INTO entity_totals (label, entity_key, model_version_id, sentiment_version_id, mentions) "
               "SELECT label, entity_key, model_version_id, sentiment_version_id, SUM(mentions) FROM entity_daily "
               "GROUP BY label, entity_key, model_version_id, sentiment_version_id HAVING SUM(mentions) <> 0")
    op.execute("INSERT INTO product_totals (product_id, model_version_id, reviews) "
               "SELECT product_id, model_version_id, SUM(reviews) FROM sentiment_daily "
               "GROUP BY product_id, model_version_id HAVING SUM(reviews) <> 0")
    op.execute("INSERT INTO sentiment_day_totals (day, model_version_id, reviews, positive, negative, score_sum) "
               "SELECT day, model_version_id, SUM(reviews), SUM(positive), SUM(negative), SUM(score_sum) "
               "FROM sentiment_daily GROUP BY day, model_version_id")


def downgrade() -> None:
    # Pending deltas are folded while the totals exist (the fold writes them), so that 0006's code
    # and its downgrade find nothing that needs this table.
    from sqlalchemy.orm import Session

    from worker import rollups

    session = Session(bind=op.get_bind())
    while rollups.fold(session):
        pass
    session.flush()
    op.drop_table("sentiment_day_totals")
    op.drop_index("ix_sentiment_daily_product_day", "sentiment_daily")
    op.drop_table("product_totals")
    op.drop_index("ix_entity_daily_entity_day", "entity_daily")
    op.drop_table("entity_totals")
