"""The C++ kernels (worker/nlp/kernels.cpp, built and called by worker/nlp/native.py)
against the same math in plain torch, and the build cache: built once per host, then loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.nlp import int8, native

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not int8.available(), reason="no int8 kernels here (torch._int_mm or a C++ compiler missing)")


# The reference: what int8.py computed with torch ops before the kernels were C++, but for one thing:
# the kernels multiply by the scale's reciprocal, where a division per element cost 20-30% of their time.
def quantize_ref(x):
    x = x.float()
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
    return (x * (1 / scale)).round().to(torch.int8), scale


def quantize_centered_ref(x):
    x = x.float()
    hi, lo = x.amax(-1, keepdim=True), x.amin(-1, keepdim=True)
    mid = (hi + lo) / 2
    scale = ((hi - lo) / 2).clamp(min=1e-8) / 127
    return ((x - mid) * (1 / scale)).round().to(torch.int8), scale, mid


def dequantize_ref(acc, row_scale, col_scale, bias, dtype, mid=None, weight_sum=None):
    y = acc.float() * row_scale * col_scale
    if mid is not None:
        y = y + mid * weight_sum
    return (y + bias).to(dtype)


DTYPES = st.sampled_from([torch.float32, torch.bfloat16])


@st.composite
def activations(draw):
    """Rows of any width (vector lengths and their remainders), values from zero rows to large
    outliers, as a fixed-seed random tensor scaled per row."""
    rows, width = draw(st.integers(1, 40)), draw(st.integers(1, 130))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(rows, width, generator=gen)
    scales = draw(st.lists(st.sampled_from([0.0, 1e-12, 1e-3, 1.0, 37.5, 1e4]), min_size=rows, max_size=rows))
    x = x * torch.tensor(scales)[:, None] + draw(st.sampled_from([0.0, -0.17, 3.0]))
    return x.to(draw(DTYPES))


@settings(max_examples=150, deadline=None)
@given(x=activations())
def test_quantize_matches_torch(x):
    with torch.inference_mode():
        q, scale = native.quantize(x)
        q_ref, scale_ref = quantize_ref(x)
        assert torch.equal(scale, scale_ref)
        assert torch.equal(q, q_ref)
        qc, scale_c, mid = native.quantize(x, centered=True)
        qc_ref, scale_c_ref, mid_ref = quantize_centered_ref(x)
        assert torch.equal(mid, mid_ref) and torch.equal(scale_c, scale_c_ref)
        assert torch.equal(qc, qc_ref)


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 40), width=st.integers(1, 130), seed=st.integers(0, 2**31 - 1), dtype=DTYPES,
       centered=st.booleans())
def test_dequantize_matches_torch(rows, width, seed, dtype, centered):
    gen = torch.Generator().manual_seed(seed)
    acc = torch.randint(-2**20, 2**20, (rows, width), generator=gen, dtype=torch.int32)
    row_scale, col_scale = torch.rand(rows, 1, generator=gen) / 100, torch.rand(width, generator=gen) / 100
    bias, mid, weight_sum = torch.randn(width, generator=gen), torch.randn(rows, 1, generator=gen), torch.randn(width, generator=gen)
    with torch.inference_mode():
        if centered:
            got = native.dequantize(acc, row_scale, col_scale, bias, dtype, mid, weight_sum)
            ref = dequantize_ref(acc, row_scale, col_scale, bias, dtype, mid, weight_sum)
        else:
            got = native.dequantize(acc, row_scale, col_scale, bias, dtype)
            ref = dequantize_ref(acc, row_scale, col_scale, bias, dtype)
    assert got.dtype == dtype and got.shape == (rows, width)
    # The same products, in another order of rounding (the compiler fuses a multiply and an add):
    # within one unit in the last place of the output's dtype.
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -20
    assert torch.allclose(got.float(), ref.float(), rtol=ulp, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 40), width=st.integers(1, 130), seed=st.integers(0, 2**31 - 1), dtype=DTYPES,
       centered=st.booleans())
def test_rescale_matches_torch(rows, width, seed, dtype, centered):
    """oneDNN's products arrive in the activations' dtype with the column scales applied: rescale is
    dequantize without them, in place."""
    gen = torch.Generator().manual_seed(seed)
    prod = (torch.randn(rows, width, generator=gen) * 1e3).to(dtype)
    row_scale, ones = torch.rand(rows, 1, generator=gen) / 100, torch.ones(width)
    bias, mid, weight_sum = torch.randn(width, generator=gen), torch.randn(rows, 1, generator=gen), torch.randn(width, generator=gen)
    extra = (mid, weight_sum) if centered else ()
    with torch.inference_mode():
        ref = dequantize_ref(prod, row_scale, ones, bias, dtype, *extra)
        got = native.rescale(prod, row_scale, bias, *extra)
    assert got.data_ptr() == prod.data_ptr()  # in place
    assert got.dtype == dtype and got.shape == (rows, width)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -20
    assert torch.allclose(got.float(), ref.float(), rtol=ulp, atol=1e-6)


def test_bad_arguments_are_refused_with_a_message():
    with pytest.raises(ValueError, match="contiguous 2-d CPU tensor, got shape \\(6, 4\\) on cpu, not contiguous"):
        native.quantize(torch.randn(4, 6).t())
    with pytest.raises(ValueError, match="float32 or bfloat16 activations, got torch.float16"):
        native.quantize(torch.randn(4, 6).half())
    acc = torch.zeros(3, 5, dtype=torch.int32)
    with pytest.raises(ValueError, match="col_scale must be 5 contiguous float32 values, got 4"):
        native.dequantize(acc, torch.ones(3, 1), torch.ones(4), torch.zeros(5), torch.float32)
    with pytest.raises(ValueError, match="mid and weight_sum go together"):
        native.dequantize(acc, torch.ones(3, 1), torch.ones(5), torch.zeros(5), torch.float32, mid=torch.ones(3, 1))
    with pytest.raises(ValueError, match="int32 CPU products"):
        native.dequantize(acc.float(), torch.ones(3, 1), torch.ones(5), torch.zeros(5), torch.float32)
    with pytest.raises(ValueError, match="rescale: float32 or bfloat16 activations, got torch.int32"):
        native.rescale(acc, torch.ones(3, 1), torch.zeros(5))
    with pytest.raises(ValueError, match="bias must be 5 contiguous float32 values, got 6"):
        native.rescale(acc.bfloat16(), torch.ones(3, 1), torch.zeros(6))
    with pytest.raises(ValueError, match="mid and weight_sum go together"):
        native.rescale(acc.float(), torch.ones(3, 1), torch.zeros(5), weight_sum=torch.ones(5))


def test_the_library_is_built_once_per_home_then_loaded(tmp_path):
    """A fresh REVIEWS_HOME builds the library (logged); the next process loads it without building."""
    code = ("import logging, time; logging.basicConfig(level=logging.INFO); t = time.perf_counter(); "
            "from worker.nlp import int8; ok = int8.available(); "
            "print('available', ok, 'seconds %.3f' % (time.perf_counter() - t))")
    env = os.environ | {"REVIEWS_HOME": str(tmp_path / "home")}

    def start():
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)

    first, second = start(), start()
    assert "available True" in first.stdout, first.stderr
    assert "building the CPU kernels" in first.stderr and "CPU kernels built in" in first.stderr
    assert len(list((tmp_path / "home" / "cache" / "kernels").glob("*.so"))) == 1
    assert "available True" in second.stdout, second.stderr
    assert "building" not in second.stderr


def test_a_failed_build_names_the_compiler_and_leaves_nothing(tmp_path):
    broken = tmp_path / "g++"
    broken.write_text("#!/bin/sh\necho 'fatal error: torch/library.h: No such file or directory' >&2\nexit 1\n")
    broken.chmod(0o755)
    out = tmp_path / "kernels" / "lib.so"
    with pytest.raises(native.BuildError, match=r"g\+\+ failed \(exit 1\): fatal error: torch/library.h"):
        native.build(out, str(broken))
    assert list(out.parent.iterdir()) == []  # no half-written library for the next start to load


# -- the fused passes between products (fast.py) ----------------------------------------------------

import torch.nn.functional as F  # noqa: E402


def layer_inputs(rows, width, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    residual = torch.randn(rows, width, generator=gen) * 3
    gamma, beta = torch.rand(width, generator=gen) + 0.5, torch.randn(width, generator=gen) / 10
    return gen, residual, gamma, beta


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 24), width=st.integers(1, 130), seed=st.integers(0, 2**31 - 1), dtype=DTYPES)
def test_add_norm_is_add_then_layer_norm_then_cast(rows, width, seed, dtype):
    gen, residual, gamma, beta = layer_inputs(rows, width, seed, dtype)
    y = (torch.randn(rows, width, generator=gen) * 5).to(dtype)
    with torch.inference_mode():
        h, x = native.add_norm(residual, y, gamma, beta, 1e-12)
        want = F.layer_norm(residual + y.float(), (width,), gamma, beta, 1e-12)
    assert h.dtype == torch.float32 and x.dtype == dtype
    assert torch.allclose(h, want, rtol=1e-5, atol=2e-5)
    assert torch.equal(x, h.to(dtype))  # the same rounding as torch's cast


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 24), width=st.integers(1, 130), seed=st.integers(0, 2**31 - 1),
       kind=st.sampled_from([torch.int32, torch.float32, torch.bfloat16]), centered=st.booleans(),
       quantize_out=st.booleans())
def test_product_add_norm_quantize_is_the_steps_it_fuses(rows, width, seed, kind, centered, quantize_out):
    """int32 sums (torch._int_mm) with column scales, or floats with them applied (oneDNN): back to
    floats, + residual, LayerNorm, then quantized per row for the next products."""
    gen, residual, gamma, beta = layer_inputs(rows, width, seed, kind)
    row_scale, bias = torch.rand(rows, 1, generator=gen) / 100 + 1e-4, torch.randn(width, generator=gen)
    if kind == torch.int32:
        prod = torch.randint(-2**16, 2**16, (rows, width), generator=gen, dtype=torch.int32)
        col_scale = torch.rand(width, generator=gen) / 100
        y = prod.float() * row_scale * col_scale + bias
    else:
        prod, col_scale = (torch.randn(rows, width, generator=gen) * 300).to(kind), None
        y = prod.float() * row_scale + bias
    mid = weight_sum = None
    if centered:
        mid, weight_sum = torch.randn(rows, 1, generator=gen), torch.randn(width, generator=gen)
        y = y + mid * weight_sum
    with torch.inference_mode():
        h, q, scale = native.product_add_norm_quantize(prod, row_scale, col_scale, bias, residual, gamma, beta, 1e-12,
                                                       mid, weight_sum, quantize_out=quantize_out)
        want = F.layer_norm(residual + y, (width,), gamma, beta, 1e-12)
    assert torch.allclose(h, want, rtol=1e-4, atol=1e-4)
    if not quantize_out:
        assert q is None and scale is None
        return
    q_ref, scale_ref = native.quantize(h)  # of the h it returned: the same values, quantized alike
    assert torch.equal(q, q_ref) and torch.equal(scale, scale_ref)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 24), width=st.integers(1, 130), seed=st.integers(0, 2**31 - 1),
       kind=st.sampled_from([torch.int32, torch.float32, torch.bfloat16]), spread=st.sampled_from([0.01, 1.0, 30.0]))
def test_product_gelu_quantize_is_gelu_then_centered_quantize(rows, width, seed, kind, spread):
    gen = torch.Generator().manual_seed(seed)
    row_scale, bias = torch.rand(rows, 1, generator=gen) / 100 + 1e-4, torch.randn(width, generator=gen) * spread
    if kind == torch.int32:
        prod = torch.randint(-2**12, 2**12, (rows, width), generator=gen, dtype=torch.int32)
        col_scale = torch.rand(width, generator=gen) * spread
        y = prod.float() * row_scale * col_scale + bias
    else:
        prod, col_scale = (torch.randn(rows, width, generator=gen) * 100 * spread).to(kind), None
        y = prod.float() * row_scale + bias
    with torch.inference_mode():
        q, scale, mid = native.product_gelu_quantize(prod, row_scale, col_scale, bias)
        g = F.gelu(y)
        q_ref, scale_ref, mid_ref = native.quantize(g, centered=True)
    # GELU by a polynomial erf (torch's own, within 1.5e-7) and the scales' arithmetic: each value
    # within one step of the quantization grid, the grid itself within float rounding.
    assert torch.allclose(scale, scale_ref, rtol=1e-5, atol=1e-7)
    assert torch.allclose(mid, mid_ref, rtol=1e-5, atol=1e-6)
    assert (q.int() - q_ref.int()).abs().max() <= 1
    back = q.float() * scale + mid
    assert torch.allclose(back, g, atol=float(scale.max()) * 0.51 + 1e-5)


def test_the_fused_passes_refuse_mismatched_products_with_a_message():
    prod, ones = torch.zeros(3, 5), torch.ones(5)
    residual = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="int32 sums need their column scales, float products have them applied"):
        native.product_add_norm_quantize(prod, torch.ones(3, 1), ones, ones, residual, ones, ones, 1e-12)
    with pytest.raises(ValueError, match="int32 sums need their column scales"):
        native.product_gelu_quantize(prod.int(), torch.ones(3, 1), None, ones)
    with pytest.raises(ValueError, match="the residual must be contiguous float32 of \\(3, 5\\), got \\(3, 4\\)"):
        native.product_add_norm_quantize(prod, torch.ones(3, 1), None, ones, torch.zeros(3, 4), ones, ones, 1e-12)
    with pytest.raises(ValueError, match="needs a contiguous 2-d CPU product \\(int32, float32 or bfloat16\\), got \\(3, 5\\) torch.float16"):
        native.product_gelu_quantize(prod.half(), torch.ones(3, 1), None, ones)
    with pytest.raises(ValueError, match="add_norm: the residual must be contiguous float32"):
        native.add_norm(residual.bfloat16(), prod, ones, ones, 1e-12)


# -- attention (fast.py's native_attention) ----------------------------------------------------------

def needs_native_attention(test):
    return pytest.mark.cpu_feature(pytest.mark.skipif(
        not native.attention_available(), reason="no native attention here (it needs AVX-512 BF16)")(test))


def needs_attention_tiles(test):
    return pytest.mark.cpu_feature(pytest.mark.skipif(
        not native.attention_tiles_available(), reason="no attention on AMX's tiles here (it needs AMX)")(test))


def check_attention(rows, width, heads, head_dim, cls_only, seed, loud, tiles=False):
    """Against torch's attention in float32 on the same bf16 inputs, for rows padded on the right
    (any lengths, odd ones and a single key included): the outputs a forward reads agree to about
    bf16's rounding of the probabilities and the output; queries past a row's length get zeros."""
    gen = torch.Generator().manual_seed(seed)
    dim = heads * head_dim
    q, k, v = ((torch.randn(rows * width, dim, generator=gen) * loud).bfloat16() for _ in range(3))
    lengths = torch.randint(1, width + 1, (rows,), generator=gen)
    lengths[0] = width
    keep = torch.arange(width)[None, :] < lengths[:, None]
    split = lambda t: t.float().view(rows, -1, heads, head_dim).transpose(1, 2)  # noqa: E731
    want = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=keep[:, None, None, :])
    want = want.transpose(1, 2).reshape(rows, width, dim)
    if cls_only:
        q, want = q.view(rows, width, dim)[:, 0].contiguous(), want[:, :1]
    got = native.attention(q, k, v, lengths, heads, tiles=tiles).float().view(rows, -1, dim)
    live = keep[:, : got.shape[1]]
    tolerance = 0.02 * float(v.float().abs().max())
    assert torch.allclose(got[live], want[live], atol=tolerance, rtol=0.02)
    assert not got[~live].any()


@needs_native_attention
@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 4), width=st.integers(1, 90), heads=st.integers(1, 3),
       head_dim=st.sampled_from([16, 32, 48, 64, 128]), cls_only=st.booleans(), seed=st.integers(0, 2**31 - 1),
       loud=st.floats(0.1, 8.0))
def test_attention_is_softmax_of_scores_times_values(rows, width, heads, head_dim, cls_only, seed, loud):
    check_attention(rows, width, heads, head_dim, cls_only, seed, loud)


@needs_attention_tiles
@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 4), width=st.integers(1, 150), heads=st.integers(1, 3),
       head_dim=st.sampled_from([32, 64, 96, 128]), cls_only=st.booleans(), seed=st.integers(0, 2**31 - 1),
       loud=st.floats(0.1, 8.0))
def test_attention_on_amx_tiles_is_softmax_of_scores_times_values(rows, width, heads, head_dim, cls_only, seed, loud):
    """The same on AMX's tiles: widths across the tiles' blocks of 16 and 32 keys, partial blocks of
    queries (fewer than 16, and between 16 and 32)."""
    check_attention(rows, width, heads, head_dim, cls_only, seed, loud, tiles=True)


@needs_attention_tiles
def test_attention_on_tiles_takes_heads_in_steps_of_32():
    q = torch.zeros(6, 96, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="the tiles' kernel takes heads of 32, 64, 96 or 128, not 48"):
        native.attention(q, q, q, torch.tensor([3, 3]), 2, tiles=True)


@needs_native_attention
def test_attention_refuses_what_it_cannot_compute_with_a_message():
    q = torch.zeros(6, 32, dtype=torch.bfloat16)
    three = torch.tensor([3, 3])
    with pytest.raises(ValueError, match=r"attention: k must be contiguous 2-d bf16 on CPU, got \(6, 32\) torch.float32"):
        native.attention(q, q.float(), q, three, 2)
    with pytest.raises(ValueError, match="head size a multiple of 16"):
        native.attention(q, q, q, three, 4)
    with pytest.raises(ValueError, match="lengths must lie in 1..3"):
        native.attention(q, q, q, torch.tensor([3, 0]), 2)
    with pytest.raises(ValueError, match="q has 4 rows, for 2 rows of 3 positions"):
        native.attention(q[:4], q, q, three, 2)
    with pytest.raises(ValueError, match="lengths must be contiguous int64"):
        native.attention(q, q, q, three.int(), 2)
