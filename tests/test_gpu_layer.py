"""gpu_layer.py's layer (CUDA's forward) against the plain torch layer, on any device.

Without a GPU its add + LayerNorm is torch's ops, so these check the layer's structure (q, k and v from
one stacked product, the [CLS] rows, GELU in the product's epilogue); tests/test_cuda.py checks the
Triton kernel itself and the whole forward on a GPU."""

import pytest
import torch

from worker.nlp import gpu_layer
from worker.nlp.ner import load_ner
from worker.nlp.sentiment import load_sentiment


@pytest.mark.parametrize("cls_only", [False, True])
@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_the_gpu_layer_computes_what_the_torch_layer_does(tiny_models, task, cls_only):
    loader = load_sentiment if task == "sentiment" else load_ner
    fwd = loader(str(tiny_models[task]), device="cpu", precision="fp32").forward._forward
    dim = fwd.model.config.dim
    torch.manual_seed(0)
    # The tiny models' initial weights (std 0.02) make attention nearly uniform; larger ones make
    # which rows are queries and which keys matter.
    for module in fwd.model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.3)
            torch.nn.init.normal_(module.bias, std=0.3)
    h = torch.randn(3, 11, dim)
    keep = torch.ones(3, 11, dtype=torch.bool)
    keep[1, 6:] = False
    mask = keep[:, None, None, :]
    with torch.inference_mode():
        for layer in fwd.layers:
            want = fwd._layer(layer, h, mask, None, cls_only=cls_only)
            got, x = gpu_layer.layer(layer, h, h.clone(), mask, cls_only, torch.float32, fwd._attend)
            assert got.shape == want.shape == x.shape == (3, 1 if cls_only else 11, dim)
            assert torch.equal(x, got)
            # GELU's tanh form against the exact one: under 5e-4 apart before the next LayerNorm.
            assert torch.allclose(got, want, atol=2e-3), float((got - want).abs().max())
            h = want if not cls_only else h


def test_linear_gelu_is_the_gelu_of_the_product():
    """torch's CPU kernel applies the exact GELU, cuBLASLt's epilogue its tanh form."""
    torch.manual_seed(1)
    linear = torch.nn.Linear(16, 40)
    x = torch.randn(2, 5, 16) * 3
    with torch.inference_mode():
        got = gpu_layer.linear_gelu(x, linear)
        assert got.shape == (2, 5, 40)
        assert (got - torch.nn.functional.gelu(linear(x))).abs().max() < 5e-4


def test_add_norm_reads_strided_residual_rows():
    torch.manual_seed(2)
    norm = torch.nn.LayerNorm(24)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    h = torch.randn(4, 7, 24)
    a = torch.randn(4, 24, dtype=torch.bfloat16)
    got, x = gpu_layer.add_norm(h[:, 0], a, norm, torch.bfloat16)
    want = torch.nn.functional.layer_norm(h[:, 0] + a.float(), (24,), norm.weight, norm.bias, norm.eps)
    assert torch.allclose(got, want, atol=1e-6) and x.dtype == torch.bfloat16
    assert torch.equal(x, want.to(torch.bfloat16))


def test_the_stacked_qkv_weights_follow_the_layers_weights(tiny_models):
    """Made once, but made again when a weight is replaced, moved or cast."""
    fwd = load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision="fp32").forward._forward
    att = fwd.layers[0].attention
    dim = att.q_lin.weight.shape[1]
    weight, bias = gpu_layer.stacked_qkv(att)
    assert gpu_layer.stacked_qkv(att)[0] is weight  # kept
    assert torch.equal(weight[dim:2 * dim], att.k_lin.weight) and torch.equal(bias[:dim], att.q_lin.bias)
    att.k_lin.to(torch.float64)
    assert gpu_layer.stacked_qkv(att)[0].dtype == torch.float64  # torch.cat promotes to the widest
    att.v_lin.bias = torch.nn.Parameter(torch.ones_like(att.v_lin.bias))
    assert torch.equal(gpu_layer.stacked_qkv(att)[1][2 * dim:], torch.ones(dim))


def test_nothing_on_a_cpu_imports_triton(tiny_models):
    """Importing Triton takes 0.3-1 s (it ships with torch's CUDA wheels, which CPU hosts often run)."""
    gpu_layer._triton.cache_clear()
    load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision="fp32").predict(["a great film"])
    norm = torch.nn.LayerNorm(8)
    gpu_layer.add_norm(torch.randn(2, 8), torch.randn(2, 8), norm, torch.bfloat16)
    assert not gpu_layer.available(torch.device("cpu"))
    assert gpu_layer._triton.cache_info().misses == 0
