"""Model versions: the files live in a directory (or on the hub), the active pointer in the database.

The configured models (REVIEWS_SENTIMENT_MODEL / REVIEWS_NER_MODEL, by default the bundled ones)
become version 1 of their task the first time anything asks for the active version.
"""

from __future__ import annotations

import shlex

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
        # Another process may have seeded or promoted one since the caller looked (each statement
        # sees what was committed when it began): look again before calling it missing.
        current = session.scalars(
            select(ModelVersion).where(ModelVersion.task == task, ModelVersion.status == "active")
        ).first()
        if current is None:
            raise LookupError(f"no active {task} model version: promote one with `reviews models promote`")
        return current
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


def configured_drift(session: Session, settings: Settings) -> list[str]:
    """Warnings for each task whose configured model (REVIEWS_*_MODEL) is not what its active version
    serves: the setting only seeds version 1 of a new database, so changing it later does nothing."""
    out = []
    for task, mv in active_versions(session, settings).items():
        configured = settings.sentiment_model if task == "sentiment" else settings.ner_model
        origin = provenance(mv)
        pinned = (mv.metrics or {}).get("import", {}).get("revision")  # a hub import: org/name@commit
        if _same_source(configured, mv.source) or _same_source(configured, origin) \
                or (pinned and configured == origin.rpartition("@")[0]):
            continue
        if mv.parent_id is not None or origin != mv.source:
            # A retrained or imported version is meant to differ from the seed: only a setting changed
            # since it seeded version 1 is worth a word.
            seed = session.scalar(select(ModelVersion.source).where(ModelVersion.task == task,
                                                                    ModelVersion.version == 1))
            if seed is None or _same_source(configured, seed):
                continue
        out.append(f"REVIEWS_{task.upper()}_MODEL is {configured}, but the active {task} version {mv.version} "
                   f"serves {origin}: the setting only seeds version 1 of a new database; the database's "
                   f"active version is what runs. To serve the configured model, register it: "
                   f"`reviews models add {task} {shlex.quote(configured)} --activate`")
    return out


def provenance(mv: ModelVersion) -> str:
    """Where a version came from: `org/name@commit` or the directory it was copied from for an
    imported version (`reviews models add`, whose files are the copy in `source`), else its source."""
    imported = (mv.metrics or {}).get("import")
    return (imported.get("from") or mv.source) if isinstance(imported, dict) else mv.source


def _same_source(a: str, b: str) -> bool:
    from pathlib import Path

    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def versions(session: Session, task: str | None = None) -> list[ModelVersion]:
    q = select(ModelVersion).order_by(ModelVersion.task, ModelVersion.version)
    if task:
        q = q.where(ModelVersion.task == task)
    return list(session.scalars(q))


def get(session: Session, task: str, version: int) -> ModelVersion:
    mv = session.scalars(select(ModelVersion).where(ModelVersion.task == task, ModelVersion.version == version)).first()
    if mv is None:
        raise LookupError(f"no {task} model version {version}")
    return mv


def parent(session: Session, mv: ModelVersion) -> ModelVersion | None:
    return session.get(ModelVersion, mv.parent_id) if mv.parent_id else None


def next_version(session: Session, task: str) -> int:
    return (session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.task == task)) or 0) + 1


def register(session: Session, task: str, source: str, status: str, parent_id: int | None = None,
             train_counts: dict | None = None, metrics: dict | None = None, note: str = "") -> ModelVersion:
    mv = ModelVersion(task=task, version=next_version(session, task), source=source, status=status,
                      parent_id=parent_id, train_counts=train_counts or {}, metrics=metrics or {}, note=note)
    session.add(mv)
    session.flush()
    return mv


def claim(session: Session, task: str, attempts: int = 20, **fields) -> ModelVersion:
    """Insert the next version of `task` (flushed, not committed) and return it: its number is this
    session's until it commits or rolls back, so the caller can put files under that number first.

    Two processes that pick the same number meet at the (task, version) unique key: PostgreSQL makes
    the second INSERT wait for the first transaction, then fail, and the loser takes the next number.
    The session must hold nothing else: a lost race rolls it back.
    """
    for _ in range(attempts):
        mv = ModelVersion(task=task, version=next_version(session, task), **fields)
        session.add(mv)
        try:
            session.flush()
            return mv
        except IntegrityError:
            session.rollback()
    raise RuntimeError(f"could not claim a new {task} version number in {attempts} tries")


def _lock_task(session: Session, task: str) -> list[ModelVersion]:
    """Every version of `task`, locked (PostgreSQL) and re-read: two promotions or rollbacks of one
    task run one after the other, and the second sees what the first made active. SQLite has one
    writer at a time anyway."""
    return list(session.scalars(
        select(ModelVersion).where(ModelVersion.task == task).order_by(ModelVersion.id)
        .with_for_update().execution_options(populate_existing=True)
    ))


def promote(session: Session, task: str, version: int, note: str = "promoted") -> ModelVersion:
    """Make `version` the active one; the version it replaces is retired. Workers pick it up at
    their next batch."""
    rows = _lock_task(session, task)
    target = next((mv for mv in rows if mv.version == version), None)
    if target is None:
        raise LookupError(f"no {task} model version {version}")
    if target.status == "active":
        return target
    for mv in rows:
        if mv.status == "active":
            mv.status = "retired"
    target.status = "active"
    target.promoted_at = utcnow()
    target.note = note
    session.flush()
    return target


def rollback(session: Session, task: str) -> ModelVersion:
    """Put back the version that was active before the current one."""
    _lock_task(session, task)
    current = session.scalars(
        select(ModelVersion).where(ModelVersion.task == task, ModelVersion.status == "active")
    ).first()
    if current is None:
        raise LookupError(f"no active {task} model version to roll back")
    previous = session.scalars(
        select(ModelVersion)
        # Only versions promoted before the current one: a version rolled back from is never restored.
        .where(ModelVersion.task == task, ModelVersion.status == "retired",
               ModelVersion.promoted_at < current.promoted_at)
        .order_by(ModelVersion.promoted_at.desc())
    ).first()
    if previous is None:
        raise LookupError(f"{task} version {current.version} is the first active version: nothing to roll back to")
    current.status = "retired"
    current.note = f"rolled back to version {previous.version}"
    previous.status = "active"  # promoted_at keeps its first promotion, which orders later rollbacks
    previous.note = f"restored by rollback of version {current.version}"
    session.flush()
    return previous
