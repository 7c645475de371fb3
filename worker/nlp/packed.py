"""bf16 Linear layers for CPU inference with their weights packed once, in oneDNN's own layout.

A bf16 `nn.Linear` on the CPU hands its (out, in) weight to oneDNN, which reorders it into the
blocked layout its AMX / AVX-512 BF16 kernels read, on every call. Packing once at load time
(`torch.ops.mkldnn._reorder_linear_weight`, what torch.compile's freezing pass does for CPU
inference) leaves each call only the product: 1.06-1.26x the engine's throughput on a Xeon with AMX
(bench/RESULTS.md, "The Xeon with AMX"). Letting oneDNN apply the feed-forward's GELU to the
product (a post-op) measured no faster there, so GELU stays a pass of its own.

Where torch was built without oneDNN, or the packed product disagrees with the plain one here,
`available()` is False and the engine keeps plain Linear layers.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from torch import nn

log = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    """A drop-in replacement for a bf16 nn.Linear at inference: same input and output shapes and dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        if weight.dtype != torch.bfloat16:  # packing keeps the dtype: an fp32 layer would stay fp32
            raise ValueError(f"PackedLinear packs bf16 weights, not {weight.dtype}")
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, None))
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.weight, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed bf16"


@lru_cache(maxsize=1)
def available() -> bool:
    """True when this torch packs bf16 weights for oneDNN and the packed product equals the plain
    one here; checked once, on shapes no two of which are equal."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        linear = nn.Linear(48, 40).to(torch.bfloat16)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(40, 48, generator=gen))
        x = torch.randn(3, 24, 48, generator=gen).to(torch.bfloat16)
        with torch.inference_mode():
            want, got = linear(x).float(), PackedLinear(linear)(x).float()
        if not torch.allclose(got, want, rtol=0.02, atol=0.1):
            raise RuntimeError("packed bf16 products gave wrong results")
    except Exception as exc:  # an old or unusual build: plain Linear layers, say why once
        log.warning("packed bf16 weights unavailable (%s: %s); using plain Linear layers", type(exc).__name__, exc)
        return False
    return True


def pack_linears(model: nn.Module, keep: tuple[str, ...] = ("classifier",)) -> int:
    """Replace the Linear layers of `model` (stored in bf16: fast.cast_linears) by PackedLinear,
    except those whose name ends with one of `keep` (the classification head, and pre_classifier: a
    few rows, nothing to gain). Returns how many were replaced."""
    from .fast import replace_linears

    return replace_linears(model, lambda linear, _: PackedLinear(linear), keep)
