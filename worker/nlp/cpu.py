"""What this CPU's matrix products are good at, read from its flags: the facts that device.py and
int8.py both need, kept apart so that neither imports the other."""

from __future__ import annotations

from functools import lru_cache

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run several times faster than fp32 there."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_float_precision() -> str:
    """The fastest float precision of this CPU's matrix products: bf16 where it is fast, else fp32."""
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cpu_has_vnni() -> bool:
    """int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX int8)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpu_flags())
