"""Which device and which precision a model runs at."""

from __future__ import annotations

import contextlib
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


def pick_device(setting: str = "auto") -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("REVIEWS_DEVICE=cuda but no CUDA device is visible to torch")
        return torch.device("cuda")
    return torch.device("cpu")


def pick_precision(setting: str, device: torch.device, task: str | None = None) -> str:
    """The precision a model runs at. "auto" on CPU: int8 for the sentiment model where the CPU has
    int8 dot products (it agreed with fp32 on 99.5-99.7% of labels and ran 1.34-1.55x bf16 on a
    DistilBERT-base), bf16 for NER (int8 moved 2% of entity spans), fp32 on CPUs without fast bf16.
    `task=None` (training) never gets int8.
    """
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if task == "sentiment" and cpu_has_vnni():
        from . import int8

        if int8.available():
            return "int8"
    return cpu_float_precision()


def autocast(device: torch.device, precision: str):
    """Weights stay fp32 on CPU and matmuls run in bf16: LayerNorm and softmax keep fp32 accuracy."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
