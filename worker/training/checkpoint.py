"""Save and resume a training run, so that a build step longer than a session (a large teacher on a
CPU, a student's second epoch) can stop anywhere and go on where it was.

A checkpoint holds everything the loop in train.fit draws on: the weights, the optimizer and schedule,
the step, the batch order of the current epoch and where in it the run was, and every random state
(batch shuffling, dropout). A resumed run therefore takes the same steps as one that never stopped:
tests/test_training.py holds the final weights equal. It is written whole or not at all (a temporary
file, then a rename), and fit deletes it when the run ends.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Progress:
    """Where a run is: `pos` batches into `batches`, the current epoch's order."""
    batches: list[list[int]]
    pos: int = 0
    step: int = 0
    seen: int = 0
    tokens: int = 0
    seconds: float = 0.0  # training time before this process, for the reported rate


def fit_options(directory: Path, name: str, recipe: str, minutes: float, say=print) -> dict:
    """fit's checkpoint arguments for a command-line run: a file in `directory` named by `name` and a
    hash of `recipe` (everything that shapes the run: options, base, data), so that the same command
    resumes a stopped run and a changed one starts afresh; saved every `minutes` (0: never)."""
    if not minutes:
        return {}
    path = directory / f"{name}-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.ckpt"
    say(f"checkpoint every {minutes:g} min: {path} (run the same command again to resume)")
    return {"checkpoint": path, "checkpoint_every_s": minutes * 60}


def save(path: Path, model, optimizer, scheduler, rng: random.Random, progress: Progress, recent: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng.getstate(), "python_rng": random.getstate(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "progress": progress.__dict__, "recent": recent}, tmp)
    os.replace(tmp, path)


def resume(path: Path | None, model, optimizer, scheduler, rng: random.Random) -> tuple[Progress, list[float]] | None:
    """Load the checkpoint at `path` into the run's objects; None where there is none."""
    if path is None or not path.is_file():
        return None
    # weights_only=False: the file holds Python random states (tuples); it is one this code wrote
    # under REVIEWS_HOME or the build's own folder, never a downloaded one.
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng.setstate(state["rng"])
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Progress(**state["progress"]), state["recent"]


def remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
