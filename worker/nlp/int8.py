"""int8 matrix products for CPU inference: int8 weights per output channel, activations quantized
per token at run time, int32 accumulation in VNNI kernels (torch._int_mm).

Why per token: torch.ao's dynamic quantization uses one scale for a whole batch, so one token with
large activations coarsens every other token's; on the bundled sentiment model it agreed with fp32
on 96.3% of labels. One scale per token (and per weight row) agreed on 99.5-99.7% (bench/RESULTS.md).

The quantize and dequantize steps are elementwise passes over the activations; in eager torch they
take several passes each and cost more than the int8 product saves, so each is one C++ kernel
(int8_kernels.cpp, built once per host by native.py). Where it cannot be built (no C++ compiler in
the image), `available()` is False and "auto" precision does not pick int8.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import torch
from torch import nn

from . import native
from .cpu import DTYPES, cpu_float_precision

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def available() -> bool:
    """True when torch has a CPU int8 product and the quantize/dequantize kernels load here (built
    on first use and checked now, so a worker finds out at load time, not in a batch)."""
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        native.library()
        dtype = DTYPES[cpu_float_precision()]  # the activations' dtype under int8
        gen = torch.Generator().manual_seed(0)
        x, w = torch.randn(24, 32, generator=gen), torch.randn(40, 32, generator=gen)
        col_scale = w.abs().amax(1) / 127
        w_int = (w / col_scale[:, None]).round()
        weights_t, w = w_int.to(torch.int8).t().contiguous(), w_int * col_scale[:, None]
        bias, weight_sum = torch.zeros(40), w.sum(1)
        with torch.inference_mode():  # products of about +-6
            xq, xs = native.quantize(x.to(dtype))
            y = native.dequantize(torch._int_mm(xq, weights_t), xs, col_scale, bias, dtype)
            cq, cs, mid = native.quantize((x + 1).to(dtype), centered=True)
            z = native.dequantize(torch._int_mm(cq, weights_t), cs, col_scale, bias, dtype, mid, weight_sum)
        right = torch.allclose(y.float(), x @ w.t(), atol=0.5) and torch.allclose(z.float(), (x + 1) @ w.t(), atol=0.5)
        if not right:
            raise RuntimeError("the int8 kernels gave wrong results")
    except Exception as exc:  # no compiler, an unsupported platform, ...: fall back, say why once
        log.warning("int8 inference unavailable (%s: %s); using bf16/fp32", type(exc).__name__, exc)
        return False
    return True


class Int8Linear(nn.Module):
    """A drop-in replacement for an nn.Linear at inference: same input and output shapes and dtype."""

    def __init__(self, linear: nn.Linear, centered: bool = False):
        super().__init__()
        w = linear.weight.detach().float()
        col_scale = w.abs().amax(1).clamp(min=1e-8) / 127
        w_int = (w / col_scale[:, None]).round().clamp(-127, 127)
        self.register_buffer("col_scale", col_scale)
        # (in, out), contiguous: the layout _int_mm reads fastest as its second operand.
        self.register_buffer("weight_t", w_int.to(torch.int8).t().contiguous())
        self.register_buffer("weight_sum", (w_int * col_scale[:, None]).sum(1))  # of the weights as quantized
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(w.shape[0])
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.centered = centered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        if self.centered:
            q, scale, mid = native.quantize(rows, centered=True)
            y = native.dequantize(torch._int_mm(q, self.weight_t), scale, self.col_scale, self.bias, x.dtype, mid,
                                  self.weight_sum)
        else:
            q, scale = native.quantize(rows)
            y = native.dequantize(torch._int_mm(q, self.weight_t), scale, self.col_scale, self.bias, x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kind = "centered per token" if self.centered else "per token"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 {kind}"


def quantize_linears(model: nn.Module, keep: tuple[str, ...] = ("classifier",),
                     centered: tuple[str, ...] = ("lin2",)) -> int:
    """Replace the model's Linear layers by Int8Linear, except those whose name ends with one of
    `keep` (the classification head: small, and where rounding moves the output directly).
    Layers named in `centered` (DistilBERT's feed-forward output, fed by GELU) quantize their input
    around its midrange. Returns how many were replaced."""
    from .fast import replace_linears

    available()  # build or load the kernels now, not in the first batch
    return replace_linears(model, lambda linear, full: Int8Linear(linear, centered=full.endswith(centered)), keep)


def product_ratio(hidden: int, intermediate: int, rows: int) -> float:
    """int8's time over fp32's for one feed-forward product (rows x hidden -> intermediate), the middle
    of three after a warm-up. Without VNNI, torch._int_mm has no fast kernel (30-70x fp32): a timed
    batch found that out in 38 s of a first start on an AVX2-only host, where this takes about a
    second (bench/RESULTS.md, "Other runtimes on the AVX2-only host")."""
    linear = nn.Linear(hidden, intermediate)
    quantized = Int8Linear(linear)
    x = torch.randn(rows, hidden, generator=torch.Generator().manual_seed(0))
    x_engine = x.to(DTYPES[cpu_float_precision()])  # the activations' dtype under int8

    def middle_of_three(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return sorted(times)[1]

    with torch.inference_mode():
        return middle_of_three(lambda: quantized(x_engine)) / max(middle_of_three(lambda: linear(x)), 1e-9)
