"""The Triton kernels of gpu_layer.py, in a module of their own so that only a CUDA worker imports
Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_norm_kernel(res, res_stride, a, a_stride, w, b, h, x, n, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < n
    s = (tl.load(res + row * res_stride + cols, mask=inside, other=0.0).to(tl.float32)
         + tl.load(a + row * a_stride + cols, mask=inside, other=0.0).to(tl.float32))
    mean = tl.sum(s, axis=0) / n
    d = tl.where(inside, s - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / n + eps)
    y = d * rstd * tl.load(w + cols, mask=inside, other=0.0) + tl.load(b + cols, mask=inside, other=0.0)
    tl.store(h + row * n + cols, y, mask=inside)
    tl.store(x + row * n + cols, y.to(x.dtype.element_ty), mask=inside)


def add_norm(residual: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
             h: torch.Tensor, x: torch.Tensor) -> None:
    """h = LayerNorm(residual + a), x = h in x's dtype, one program per row (gpu_layer.add_norm)."""
    rows, dim = a.shape
    block = triton.next_power_of_2(dim)
    _add_norm_kernel[(rows,)](residual, residual.stride(0), a, a.stride(0), weight, bias, h, x, dim, eps,
                              BLOCK=block, num_warps=4 if block <= 1024 else 8)
