"""SQL of the jobs and models pages: small tables, read directly.

Job progress counts only what is not done (`pending`, `failed`) through the (job_id, status) index and
takes `done` as the rest of `jobs.total`: a finished job of ten million reviews costs two short index
ranges, not a count of ten million rows. A job without a total yet (still ingesting, or stopped while
ingesting) is counted in full; those hold what one ingest stored so far.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from ..schema import Job, JobReview, ModelVersion, RejectedLine, Review
from .params import Version


def model_versions(session: Session) -> dict[str, list[Version]]:
    """Every version, by task, newest first."""
    out: dict[str, list[Version]] = {"sentiment": [], "ner": []}
    q = select(ModelVersion.id, ModelVersion.task, ModelVersion.version, ModelVersion.status,
               ModelVersion.promoted_at).order_by(ModelVersion.task, ModelVersion.version.desc())
    for r in session.execute(q):
        out.setdefault(r.task, []).append(Version(r.id, r.task, r.version, r.status, r.promoted_at))
    return out


def model_rows(session: Session) -> list[dict]:
    """Versions with status, lineage, training counts and the promotion gate's figures."""
    parent = aliased(ModelVersion)
    q = (select(ModelVersion, parent.version.label("parent_version"))
         .outerjoin(parent, parent.id == ModelVersion.parent_id)
         .order_by(ModelVersion.task, ModelVersion.version.desc()))
    out = []
    for mv, parent_version in session.execute(q):
        metrics = mv.metrics or {}
        gate = metrics.get("gate_metric")
        out.append({
            "id": mv.id, "task": mv.task, "version": mv.version, "status": mv.status, "source": mv.source,
            "parent_version": parent_version, "note": mv.note, "created_at": mv.created_at,
            "promoted_at": mv.promoted_at, "train_counts": mv.train_counts or {}, "metrics": metrics,
            "gate_metric": gate,
            "gate_candidate": _metric(metrics.get("candidate"), gate),
            "gate_active": _metric(metrics.get("active"), gate),
        })
    return out


def _metric(block, key):
    value = block.get(key) if isinstance(block, dict) and key else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def jobs_page(session: Session, limit: int, offset: int = 0) -> list[dict]:
    """The latest jobs with their progress: total, done, failed, pending, rejected lines."""
    jobs = list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)))
    return progress(session, jobs)


def job(session: Session, job_id: int) -> dict | None:
    found = session.get(Job, job_id)
    return progress(session, [found])[0] if found else None


def progress(session: Session, jobs: list[Job]) -> list[dict]:
    if not jobs:
        return []
    ids = [j.id for j in jobs]
    counts: dict[tuple[int, str], int] = {}
    q = (select(JobReview.job_id, JobReview.status, func.count()).where(JobReview.job_id.in_(ids),
                                                                        JobReview.status.in_(("pending", "failed")))
         .group_by(JobReview.job_id, JobReview.status))
    counts.update({(j, s): n for j, s, n in session.execute(q)})
    untotalled = [j.id for j in jobs if not j.total]
    if untotalled:
        q = (select(JobReview.job_id, func.count()).where(JobReview.job_id.in_(untotalled), JobReview.status == "done")
             .group_by(JobReview.job_id))
        counts.update({(j, "done"): n for j, n in session.execute(q)})
    out = []
    for j in jobs:
        failed, pending = counts.get((j.id, "failed"), 0), counts.get((j.id, "pending"), 0)
        done = counts.get((j.id, "done"), 0) if not j.total else j.total - failed - pending
        total = done + failed + pending
        out.append({"id": j.id, "kind": j.kind, "source": j.source, "status": j.status, "total": total,
                    "done": done, "failed": failed, "pending": pending, "rejected": j.rejected,
                    "created_at": j.created_at, "finished_at": j.finished_at, "error": j.error,
                    "progress": (done + failed) / total if total else None})
    return out


def status_counts(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())


def rejected_lines(session: Session, job_id: int, limit: int, offset: int = 0) -> list[dict]:
    q = (select(RejectedLine.line_no, RejectedLine.reason, RejectedLine.raw).where(RejectedLine.job_id == job_id)
         .order_by(RejectedLine.line_no, RejectedLine.id).limit(limit).offset(offset))
    return [dict(r._mapping) for r in session.execute(q)]


def failed_reviews(session: Session, job_id: int, limit: int, offset: int = 0) -> list[dict]:
    q = (select(Review.external_id, JobReview.error).join(JobReview, JobReview.review_id == Review.id)
         .where(JobReview.job_id == job_id, JobReview.status == "failed")
         .order_by(Review.id).limit(limit).offset(offset))
    return [{"external_id": r.external_id, "error": r.error or ""} for r in session.execute(q)]
