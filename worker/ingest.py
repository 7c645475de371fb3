"""Ingest a file: read and validate it as a stream (worker/inputs.py), store its reviews in chunks,
idempotent on the review's id, and hand batches of review ids to `send` once they are committed.

`send` is what makes the difference between the paths: the Celery producer (`reviews enqueue`) sends
a message per batch; `reviews run` analyses the batch in place. No torch is imported on this path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import IO, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from . import jobs
from .config import Settings
from .db import any_of, insert, insert_new
from .inputs import InputError, Record, Rejected, detect_format, read_records
from .schema import JobReview, RejectedLine, Review, utcnow

log = logging.getLogger(__name__)

CHUNK = 500  # records per INSERT round trip
RAW_KEEP = 2000  # characters of a rejected line kept for inspection
SHOWN = 20  # rejections kept in the report for the terminal


@dataclass
class IngestReport:
    job_id: int
    accepted: int = 0
    rejected: int = 0
    batches: int = 0
    last_line: int = 0  # the last line read
    first_rejections: list[Rejected] = field(default_factory=list)
    progress: jobs.Progress | None = None  # the job as the ingest left it


class IngestStopped(RuntimeError):
    """The ingest stopped before the end of the file (broker or database gone, interrupted). What
    was stored is kept; the job is released so that `reviews resume JOB` can finish it."""

    def __init__(self, report: IngestReport, cause: BaseException):
        self.report, self.cause = report, cause
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(f"job {report.job_id}: ingest stopped after line {report.last_line} "
                         f"({report.accepted} reviews stored): {reason}")


def ingest(
    sessions: sessionmaker[Session],
    stream: IO[bytes],
    source: str,
    settings: Settings,
    send: jobs.SendBatch,
    fmt: str = "auto",
    on_progress: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Stream `stream` into the reviews table and hand batches of review ids to `send`; return the
    report with the job's progress. Batches are sent only after their reviews are committed, so a
    worker never sees an id that is not in the database yet.

    Raises InputError when the file as a whole is unusable (the job is then failed, with the reason),
    and IngestStopped when anything else stops it half-way (the job is released for `resume`).
    """
    report = IngestReport(jobs.create(sessions, source))
    job_id = report.job_id
    records: list[Record] = []
    rejected: list[Rejected] = []
    pending_ids: list[int] = []

    def flush() -> None:
        with sessions() as session:
            ids = _store_chunk(session, job_id, records, rejected)
            _store_rejections(session, job_id, source, rejected)
            jobs.heartbeat(session, job_id)
            session.commit()
        report.accepted += len(ids)
        report.rejected += len(rejected)
        report.first_rejections.extend(rejected[: max(0, SHOWN - len(report.first_rejections))])
        pending_ids.extend(ids)
        records.clear()
        rejected.clear()
        while len(pending_ids) >= settings.batch_size:
            send(job_id, pending_ids[: settings.batch_size])
            del pending_ids[: settings.batch_size]
            report.batches += 1
        if on_progress:
            on_progress(report)

    try:
        for item in read_records(stream, detect_format(source, fmt), settings.max_line_bytes):
            report.last_line = item.line_no
            (rejected if isinstance(item, Rejected) else records).append(item)  # type: ignore[arg-type]
            if len(records) >= CHUNK or len(rejected) >= CHUNK:
                flush()
        flush()
        if pending_ids:
            send(job_id, pending_ids)
            report.batches += 1
    except InputError as exc:
        jobs.fail(sessions, job_id, str(exc))
        raise
    except BaseException as exc:  # KeyboardInterrupt and SystemExit too: never leave a job that looks alive
        try:
            jobs.release(sessions, job_id, f"ingest stopped after line {report.last_line}: {exc!r}")
        except Exception:  # the database itself may be what went away; the lease then expires on its own
            log.warning("could not release job %s", job_id, exc_info=True)
        if isinstance(exc, Exception):
            raise IngestStopped(report, exc) from exc
        raise
    report.progress = jobs.queued(sessions, job_id, report.rejected)
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
        # keyed by column name ("metadata" is the attribute `meta`): insert_new writes to the table
        {"external_id": r.external_id, "text": r.text, "text_sha256": r.text_sha256, "product_id": r.product_id,
         "rating": r.rating, "created_at": r.created_at, "metadata": r.meta, "ingested_at": utcnow()}
        for r in unique
    ]
    # From arrays, one parameter per column (db.insert_new): a multi-row VALUES of a 500-review chunk
    # had SQLAlchemy compile ~4,000 bind parameters afresh for every chunk, a third of the ingest's time.
    insert_new(session, Review, rows, ["external_id"])
    stored = {
        ext: (rid, sha)
        for rid, ext, sha in session.execute(
            select(Review.id, Review.external_id, Review.text_sha256).where(any_of(session, Review.external_id, first_line))
        )
    }
    in_job = set(
        session.scalars(
            select(JobReview.review_id).where(
                JobReview.job_id == job_id, any_of(session, JobReview.review_id, [rid for rid, _ in stored.values()])
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
        now = utcnow()
        insert_new(session, JobReview, [dict(job_id=job_id, review_id=i, status="pending", updated_at=now) for i in ids],
                   ["job_id", "review_id"])
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
