"""Shared pieces of the benchmarks: the real reviews, the models to measure, timing, agreement."""

from __future__ import annotations

import gzip
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REVIEWS_DATA_DIR", ROOT.parent / "shared" / "data"))
UNSUP = DATA / "imdb" / "unsup.jsonl.gz"
TRAIN = DATA / "imdb" / "train.jsonl.gz"
BUNDLED = ROOT / "worker" / "models"
CACHE = Path(os.environ.get("REVIEWS_BENCH_CACHE", Path(tempfile.gettempdir()) / "reviews-bench-models"))


def read_jsonl_gz(path: Path, limit: int | None = None, skip: int = 0) -> list[dict]:
    out: list[dict] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for k, line in enumerate(f):
            if k < skip:
                continue
            out.append(json.loads(line))
            if limit is not None and len(out) == limit:
                break
    return out


def real_reviews(n: int, skip: int = 0) -> list[dict]:
    """The first n unlabeled IMDb reviews (after `skip`): real traffic, the same on every run."""
    if not UNSUP.exists():
        raise SystemExit(f"real review data not found at {UNSUP} (set REVIEWS_DATA_DIR)")
    return read_jsonl_gz(UNSUP, n, skip)


def model_dirs(size: str) -> dict[str, str]:
    """Directories of the sentiment and NER models to measure.

    bundled: the project's default models (worker/models); base / small: random DistilBERTs of that
    shape, made once and cached (speed does not depend on the weights).
    """
    if size == "bundled":
        dirs = {task: BUNDLED / task for task in ("sentiment", "ner")}
        missing = [str(d) for d in dirs.values() if not (d / "config.json").is_file()]
        if missing:
            raise SystemExit(f"bundled models missing: {', '.join(missing)} (use --model-size base)")
        return {k: str(v) for k, v in dirs.items()}
    from bench.random_models import save_random

    return {task: str(save_random(CACHE / size / task, task, size)) for task in ("sentiment", "ner")}


def count_params(path: str) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
        return sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel")
                   else _prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def chunks(items: list, size: int):
    for k in range(0, len(items), size):
        yield items[k : k + size]


def machine() -> str:
    cpu = "unknown CPU"
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = ", ".join(f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in have)
    except OSError:
        pass
    import torch

    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu} ({os.cpu_count()} cores; {flags or 'no AVX-512'}){mem}{gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {__import__('transformers').__version__}, torch threads {torch.get_num_threads()}")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def entity_agreement(fast: list[list], ref: list[list]) -> tuple[float, float]:
    """(share of reference entities the fast path finds exactly, share of the fast path's entities
    that the reference has): exact (label, start, end) matches."""
    a = {(i, e.label, e.start, e.end) for i, es in enumerate(fast) for e in es}
    b = {(i, e.label, e.start, e.end) for i, es in enumerate(ref) for e in es}
    both = len(a & b)
    return (both / len(b) if b else 1.0), (both / len(a) if a else 1.0)


def label_agreement(fast: list, ref: list) -> float:
    return sum(x.label == y.label for x, y in zip(fast, ref)) / max(1, len(ref))


def timed_write(sessions, facts, sentiments, entities, sentiment_version: int, ner_version: int,
                rollups_on: bool = True) -> float:
    """Milliseconds of one `results.write` of a batch and its commit; the results alone, without
    the rollups' deltas, when `rollups_on` is False (the benchmarks' "off" arm)."""
    import time

    from worker import results

    with sessions() as s:
        started = time.perf_counter()
        results.write(s, facts, sentiments, entities, sentiment_version, ner_version, with_rollups=rollups_on)
        s.commit()
        return 1000 * (time.perf_counter() - started)
