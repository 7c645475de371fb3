"""The C++ int8 product (worker/nlp/gemm.cpp, built and called by worker/nlp/gemm.py) against exact
int32 sums in torch, on shapes that cross every block edge (AVX2's and AMX's), its scaled outputs on
AMX's tiles, and its use as an int8 product kernel."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import int8_layer_pairs
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.nlp import gemm, int8

pytestmark = [pytest.mark.cpu_feature,
              pytest.mark.skipif(not gemm.available(), reason="no C++ int8 product here (it needs AVX2 and a C++ compiler)")]


def exact(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return a.int() @ w.int().t()


@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 20), k=st.integers(1, 70), n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1),
       extreme=st.booleans())
def test_products_are_exact_for_any_shape_and_any_int8_values(m, k, n, seed, extreme):
    gen = torch.Generator().manual_seed(seed)
    if extreme:  # the values that saturate AVX2's 8-bit dot product; int16 pairs must not
        a = torch.full((m, k), -128, dtype=torch.int8)
        w = torch.where(torch.rand(n, k, generator=gen) < 0.5, -128, 127).to(torch.int8)
    else:
        a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
        w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    assert torch.equal(gemm.PackedInt8(w).product(a), exact(a, w))


@pytest.mark.parametrize("m, k, n", [(97, 1100, 300), (200, 3072, 40), (13, 513, 257)])
def test_products_are_exact_across_the_blocks(m, k, n):
    """Rows past one block of rows (96), k past its blocks (512 values) with an odd end, columns past
    one block (256) and not a whole panel (16): every edge of the loops."""
    gen = torch.Generator().manual_seed(m)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    packed = gemm.PackedInt8(w)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            assert torch.equal(packed.product(a), exact(a, w))
            assert torch.equal(packed.product(a[1::2]), exact(a[1::2], w))  # a strided view: copied first
        finally:
            torch.set_num_threads(2)


def test_wrong_inputs_get_a_clear_error():
    packed = gemm.PackedInt8(torch.zeros(8, 12, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"needs \(rows, 12\) int8 on CPU, got \(3, 11\)"):
        packed.product(torch.zeros(3, 11, dtype=torch.int8))
    with pytest.raises(ValueError, match="int8 on CPU, got .* torch.float32"):
        packed.product(torch.zeros(3, 12))
    with pytest.raises(ValueError, match="needs a 2-d int8 weight"):
        gemm.PackedInt8(torch.zeros(8, 12))


def test_it_serves_int8_layers_with_the_same_sums_as_torch(caplog):
    """As an Int8Linear kernel: the same int32 sums as torch._int_mm, so the same outputs; offered
    unless another product here is over 10x faster (AMX's int8 tiles could be), and then it says so."""
    if not int8.cpp_available():
        pytest.skip("int8 inference is unavailable here")
    for a, b in int8_layer_pairs(("int_mm", "cpp"), seed=0):
        if gemm.on_tiles():  # the same sums, scaled in the product: float rounding apart
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(a, b)
    int8.offered_kernels.cache_clear()
    with caplog.at_level(logging.INFO, logger="worker.nlp.int8"):
        offered = int8.offered_kernels()
    assert "cpp" in offered or "int8 product cpp not offered: it ran" in caplog.text


on_tiles = pytest.mark.skipif(not gemm.on_tiles(), reason="the product does not run on AMX's int8 tiles here")


@on_tiles
@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 70), k=st.integers(1, 200), n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), rows=st.booleans(), bias=st.booleans(),
       centered=st.booleans())
def test_scaled_products_are_the_sums_scaled_for_any_shape(m, k, n, seed, dtype, rows, bias, centered):
    """Rows across blocks of 32 (and a last partial one), k not a multiple of 64, columns across a
    block of 256 and partial panels; each optional part of the scaling on or off."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    col_scale = torch.rand(n, generator=gen) / 1000
    row_scale = torch.rand(m, 1, generator=gen) if rows else None
    b = torch.randn(n, generator=gen) if bias else None
    mid, weight_sum = (torch.randn(m, 1, generator=gen), torch.randn(n, generator=gen)) if centered else (None, None)
    want = exact(a, w).double() * col_scale.double()
    if rows:
        want = want * row_scale.double()
    if centered:
        want = want + mid.double() * weight_sum.double()
    if bias:
        want = want + b.double()
    got = gemm.PackedInt8(w).scaled(a, dtype, col_scale, row_scale, b, mid, weight_sum)
    assert got.dtype == dtype and got.shape == (m, n)
    rtol = 1e-5 if dtype == torch.float32 else 1 / 128  # bf16: 8 bits
    assert torch.allclose(got.double(), want, rtol=rtol, atol=rtol * max([1.0] + want.abs().flatten().tolist()))


@on_tiles
def test_scaled_products_refuse_what_they_cannot_scale():
    packed = gemm.PackedInt8(torch.zeros(8, 12, dtype=torch.int8))
    q, scale = torch.zeros(3, 12, dtype=torch.int8), torch.ones(8)
    with pytest.raises(ValueError, match="float32 or bfloat16 out, not torch.float16"):
        packed.scaled(q, torch.float16, scale)
    with pytest.raises(ValueError, match="row_scale must be 3 contiguous float32 values"):
        packed.scaled(q, torch.float32, scale, row_scale=torch.ones(4))
    with pytest.raises(ValueError, match="mid and weight_sum go together"):
        packed.scaled(q, torch.float32, scale, mid=torch.ones(3))


def gelu_quantized(a, w, row_scale, col_scale, bias):
    """What gelu_quantize stands for, in float64: x = GELU(the layer's output), then x as bf16 (the
    kernel's buffer) quantized around each row's midrange. Returns (x, q, scale, mid)."""
    x = torch.nn.functional.gelu(exact(a, w).double() * row_scale.double() * col_scale.double() + bias.double())
    x16 = x.bfloat16().double()
    hi, lo = x16.amax(1, keepdim=True), x16.amin(1, keepdim=True)
    mid, scale = (hi + lo) / 2, ((hi - lo) / 2).clamp(min=1e-8) / 127
    return x, ((x16 - mid) / scale).round(), scale, mid


@on_tiles
@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 600), k=st.integers(1, 200), n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1),
       spread=st.sampled_from([1e-4, 1e-2, 1.0]))
def test_gelu_quantize_is_the_quantized_gelu_of_the_scaled_product(m, k, n, seed, spread):
    """Rows across blocks of 32 and across each thread's chunks of 256, k not a multiple of 64,
    columns across a block of 256 and partial panels; outputs from tiny to large. The kernel's GELU
    is an approximation (1e-7 apart), so a value on a bf16 rounding edge may round the other way:
    the bound is on the values the quantized rows stand for (half a step, and a bf16 rounding)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    col_scale = torch.rand(n, generator=gen) * spread / (128 * 128 * k ** 0.5)
    row_scale, bias = torch.rand(m, 1, generator=gen) + 0.5, torch.randn(n, generator=gen) * spread
    q, scale, mid = gemm.PackedInt8(w).gelu_quantize(a, row_scale, col_scale, bias)
    assert q.dtype == torch.int8 and q.shape == (m, n) and scale.shape == mid.shape == (m, 1)
    x, want_q, want_scale, want_mid = gelu_quantized(a, w, row_scale, col_scale, bias)
    ulp = x.abs().amax(1, keepdim=True) / 128  # bf16 keeps 8 bits
    assert torch.allclose(scale.double(), want_scale, rtol=1e-4, atol=0) or (scale.double() - want_scale).abs().max() <= ulp.max() / 127
    assert ((mid.double() - want_mid).abs() <= ulp + 1e-12).all()
    assert ((q.double() * scale.double() + mid.double() - x).abs() <= scale.double() / 2 + ulp + 1e-12).all()
    assert (q.double() - want_q).abs().mean() < 0.05  # most land where the float64 rows do


@on_tiles
def test_gelu_quantize_refuses_what_it_cannot_use():
    packed = gemm.PackedInt8(torch.zeros(8, 12, dtype=torch.int8))
    q, ones = torch.zeros(3, 12, dtype=torch.int8), torch.ones(8)
    with pytest.raises(ValueError, match="row_scale must be 3 contiguous float32 values"):
        packed.gelu_quantize(q, torch.ones(4), ones, ones)
    with pytest.raises(ValueError, match="bias must be 8 contiguous float32 values"):
        packed.gelu_quantize(q, torch.ones(3), ones, torch.ones(8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"needs \(rows, 12\) int8"):
        packed.gelu_quantize(q.float(), torch.ones(3), ones, ones)
