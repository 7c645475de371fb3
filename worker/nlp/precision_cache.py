"""The cache of `auto`'s choices (precision.py): REVIEWS_HOME/cache/precision.json, keyed by the
engine's revision, the CPU model name, torch version, torch threads, task and the model's shape. A missing, corrupt or
unreadable cache is ignored (and rewritten where it can be); a lock file makes processes that start
together measure one at a time."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from ..cbuild import locked  # noqa: F401  (precision.py takes it from here)
from .cpu import cpu_model_name

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Part of every key: raised when the engine's speed at some precision changes enough to change a
# choice (2: int8 through oneDNN's AMX kernel and fused passes, 1.3x faster on a Xeon with AMX,
# where bf16 had been measured faster; 3: native attention, 1.2x bf16 and int8 on an AVX-512
# EPYC; 4: attention on AMX's tiles; 5: gemm.cpp's int8 product, which makes int8 a candidate on
# AVX2-only CPUs, where fp32 had been cached; 6: gemm.cpp on AMX's int8 tiles, which oneDNN's product
# had been cached over; 7: NER's check by entity spans, which rejects int8 where the token check had
# let it through by a hair; 8: spans on fp32's near ties no longer count, which had held a random
# DistilBERT-base tagger at fp32), so that hosts measure again instead of keeping it.
ENGINE_REVISION = 8


def cache_path() -> Path:
    from ..config import home_dir

    return home_dir() / "cache" / "precision.json"


def model_shape(model) -> dict:
    """What the speed of a forward depends on, from the config (DistilBERT's names, else BERT's)."""
    c = model.config
    names = {"hidden": ("dim", "hidden_size"), "layers": ("n_layers", "num_hidden_layers"),
             "heads": ("n_heads", "num_attention_heads"), "intermediate": ("hidden_dim", "intermediate_size")}
    return {"type": getattr(c, "model_type", type(model).__name__)} | {
        k: next((getattr(c, n) for n in ns if getattr(c, n, None) is not None), None) for k, ns in names.items()}


def feed_forward_sizes(model) -> tuple[int, int]:
    """(hidden, intermediate) of the model's feed-forward, DistilBERT-base's where the config lacks them."""
    s = model_shape(model)
    hidden = s["hidden"] or 768
    return hidden, s["intermediate"] or 4 * hidden


def host_key() -> str:
    """What every measured choice holds for: the engine's revision, the CPU, torch, its threads."""
    return (f"engine={ENGINE_REVISION} | cpu={cpu_model_name()} | torch={torch.__version__} | "
            f"threads={torch.get_num_threads()}")


def cache_key(model, task: str) -> str:
    s = model_shape(model)
    return (f"{host_key()} | task={task} | {s['type']} hidden={s['hidden']} layers={s['layers']} heads={s['heads']} "
            f"intermediate={s['intermediate']}")


def read_cache(path: Path) -> dict:
    """The cache's entries by key; {} for a missing, unreadable or malformed file (never an error)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("precision cache %s unreadable (%s: %s); measuring again", path, type(exc).__name__, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        log.warning("precision cache %s has an unknown layout; measuring again", path)
        return {}
    return {k: v for k, v in data["entries"].items()
            if isinstance(v, dict) and isinstance(v.get("precision", v.get("choice")), str)}


def write_cache(path: Path, key: str, entry: dict) -> None:
    """Add one entry, keeping the others; written to a temporary file and renamed, so a reader never
    sees half a file. A failure to write is logged, not raised: the choice still holds for this run."""
    try:
        entries = read_cache(path)
        entries[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".precision-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.warning("cannot write the precision cache %s (%s); the next start measures again", path, exc)


def kernel_choice(what: str, measure, usable) -> str:
    """A kernel choice measured once per host and kept with the precision choices: `what` names it
    ("attention heads=12 head_dim=64"); measure() -> (choice, {candidate: seconds}) times the
    candidates; usable(choice) says whether a cached choice can still serve in this process (its
    kernel built and computes right here). Worker starts after the first pay nothing for it. In a
    file of their own, with its own lock: precision.choose measures (and builds engines that ask
    here) while it holds the precision cache's."""
    path = cache_path().with_name("kernel-choices.json")
    key = f"{host_key()} | kernel {what}"
    with locked(path):
        cached = read_cache(path).get(key, {}).get("choice")
        if cached is not None and usable(cached):
            log.info("%s: %s (measured before, %s)", what, cached, path)
            return cached
        choice, seconds = measure()
        write_cache(path, key, {"choice": choice, "ms": {k: round(1000 * t, 3) for k, t in seconds.items()}})
    return choice
