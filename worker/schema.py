"""The database tables, as SQLAlchemy 2.0 typed models. Dashboards read these tables, so they change
only through a migration in migrations/versions/, and the README documents them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from datetime import date

from sqlalchemy import (JSON, BigInteger, Date, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY auto-increments).
BigId = BigInteger().with_variant(Integer(), "sqlite")
# Input metadata: JSONB on PostgreSQL, so that dashboards can index and query into it.
Metadata = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Job(Base):
    """One enqueue, reprocess or run: its reviews are in job_reviews. worker/jobs.py owns its lifecycle."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), default="analyze")  # analyze | reprocess
    source: Mapped[str] = mapped_column(Text, default="")  # file name, '-' for stdin, or a description
    # ingesting -> queued -> done | partial (some reviews failed) | failed (all failed)
    status: Mapped[str] = mapped_column(String(20), default="ingesting")
    total: Mapped[int] = mapped_column(Integer, default=0)  # reviews in the job
    rejected: Mapped[int] = mapped_column(Integer, default=0)  # input lines rejected
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[Optional[datetime]]
    # While ingesting: when the ingest last said it is alive; NULL once it has stopped. An ingest silent
    # for REVIEWS_INGEST_LEASE seconds is dead, and `reviews resume` may finish its job.
    heartbeat_at: Mapped[Optional[datetime]]
    error: Mapped[Optional[str]] = mapped_column(Text)  # why the job failed or stopped, for people


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True)  # the input's "id", or h:<sha256>
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64), index=True)  # labels find their review by text
    product_id: Mapped[Optional[str]] = mapped_column(String(255), index=True)
    rating: Mapped[Optional[float]] = mapped_column(Float)
    created_at: Mapped[Optional[datetime]] = mapped_column(index=True)  # when it was written (input), UTC
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", Metadata, default=dict)  # unknown input fields
    ingested_at: Mapped[datetime] = mapped_column(default=utcnow)
    language: Mapped[Optional[str]] = mapped_column(String(8), index=True)  # detected at analysis; NULL: unsure


class JobReview(Base):
    """A review's state within one job: pending, done, failed or skipped (with the reason)."""

    __tablename__ = "job_reviews"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"), primary_key=True, index=True)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    error: Mapped[Optional[str]] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_job_reviews_job_status", "job_id", "status"),)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task: Mapped[str] = mapped_column(String(20))  # sentiment | ner
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)  # local directory or Hugging Face model id
    status: Mapped[str] = mapped_column(String(20), default="candidate")  # active|candidate|rejected|retired
    parent_id: Mapped[Optional[int]] = mapped_column(ForeignKey("model_versions.id"))
    train_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    note: Mapped[str] = mapped_column(Text, default="")  # why it was promoted, rejected or rolled back
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[Optional[datetime]]
    __table_args__ = (UniqueConstraint("task", "version"),)


class SentimentResult(Base):
    __tablename__ = "sentiment_results"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    label: Mapped[str] = mapped_column(String(20))
    probability: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)  # P(positive) - P(negative), in [-1, 1]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("review_id", "model_version_id"),)


class NerResult(Base):
    """One row per review and NER model version: the review was analysed, even when it has no entities."""

    __tablename__ = "ner_results"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    entity_count: Mapped[int] = mapped_column(Integer)
    # The sentiment version of the same analysis: its entities were counted with that sentiment in entity_daily.
    sentiment_version_id: Mapped[Optional[int]] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("review_id", "model_version_id"),)


class EntityRow(Base):
    __tablename__ = "entities"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    label: Mapped[str] = mapped_column(String(10))  # PER | ORG | LOC | MISC
    text: Mapped[str] = mapped_column(Text)  # reviews.text[start_char:end_char]
    entity_key: Mapped[str] = mapped_column(Text)  # the mention normalized (results.entity_key): what dashboards count
    start_char: Mapped[int] = mapped_column(Integer)
    end_char: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    __table_args__ = (
        UniqueConstraint("review_id", "model_version_id", "start_char", "end_char", "label"),
        Index("ix_entities_label_text", "label", "text"),
        # review_id last: the drill-down from an entity to its reviews reads the index alone.
        Index("ix_entities_key", "label", "entity_key", "model_version_id", "review_id"),
    )


# Rollups for dashboards, kept current in the transaction that writes results (worker/results.py), so
# that a dashboard never scans the results tables. `day` is UTC: the review's created_at, else the day
# it was ingested. Every row names its model version(s): a promotion never silently shifts a trend.


# A rollup's model version: derived rows carry no foreign key (migration 0008). Versions are never
# deleted, and the key's checks cost the fold two trigger calls a new rollup row, a third of its time.
VersionId = BigId

# The rollups' sums, carried in their by-key indexes on PostgreSQL (INCLUDE) so that summing a few keys'
# days reads index pages only, not one table page per day (bench/RESULTS.md, "Top entities at 10M").
SENTIMENT_DAILY_SUMS = ["reviews", "positive", "negative", "score_sum"]
ENTITY_DAILY_SUMS = ["mentions", "reviews", "positive", "negative", "score_sum", "entity_score_sum"]


class SentimentDaily(Base):
    __tablename__ = "sentiment_daily"
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    product_id: Mapped[str] = mapped_column(String(255), primary_key=True)  # '' for reviews without one
    model_version_id: Mapped[int] = mapped_column(VersionId, primary_key=True)
    reviews: Mapped[int] = mapped_column(Integer)
    positive: Mapped[int] = mapped_column(Integer)
    negative: Mapped[int] = mapped_column(Integer)
    score_sum: Mapped[float] = mapped_column(Float)  # sum of P(positive) - P(negative)
    __table_args__ = (Index("ix_sentiment_daily_version_day", "model_version_id", "day"),
                      # one product's days: the range sums of the top-products query's candidates
                      Index("ix_sentiment_daily_product_day", "model_version_id", "product_id", "day",
                            postgresql_include=SENTIMENT_DAILY_SUMS))


class SentimentDayTotal(Base):
    """sentiment_daily summed over products: the overview's and Grafana's days read one row each."""

    __tablename__ = "sentiment_day_totals"
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(VersionId, primary_key=True)
    reviews: Mapped[int] = mapped_column(BigInteger)
    positive: Mapped[int] = mapped_column(BigInteger)
    negative: Mapped[int] = mapped_column(BigInteger)
    score_sum: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_sentiment_day_totals_version_day", "model_version_id", "day"),)


class ProductTotal(Base):
    """sentiment_daily's reviews summed over all days: an upper bound on any range's (dashboard/queries.py)."""

    __tablename__ = "product_totals"
    product_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(VersionId, primary_key=True)
    reviews: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (Index("ix_product_totals_rank", "model_version_id", "reviews"),)


class EntityDaily(Base):
    __tablename__ = "entity_daily"
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    label: Mapped[str] = mapped_column(String(10), primary_key=True)
    entity_key: Mapped[str] = mapped_column(Text, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(VersionId, primary_key=True)  # NER
    sentiment_version_id: Mapped[int] = mapped_column(VersionId, primary_key=True)
    mentions: Mapped[int] = mapped_column(Integer)
    reviews: Mapped[int] = mapped_column(Integer)  # reviews that mention it
    positive: Mapped[int] = mapped_column(Integer)  # of those reviews, by the sentiment of the same analysis
    negative: Mapped[int] = mapped_column(Integer)
    score_sum: Mapped[float] = mapped_column(Float)  # their sentiment scores, summed
    entity_score_sum: Mapped[float] = mapped_column(Float)  # the NER confidence of the mentions, summed
    __table_args__ = (Index("ix_entity_daily_version_day", "model_version_id", "day"),
                      # one entity's days: the range sums of the top-entities query's candidates
                      Index("ix_entity_daily_entity_day", "model_version_id", "sentiment_version_id", "label",
                            "entity_key", "day", postgresql_include=ENTITY_DAILY_SUMS))


class EntityTotal(Base):
    """entity_daily's mentions summed over all days: an upper bound on any range's, with which the
    top entities of a range are found among a few candidates (dashboard/queries.py)."""

    __tablename__ = "entity_totals"
    label: Mapped[str] = mapped_column(String(10), primary_key=True)
    entity_key: Mapped[str] = mapped_column(Text, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(VersionId, primary_key=True)  # NER
    sentiment_version_id: Mapped[int] = mapped_column(VersionId, primary_key=True)
    mentions: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (Index("ix_entity_totals_rank", "model_version_id", "sentiment_version_id", "label", "mentions"),)


class RollupDelta(Base):
    """One batch's changes to the rollups, appended by the writer and applied by `rollups.fold`, so
    that concurrent writers never update the same rollup rows (rollups.py)."""

    __tablename__ = "rollup_deltas"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # JSON rows: the rollup's key columns, then its sums (rollups.SENTIMENT_KEYS + SENTIMENT_SUMS, ENTITY_...)
    sentiment: Mapped[str] = mapped_column(Text)
    entities: Mapped[str] = mapped_column(Text)


class Label(Base):
    """A human label: sentiment for a review (by id or text), or NER spans for a text."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task: Mapped[str] = mapped_column(String(20))  # sentiment | ner
    key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of task, target and value: idempotent
    review_id: Mapped[Optional[int]] = mapped_column(ForeignKey("reviews.id", ondelete="SET NULL"))
    text: Mapped[str] = mapped_column(Text)
    sentiment: Mapped[Optional[str]] = mapped_column(String(20))
    entities: Mapped[Optional[list]] = mapped_column(JSON)  # [{"start", "end", "label"}]
    source: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RejectedLine(Base):
    """An input line that could not be used, kept so that users can see and fix it."""

    __tablename__ = "rejected_lines"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(Text)
    line_no: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text)  # the line, cut to 2,000 characters
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
