"""`reviews distill`: the knowledge of a large, slow teacher (or an ensemble) in a small, fast student.

1. The texts: a reviews file (JSONL or CSV, gzip or not, read by the same hardened reader as
   `reviews enqueue`: a bad line is reported with its number and skipped) or the reviews stored in
   the database; with the human labels of the task where a text has one.
2. Each teacher's soft targets, cached and resumable (training/soft_targets.py).
3. The student (the active version, the bundled pretrained base with a new head, or a directory)
   trained on them: soft-target loss everywhere, label loss where there are labels, and DistilBERT's
   hidden-state cosine loss where teacher and student share vocabulary and width.
4. The result registered as a new version and put through the same gate as a retrain (gate.py).

Held-out labels (retrain.is_heldout) are never distilled on: the gate measures on them.
Knows nothing of Celery: worker/tasks.py wraps it, and `reviews distill --local` calls it directly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from . import gate, registry
from .config import Settings
from .gate import RetrainOutcome
from .retrain import RetrainBusy, is_heldout, latest_labels, retrain_lock

log = logging.getLogger(__name__)
SHOWN_REJECTIONS = 20


class DistillError(ValueError):
    """A request that cannot run (no texts, a student that does not fit); the message says why."""


@dataclass
class DistillRequest:
    """What `reviews distill` asks for; plain values, so it travels in a Celery message as a dict."""
    task: str
    teachers: list[str]
    data: str | None = None  # a reviews file on the machine that runs the distillation
    from_db: bool = False
    student: str = "active"  # active | base | a directory
    limit: int | None = None  # at most this many texts (the first ones)
    epochs: float = 2.0
    lr: float = 5e-5
    alpha: float = 0.5  # weight of the label loss where a text has a label
    temperature: float = 2.0
    # DistilBERT's hidden-state loss, where shapes allow. Off by default: it helps a student that starts
    # near the teacher's hidden space, and pulls one that does not away from the task (tests/test_distill.py).
    cosine_weight: float = 0.0
    case_markers: bool | None = None  # a base NER student: mark capitals (None: as the bundled default model)
    seed: int = 42

    def as_dict(self) -> dict:
        return asdict(self)


def read_texts(request: DistillRequest, settings: Settings, sessions, progress: Callable[[str], None]) -> list[str]:
    """The texts to distill on, in order, each once."""
    texts: list[str] = []
    if request.data:
        from .inputs import InputError, Rejected, detect_format, read_records

        path = Path(request.data).expanduser()
        if not path.is_file():
            raise DistillError(f"--data {request.data}: no such file")
        rejected = 0
        try:
            with open(path, "rb") as raw:
                for item in read_records(raw, detect_format(path.name), settings.max_line_bytes):
                    if isinstance(item, Rejected):
                        rejected += 1
                        if rejected <= SHOWN_REJECTIONS:
                            progress(f"{path.name}:{item.line_no}: skipped: {item.reason}")
                        continue
                    texts.append(item.text)
                    if request.limit and len(texts) >= request.limit:
                        break
        except InputError as exc:
            raise DistillError(f"--data {request.data}: {exc}") from exc
        if rejected:
            progress(f"{path.name}: {rejected:,} line(s) skipped in all, {len(texts):,} texts read")
    if request.from_db:
        from .schema import Review

        with sessions() as session:
            query = select(Review.text).order_by(Review.id)
            if request.limit:
                query = query.limit(request.limit)
            texts += session.scalars(query).all()
    return list(dict.fromkeys(texts))


def distill(settings: Settings, sessions: sessionmaker[Session], request: DistillRequest,
            progress: Callable[[str], None] = log.info) -> RetrainOutcome:
    """The whole distillation of one task; one at a time per task, with retraining (the same lock)."""
    if request.task not in ("sentiment", "ner"):
        raise DistillError(f"task must be sentiment or ner, got {request.task!r}")
    if not request.teachers:
        raise DistillError("name at least one teacher (--teacher DIR_OR_ID)")
    try:
        with retrain_lock(settings, request.task):
            return _distill_locked(settings, sessions, request, progress)
    except RetrainBusy as exc:
        return RetrainOutcome(request.task, "skipped", str(exc))


def _distill_locked(settings, sessions, request: DistillRequest, progress) -> RetrainOutcome:
    from .training import soft_targets
    from .training.students import StudentError, load_student, save_half, train_student
    from .training.train import TrainConfig

    task = request.task
    with sessions() as session:
        active = registry.active_versions(session, settings)[task]
        labels = latest_labels(session, task)
    heldout = [lb for lb in labels if is_heldout(lb.text)]
    barred = {lb.text for lb in heldout}
    gold = {lb.text: lb for lb in labels if lb.text not in barred}
    answers: dict[str, object] = {t: (lb.sentiment if task == "sentiment" else lb.entities) for t, lb in gold.items()}
    texts = read_texts(request, settings, sessions, progress) + list(answers)
    texts = [t for t in dict.fromkeys(texts) if t not in barred]
    if not texts:
        raise DistillError("no texts to distill on: give --data FILE or --from-db with stored reviews")
    try:  # before the teacher's hours of work: a student that cannot be trained is said at once
        student = load_student(task, request.student, active.source, request.case_markers)
    except StudentError as exc:
        raise DistillError(str(exc)) from exc
    progress(f"{task}: distilling {len(request.teachers)} teacher(s) into a student on {len(texts):,} texts "
             f"({sum(t in gold for t in texts):,} with a human label, {len(heldout):,} held out for the gate)")
    started = time.monotonic()
    targets = soft_targets.for_teachers(task, request.teachers, texts, settings.engine_options(), progress)
    teacher_seconds = time.monotonic() - started
    config = TrainConfig(epochs=request.epochs, lr=request.lr, alpha=request.alpha, temperature=request.temperature,
                         seed=request.seed, device=settings.device, log_every=20,
                         max_length=min(256, student.model.config.max_position_embeddings))
    stats = train_student(student, task, texts, answers, targets, request.teachers, config, request.cosine_weight,
                          progress)
    staging = Path(settings.model_dir) / task / f"staging-{os.getpid()}-{int(time.time())}"
    save_half(student.model, student.tokenizer, staging)
    candidate = active_metrics = None
    if heldout:
        candidate = gate.measure(task, str(staging), heldout, settings)
        active_metrics = gate.measure(task, active.source, heldout, settings)
    return gate.register_and_gate(
        settings, sessions, task, staging, active.id, candidate, active_metrics, len(heldout),
        {"texts": len(texts), "labeled": sum(t in answers for t in texts), "heldout": len(heldout)},
        {"distill": request.as_dict(),
         "teacher_seconds": round(teacher_seconds, 1), "train": stats}, progress)
