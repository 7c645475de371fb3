"""Which device and which precision a model runs at."""

from __future__ import annotations

import contextlib
import threading

import torch

from .cpu import DTYPES, cpu_float_precision, cpu_has_fast_bf16, cpu_has_vnni  # noqa: F401  (re-exported)


def pick_device(setting: str = "auto") -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("REVIEWS_DEVICE=cuda but no CUDA device is visible to torch")
        return torch.device("cuda")
    return torch.device("cpu")


def pick_precision(setting: str, device: torch.device, task: str | None = None) -> str:
    """The precision a model runs at, as far as it can be told without the model.

    "auto" on CUDA: bf16 where the GPU supports it, else fp16. "auto" on CPU: the float precision
    of the CPU's flags (bf16 with AVX-512 BF16 or AMX, else fp32). Inference models loaded with
    "auto" on CPU are then given the precision measured fastest on them among fp32, bf16 and int8
    (precision.choose, called by loading.load): whether int8 beats bf16 depends on more than flags
    (it ran 1.3-1.6x bf16 on an AVX-512 EPYC with VNNI, 0.55x on a Xeon with AMX).
    `task=None` (training) never gets int8; nor does any caller of this function.
    """
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return cpu_float_precision()


def autocast(device: torch.device, precision: str):
    """Weights stay fp32 on CPU and matmuls run in bf16: LayerNorm and softmax keep fp32 accuracy."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


_thread = threading.local()


def thread_stream(device: torch.device):
    """A context that runs CUDA work on this thread's own stream (elsewhere: nothing).

    A worker on the threads pool runs several batches at once in one process, sharing its models:
    while one thread waits for its batch's kernels or its database write, another tokenizes or
    queues. On one shared stream a thread reading its results back would wait for every thread's
    queued kernels too; on its own it waits for its own."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    stream = getattr(_thread, "stream", None)
    if stream is None or stream.device != device:
        stream = _thread.stream = torch.cuda.Stream(device)
    return torch.cuda.stream(stream)
