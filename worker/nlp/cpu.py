"""What this CPU's matrix products are good at, read from its flags: the facts that device.py and
int8.py both need, kept apart so that neither imports the other; and how busy other processes keep
the CPUs (precision.py does not trust timings taken meanwhile)."""

from __future__ import annotations

import contextlib
import logging
import os
import time

import torch

from ..host import cpu_flags, cpu_model_name  # noqa: F401  (read here by device.py, int8.py)

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run several times faster than fp32 there."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_float_precision() -> str:
    """The fastest float precision of this CPU's matrix products: bf16 where it is fast, else fp32."""
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cpu_has_vnni() -> bool:
    """int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX int8)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def fastest(runs: dict, rounds: int = 5) -> tuple:
    """Which of `runs` (name -> function of no arguments) is fastest here: each run once to warm up
    (oneDNN builds its kernels for a shape on the first call), then `rounds` rounds, interleaved so
    that a noisy, shared host slows all alike. Returns (the name, {name: median seconds})."""
    for run in runs.values():
        run()
    times: dict = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return min(median, key=median.get), median


class Busy:
    """What others_busy found: the share of the CPUs other processes used, or None (unknown)."""

    share: float | None = None


def cpu_seconds_busy() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        if fields[0] != "cpu":
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def others_busy():
    """The share of this machine's CPU time that *other* processes used during the block (all CPUs'
    busy time less this process's own), in `.share`; None where it cannot be read or the block was
    too short to tell (the counters tick every 10 ms)."""
    result = Busy()
    busy0, own0, wall0 = cpu_seconds_busy(), os.times(), time.monotonic()
    yield result
    busy1, own1, wall = cpu_seconds_busy(), os.times(), time.monotonic() - wall0
    if busy0 is None or busy1 is None or wall < 0.25:
        return
    own = (own1.user + own1.system) - (own0.user + own0.system)
    result.share = max(0.0, (busy1 - busy0) - own) / (wall * (os.cpu_count() or 1))
