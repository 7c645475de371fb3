"""Model versions: the files live in a directory (or on the hub), the active pointer in the database.

The configured models (REVIEWS_SENTIMENT_MODEL / REVIEWS_NER_MODEL, by default the bundled ones)
become version 1 of their task the first time anything asks for the active version.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .config import Settings
from .schema import ModelVersion, utcnow

TASKS = ("sentiment", "ner")


def active_versions(session: Session, settings: Settings) -> dict[str, ModelVersion]:
    """The active version of each task, registering the configured model where a task has none."""
    rows = session.scalars(select(ModelVersion).where(ModelVersion.status == "active")).all()
    found = {mv.task: mv for mv in rows}
    for task in TASKS:
        if task not in found:
            found[task] = _register_default(session, settings, task)
    return found


def _register_default(session: Session, settings: Settings, task: str) -> ModelVersion:
    source = settings.sentiment_model if task == "sentiment" else settings.ner_model
    has_any = session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.task == task))
    if has_any:
        raise LookupError(f"no active {task} model version: promote one with `reviews models promote`")
    mv = ModelVersion(task=task, version=1, source=source, status="active", promoted_at=utcnow(),
                      note="configured default")
    session.add(mv)
    try:
        session.commit()
    except IntegrityError:  # another process registered it first
        session.rollback()
        return session.scalars(
            select(ModelVersion).where(ModelVersion.task == task, ModelVersion.status == "active")
        ).one()
    return mv
