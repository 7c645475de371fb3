"""int8 matrix products for CPU inference: int8 weights per output channel, activations quantized
per token at run time, exact int32 sums (torch._int_mm, oneDNN's or gemm.cpp's kernels).

Why per token: torch.ao's dynamic quantization uses one scale for a whole batch, so one token with
large activations coarsens every other token's; on the bundled sentiment model it agreed with fp32
on 96.3% of labels. One scale per token (and per weight row) agreed on 99.5-99.7% (bench/RESULTS.md).

The quantize and dequantize steps are elementwise passes over the activations; in eager torch they
take several passes each and cost more than the int8 product saves, so each is one C++ kernel
(kernels.cpp, built once per host by native.py). Where it cannot be built (no C++ compiler in
the image), `available()` is False and "auto" precision does not pick int8.

Three int8 products: torch._int_mm (oneDNN's VNNI gemm, which reorders the weights on every call);
oneDNN's quantized Linear (torch.ops.onednn.qlinear_pointwise, the op torch.compile's x86 int8 path
uses) on weights packed once at load time, which runs AMX's int8 tiles where the CPU has them: on a
Xeon with AMX it ran 1.5-4x the packed bf16 product and 1.3-2.4x _int_mm at DistilBERT's shapes;
and gemm.py's C++ product: for AVX2 without VNNI, where both of torch's ran 30-3,000x slower than
the float product, and on AMX's tiles, where it also scales its sums (1.13-1.21x oneDNN's in whole
int8 forwards on a Xeon with AMX; bench/RESULTS.md). Which is fastest is not written in the flags, so
`product_kernel` screens out the far slower ones on a small product, times the rest on the model's
feed-forward shapes, and keeps the pick per host.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import torch
from torch import nn

from . import gemm, native
from .cpu import DTYPES, cpu_float_precision, fastest
from .precision_cache import feed_forward_sizes, kernel_choice

log = logging.getLogger(__name__)

KERNELS = ("int_mm", "onednn", "cpp")
# Without AMX, this torch's oneDNN ran the s8 x s8 product in its reference kernel, about 3,000x
# slower than torch._int_mm (an AVX-512 EPYC); without VNNI, _int_mm ran 30-70x slower than the
# float product. Kernels that do real work are within 1-3x of each other either way.
REFERENCE_SLOWDOWN = 10.0
KERNEL_PROBE_ROWS = 512  # tokens in each timed product of product_kernel: a quarter of a CPU batch


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


def _small_case(gen: torch.Generator):
    """A tiny Linear and inputs for the self-checks: products of about +-6, no two sizes equal."""
    linear = nn.Linear(32, 40)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(40, 32, generator=gen))
        linear.bias.zero_()
    return linear, torch.randn(24, 32, generator=gen)


@lru_cache(maxsize=1)
def onednn_available() -> bool:
    """True when this torch has oneDNN's quantized Linear and it computes the products right here
    (int8 activations, int8 weights per output channel, float32 out)."""
    if not (available() and torch.backends.mkldnn.is_available() and hasattr(torch.ops, "onednn")
            and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        return False
    try:
        linear, x = _small_case(torch.Generator().manual_seed(1))
        dtype = DTYPES[cpu_float_precision()]
        with torch.inference_mode():
            for centered in (False, True):
                layer = Int8Linear(linear, centered=centered, kernel="onednn")
                xin = x + 1 if centered else x
                if not torch.allclose(layer(xin.to(dtype)).float(), linear(xin), atol=0.5):
                    raise RuntimeError("oneDNN's int8 product gave wrong results")
    except Exception as exc:  # an old build, a CPU oneDNN has no int8 kernel for: another serves
        log.info("oneDNN's int8 Linear unavailable (%s: %s)", type(exc).__name__, exc)
        return False
    return True


@lru_cache(maxsize=1)
def cpp_available() -> bool:
    """True when gemm.py's C++ product builds here and computes the products right."""
    if not (available() and gemm.available()):
        return False
    linear, x = _small_case(torch.Generator().manual_seed(3))
    with torch.inference_mode():
        q, scale = native.quantize(x)
        mine, ref = Int8Linear(linear, kernel="cpp"), Int8Linear(linear, kernel="int_mm")
        right = torch.equal(mine.packed.product(q), ref.product(q, torch.float32)) and torch.allclose(
            mine.from_quantized(q, scale, torch.float32), ref.from_quantized(q, scale, torch.float32), rtol=1e-5, atol=1e-5)
    if not right:
        log.warning("the C++ int8 product gave wrong results here; not offered")
    return right


def _built(kernel: str) -> bool:
    return {"int_mm": available, "onednn": onednn_available, "cpp": cpp_available}[kernel]()


@lru_cache(maxsize=1)
def offered_kernels() -> tuple[str, ...]:
    """The int8 products that work here and run a real kernel: each product alone timed on a
    128 x 512 -> 512 product (large enough that calls' fixed costs do not hide a slow kernel, small
    enough that a reference kernel takes a fraction of a second), the faster of two after a
    warm-up; dropped when over REFERENCE_SLOWDOWN times the fastest, and logged."""
    built = [k for k in KERNELS if _built(k)]
    if len(built) < 2:
        return tuple(built)
    dtype = DTYPES[cpu_float_precision()]
    layers = {k: Int8Linear(nn.Linear(512, 512), kernel=k) for k in built}
    q = native.quantize(torch.randn(128, 512, generator=torch.Generator().manual_seed(2)).to(dtype))[0]
    with torch.inference_mode():
        _, seconds = fastest({k: lambda k=k: layers[k].product(q, dtype) for k in built}, rounds=2)
    best = min(seconds.values())
    for k in built:
        if seconds[k] > REFERENCE_SLOWDOWN * best:
            log.info("int8 product %s not offered: it ran %.0fx slower than the fastest here", k, seconds[k] / best)
    return tuple(k for k in built if seconds[k] <= REFERENCE_SLOWDOWN * best)


@lru_cache(maxsize=8)
def product_kernel(hidden: int = 768, intermediate: int = 3072) -> str:
    """The fastest int8 product here for a model of these sizes: the offered kernels' whole
    Int8Linear (quantize, product, dequantize) on the two feed-forward shapes, interleaved, median of
    5. About 0.2-0.5 s for DistilBERT-base, once per host (kept beside the precision choices)."""
    if not available():
        return "int_mm"

    def measure():
        offered = offered_kernels()
        if len(offered) == 1:
            return offered[0], {}
        gen = torch.Generator().manual_seed(0)
        dtype = DTYPES[cpu_float_precision()]
        shapes = [(hidden, intermediate), (intermediate, hidden)]
        layers = {k: [Int8Linear(nn.Linear(i, o), kernel=k) for i, o in shapes] for k in offered}
        inputs = [torch.randn(KERNEL_PROBE_ROWS, i, generator=gen).to(dtype) for i, _ in shapes]
        with torch.inference_mode():
            pick, median = fastest({k: lambda k=k: [layer(x) for layer, x in zip(layers[k], inputs)] for k in offered})
        log.info("int8 product for hidden %d / %d: %s (%s)", hidden, intermediate, pick,
                 ", ".join(f"{k} {1000 * t:.2f} ms" for k, t in median.items()))
        return pick, median

    return kernel_choice(f"int8 product hidden={hidden} intermediate={intermediate}", measure,
                         lambda k: k in KERNELS and _built(k))


class Int8Linear(nn.Module):
    """A drop-in replacement for an nn.Linear at inference: same input and output shapes and dtype.
    `kernel`: "int_mm" (torch._int_mm), "onednn" (oneDNN's quantized Linear on packed weights) or
    "cpp" (gemm.py's product on packed weights)."""

    def __init__(self, linear: nn.Linear, centered: bool = False, kernel: str = "int_mm"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"int8 kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
        w = linear.weight.detach().float()
        col_scale = w.abs().amax(1).clamp(min=1e-8) / 127
        w_int = (w / col_scale[:, None]).round().clamp(-127, 127)
        self.register_buffer("col_scale", col_scale)
        if kernel == "onednn":  # packed once into oneDNN's layout; per-channel scales applied by oneDNN
            self.register_buffer("weight", torch.ops.onednn.qlinear_prepack(w_int.to(torch.int8), None))
            self.register_buffer("zero_points", torch.zeros(w.shape[0], dtype=torch.long))
        elif kernel == "cpp":
            self.packed = gemm.PackedInt8(w_int.to(torch.int8))
        else:  # (in, out), contiguous: the layout _int_mm reads fastest as its second operand.
            self.register_buffer("weight_t", w_int.to(torch.int8).t().contiguous())
        # On AMX the C++ product scales each block of sums as it is done (gemm.PackedInt8.scaled).
        self.scales_inside = kernel == "cpp" and gemm.on_tiles()
        self.register_buffer("weight_sum", (w_int * col_scale[:, None]).sum(1))  # of the weights as quantized
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(w.shape[0])
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.centered, self.kernel = centered, kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        if self.centered:
            q, scale, mid = native.quantize(rows, centered=True)
        else:
            (q, scale), mid = native.quantize(rows), None
        return self.from_quantized(q, scale, x.dtype, mid).view(*x.shape[:-1], self.out_features)

    def product(self, q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The product of rows quantized per token, as it comes from the kernel: int32 sums
        (torch._int_mm), or values in `dtype` with the column scales applied (oneDNN); neither has
        the row scales or the bias yet (product_col_scale tells which); "cpp" as _int_mm, or on AMX's
        tiles as oneDNN."""
        if self.kernel == "onednn":
            # In the activations' dtype, scaled per row in place after: a float32 product would be
            # one more buffer to allocate and pass over (bf16 rounds twice: within its own noise).
            return torch.ops.onednn.qlinear_pointwise(q, 1.0, 0, self.weight, self.col_scale, self.zero_points, None,
                                                      1.0, 0, dtype, "none", [], "")
        if self.scales_inside:  # oneDNN's convention, in one pass
            return self.packed.scaled(q, dtype, self.col_scale)
        if self.kernel == "cpp":
            return self.packed.product(q)
        return torch._int_mm(q, self.weight_t)

    @property
    def product_col_scale(self) -> torch.Tensor | None:
        """The column scales `product` leaves to apply: None where the kernel applied them."""
        return None if self.kernel == "onednn" or self.scales_inside else self.col_scale

    def from_quantized(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                       mid: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output (rows, out_features) in `dtype` for rows already quantized (q, scale,
        and mid for a centered layer)."""
        weight_sum = self.weight_sum if mid is not None else None
        if self.scales_inside:
            return self.packed.scaled(q, dtype, self.col_scale, scale, self.bias, mid, weight_sum)
        if self.kernel == "onednn":
            return native.rescale(self.product(q, dtype), scale, self.bias, mid, weight_sum)
        return native.dequantize(self.product(q, dtype), scale, self.col_scale, self.bias, dtype, mid, weight_sum)

    def gelu_quantize(self, q: torch.Tensor, scale: torch.Tensor,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GELU of the layer's output for rows already quantized (q, scale), quantized around each
        row's midrange for the next layer: (q, scale, mid). On AMX's tiles in the product itself
        (gemm.PackedInt8.gelu_quantize), else kernels.cpp's pass over the product."""
        if self.scales_inside:
            return self.packed.gelu_quantize(q, scale, self.col_scale, self.bias)
        return native.product_gelu_quantize(self.product(q, dtype), scale, self.product_col_scale, self.bias)

    def extra_repr(self) -> str:
        kind = "centered per token" if self.centered else "per token"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 {kind}, {self.kernel}"


def quantize_linears(model: nn.Module, keep: tuple[str, ...] = ("classifier",),
                     centered: tuple[str, ...] = ("lin2",)) -> int:
    """Replace the model's Linear layers by Int8Linear, except those whose name ends with one of
    `keep` (the classification head: small, and where rounding moves the output directly).
    Layers named in `centered` (DistilBERT's feed-forward output, fed by GELU) quantize their input
    around its midrange. Returns how many were replaced."""
    from .fast import replace_linears

    available()  # build or load the kernels now, not in the first batch
    kernel = product_kernel(*feed_forward_sizes(model))
    return replace_linears(model, lambda linear, full: Int8Linear(linear, centered=full.endswith(centered),
                                                                  kernel=kernel), keep)


def product_ratio(hidden: int, intermediate: int, rows: int) -> float:
    """int8's time over fp32's for one feed-forward product (rows x hidden -> intermediate), the middle
    of three after a warm-up. Without VNNI, torch._int_mm has no fast kernel (30-70x fp32): a timed
    batch found that out in 38 s of a first start on an AVX2-only host, where this takes about a
    second (bench/RESULTS.md, "Other runtimes on the AVX2-only host")."""
    linear = nn.Linear(hidden, intermediate)
    quantized = Int8Linear(linear, kernel=product_kernel(hidden, intermediate))
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
