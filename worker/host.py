"""Facts about this host's CPU that several parts need, without importing torch: what a compiled
kernel (cbuild.py) and a cached speed measurement (nlp/precision_cache.py) are valid for."""

from __future__ import annotations

import platform
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_flags() -> set[str]:
    """The flags /proc/cpuinfo lists for this CPU (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


@lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's model name ("AMD EPYC 9R14", "Intel(R) Xeon(R) Platinum 8488C"): what a cached
    speed measurement is valid for (precision.py)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
