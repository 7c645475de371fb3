"""dashboard rollups (sentiment_daily, entity_daily), normalized entity keys, indexes, JSONB metadata

Revision ID: 0004
Revises: 0003

Upgrades a database that already holds results: entity keys and the sentiment version paired with
each NER result are filled in, then the rollups are computed from the results, the way
worker/rollups.py would have kept them.
"""
from collections import defaultdict

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PAGE = 5000


def _views():
    import importlib

    return importlib.import_module("migrations.versions.0003_job_lease_latest_by_time")


def upgrade() -> None:
    bind = op.get_bind()
    # SQLite alters a table by copying it, which a view that reads the table forbids: views out, then back.
    _views()._drop_views()
    with op.batch_alter_table("entities") as batch:
        batch.add_column(sa.Column("entity_key", sa.Text(), nullable=True))
    with op.batch_alter_table("ner_results") as batch:
        batch.add_column(sa.Column("sentiment_version_id", BigId, nullable=True))
        batch.create_foreign_key("fk_ner_results_sentiment_version", "model_versions", ["sentiment_version_id"],
                                 ["id"])
    op.create_index("ix_reviews_created_at", "reviews", ["created_at"])
    if bind.dialect.name == "postgresql":
        op.alter_column("reviews", "metadata", type_=postgresql.JSONB(), postgresql_using="metadata::jsonb")
    op.create_table(
        "sentiment_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("product_id", sa.String(255), nullable=False),
        sa.Column("model_version_id", BigId, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("reviews", sa.Integer(), nullable=False),
        sa.Column("positive", sa.Integer(), nullable=False),
        sa.Column("negative", sa.Integer(), nullable=False),
        sa.Column("score_sum", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("day", "product_id", "model_version_id"),
    )
    op.create_index("ix_sentiment_daily_version_day", "sentiment_daily", ["model_version_id", "day"])
    op.create_table(
        "entity_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("label", sa.String(10), nullable=False),
        sa.Column("entity_key", sa.Text(), nullable=False),
        sa.Column("model_version_id", BigId, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("sentiment_version_id", BigId, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("mentions", sa.Integer(), nullable=False),
        sa.Column("reviews", sa.Integer(), nullable=False),
        sa.Column("positive", sa.Integer(), nullable=False),
        sa.Column("negative", sa.Integer(), nullable=False),
        sa.Column("score_sum", sa.Float(), nullable=False),
        sa.Column("entity_score_sum", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("day", "label", "entity_key", "model_version_id", "sentiment_version_id"),
    )
    op.create_index("ix_entity_daily_version_day", "entity_daily", ["model_version_id", "day"])
    _backfill(bind)
    with op.batch_alter_table("entities") as batch:
        batch.alter_column("entity_key", existing_type=sa.Text(), nullable=False)
    op.create_index("ix_entities_key", "entities", ["label", "entity_key", "model_version_id", "review_id"])
    _create_views()


def _create_views(previous: bool = False) -> None:
    views = _views()
    if previous:
        op.execute(views.LATEST_SENTIMENT)
        op.execute(views.SENTIMENT_BY_PRODUCT_DAY)
    else:
        op.execute(LATEST_SENTIMENT)
        op.execute(SENTIMENT_BY_PRODUCT_DAY.format(day=_utc_day(op.get_bind().dialect.name)))
    op.execute(views.ENTITY_MENTIONS)


# The views as of 0004: the review's ingest time beside its created_at, and the day of a review bucketed
# explicitly in UTC (PostgreSQL's date() of a timestamptz follows the session's time zone), by the
# review's created_at, else its ingest day, never the day it was analysed; the model version in the key.
LATEST_SENTIMENT = _views().LATEST_SENTIMENT.replace(
    "r.created_at AS review_created_at,", "r.created_at AS review_created_at, r.ingested_at AS review_ingested_at,")

SENTIMENT_BY_PRODUCT_DAY = """
CREATE VIEW sentiment_by_product_day AS
SELECT product_id, {day} AS day, model_version,
       COUNT(*) AS reviews,
       SUM(CASE WHEN label = 'positive' THEN 1 ELSE 0 END) AS positive,
       SUM(CASE WHEN label = 'negative' THEN 1 ELSE 0 END) AS negative,
       AVG(score) AS mean_score
FROM latest_sentiment
GROUP BY product_id, {day}, model_version
"""


def _utc_day(dialect: str) -> str:
    if dialect == "postgresql":
        return "(COALESCE(review_created_at, review_ingested_at) AT TIME ZONE 'UTC')::date"
    return "date(COALESCE(review_created_at, review_ingested_at))"


def _backfill(bind) -> None:
    from worker.rollups import entity_key, utc_day

    meta = sa.MetaData()
    entities = sa.Table("entities", meta, autoload_with=bind)
    ner = sa.Table("ner_results", meta, autoload_with=bind)
    sentiment = sa.Table("sentiment_results", meta, autoload_with=bind)
    reviews = sa.Table("reviews", meta, autoload_with=bind)
    facts = {rid: (utc_day(created, ingested), product or "")
             for rid, created, ingested, product in bind.execute(
                 sa.select(reviews.c.id, reviews.c.created_at, reviews.c.ingested_at, reviews.c.product_id))}

    last = 0
    while True:  # entity keys, a page at a time
        page = bind.execute(sa.select(entities.c.id, entities.c.text).where(entities.c.id > last)
                            .order_by(entities.c.id).limit(PAGE)).all()
        if not page:
            break
        bind.execute(entities.update().where(entities.c.id == sa.bindparam("eid"))
                     .values(entity_key=sa.bindparam("key")), [{"eid": i, "key": entity_key(t)} for i, t in page])
        last = page[-1][0]

    sent_rows: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0.0])
    latest: dict[int, tuple] = {}  # review -> (version, label, score) of its latest sentiment
    for rid, version, label, score, created, sid in bind.execute(
            sa.select(sentiment.c.review_id, sentiment.c.model_version_id, sentiment.c.label, sentiment.c.score,
                      sentiment.c.created_at, sentiment.c.id).order_by(sentiment.c.created_at, sentiment.c.id)):
        day, product = facts[rid]
        row = sent_rows[(day, product, version)]
        row[0] += 1
        row[1] += label == "positive"
        row[2] += label == "negative"
        row[3] += score
        latest[rid] = (version, label, score)

    # Before this migration the pairing of an NER result with a sentiment version was not recorded:
    # each is paired with its review's latest sentiment.
    pairs = {}
    for nid, rid, version in bind.execute(sa.select(ner.c.id, ner.c.review_id, ner.c.model_version_id)):
        if rid in latest:
            pairs[(rid, version)] = latest[rid]
            bind.execute(ner.update().where(ner.c.id == nid).values(sentiment_version_id=latest[rid][0]))
    ent_rows: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0, 0.0, 0.0])
    seen = set()
    for rid, version, label, text, score in bind.execute(
            sa.select(entities.c.review_id, entities.c.model_version_id, entities.c.label, entities.c.text,
                      entities.c.score)):
        if (rid, version) not in pairs:
            continue
        s_version, s_label, s_score = pairs[(rid, version)]
        key = (facts[rid][0], label, entity_key(text), version, s_version)
        row = ent_rows[key]
        row[0] += 1
        row[5] += score
        if (rid,) + key not in seen:
            seen.add((rid,) + key)
            row[1] += 1
            row[2] += s_label == "positive"
            row[3] += s_label == "negative"
            row[4] += s_score
    daily = sa.Table("sentiment_daily", meta, autoload_with=bind)
    edaily = sa.Table("entity_daily", meta, autoload_with=bind)
    if sent_rows:
        bind.execute(daily.insert(), [dict(day=k[0], product_id=k[1], model_version_id=k[2], reviews=v[0],
                                           positive=v[1], negative=v[2], score_sum=v[3]) for k, v in sent_rows.items()])
    if ent_rows:
        bind.execute(edaily.insert(), [dict(day=k[0], label=k[1], entity_key=k[2], model_version_id=k[3],
                                            sentiment_version_id=k[4], mentions=v[0], reviews=v[1], positive=v[2],
                                            negative=v[3], score_sum=v[4], entity_score_sum=v[5])
                                       for k, v in ent_rows.items()])


def downgrade() -> None:
    _views()._drop_views()
    op.drop_index("ix_entities_key", "entities")
    op.drop_table("entity_daily")
    op.drop_table("sentiment_daily")
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("reviews", "metadata", type_=sa.JSON(), postgresql_using="metadata::json")
    op.drop_index("ix_reviews_created_at", "reviews")
    with op.batch_alter_table("ner_results") as batch:
        batch.drop_constraint("fk_ner_results_sentiment_version", type_="foreignkey")
        batch.drop_column("sentiment_version_id")
    with op.batch_alter_table("entities") as batch:
        batch.drop_column("entity_key")
    _create_views(previous=True)
