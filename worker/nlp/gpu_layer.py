"""One DistilBERT layer for CUDA, with the steps between the matrix products fused.

On an H100 the plain torch layer (fast.DistilBertForward._layer) spent 45% of its kernel time outside
the products and attention: the residual adds, the LayerNorms, the casts to the products' dtype and
the GELU, each a separate pass over memory (bench/RESULTS.md, "GPU, second time"). Here:

- add + LayerNorm + cast is one Triton kernel (`add_norm`): it reads the float32 residual and the
  product's output once and writes the new float32 residual and its copy in the products' dtype,
  12 bytes an element where the three passes moved 24;
- lin1's bias and GELU run in cuBLASLt's epilogue (`torch._addmm_activation`), which uses GELU's tanh
  form (torch's CPU kernel, the exact one): the two differ by under 5e-4, below bf16's rounding;
- q, k and v are one product against their weights stacked (`stacked_qkv`), one launch instead of three.

The same functions run on any device: without Triton (a CPU, or a CUDA build without it) `add_norm`
is torch's ops, so the layer's structure is tested everywhere and the kernel where a GPU is.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Triton compiles a kernel at its first launch for each new specialization; threads of one worker
# (the threads pool) must not compile the same one at once.
_launch = threading.Lock()


@lru_cache(maxsize=1)
def _triton():
    """triton_kernels.py, imported at the first CUDA call (importing Triton takes 0.3-1 s, which a
    worker on a CPU has no use for); None where Triton is missing (CPU builds of torch have none)."""
    try:
        from . import triton_kernels
    except Exception as exc:  # missing, or an install that breaks on import: torch's ops serve
        if not isinstance(exc, ImportError) or torch.cuda.is_available():
            log.warning("Triton unavailable (%s): the CUDA layer's add + LayerNorm runs in torch's ops", exc)
        return None
    return triton_kernels


def available(device: torch.device) -> bool:
    """Whether `add_norm` runs its Triton kernel on `device`."""
    return device.type == "cuda" and _triton() is not None


def add_norm(residual: torch.Tensor, a: torch.Tensor, norm: torch.nn.LayerNorm,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """h = LayerNorm(residual + a) in float32, and h in `dtype`. residual: (rows, dim) float32, rows
    may be strided (the [CLS] rows of a batch); a: (rows, dim), contiguous rows."""
    rows, dim = a.shape
    if not available(a.device) or residual.stride(1) != 1 or a.stride(1) != 1:
        h = F.layer_norm(residual + a, (dim,), norm.weight, norm.bias, norm.eps)
        return h, h.to(dtype)
    h = torch.empty((rows, dim), device=a.device, dtype=torch.float32)
    x = torch.empty((rows, dim), device=a.device, dtype=dtype)
    if rows:
        with _launch:
            _triton().add_norm(residual, a, norm.weight, norm.bias, norm.eps, h, x)
    return h, x


def linear_gelu(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """GELU(linear(x)), the bias and GELU in the product's epilogue where cuBLASLt has it (tanh form)."""
    flat = x.reshape(-1, x.shape[-1])
    y = torch._addmm_activation(linear.bias, flat, linear.weight.t(), use_gelu=True)
    return y.view(*x.shape[:-1], y.shape[-1])


def stacked_qkv(attention) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of q_lin, k_lin and v_lin stacked, made once and kept on the module; made again
    if any of the three has been replaced, moved or cast since (its storage is another). Inference
    never changes weights in place (a new model version is a new model)."""
    parts = (attention.q_lin, attention.k_lin, attention.v_lin)
    key = tuple((p.weight.data_ptr(), p.bias.data_ptr()) for p in parts)
    cached = getattr(attention, "_stacked_qkv", None)
    if cached is None or cached[0] != key:
        stacked = (torch.cat([p.weight.detach() for p in parts]), torch.cat([p.bias.detach() for p in parts]))
        cached = attention._stacked_qkv = (key, stacked)
    return cached[1]


def layer(layer, h: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, cls_only: bool,
          dtype: torch.dtype, attend) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer: (h, x) in, h the float32 residual stream (batch, positions, dim) and x the same in
    `dtype`, the products'; returns the next (h, x). cls_only: the last layer of a sequence
    classifier, everything after k and v for the [CLS] rows alone. attend(q, k, v, mask, batch):
    attention over (batch, positions, dim) views, as (batch, positions of q, dim) in `dtype`."""
    att, ffn = layer.attention, layer.ffn
    batch, width, dim = h.shape
    weight, bias = stacked_qkv(att)
    qkv = F.linear(x, weight, bias)
    q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
    residual = h.view(-1, dim)
    if cls_only:
        q, residual = q[:, :1], h[:, 0]
    a = att.out_lin(attend(q, k, v, mask, batch))
    h, x = add_norm(residual, a.reshape(-1, dim), layer.sa_layer_norm, dtype)
    f = ffn.lin2(linear_gelu(x, ffn.lin1))
    h, x = add_norm(h, f.view(-1, dim), layer.output_layer_norm, dtype)
    rows = 1 if cls_only else width
    return h.view(batch, rows, dim), x.view(batch, rows, dim)
