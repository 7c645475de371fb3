"""dashboard views: latest sentiment per review, sentiment by product and day, entity mentions

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Plain SQL that PostgreSQL and SQLite both accept. "Latest" means the most recently written row,
# so after a promotion the new model version's results take over as reviews are (re)processed.
LATEST_SENTIMENT = """
CREATE VIEW latest_sentiment AS
SELECT s.review_id, r.external_id, r.product_id, r.rating, r.created_at AS review_created_at,
       s.label, s.probability, s.score, mv.version AS model_version, s.created_at AS analysed_at
FROM sentiment_results s
JOIN reviews r ON r.id = s.review_id
JOIN model_versions mv ON mv.id = s.model_version_id
WHERE s.id = (SELECT MAX(s2.id) FROM sentiment_results s2 WHERE s2.review_id = s.review_id)
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

ENTITY_MENTIONS = """
CREATE VIEW entity_mentions AS
SELECT e.review_id, r.external_id, r.product_id, e.label, e.text, e.start_char, e.end_char, e.score,
       mv.version AS model_version, ls.label AS sentiment, ls.score AS sentiment_score
FROM entities e
JOIN reviews r ON r.id = e.review_id
JOIN model_versions mv ON mv.id = e.model_version_id
LEFT JOIN latest_sentiment ls ON ls.review_id = e.review_id
WHERE e.model_version_id = (
    SELECT n.model_version_id FROM ner_results n WHERE n.review_id = e.review_id ORDER BY n.id DESC LIMIT 1
)
"""


def upgrade() -> None:
    op.execute(LATEST_SENTIMENT)
    op.execute(SENTIMENT_BY_PRODUCT_DAY)
    op.execute(ENTITY_MENTIONS)


def downgrade() -> None:
    op.execute("DROP VIEW entity_mentions")
    op.execute("DROP VIEW sentiment_by_product_day")
    op.execute("DROP VIEW latest_sentiment")
