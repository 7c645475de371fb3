"""worker/nlp/packed.py: bf16 Linear layers with weights packed once for oneDNN."""

import pytest
import torch

from worker.nlp import packed
from worker.nlp.ner import load_ner
from worker.nlp.sentiment import load_sentiment

def needs_packing(test):
    return pytest.mark.cpu_feature(pytest.mark.skipif(
        not packed.available(), reason="this torch cannot pack bf16 weights for oneDNN on this CPU")(test))


@needs_packing
def test_packed_linear_gives_the_plain_product():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 80).to(torch.bfloat16)
    x = torch.randn(4, 30, 96).to(torch.bfloat16)
    layer = packed.PackedLinear(linear)
    with torch.inference_mode():
        for inputs in (x, x[:, :1], x[0]):  # 3-D, a strided slice (the [CLS] rows), 2-D
            want, got = linear(inputs), layer(inputs)
            assert got.shape == want.shape and got.dtype == torch.bfloat16
            assert torch.allclose(got.float(), want.float(), rtol=0.02, atol=0.05)


@needs_packing
@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_bf16_engine_packs_every_linear_but_the_head_and_agrees_with_plain_layers(tiny_models, task):
    from worker.nlp import batching

    loader = load_sentiment if task == "sentiment" else load_ner
    engine = loader(str(tiny_models[task]), device="cpu", precision="bf16")
    names = [n for n, m in engine.model.named_modules() if isinstance(m, packed.PackedLinear)]
    n_layers = engine.model.config.n_layers
    assert len(names) == 6 * n_layers  # q, k, v, out, lin1, lin2 of every layer; not the head
    assert not any(n.endswith("classifier") for n in names)

    plain_model = loader(str(tiny_models[task]), device="cpu", precision="fp32").model
    plain = batching.Forward(plain_model, torch.device("cpu"), "bf16", per_token=task == "ner", pack_weights=False)
    assert not any(isinstance(m, packed.PackedLinear) for m in plain_model.modules())
    torch.manual_seed(1)
    ids = torch.randint(5, engine.model.config.vocab_size, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    with torch.inference_mode():
        got, want = engine.forward(ids, mask), plain(ids, mask)
    keep = mask.bool() if task == "ner" else slice(None)
    assert torch.allclose(got[keep], want[keep], atol=0.05)
    assert torch.equal(got[keep].argmax(-1), want[keep].argmax(-1))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_other_precisions_keep_their_own_layers(tiny_models, precision):
    engine = load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision=precision)
    assert not any(isinstance(m, packed.PackedLinear) for m in engine.model.modules())
