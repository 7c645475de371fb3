"""The job lifecycle, in one place: every state and every transition of a job.

    ingesting --queued()--> queued --finish_if_complete()--> done | partial | failed
        |                     ^
        |-- fail() -----------+--> failed          (the file as a whole is unusable)
        '-- release(): the ingest stopped; recover() (`reviews resume`) queues what it stored

A job is `ingesting` while its file is read; the ingest renews a lease (`heartbeat_at`) as it goes,
so that `reviews resume` can tell a dead ingest (killed, broker gone) from a live one. `queued` means
every review of the job is known; the job ends when none is pending: `done` when all have results,
`failed` when none has, `partial` otherwise. A job with no reviews at all fails, with the reason.
Nothing here knows of Celery: batches are handed to a `send` function.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

from sqlalchemy import func, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from . import rollups
from .db import any_of
from .schema import Job, JobReview, RejectedLine, Review, utcnow

INGESTING, QUEUED, DONE, PARTIAL, FAILED = "ingesting", "queued", "done", "partial", "failed"
SKIPPED = "skipped"  # a review of a job that was deliberately not analysed (its language, say)
FINISHED = (DONE, PARTIAL, FAILED)

SendBatch = Callable[[int, list[int]], None]


class JobNotFound(LookupError):
    pass


class JobBusy(RuntimeError):
    """The job is still being ingested by a live process."""


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
    error: str | None = None
    skipped: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def as_dict(self) -> dict:
        return {"job": self.job_id, "status": self.status, "source": self.source, "total": self.total,
                "done": self.done, "failed": self.failed, "skipped": self.skipped, "pending": self.pending,
                "rejected": self.rejected, "error": self.error}


# -- creating and ingesting -------------------------------------------------------------------------


def create(sessions: sessionmaker[Session], source: str, kind: str = "analyze") -> int:
    with sessions() as session:
        job = Job(kind=kind, source=source, status=INGESTING, heartbeat_at=utcnow())
        session.add(job)
        session.commit()
        return job.id


def heartbeat(session: Session, job_id: int) -> None:
    """The ingest is alive (called with each chunk it stores, in the chunk's transaction)."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == INGESTING).values(heartbeat_at=utcnow()))


def release(sessions: sessionmaker[Session], job_id: int, reason: str) -> None:
    """The ingest stopped before the end of its file: the job waits for `reviews resume`."""
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status == INGESTING)
                        .values(heartbeat_at=None, error=reason[:2000]))
        session.commit()


def queued(sessions: sessionmaker[Session], job_id: int, rejected: int | None = None) -> Progress:
    """Every review of the job is stored and sent: count them, then close the job if workers already
    finished them all."""
    with sessions() as session:
        total = session.scalar(select(func.count()).where(JobReview.job_id == job_id))
        values = dict(status=QUEUED, total=total, heartbeat_at=None)
        if rejected is not None:
            values["rejected"] = rejected
        session.execute(update(Job).where(Job.id == job_id, Job.status == INGESTING).values(**values))
        session.commit()
        finish_if_complete(session, job_id)
        return progress(session, job_id)


def fail(sessions: sessionmaker[Session], job_id: int, reason: str) -> None:
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status.not_in(FINISHED))
                        .values(status=FAILED, error=reason[:2000], heartbeat_at=None, finished_at=utcnow()))
        session.commit()


# -- analysing --------------------------------------------------------------------------------------


def mark_reviews(session: Session, job_id: int, ids: Iterable[int], status: str, error: str | None = None) -> None:
    session.execute(
        update(JobReview)
        .where(JobReview.job_id == job_id, any_of(session, JobReview.review_id, list(ids)))
        .values(status=status, error=error, updated_at=utcnow())
    )


def finish_if_complete(session: Session, job_id: int) -> bool:
    """Close a queued job once nothing is pending; safe to call from several workers at once (the
    UPDATE only matches a job that is still queued). True when this call closed it; it then folds the
    pending rollup deltas too, so that a finished job's results are in the dashboards' rollups."""
    # Every batch asks, and most are not their job's last: one probe of the (job, status) index says
    # so, where counting the job's reviews by status costs time in proportion to the job, every batch.
    still_pending = select(JobReview.review_id).where(JobReview.job_id == job_id, JobReview.status == "pending")
    if session.scalar(still_pending.limit(1)) is not None:
        return False
    p = progress(session, job_id)
    if p.status != QUEUED or p.pending:
        return False
    if p.total == 0:
        status, error = FAILED, "no reviews to analyse" + (f": {p.rejected} lines rejected" if p.rejected else "")
    else:  # skipped reviews were left out on purpose: they make a job neither partial nor failed
        status, error = (DONE if not p.failed else FAILED if not p.done else PARTIAL), None
    closed = session.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED)
                             .values(status=status, error=error, finished_at=utcnow())).rowcount
    session.commit()
    if closed:
        rollups.fold_pending(session)
    return bool(closed)


# -- reading ----------------------------------------------------------------------------------------


def progress(session: Session, job_id: int) -> Progress:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    counts = dict(session.execute(
        select(JobReview.status, func.count()).where(JobReview.job_id == job_id).group_by(JobReview.status)
    ).all())
    done, failed, pending = counts.get(DONE, 0), counts.get(FAILED, 0), counts.get("pending", 0)
    skipped = counts.get(SKIPPED, 0)
    return Progress(job.id, job.status, job.source, done + failed + pending + skipped, done, failed, pending,
                    job.rejected, job.error, skipped)


def latest(session: Session, limit: int) -> list[Progress]:
    ids = session.scalars(select(Job.id).order_by(Job.id.desc()).limit(limit)).all()
    return [progress(session, job_id) for job_id in ids]


def rejected_lines(session: Session, job_id: int) -> list[RejectedLine]:
    return list(session.scalars(select(RejectedLine).where(RejectedLine.job_id == job_id)
                                .order_by(RejectedLine.line_no)))


def failed_reviews(session: Session, job_id: int, status: str = FAILED) -> list[tuple[str, str]]:
    """(review id as given in the input, the reason) of each review of the job that failed (or, with
    status=SKIPPED, that was skipped)."""
    q = (select(Review.external_id, JobReview.error).join(JobReview, JobReview.review_id == Review.id)
         .where(JobReview.job_id == job_id, JobReview.status == status).order_by(Review.id))
    return [(ext, error or "") for ext, error in session.execute(q)]


# -- sending again: resume, recovery, reprocess -------------------------------------------------------


def ingest_is_alive(job: Job, lease_seconds: float, now: datetime | None = None) -> bool:
    if job.status != INGESTING or job.heartbeat_at is None:
        return False
    beat = job.heartbeat_at if job.heartbeat_at.tzinfo else job.heartbeat_at.replace(tzinfo=timezone.utc)
    return (now or utcnow()) - beat < timedelta(seconds=lease_seconds)


def recover(sessions: sessionmaker[Session], job_id: int, lease_seconds: float) -> bool:
    """Take over a job whose ingest died: what it stored is the job. Returns True if the job was
    ingesting. Refuses (JobBusy) while the ingest is still alive."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        if job.status != INGESTING:
            return False
        if ingest_is_alive(job, lease_seconds):
            age = (utcnow() - job.heartbeat_at.replace(tzinfo=timezone.utc)).total_seconds()
            raise JobBusy(f"job {job_id} is still being ingested (last heartbeat {age:.0f} s ago); "
                          f"an ingest silent for {lease_seconds:.0f} s (REVIEWS_INGEST_LEASE) is taken as dead")
    queued(sessions, job_id)
    return True


def pending_ids(sessions: sessionmaker[Session], job_id: int, retry_failed: bool = False) -> list[int]:
    """Review ids of the job without a result (and, with retry_failed, the failed ones, reset to
    pending and the job reopened)."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        if retry_failed:
            session.execute(update(JobReview).where(JobReview.job_id == job_id, JobReview.status == FAILED)
                            .values(status="pending", error=None, updated_at=utcnow()))
            session.execute(update(Job).where(Job.id == job_id, Job.status.in_((PARTIAL, FAILED)), Job.total > 0)
                            .values(status=QUEUED, error=None, finished_at=None))
            session.commit()
        return list(session.scalars(
            select(JobReview.review_id).where(JobReview.job_id == job_id, JobReview.status == "pending")
            .order_by(JobReview.review_id)
        ))


def send_in_batches(job_id: int, ids: list[int], send: SendBatch, batch_size: int) -> int:
    for k in range(0, len(ids), batch_size):
        send(job_id, ids[k : k + batch_size])
    return len(ids)


def create_reprocess(sessions: sessionmaker[Session], job_id: int | None = None, since=None, until=None,
                     description: str = "reprocess") -> int:
    """A queued job over chosen stored reviews (of a job, ingested in a date range, or all), filled in
    the database with one INSERT ... SELECT, whatever the number of reviews."""
    with sessions() as session:
        if job_id is not None and session.get(Job, job_id) is None:
            raise JobNotFound(f"no job {job_id}")
    new_id = create(sessions, description, kind="reprocess")
    with sessions() as session:
        q = select(literal(new_id), Review.id, literal("pending"), literal(utcnow(), JobReview.updated_at.type))
        if job_id is not None:
            q = q.join(JobReview, JobReview.review_id == Review.id).where(JobReview.job_id == job_id)
        if since is not None:
            q = q.where(Review.ingested_at >= since)
        if until is not None:
            q = q.where(Review.ingested_at < until)
        session.execute(JobReview.__table__.insert().from_select(["job_id", "review_id", "status", "updated_at"], q))
        session.commit()
    queued(sessions, new_id)
    return new_id
