"""A teacher's sentiment probabilities over a build's training texts, in one file.

A large teacher fine-tuned for the build (worker/training/teacher.py) runs once, on whatever machine
has the GPU, and leaves this file; `python -m worker.training.build sentiment --teacher-targets FILE`
then trains the student on it anywhere, without the teacher's weights. Each text is found by a hash
of its exact characters, so the file holds no review text and the order of the texts does not matter;
a text the file does not cover is an error that says how many, never a silent label-only row.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch

from .soft_targets import TeacherTargets, ensemble_sentiment

FORMAT = "reviews-teacher-targets/1"


def text_key(text: str) -> int:
    """The first 8 bytes of the text's SHA-256, as a signed 64-bit integer."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def save(path: Path | str, task: str, classes: Sequence[str], texts: Sequence[str], probs: torch.Tensor,
         about: dict | None = None) -> Path:
    """Write one row of probabilities (classes in `classes` order) per text; `about` describes the
    teacher (its base, recipe and held-out metrics) for the student's model card."""
    if probs.shape != (len(texts), len(classes)):
        raise ValueError(f"probabilities of shape {tuple(probs.shape)} for {len(texts)} texts and {len(classes)} classes")
    keys: dict[int, int] = {}
    for i, text in enumerate(texts):
        keys.setdefault(text_key(text), i)  # a repeated text keeps its first row
    rows = list(keys.values())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "task": task, "classes": list(classes),
                "keys": torch.tensor(list(keys), dtype=torch.int64), "probs": probs[rows].half(),
                "about": about or {}}, path)
    return path


def load(path: Path | str, task: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--teacher-targets {path}: no such file")
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises several kinds for a file that is not its own
        raise ValueError(f"--teacher-targets {path}: not a targets file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"--teacher-targets {path}: not a {FORMAT} file")
    if payload["task"] != task:
        raise ValueError(f"--teacher-targets {path}: targets for {payload['task']}, not {task}")
    return payload


def log_probs(paths: Sequence[Path | str], task: str, texts: Sequence[str], classes: Sequence[str]) -> list[torch.Tensor]:
    """Per text, the log of the files' mean probabilities in `classes` order (several files: an ensemble),
    as soft_targets.ensemble_sentiment averages the teachers `reviews distill` runs."""
    teachers = []
    for path in paths:
        payload = load(path, task)
        index = {int(k): i for i, k in enumerate(payload["keys"].tolist())}
        rows = [index.get(text_key(t)) for t in texts]
        missing = sum(r is None for r in rows)
        if missing:
            raise ValueError(f"--teacher-targets {path}: {missing:,} of {len(texts):,} training texts have no targets "
                             "(were they computed for other data or another recipe?)")
        for name in classes:
            if name not in payload["classes"]:
                raise ValueError(f"--teacher-targets {path}: no class {name!r} (it has {payload['classes']})")
        teachers.append(TeacherTargets(payload["classes"], sentiment=payload["probs"].float()[rows]))
    return ensemble_sentiment(teachers, list(classes))
