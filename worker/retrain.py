"""Scheduled or requested retraining: fine-tune the active version on the human labels, with the
active version as teacher, evaluate candidate and active on the same held-out labels, and promote
the candidate only if it is not worse than the active version by more than a tolerance.

Knows nothing of Celery: worker/tasks.py wraps it, and `reviews retrain --local` calls it directly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from . import gate, registry
from .config import Settings
from .gate import RetrainOutcome
from .schema import Label

log = logging.getLogger(__name__)

HELDOUT_PERCENT = 20  # labels whose key hashes into this bucket are never trained on


class RetrainRefused(ValueError):
    """The active version cannot be retrained on our labels (its classes are not ours, one each)."""


class RetrainBusy(RuntimeError):
    """Another retrain of the same task holds the lock."""


def is_heldout(text: str) -> bool:
    """A fixed split by a hash of the labelled text: a label stays on its side in every retrain, and
    a corrected label for the same text lands where the old one was."""
    return int(hashlib.sha256(("heldout:" + text).encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def untrained_labels(session: Session, task: str) -> int:
    """Labels (the latest of each text) that no version of the task was trained on: newer than the
    newest label any retrain of this task has seen, whatever came of that retrain."""
    seen = [mv.train_counts.get("labels_until") for mv in registry.versions(session, task)
            if (mv.train_counts or {}).get("labels_until")]
    labels = latest_labels(session, task)
    if not seen:
        return len(labels)
    until = max(seen)
    return sum(1 for lb in labels if _stamp(lb.created_at) > until)


def _stamp(moment) -> str:
    """A label time as a sortable UTC string (SQLite returns naive datetimes, PostgreSQL aware ones)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds")


def latest_labels(session: Session, task: str) -> list[Label]:
    """One label per text: the most recent one wins, so a corrected label replaces an old one."""
    latest: dict[str, Label] = {}
    for label in session.scalars(select(Label).where(Label.task == task).order_by(Label.created_at, Label.id)):
        latest[label.text] = label
    return list(latest.values())


@contextmanager
def retrain_lock(settings: Settings, task: str):
    """One retrain per task at a time, across every trainer, beat replica and `retrain --local`: a lock
    in the database they all share, whatever the broker. It is held by a connection (PostgreSQL) or
    an open file (SQLite) of this process, so a trainer that dies, even by SIGKILL, lets it go at
    once; no time-to-live to guess. Raises RetrainBusy where another retrain holds it."""
    url = settings.database_url
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        with _advisory_lock(url, task):
            yield
    elif backend == "sqlite":
        with _file_lock(url, task):
            yield
    else:  # config.py accepts only these two
        raise ValueError(f"no retrain lock for the {backend} database")


def _lock_key(task: str) -> int:
    """A signed 64-bit advisory-lock key for the task, from a hash of a name that no other
    application would use."""
    digest = hashlib.sha256(f"reviews:retrain:{task}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _advisory_lock(url: str, task: str):
    """PostgreSQL: a session-level advisory lock on a connection of its own, kept for the whole
    retrain. Not a transaction-level one: the retrain's own sessions commit many times, and a
    transaction left open for hours would hold back vacuum. The server frees a session lock when its
    connection ends, so a killed trainer never leaves it behind."""
    from .db import get_engine

    key = _lock_key(task)
    # AUTOCOMMIT: the lock belongs to the session, and the connection does not sit idle in a transaction.
    conn = get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        if not conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}):
            raise RetrainBusy(f"a {task} retrain is already running")
        try:
            yield
        finally:
            try:
                if not conn.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": key}):
                    log.warning("the %s retrain lock was lost while training", task)
            except Exception:  # the connection broke: its lock went with it; never pool it again
                log.warning("the %s retrain lock's connection broke while training", task)
                conn.invalidate()
    finally:
        conn.close()


_process_locks: dict[str, threading.Lock] = {}


@contextmanager
def _file_lock(url: str, task: str):
    """SQLite: every process that writes the database is on this machine, so an exclusive flock on a
    file next to the database file. flock belongs to the open file, not the process: two threads that
    open it separately exclude each other too, and the kernel drops it when the process dies."""
    import fcntl

    database = make_url(url).database
    if not database or database == ":memory:":  # a database no other process can see
        lock = _process_locks.setdefault(task, threading.Lock())
        if not lock.acquire(blocking=False):
            raise RetrainBusy(f"a {task} retrain is already running")
        try:
            yield
        finally:
            lock.release()
        return
    path = Path(database)
    lock_path = path.with_name(f"{path.name}.retrain-{task}.lock")
    with open(lock_path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainBusy(f"a {task} retrain is already running") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@dataclass
class FineTuned:
    candidate_metrics: dict
    active_metrics: dict
    stats: dict


def fine_tune(task: str, active_source: str, train: list[Label], heldout: list[Label], out_dir: Path,
              settings: Settings, alpha: float = 0.5, temperature: float = 2.0, epochs: float = 2.0,
              lr: float = 3e-5, progress: Callable[[str], None] = log.info) -> FineTuned:
    """Fine-tune a copy of the active model on `train`, the active model as teacher (alpha = 1: no
    teacher), save it to out_dir, and evaluate candidate and active on the same held-out labels."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from .nlp import casing
    from .nlp.types import NER_TAGS, SENTIMENT_LABELS
    from .nlp.loading import quiet_transformers
    from .training.saving import save_half
    from .training.data import SentimentExample
    from .training.train import TrainConfig, encode_ner_spans, train_ner, train_sentiment

    head = AutoModelForSequenceClassification if task == "sentiment" else AutoModelForTokenClassification
    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(active_source)
    student = head.from_pretrained(active_source, dtype=torch.float32, use_safetensors=True)
    teacher = head.from_pretrained(active_source, dtype=torch.float32, use_safetensors=True) if alpha < 1 else None
    config = TrainConfig(epochs=epochs, lr=lr, alpha=alpha, temperature=temperature, device=settings.device,
                         max_length=min(256, student.config.max_position_embeddings), log_every=20)
    # Class ids as the model orders them: an imported model may put positive first. A model whose
    # classes were merged or skipped at import cannot be trained on our labels one class each.
    classes = [student.config.id2label[i] for i in range(student.config.num_labels)]
    if sorted(classes) != sorted(SENTIMENT_LABELS if task == "sentiment" else NER_TAGS):
        raise RetrainRefused(f"the active {task} version's classes are {classes}: retraining needs exactly "
                             f"{', '.join(SENTIMENT_LABELS if task == 'sentiment' else NER_TAGS)}, one class each")
    class_id = {name: i for i, name in enumerate(classes)}
    if task == "sentiment":
        examples = [SentimentExample(lb.text, class_id[lb.sentiment]) for lb in train]
        stats = train_sentiment(student, tokenizer, examples, config, teacher, progress)
    else:
        marking = casing.for_model(student.config, tokenizer)
        items = encode_ner_spans(tokenizer, [(lb.text, [(e["start"], e["end"], e["label"]) for e in lb.entities])
                                             for lb in train], config, class_id, marking)
        stats = train_ner(student, tokenizer, items, config, teacher, progress, marking)
    save_half(student, tokenizer, out_dir)
    return FineTuned(gate.measure(task, str(out_dir), heldout, settings),
                     gate.measure(task, active_source, heldout, settings), stats)


def retrain(
    settings: Settings,
    sessions: sessionmaker[Session],
    task: str,
    min_new_labels: int = 0,
    progress: Callable[[str], None] = log.info,
    **train_options,
) -> RetrainOutcome:
    """The whole retrain of one task. With min_new_labels > 0 (the schedule), it does nothing unless
    that many labels arrived since the active version was made."""
    try:
        with retrain_lock(settings, task):
            return _retrain_locked(settings, sessions, task, min_new_labels, progress, **train_options)
    except RetrainBusy as exc:
        return RetrainOutcome(task, "skipped", str(exc))


def _retrain_locked(settings, sessions, task, min_new_labels, progress, **train_options) -> RetrainOutcome:
    with sessions() as session:
        active = registry.active_versions(session, settings)[task]
        new = untrained_labels(session, task)
        labels = latest_labels(session, task)
    # The schedule waits for enough labels that no version has trained on; an explicit retrain
    # (min_new_labels 0) trains whenever there are labels.
    if new < min_new_labels:
        return RetrainOutcome(task, "skipped", f"{new} {task} labels no version has trained on; "
                                               f"{min_new_labels} needed")
    if not labels:
        return RetrainOutcome(task, "skipped", f"no {task} labels: import some with `reviews label`")
    train = [lb for lb in labels if not is_heldout(lb.text)]
    heldout = [lb for lb in labels if is_heldout(lb.text)]
    if not train or not heldout:
        return RetrainOutcome(task, "skipped", f"need labels on both sides of the split (train {len(train)}, "
                                               f"held out {len(heldout)})")
    progress(f"{task}: fine-tuning version {active.version} on {len(train)} labels, {len(heldout)} held out")
    started = time.monotonic()
    staging = Path(settings.model_dir) / task / f"staging-{os.getpid()}-{int(time.time())}"
    try:
        result = fine_tune(task, active.source, train, heldout, staging, settings, progress=progress, **train_options)
    except RetrainRefused as exc:
        return RetrainOutcome(task, "skipped", str(exc))
    return gate.register_and_gate(
        settings, sessions, task, staging, active.id, result.candidate_metrics, result.active_metrics, len(heldout),
        {"train": len(train), "heldout": len(heldout), "new": new,
         "labels_until": max(_stamp(lb.created_at) for lb in labels)},
        {"train_seconds": round(time.monotonic() - started, 1), "train_options": dict(train_options)}, progress)
