"""int8 products in C++ (gemm.cpp) for CPUs whose torch has no fast one: AVX2 without VNNI, where
torch._int_mm ran 30-70x slower than the float product (bench/RESULTS.md). Exact int32 sums, as
_int_mm's; int8.py offers it as one more product kernel, and product_kernel measures which serves.

Built once per host like kernels.cpp (cbuild.py, -march=native), in its own small library so that
a host without AVX2 loses only this kernel."""

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
    return lib


@lru_cache(maxsize=1)
def available() -> bool:
    """True when the kernel builds here and this CPU has what it needs (AVX2); else say why, once."""
    try:
        if not library().reviews_gemm_supported():
            raise RuntimeError("the CPU has no AVX2")
    except (cbuild.BuildError, OSError, AttributeError, RuntimeError) as exc:
        log.info("the C++ int8 product is unavailable (%s: %s)", type(exc).__name__, exc)
        return False
    return True


class PackedInt8:
    """An int8 weight (out_features, in_features), packed once for `product`."""

    def __init__(self, weight: torch.Tensor):
        if weight.dim() != 2 or weight.dtype != torch.int8:
            raise ValueError(f"PackedInt8: needs a 2-d int8 weight, got {tuple(weight.shape)} {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        weight = weight.contiguous()
        lib = library()
        self.data = torch.empty(lib.reviews_gemm_packed_size(*weight.shape), dtype=torch.int16)
        lib.reviews_gemm_pack(weight.data_ptr(), self.out_features, self.in_features, self.data.data_ptr())

    def product(self, q: torch.Tensor) -> torch.Tensor:
        """q (rows, in_features) int8 -> (rows, out_features) int32: q @ weight.T, exact."""
        if q.dim() != 2 or q.dtype != torch.int8 or q.shape[1] != self.in_features or q.device.type != "cpu":
            raise ValueError(f"PackedInt8.product: needs (rows, {self.in_features}) int8 on CPU, got "
                             f"{tuple(q.shape)} {q.dtype} on {q.device}")
        q = q.contiguous()
        out = torch.empty((q.shape[0], self.out_features), dtype=torch.int32)
        library().reviews_gemm_s8(q.data_ptr(), q.shape[0], self.in_features, self.data.data_ptr(),
                                  self.out_features, out.data_ptr(), torch.get_num_threads())
        return out
