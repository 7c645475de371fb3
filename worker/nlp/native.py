"""The C++ kernels of the CPU forward (kernels.cpp: int8.py's quantize and dequantize, and the fused
passes fast.py runs between products): built once per host, kept in REVIEWS_HOME, called through
ctypes on tensors' memory.

Why not torch.compile, which built them before: it compiled the four kernels again in every new
process, 5.5-6.8 s of each worker's start on an int8 host (2.8 s of it importing torch's compiler),
and its kernels ran slower than these (bench/RESULTS.md). The source uses no torch headers, so the
build takes about a second, and a built library loads in milliseconds.

The build (cbuild.py) uses the host's C++ compiler with -march=native, so the library is specific
to the CPU and each host builds its own, once. OpenMP shares each call's rows among torch's threads
(torch.get_num_threads), in torch's own OpenMP runtime (the same libgomp soname, loaded once).
"""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from pathlib import Path

import torch

from .. import cbuild
from ..cbuild import BuildError  # noqa: F401  (raised through library(); tests match it)

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.cpp")
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c++17")

_P, _I64, _INT, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    # x, rows, k, q, scale, mid (or NULL), threads
    "quantize": (_P, _I64, _I64, _P, _P, _P, _INT),
    # acc, rows, n, row_scale, col_scale, bias, mid (or NULL), weight_sum (or NULL), out, threads
    "dequantize": (_P, _I64, _I64, _P, _P, _P, _P, _P, _P, _INT),
    # y (in place), rows, n, row_scale, bias, mid (or NULL), weight_sum (or NULL), threads
    "rescale": (_P, _I64, _I64, _P, _P, _P, _P, _INT),
    # residual, y, rows, n, gamma, beta, eps, h, x, threads
    "add_norm": (_P, _P, _I64, _I64, _P, _P, _F, _P, _P, _INT),
}
_FUSED = {  # one entry point each, the product's dtype passed as PROD_KINDS
    # kind, prod, rows, n, row_scale, col_scale (or NULL), bias, mid, weight_sum, residual, gamma, beta, eps,
    # h, q (or NULL), scale, threads
    "reviews_product_add_norm_quantize": (_INT, _P, _I64, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _F, _P, _P, _P, _INT),
    # kind, prod, rows, n, row_scale, col_scale (or NULL), bias, q, scale, mid, threads
    "reviews_product_gelu_quantize": (_INT, _P, _I64, _I64, _P, _P, _P, _P, _P, _P, _INT),
    # q, k, v, lengths, rows, queries per row, width, heads, head_dim, scale, out, threads
    "reviews_attention_bf16": (_P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _F, _P, _INT),
    "reviews_attention_tiles_bf16": (_P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _F, _P, _INT),
}
PROD_KINDS = {torch.int32: 0, torch.float32: 1, torch.bfloat16: 2}
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


def build(out: Path, cxx: str) -> float:
    """Compile the kernels into `out`; the seconds it took. Raises BuildError."""
    return cbuild.build(SOURCE, FLAGS, out, cxx)


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The loaded kernels: the cached library, or one built now. Raises BuildError."""
    lib = cbuild.load(SOURCE, FLAGS, "CPU kernels")
    for kind, argtypes in _SIGNATURES.items():
        for suffix in _SUFFIX.values():
            fn = getattr(lib, f"reviews_{kind}_{suffix}")
            fn.argtypes, fn.restype = argtypes, None
    for name, argtypes in _FUSED.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    for name in ("reviews_attention_supported", "reviews_attention_tiles_supported"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = (), _INT
    return lib


@lru_cache(maxsize=1)
def available() -> bool:
    """True when the kernels build (or built before) and load here; else say why, once."""
    try:
        library()
    except (BuildError, OSError, AttributeError) as exc:
        log.warning("CPU kernels unavailable (%s: %s): torch ops between the products, no int8", type(exc).__name__,
                    exc)
        return False
    return True


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _rows(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or not x.is_contiguous() or x.device.type != "cpu":
        raise ValueError(f"{name}: needs a contiguous 2-d CPU tensor, got shape {tuple(x.shape)} on {x.device}"
                         f"{'' if x.is_contiguous() else ', not contiguous'}")
    if x.dtype not in _SUFFIX:
        raise ValueError(f"{name}: float32 or bfloat16 activations, got {x.dtype}")


def _floats(name: str, n: int, **tensors: torch.Tensor) -> None:
    for label, t in tensors.items():
        if t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != n:
            raise ValueError(f"{name}: {label} must be {n} contiguous float32 values, got {t.numel()} {t.dtype}")


def quantize(x: torch.Tensor, centered: bool = False):
    """Per row: (q int8, scale (rows, 1)) with x ~ q * scale; centered: (q, scale, mid), x ~ q * scale + mid."""
    _rows(x, "quantize")
    rows, k = x.shape
    q = torch.empty((rows, k), dtype=torch.int8)
    scale = torch.empty((rows, 1), dtype=torch.float32)
    mid = torch.empty((rows, 1), dtype=torch.float32) if centered else None
    getattr(library(), f"reviews_quantize_{_SUFFIX[x.dtype]}")(
        x.data_ptr(), rows, k, q.data_ptr(), scale.data_ptr(), _ptr(mid),
        torch.get_num_threads())
    return (q, scale, mid) if centered else (q, scale)


def _centering(name: str, rows: int, n: int, mid: torch.Tensor | None, weight_sum: torch.Tensor | None) -> None:
    if (mid is None) != (weight_sum is None):
        raise ValueError(f"{name}: mid and weight_sum go together")
    if mid is not None:
        _floats(name, rows, mid=mid)
        _floats(name, n, weight_sum=weight_sum)


def dequantize(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, bias: torch.Tensor,
               dtype: torch.dtype, mid: torch.Tensor | None = None, weight_sum: torch.Tensor | None = None):
    """acc * row_scale * col_scale (+ mid * weight_sum) + bias, in `dtype`: the int32 products back."""
    if acc.dim() != 2 or not acc.is_contiguous() or acc.dtype != torch.int32 or acc.device.type != "cpu":
        raise ValueError(f"dequantize: needs contiguous 2-d int32 CPU products, got {tuple(acc.shape)} {acc.dtype}")
    if dtype not in _SUFFIX:
        raise ValueError(f"dequantize: float32 or bfloat16 output, not {dtype}")
    rows, n = acc.shape
    _floats("dequantize", rows, row_scale=row_scale)
    _floats("dequantize", n, col_scale=col_scale, bias=bias)
    _centering("dequantize", rows, n, mid, weight_sum)
    out = torch.empty((rows, n), dtype=dtype)
    getattr(library(), f"reviews_dequantize_{_SUFFIX[dtype]}")(
        acc.data_ptr(), rows, n, row_scale.data_ptr(), col_scale.data_ptr(), bias.data_ptr(), _ptr(mid),
        _ptr(weight_sum), out.data_ptr(), torch.get_num_threads())
    return out


def rescale(y: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor, mid: torch.Tensor | None = None,
            weight_sum: torch.Tensor | None = None) -> torch.Tensor:
    """y * row_scale (+ mid * weight_sum) + bias, in place; returns y. dequantize for products that
    come back as floats with the column scales already applied (oneDNN's int8 product)."""
    _rows(y, "rescale")
    rows, n = y.shape
    _floats("rescale", rows, row_scale=row_scale)
    _floats("rescale", n, bias=bias)
    _centering("rescale", rows, n, mid, weight_sum)
    getattr(library(), f"reviews_rescale_{_SUFFIX[y.dtype]}")(
        y.data_ptr(), rows, n, row_scale.data_ptr(), bias.data_ptr(), _ptr(mid), _ptr(weight_sum),
        torch.get_num_threads())
    return y


# -- fused passes (fast.py) ---------------------------------------------------------------------


def _product(prod: torch.Tensor, col_scale: torch.Tensor | None, name: str) -> tuple[int, int]:
    """Checks an int8 layer's product: int32 sums with col_scale, or floats with the scales applied."""
    if prod.dim() != 2 or not prod.is_contiguous() or prod.device.type != "cpu" or prod.dtype not in PROD_KINDS:
        raise ValueError(f"{name}: needs a contiguous 2-d CPU product (int32, float32 or bfloat16), got "
                         f"{tuple(prod.shape)} {prod.dtype}")
    rows, n = prod.shape
    if (prod.dtype == torch.int32) != (col_scale is not None):
        raise ValueError(f"{name}: int32 sums need their column scales, float products have them applied")
    if col_scale is not None:
        _floats(name, n, col_scale=col_scale)
    return rows, n


def _residual(name: str, residual: torch.Tensor, shape: torch.Size) -> None:
    if residual.shape != shape or residual.dtype != torch.float32 or not residual.is_contiguous():
        raise ValueError(f"{name}: the residual must be contiguous float32 of {tuple(shape)}, got "
                         f"{tuple(residual.shape)} {residual.dtype}")


def add_norm(residual: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float):
    """h = LayerNorm(residual + y) as (h float32, h in y's dtype): the float engine's step after
    a layer's attention and after its feed-forward, in one pass."""
    _rows(y, "add_norm")
    rows, n = y.shape
    _residual("add_norm", residual, y.shape)
    _floats("add_norm", n, gamma=gamma, beta=beta)
    h, x = torch.empty((rows, n), dtype=torch.float32), torch.empty((rows, n), dtype=y.dtype)
    getattr(library(), f"reviews_add_norm_{_SUFFIX[y.dtype]}")(
        residual.data_ptr(), y.data_ptr(), rows, n, gamma.data_ptr(), beta.data_ptr(), eps, h.data_ptr(),
        x.data_ptr(), torch.get_num_threads())
    return h, x


def product_add_norm_quantize(prod: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor | None,
                              bias: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                              eps: float, mid: torch.Tensor | None = None, weight_sum: torch.Tensor | None = None,
                              quantize_out: bool = True):
    """The int8 engine's step after out_lin and lin2: h = LayerNorm(residual + the layer's output),
    and h quantized per row for the next products. Returns (h float32, q int8, scale), q and scale
    None when not quantize_out (the last layer)."""
    rows, n = _product(prod, col_scale, "product_add_norm_quantize")
    _floats("product_add_norm_quantize", rows, row_scale=row_scale)
    _floats("product_add_norm_quantize", n, bias=bias, gamma=gamma, beta=beta)
    _centering("product_add_norm_quantize", rows, n, mid, weight_sum)
    _residual("product_add_norm_quantize", residual, prod.shape)
    h = torch.empty((rows, n), dtype=torch.float32)
    q = torch.empty((rows, n), dtype=torch.int8) if quantize_out else None
    scale = torch.empty((rows, 1), dtype=torch.float32) if quantize_out else None
    library().reviews_product_add_norm_quantize(
        PROD_KINDS[prod.dtype], prod.data_ptr(), rows, n, row_scale.data_ptr(), _ptr(col_scale), bias.data_ptr(),
        _ptr(mid), _ptr(weight_sum), residual.data_ptr(), gamma.data_ptr(), beta.data_ptr(), eps, h.data_ptr(),
        _ptr(q), _ptr(scale), torch.get_num_threads())
    return h, q, scale


def product_gelu_quantize(prod: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor | None,
                          bias: torch.Tensor):
    """The int8 engine's step between lin1 and lin2: GELU of lin1's output, quantized around each
    row's midrange. Returns (q int8, scale, mid), as quantize(..., centered=True)."""
    rows, n = _product(prod, col_scale, "product_gelu_quantize")
    _floats("product_gelu_quantize", rows, row_scale=row_scale)
    _floats("product_gelu_quantize", n, bias=bias)
    q = torch.empty((rows, n), dtype=torch.int8)
    scale, mid = torch.empty((rows, 1), dtype=torch.float32), torch.empty((rows, 1), dtype=torch.float32)
    library().reviews_product_gelu_quantize(
        PROD_KINDS[prod.dtype], prod.data_ptr(), rows, n, row_scale.data_ptr(), _ptr(col_scale), bias.data_ptr(),
        q.data_ptr(), scale.data_ptr(), mid.data_ptr(), torch.get_num_threads())
    return q, scale, mid


def attention_available() -> bool:
    """Whether attention() has a kernel here: AVX-512 BF16's pair dot products."""
    return available() and bool(library().reviews_attention_supported())


@lru_cache(maxsize=1)
def attention_tiles_available() -> bool:
    """Whether attention(tiles=True) has a kernel here: AMX, which Linux lets this process use."""
    return attention_available() and bool(library().reviews_attention_tiles_supported())


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, heads: int,
              tiles: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v per head, for bf16 rows of heads side by side as the products
    leave them: k, v (rows * width, dim), q the same or (rows, dim) (the [CLS] query alone). lengths
    (rows,) int64: each row's keys, padded on the right; a query past them gets zeros. Returns bf16.
    tiles: on AMX's tiles (attention_tiles_available(); heads of 32 to 128 in steps of 32), else AVX-512 BF16."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 2 or not t.is_contiguous() or t.dtype != torch.bfloat16 or t.device.type != "cpu":
            raise ValueError(f"attention: {name} must be contiguous 2-d bf16 on CPU, got {tuple(t.shape)} {t.dtype}")
    rows = lengths.numel()
    if lengths.dtype != torch.int64 or not lengths.is_contiguous() or rows == 0:
        raise ValueError(f"attention: lengths must be contiguous int64, one per row, got {lengths.dtype}")
    dim = k.shape[1]
    if k.shape != v.shape or q.shape[1] != dim or k.shape[0] % rows or dim % heads or (dim // heads) % 16 \
            or dim // heads > 128:
        raise ValueError(f"attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} with "
                         f"{rows} rows of {heads} heads (head size a multiple of 16, at most 128)")
    width = k.shape[0] // rows
    if q.shape[0] not in (rows, rows * width):
        raise ValueError(f"attention: q has {q.shape[0]} rows, for {rows} rows of {width} positions")
    if int(lengths.min()) < 1 or int(lengths.max()) > width:
        raise ValueError(f"attention: lengths must lie in 1..{width}")
    out, head_dim = torch.empty_like(q), dim // heads
    if tiles and (head_dim % 32 or not attention_tiles_available()):
        raise ValueError(f"attention: the tiles' kernel takes heads of 32, 64, 96 or 128, not {head_dim}"
                         if attention_tiles_available() else "attention: no AMX tiles here")
    kernel = library().reviews_attention_tiles_bf16 if tiles else library().reviews_attention_bf16
    kernel(q.data_ptr(), k.data_ptr(), v.data_ptr(), lengths.data_ptr(), rows, q.shape[0] // rows, width, heads,
           head_dim, head_dim ** -0.5, out.data_ptr(), torch.get_num_threads())
    return out
