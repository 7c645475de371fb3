"""job lease and error; "latest result" by analysis time in the views

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The latest result of a review is the one analysed last (created_at, which an upsert refreshes), not
# the highest row id: after a rollback and reprocess, the restored version's rows keep their old ids.
# worker/results.py applies the same rule to export. Ties (same instant) go to the higher id.
LATEST_SENTIMENT = """
CREATE VIEW latest_sentiment AS
SELECT s.review_id, r.external_id, r.product_id, r.rating, r.created_at AS review_created_at,
       s.label, s.probability, s.score, mv.version AS model_version, s.created_at AS analysed_at
FROM (
    SELECT x.*, ROW_NUMBER() OVER (PARTITION BY x.review_id ORDER BY x.created_at DESC, x.id DESC) AS rn
    FROM sentiment_results x
) s
JOIN reviews r ON r.id = s.review_id
JOIN model_versions mv ON mv.id = s.model_version_id
WHERE s.rn = 1
"""

ENTITY_MENTIONS = """
CREATE VIEW entity_mentions AS
SELECT e.review_id, r.external_id, r.product_id, e.label, e.text, e.start_char, e.end_char, e.score,
       mv.version AS model_version, ls.label AS sentiment, ls.score AS sentiment_score
FROM entities e
JOIN (
    SELECT n.review_id, n.model_version_id,
           ROW_NUMBER() OVER (PARTITION BY n.review_id ORDER BY n.created_at DESC, n.id DESC) AS rn
    FROM ner_results n
) latest_ner ON latest_ner.review_id = e.review_id AND latest_ner.model_version_id = e.model_version_id
             AND latest_ner.rn = 1
JOIN reviews r ON r.id = e.review_id
JOIN model_versions mv ON mv.id = e.model_version_id
LEFT JOIN latest_sentiment ls ON ls.review_id = e.review_id
"""

SENTIMENT_BY_PRODUCT_DAY = """
CREATE VIEW sentiment_by_product_day AS
SELECT product_id, date(COALESCE(review_created_at, analysed_at)) AS day,
       COUNT(*) AS reviews,
       SUM(CASE WHEN label = 'positive' THEN 1 ELSE 0 END) AS positive,
       SUM(CASE WHEN label = 'negative' THEN 1 ELSE 0 END) AS negative,
       AVG(score) AS mean_score
FROM latest_sentiment
GROUP BY product_id, date(COALESCE(review_created_at, analysed_at))
"""


def _drop_views() -> None:
    op.execute("DROP VIEW entity_mentions")
    op.execute("DROP VIEW sentiment_by_product_day")
    op.execute("DROP VIEW latest_sentiment")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
    _drop_views()
    op.execute(LATEST_SENTIMENT)
    op.execute(SENTIMENT_BY_PRODUCT_DAY)
    op.execute(ENTITY_MENTIONS)


def downgrade() -> None:
    import importlib

    previous = importlib.import_module("migrations.versions.0002_dashboard_views")
    _drop_views()
    op.execute(previous.LATEST_SENTIMENT)
    op.execute(previous.SENTIMENT_BY_PRODUCT_DAY)
    op.execute(previous.ENTITY_MENTIONS)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("error")
        batch.drop_column("heartbeat_at")
