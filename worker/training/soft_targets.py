"""A teacher's soft targets for `reviews distill`, computed once and cached on disk.

A large teacher on a CPU takes hours over tens of thousands of reviews, so its outputs are saved in
parts of PART_SIZE reviews as they come: a run that stops (Ctrl-C, a lost trainer) resumes at the
first missing part, and a second distillation from the same teacher on the same data (another
student, another seed) runs no teacher at all. The cache key is the task, the teacher's files and the
exact texts, so a changed teacher or data set never reads stale targets.

The teacher runs through the service's own engine (worker/nlp): long reviews read in windows, labels
mapped to ours (an imported model's NEGATIVE/LABEL_0, B-PERSON...), precision measured as in serving.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..config import home_dir
from ..nlp.options import EngineOptions
from .losses import MeanWordTargets, WordTargets

PART_SIZE = 256  # reviews per cached part: a stopped run loses at most this much teacher work


@dataclass
class TeacherTargets:
    """One teacher's outputs over all texts, classes by our names."""
    classes: list[str]
    sentiment: torch.Tensor | None = None  # [texts, classes] probabilities
    ner: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per text: word spans [words, 2], probs [words, classes]


def fingerprint(source: str) -> str:
    """What identifies a teacher's weights: a directory's file names, sizes, times and config; a hub id as is."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return "id:" + source
    digest = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    if (path / "config.json").is_file():
        digest.update((path / "config.json").read_bytes())
    return digest.hexdigest()


def texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for t in texts:
        raw = t.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "big") + raw)
    return digest.hexdigest()


def cache_dir(root: Path, task: str, teacher: str, texts: Sequence[str], options: EngineOptions) -> Path:
    key = json.dumps({"task": task, "teacher": fingerprint(teacher), "texts": texts_digest(texts),
                      "max_length": options.max_length, "stride": options.stride, "max_chars": options.max_chars,
                      "precision": options.precision, "window_rule": options.window_rule}, sort_keys=True)
    return root / f"{task}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def _load_engine(task: str, teacher: str, options: EngineOptions):
    from ..nlp.ner import load_ner
    from ..nlp.sentiment import load_sentiment

    return (load_sentiment if task == "sentiment" else load_ner)(teacher, options)


def _run_part(task: str, engine, texts: list[str]) -> dict:
    if task == "sentiment":
        return {"classes": list(engine.labels), "probs": engine.probabilities(texts).half()}
    words = engine.word_probabilities(texts)
    return {"classes": list(engine.tags),
            "spans": [torch.tensor(spans, dtype=torch.int64).reshape(-1, 2) for spans, _ in words],
            "probs": [p.half() for _, p in words]}


def compute(task: str, teacher: str, texts: Sequence[str], options: EngineOptions, cache_root: Path,
            progress: Callable[[str], None] = print, label: str = "teacher") -> TeacherTargets:
    """The teacher's targets for every text, from the cache where it has them; progress with an ETA."""
    directory = cache_dir(cache_root, task, teacher, texts, options)
    directory.mkdir(parents=True, exist_ok=True)
    parts = [(k, k * PART_SIZE, min(len(texts), (k + 1) * PART_SIZE)) for k in range(math.ceil(len(texts) / PART_SIZE))]
    todo = [p for p in parts if not (directory / f"part-{p[0]:05d}.pt").exists()]
    cached = len(texts) - sum(b - a for _, a, b in todo)
    if cached:
        progress(f"{label}: {cached:,} of {len(texts):,} reviews' targets cached in {directory}")
    if todo:
        engine = _load_engine(task, teacher, options)
        started, done, total = time.monotonic(), 0, sum(b - a for _, a, b in todo)
        for k, a, b in todo:
            payload = _run_part(task, engine, list(texts[a:b]))
            tmp = directory / f"part-{k:05d}.tmp"
            torch.save(payload, tmp)
            os.replace(tmp, directory / f"part-{k:05d}.pt")  # a part is there whole or not at all
            done += b - a
            rate = done / max(time.monotonic() - started, 1e-9)
            progress(f"{label}: {cached + done:,}/{len(texts):,} reviews ({(cached + done) / len(texts):.0%}), "
                     f"{rate:.1f} reviews/s, ETA {_duration((total - done) / rate)}")
    return _read(directory, task, parts)


def for_teachers(task: str, teachers: Sequence[str], texts: Sequence[str], options: EngineOptions,
                 progress: Callable[[str], None] = print) -> list[TeacherTargets]:
    """Each teacher's targets, in order, through the one cache under REVIEWS_HOME."""
    root = home_dir() / "cache" / "distill"
    return [compute(task, teacher, texts, options, root, progress, label=f"teacher {k + 1}/{len(teachers)} ({teacher})")
            for k, teacher in enumerate(teachers)]


def _read(directory: Path, task: str, parts) -> TeacherTargets:
    classes: list[str] | None = None
    probs, spans = [], []
    for k, _, _ in parts:
        payload = torch.load(directory / f"part-{k:05d}.pt", weights_only=True)
        if classes is not None and payload["classes"] != classes:
            raise ValueError(f"{directory}: cached parts disagree on the teacher's classes; delete the folder")
        classes = payload["classes"]
        if task == "sentiment":
            probs.append(payload["probs"].float())
        else:
            probs += [p.float() for p in payload["probs"]]
            spans += payload["spans"]
    if task == "sentiment":
        return TeacherTargets(classes or [], sentiment=torch.cat(probs) if probs else torch.zeros(0, 2))
    return TeacherTargets(classes or [], ner=list(zip(spans, probs)))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _columns(teacher_classes: list[str], student_classes: list[str], probs: torch.Tensor) -> torch.Tensor:
    """Probabilities in the student's class order; a class the teacher lacks gets a tiny floor, then
    each row is renormalised (a log of zero would make the KL term infinite)."""
    index = {name: i for i, name in enumerate(teacher_classes)}
    out = torch.full((probs.shape[0], len(student_classes)), 1e-6)
    for j, name in enumerate(student_classes):
        if name in index:
            out[:, j] = probs[:, index[name]].clamp(min=1e-6)
    return out / out.sum(-1, keepdim=True)


def ensemble_sentiment(teachers: list[TeacherTargets], student_classes: list[str]) -> list[torch.Tensor]:
    """Per text, the log of the teachers' mean probabilities in the student's class order."""
    mean = torch.stack([_columns(t.classes, student_classes, t.sentiment) for t in teachers]).mean(0)
    return list(mean.log())


def ensemble_ner(teachers: list[TeacherTargets], student_classes: list[str]) -> list[MeanWordTargets]:
    """Per text, the teachers' word targets in the student's tag order, averaged per student word."""
    return [MeanWordTargets([WordTargets([tuple(s) for s in t.ner[i][0].tolist()],
                                         _columns(t.classes, student_classes, t.ner[i][1]).log())
                             for t in teachers]) for i in range(len(teachers[0].ner))]
