"""Ingest a file, analyse a batch, write the results: plain functions that the CLI, the Celery tasks
and `reviews run` share. The database is the source of truth; queue messages carry review ids only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings
from .db import insert
from .inputs import InputError, Record, Rejected, detect_format, read_records
from .runtime import LoadedModels
from .schema import EntityRow, Job, JobReview, NerResult, RejectedLine, Review, SentimentResult, utcnow

log = logging.getLogger(__name__)

CHUNK = 500  # records per INSERT round trip during ingest
RAW_KEEP = 2000  # characters of a rejected line kept for inspection

SendBatch = Callable[[int, list[int]], None]


@dataclass
class IngestReport:
    job_id: int
    accepted: int = 0
    rejected: int = 0
    batches: int = 0
    first_rejections: list[Rejected] = field(default_factory=list)  # the first few, for the terminal


def create_job(sessions: sessionmaker[Session], source: str, kind: str = "analyze") -> int:
    with sessions() as session:
        job = Job(kind=kind, source=source, status="ingesting")
        session.add(job)
        session.commit()
        return job.id


def ingest(
    sessions: sessionmaker[Session],
    stream: IO[bytes],
    source: str,
    settings: Settings,
    send: SendBatch,
    fmt: str = "auto",
    job_id: int | None = None,
    on_progress: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Stream `stream` into the reviews table and hand batches of review ids to `send`.

    Batches are sent only after their reviews are committed, so a worker never sees an id that
    is not in the database yet.
    """
    job_id = job_id or create_job(sessions, source)
    report = IngestReport(job_id)
    records: list[Record] = []
    rejected: list[Rejected] = []
    pending_ids: list[int] = []

    def flush() -> None:
        with sessions() as session:
            ids = _store_chunk(session, job_id, records, rejected)
            _store_rejections(session, job_id, source, rejected)
            session.commit()
        report.accepted += len(ids)
        report.rejected += len(rejected)
        report.first_rejections.extend(rejected[: max(0, 20 - len(report.first_rejections))])
        pending_ids.extend(ids)
        while len(pending_ids) >= settings.batch_size:
            send(job_id, pending_ids[: settings.batch_size])
            del pending_ids[: settings.batch_size]
            report.batches += 1
        records.clear()
        rejected.clear()
        if on_progress:
            on_progress(report)

    try:
        for item in read_records(stream, detect_format(source, fmt), settings.max_line_bytes):
            (rejected if isinstance(item, Rejected) else records).append(item)  # type: ignore[arg-type]
            if len(records) >= CHUNK or len(rejected) >= CHUNK:
                flush()
    except InputError:
        with sessions() as session:  # the file is unusable as a whole: the job ends here
            session.execute(update(Job).where(Job.id == job_id).values(status="failed", finished_at=utcnow()))
            session.commit()
        raise
    flush()
    if pending_ids:
        send(job_id, pending_ids)
        report.batches += 1
    with sessions() as session:
        job = session.get(Job, job_id)
        job.total = session.scalar(select(func.count()).where(JobReview.job_id == job_id))
        job.rejected = report.rejected
        job.status = "queued"
        session.commit()
        finish_if_complete(session, job_id)
    return report


def _store_chunk(session: Session, job_id: int, records: list[Record], rejected: list[Rejected]) -> list[int]:
    """Insert new reviews, link the chunk's reviews to the job; return the review ids to analyse."""
    first_line: dict[str, int] = {}
    unique: list[Record] = []
    for r in records:
        if r.external_id in first_line:
            rejected.append(_dup(r, f"duplicate id {r.external_id!r}: already on line {first_line[r.external_id]}"))
        else:
            first_line[r.external_id] = r.line_no
            unique.append(r)
    if not unique:
        return []
    rows = [
        dict(external_id=r.external_id, text=r.text, text_sha256=r.text_sha256, product_id=r.product_id,
             rating=r.rating, created_at=r.created_at, meta=r.meta, ingested_at=utcnow())
        for r in unique
    ]
    session.execute(insert(session, Review).values(rows).on_conflict_do_nothing(index_elements=["external_id"]))
    stored = {
        ext: (rid, sha)
        for rid, ext, sha in session.execute(
            select(Review.id, Review.external_id, Review.text_sha256).where(Review.external_id.in_(first_line))
        )
    }
    in_job = set(
        session.scalars(
            select(JobReview.review_id).where(
                JobReview.job_id == job_id, JobReview.review_id.in_([rid for rid, _ in stored.values()])
            )
        )
    )
    ids: list[int] = []
    for r in unique:
        rid, sha = stored[r.external_id]
        if sha != r.text_sha256:
            rejected.append(_dup(r, f"id {r.external_id!r} is already stored with a different text"))
        elif rid in in_job:
            rejected.append(_dup(r, f"duplicate id {r.external_id!r}: already earlier in this file"))
        else:
            ids.append(rid)
    if ids:
        session.execute(insert(session, JobReview).values([dict(job_id=job_id, review_id=i) for i in ids]))
    return ids


def _dup(r: Record, reason: str) -> Rejected:
    return Rejected(r.line_no, reason, r.text[:RAW_KEEP])


def _store_rejections(session: Session, job_id: int, source: str, rejected: list[Rejected]) -> None:
    if rejected:
        session.execute(
            insert(session, RejectedLine).values(
                [dict(job_id=job_id, source=source, line_no=r.line_no, reason=r.reason, raw=r.raw[:RAW_KEEP],
                      created_at=utcnow()) for r in rejected]
            )
        )


def analyze_batch(sessions: sessionmaker[Session], models: LoadedModels, job_id: int | None, review_ids: list[int]) -> int:
    """Run both models on the reviews and write the results in one transaction. Returns reviews written.

    Every write is an upsert keyed on (review, model version): a redelivered batch changes nothing.
    """
    with sessions() as session:
        rows = session.execute(select(Review.id, Review.text).where(Review.id.in_(review_ids))).all()
    if not rows:
        return 0
    ids = [r.id for r in rows]
    texts = [r.text for r in rows]
    sentiments = models.sentiment.predict(texts)
    entities = models.ner.predict(texts)
    with sessions() as session:
        write_results(session, ids, sentiments, entities, models.sentiment_version_id, models.ner_version_id)
        if job_id is not None:
            mark_reviews(session, job_id, ids, "done")
        session.commit()
        if job_id is not None:
            finish_if_complete(session, job_id)
    return len(ids)


def analyze_isolated(sessions: sessionmaker[Session], models: LoadedModels, job_id: int | None,
                     review_ids: list[int]) -> tuple[int, int]:
    """Last resort for a batch that keeps failing: one review at a time, so the good ones still get
    results and each bad one is marked failed with its reason. Returns (written, failed)."""
    written = failed = 0
    for rid in review_ids:
        try:
            written += analyze_batch(sessions, models, job_id, [rid])
        except Exception as exc:  # the model or the data of this one review; the DB is known good here
            log.warning("review %s failed: %s", rid, exc)
            failed += 1
            if job_id is not None:
                with sessions() as session:
                    mark_reviews(session, job_id, [rid], "failed", f"{type(exc).__name__}: {exc}"[:2000])
                    session.commit()
                    finish_if_complete(session, job_id)
    return written, failed


def requeue(sessions: sessionmaker[Session], job_id: int, send: SendBatch, batch_size: int,
            retry_failed: bool = False) -> int:
    """Send every review of the job that has no result yet (and, if asked, the failed ones) again.
    What a flushed or restarted Redis lost is rebuilt from the database. Returns reviews sent."""
    with sessions() as session:
        if session.get(Job, job_id) is None:
            raise LookupError(f"no job {job_id}")
        if retry_failed:
            session.execute(update(JobReview).where(JobReview.job_id == job_id, JobReview.status == "failed")
                            .values(status="pending", error=None, updated_at=utcnow()))
            session.execute(update(Job).where(Job.id == job_id, Job.status.in_(("partial", "failed")))
                            .values(status="queued", finished_at=None))
            session.commit()
        ids = list(session.scalars(
            select(JobReview.review_id).where(JobReview.job_id == job_id, JobReview.status == "pending")
            .order_by(JobReview.review_id)
        ))
    for k in range(0, len(ids), batch_size):
        send(job_id, ids[k : k + batch_size])
    return len(ids)


def create_reprocess_job(sessions: sessionmaker[Session], job_id: int | None = None, since=None, until=None,
                         description: str = "reprocess") -> int:
    """A job over chosen stored reviews (of a job, ingested in a date range, or all), filled in the
    database with one INSERT ... SELECT, whatever the number of reviews."""
    new_id = create_job(sessions, description, kind="reprocess")
    with sessions() as session:
        q = select(literal(new_id), Review.id, literal("pending"), literal(utcnow(), JobReview.updated_at.type))
        if job_id is not None:
            q = q.join(JobReview, JobReview.review_id == Review.id).where(JobReview.job_id == job_id)
        if since is not None:
            q = q.where(Review.ingested_at >= since)
        if until is not None:
            q = q.where(Review.ingested_at < until)
        session.execute(JobReview.__table__.insert().from_select(["job_id", "review_id", "status", "updated_at"], q))
        job = session.get(Job, new_id)
        job.total = session.scalar(select(func.count()).where(JobReview.job_id == new_id))
        job.status = "queued"
        session.commit()
        finish_if_complete(session, new_id)
    return new_id


def write_results(session: Session, ids, sentiments, entities, sentiment_version_id: int, ner_version_id: int) -> None:
    """A few statements per table for the whole batch: executemany, which SQLAlchemy sends as
    multi-row INSERTs (its "insertmanyvalues" mode), with the statement compiled once."""
    now = utcnow()
    stmt = insert(session, SentimentResult)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["review_id", "model_version_id"],
            set_=dict(label=stmt.excluded.label, probability=stmt.excluded.probability, score=stmt.excluded.score,
                      created_at=stmt.excluded.created_at),
        ),
        [dict(review_id=i, model_version_id=sentiment_version_id, label=s.label, probability=s.probability,
              score=s.score, created_at=now) for i, s in zip(ids, sentiments)],
    )
    stmt = insert(session, NerResult)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["review_id", "model_version_id"],
            set_=dict(entity_count=stmt.excluded.entity_count, created_at=stmt.excluded.created_at),
        ),
        [dict(review_id=i, model_version_id=ner_version_id, entity_count=len(es), created_at=now)
         for i, es in zip(ids, entities)],
    )
    # A redelivered batch replaces the entities it wrote before: delete, then insert.
    session.execute(delete(EntityRow).where(EntityRow.review_id.in_(ids), EntityRow.model_version_id == ner_version_id))
    entity_rows = [
        dict(review_id=i, model_version_id=ner_version_id, label=e.label, text=e.text, start_char=e.start,
             end_char=e.end, score=e.score)
        for i, es in zip(ids, entities) for e in es
    ]
    if entity_rows:
        session.execute(EntityRow.__table__.insert(), entity_rows)


def mark_reviews(session: Session, job_id: int, ids: Iterable[int], status: str, error: str | None = None) -> None:
    session.execute(
        update(JobReview)
        .where(JobReview.job_id == job_id, JobReview.review_id.in_(list(ids)))
        .values(status=status, error=error, updated_at=utcnow())
    )


@dataclass(frozen=True)
class Progress:
    job_id: int
    status: str
    source: str
    total: int
    done: int
    failed: int
    pending: int
    rejected: int

    @property
    def finished(self) -> bool:
        return self.status in ("done", "partial", "failed")


def progress(session: Session, job_id: int) -> Progress:
    job = session.get(Job, job_id)
    if job is None:
        raise LookupError(f"no job {job_id}")
    counts = dict(
        session.execute(
            select(JobReview.status, func.count()).where(JobReview.job_id == job_id).group_by(JobReview.status)
        ).all()
    )
    done, failed, pending = counts.get("done", 0), counts.get("failed", 0), counts.get("pending", 0)
    return Progress(job.id, job.status, job.source, done + failed + pending, done, failed, pending, job.rejected)


def finish_if_complete(session: Session, job_id: int) -> None:
    """Close the job once nothing is pending; safe to call from several workers at once."""
    p = progress(session, job_id)
    if p.status != "queued" or p.pending:
        return
    status = "done" if not p.failed else ("failed" if not p.done else "partial")
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == "queued").values(status=status, finished_at=utcnow())
    )
    session.commit()
