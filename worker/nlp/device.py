"""Which device and which precision a model runs at."""

from __future__ import annotations

import contextlib

import torch

from . import int8
from .cpu import DTYPES, cpu_float_precision, cpu_has_fast_bf16, cpu_has_vnni  # noqa: F401  (re-exported)


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
        if int8.available():
            return "int8"
    return cpu_float_precision()


def autocast(device: torch.device, precision: str):
    """Weights stay fp32 on CPU and matmuls run in bf16: LayerNorm and softmax keep fp32 accuracy."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
