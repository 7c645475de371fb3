"""The promotion gate that every new version passes, whether from `reviews retrain` or `reviews distill`:
candidate and active are measured on the same held-out labels, through the engine that serving runs,
and the candidate becomes active only if it is not worse by more than REVIEWS_PROMOTE_TOLERANCE."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from . import registry
from .config import Settings
from .schema import Label


@dataclass
class RetrainOutcome:
    task: str
    status: str  # promoted | rejected | candidate (nothing to gate on) | skipped
    reason: str
    version: int | None = None
    metrics: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"task": self.task, "status": self.status, "reason": self.reason, "version": self.version,
                "metrics": self.metrics}


def gate_metric(task: str) -> str:
    return "accuracy" if task == "sentiment" else "f1"


def measure(task: str, source: str, heldout: list[Label], settings: Settings) -> dict:
    """The model at `source` on held-out labels, at serving's engine options (precision, windows)."""
    from .nlp.ner import load_ner
    from .nlp.sentiment import load_sentiment
    from .nlp.types import SENTIMENT_LABELS
    from .training import evaluate
    from .training.data import SentimentExample

    options = settings.engine_options()
    if task == "sentiment":
        gold = [SentimentExample(lb.text, SENTIMENT_LABELS.index(lb.sentiment)) for lb in heldout]
        return evaluate.evaluate_sentiment(load_sentiment(source, options), gold)
    predicted = [{(e.start, e.end, e.label) for e in ents}
                 for ents in load_ner(source, options).predict([lb.text for lb in heldout])]
    gold_spans = [{(e["start"], e["end"], e["label"]) for e in lb.entities} for lb in heldout]
    return evaluate.ner_metrics(gold_spans, predicted)


def register_and_gate(settings: Settings, sessions: sessionmaker[Session], task: str, staging: Path,
                      parent_id: int | None, candidate: dict | None, active: dict | None, n_heldout: int,
                      train_counts: dict, metrics: dict, progress: Callable[[str], None]) -> RetrainOutcome:
    """Move the trained files from `staging` to the next version's folder, register it, and promote
    or reject it by the gate. Without held-out labels (candidate None) it stays a candidate, for a
    person to check and promote with `reviews models promote`."""
    with sessions() as session:
        version = registry.next_version(session, task)
        final_dir = staging.with_name(str(version))
        if final_dir.exists():
            shutil.rmtree(final_dir)  # left by a run that died before registering it
        staging.rename(final_dir)
        key = gate_metric(task)
        metrics = {**metrics, "candidate": candidate, "active": active, "gate_metric": key}
        mv = registry.register(session, task, str(final_dir), "candidate", parent_id=parent_id,
                               train_counts=train_counts, metrics=metrics)
        if candidate is None or active is None:
            mv.note = (f"no held-out {task} labels to compare it with the active version: check it "
                       f"(`reviews evaluate {task} FILE --model {final_dir}`), then "
                       f"`reviews models promote {task} {mv.version}`")
            status = "candidate"
        else:
            cand, act, tolerance = candidate[key], active[key], settings.promote_tolerance
            if cand >= act - tolerance:
                registry.promote(session, task, mv.version,
                                 note=f"{key} {cand:.4f} vs active {act:.4f} on {n_heldout} held-out labels")
                status = "promoted"
            else:
                mv.status = "rejected"
                mv.note = (f"{key} {cand:.4f} is worse than active {act:.4f} on {n_heldout} held-out labels "
                           f"by more than the tolerance {tolerance}")
                status = "rejected"
        session.commit()
        progress(f"{task}: version {mv.version} {status}: {mv.note}")
        return RetrainOutcome(task, status, mv.note, mv.version, metrics)
