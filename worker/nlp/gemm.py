"""int8 products in C++ (gemm.cpp) for CPUs whose torch has no fast one, and for AMX: on AVX2
without VNNI, torch._int_mm ran 30-70x slower than the float product; on a Xeon with AMX, oneDNN's
int8 product ran at 2.9 TFLOP/s inside the forward, and a following pass scaled its output. Here
AMX's tiles give the same exact int32 sums, and `scaled` applies the row and column scales and the
bias to each block as it is done, so the layer's output comes out of the product (bench/RESULTS.md).
int8.py offers it as one more product kernel, and product_kernel measures which serves.

Built once per host like kernels.cpp (cbuild.py, -march=native), in its own small library so that
a host without AVX2 loses only this kernel. Which product runs (AMX, else AVX2) is decided once
per process by the library; the packed layout follows it."""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from pathlib import Path

import torch

from .. import cbuild

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("gemm.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")

_P, _I64 = ctypes.c_void_p, ctypes.c_int64


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The loaded kernel: the cached library, or one built now. Raises cbuild.BuildError."""
    lib = cbuild.load(SOURCE, FLAGS, "int8 product")
    lib.reviews_gemm_supported.argtypes, lib.reviews_gemm_supported.restype = (), ctypes.c_int
    lib.reviews_gemm_packed_size.argtypes, lib.reviews_gemm_packed_size.restype = (_I64, _I64), _I64
    lib.reviews_gemm_pack.argtypes, lib.reviews_gemm_pack.restype = (_P, _I64, _I64, _P), None
    lib.reviews_gemm_s8.argtypes, lib.reviews_gemm_s8.restype = (_P, _I64, _I64, _P, _I64, _P, ctypes.c_int), None
    # a, m, k, packed, n, out, kind, row_scale, col_scale, bias, mid, weight_sum (NULL where absent), threads
    lib.reviews_gemm_s8_scaled.argtypes = (_P, _I64, _I64, _P, _I64, _P, ctypes.c_int) + (_P,) * 5 + (ctypes.c_int,)
    lib.reviews_gemm_s8_scaled.restype = ctypes.c_int
    # a, m, k, packed, n, row_scale, col_scale, bias, q, scale, mid, threads
    lib.reviews_gemm_s8_gelu_quantize.argtypes = (_P, _I64, _I64, _P, _I64) + (_P,) * 6 + (ctypes.c_int,)
    lib.reviews_gemm_s8_gelu_quantize.restype = ctypes.c_int
    return lib


@lru_cache(maxsize=1)
def available() -> bool:
    """True when the kernel builds here and this CPU has what it needs (AVX2, or AMX's int8 tiles);
    else say why, once."""
    try:
        if not library().reviews_gemm_supported():
            raise RuntimeError("the CPU has no AVX2")
    except (cbuild.BuildError, OSError, AttributeError, RuntimeError) as exc:
        log.info("the C++ int8 product is unavailable (%s: %s)", type(exc).__name__, exc)
        return False
    return True


@lru_cache(maxsize=1)
def on_tiles() -> bool:
    """True where the product runs on AMX's int8 tiles, which can also scale its sums (`scaled`)."""
    return available() and library().reviews_gemm_supported() == 2


_SCALED_KINDS = {torch.float32: 1, torch.bfloat16: 2}


class PackedInt8:
    """An int8 weight (out_features, in_features), packed once for `product` (and `scaled`)."""

    def __init__(self, weight: torch.Tensor):
        if weight.dim() != 2 or weight.dtype != torch.int8:
            raise ValueError(f"PackedInt8: needs a 2-d int8 weight, got {tuple(weight.shape)} {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        weight = weight.contiguous()
        lib = library()
        self.data = torch.empty(lib.reviews_gemm_packed_size(*weight.shape), dtype=torch.uint8)
        lib.reviews_gemm_pack(weight.data_ptr(), self.out_features, self.in_features, self.data.data_ptr())

    def _rows(self, q: torch.Tensor, what: str) -> torch.Tensor:
        """q as the kernels read it (contiguous), or a ValueError naming `what` and the problem."""
        if q.dim() != 2 or q.dtype != torch.int8 or q.shape[1] != self.in_features or q.device.type != "cpu":
            raise ValueError(f"PackedInt8.{what}: needs (rows, {self.in_features}) int8 on CPU, got "
                             f"{tuple(q.shape)} {q.dtype} on {q.device}")
        return q.contiguous()

    def product(self, q: torch.Tensor) -> torch.Tensor:
        """q (rows, in_features) int8 -> (rows, out_features) int32: q @ weight.T, exact."""
        q = self._rows(q, "product")
        out = torch.empty((q.shape[0], self.out_features), dtype=torch.int32)
        library().reviews_gemm_s8(q.data_ptr(), q.shape[0], self.in_features, self.data.data_ptr(),
                                  self.out_features, out.data_ptr(), torch.get_num_threads())
        return out

    def scaled(self, q: torch.Tensor, dtype: torch.dtype, col_scale: torch.Tensor, row_scale: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, mid: torch.Tensor | None = None,
               weight_sum: torch.Tensor | None = None) -> torch.Tensor:
        """(q @ weight.T) * row_scale[:, None] * col_scale (+ mid[:, None] * weight_sum) + bias in `dtype`
        (float32 or bf16), each block scaled as it is done; row_scale, bias and mid optional (float32).
        Only where `on_tiles()`."""
        if not on_tiles():
            raise RuntimeError("PackedInt8.scaled: needs AMX's int8 tiles")
        if dtype not in _SCALED_KINDS:
            raise ValueError(f"PackedInt8.scaled: float32 or bfloat16 out, not {dtype}")
        q = self._rows(q, "scaled")
        rows = q.shape[0]
        self._vectors("scaled", col_scale=(col_scale, self.out_features), row_scale=(row_scale, rows),
                      bias=(bias, self.out_features), mid=(mid, rows), weight_sum=(weight_sum, self.out_features))
        if (mid is None) != (weight_sum is None):
            raise ValueError("PackedInt8.scaled: mid and weight_sum go together")
        out = torch.empty((rows, self.out_features), dtype=dtype)
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        failed = library().reviews_gemm_s8_scaled(q.data_ptr(), rows, self.in_features, self.data.data_ptr(), self.out_features,
                                         out.data_ptr(), _SCALED_KINDS[dtype], ptr(row_scale), col_scale.data_ptr(),
                                         ptr(bias), ptr(mid), ptr(weight_sum), torch.get_num_threads())
        if failed:  # the library refused (no tiles in this build): nothing was written to out
            raise RuntimeError("PackedInt8.scaled: the library has no scaled product here")
        return out

    def gelu_quantize(self, q: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor,
                      bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x = GELU((q @ weight.T) * row_scale[:, None] * col_scale + bias), then x quantized per row
        around its midrange: (int8 (rows, out_features), scale, mid), as native.quantize(x,
        centered=True) would give, without x ever written out. Only where `on_tiles()`."""
        if not on_tiles():
            raise RuntimeError("PackedInt8.gelu_quantize: needs AMX's int8 tiles")
        q = self._rows(q, "gelu_quantize")
        rows = q.shape[0]
        self._vectors("gelu_quantize", col_scale=(col_scale, self.out_features), row_scale=(row_scale, rows),
                      bias=(bias, self.out_features))
        out = torch.empty((rows, self.out_features), dtype=torch.int8)
        scale, mid = torch.empty((rows, 1)), torch.empty((rows, 1))  # as native.quantize gives them
        failed = library().reviews_gemm_s8_gelu_quantize(
            q.data_ptr(), rows, self.in_features, self.data.data_ptr(), self.out_features, row_scale.data_ptr(),
            col_scale.data_ptr(), bias.data_ptr(), out.data_ptr(), scale.data_ptr(), mid.data_ptr(),
            torch.get_num_threads())
        if failed:
            raise RuntimeError("PackedInt8.gelu_quantize: the library has no fused product here")
        return out, scale, mid

    @staticmethod
    def _vectors(what: str, **vectors: tuple[torch.Tensor | None, int]) -> None:
        """A ValueError unless each given vector is `size` contiguous float32 values (None: absent)."""
        for name, (t, size) in vectors.items():
            if t is not None and (t.dtype != torch.float32 or t.numel() != size or not t.is_contiguous()):
                raise ValueError(f"PackedInt8.{what}: {name} must be {size} contiguous float32 values")
