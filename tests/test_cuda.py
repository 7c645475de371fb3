"""The engine, a whole `reviews run` and a training step on a CUDA device, against fp32 on the CPU.

These run where torch sees a GPU (bench/gpu.sh runs them there) and skip elsewhere, CI included:
CI has no GPU, so REVIEWS_TEST_STRICT leaves the `cuda` mark's skips as skips (conftest.py).
"""

import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import func, select

from conftest import make_settings, settings_env, write_jsonl
from cli.main import main
from worker.db import session_factory
from worker.nlp.ner import load_ner
from worker.nlp.sentiment import load_sentiment
from worker.schema import EntityRow, NerResult, Review, SentimentResult

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device visible to torch (bench/gpu.sh runs these on a GPU host)"),
]

TEXTS = [
    "Orson Welles made Citizen Kane in Hollywood. " * 40,  # several windows
    "bad",
    "An average evening at the cinema with Meryl Streep and Tom Hanks in New York.",
    "",
    "great great great film, I loved every minute of it " * 3,
]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sentiment_on_cuda_matches_fp32_on_cpu(tiny_models, precision):
    ref = load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision="fp32").predict(TEXTS)
    s = load_sentiment(str(tiny_models["sentiment"]), device="cuda", precision=precision)
    assert s.device.type == "cuda" and s.precision == precision
    assert next(s.model.parameters()).device.type == "cuda"
    got = s.predict(TEXTS)
    assert [g.score for g in got] == pytest.approx([r.score for r in ref], abs=0.05)
    assert [g.label for g in got] == [r.label for r in ref] or all(abs(r.score) < 0.05 for r in ref)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_ner_on_cuda_finds_the_spans_fp32_finds(tiny_models, precision):
    ref = load_ner(str(tiny_models["ner"]), device="cpu", precision="fp32").predict(TEXTS)
    got = load_ner(str(tiny_models["ner"]), device="cuda", precision=precision).predict(TEXTS)
    for ents, text in zip(got, TEXTS):
        assert all(text[e.start:e.end] == e.text for e in ents)
    a = {(i, e.label, e.start, e.end) for i, es in enumerate(got) for e in es}
    b = {(i, e.label, e.start, e.end) for i, es in enumerate(ref) for e in es}
    assert len(a & b) >= 0.9 * len(b)  # random tiny weights sit near ties; the real models are checked in bench


def test_both_tasks_queued_together_on_cuda_give_what_each_gives_alone(tiny_models):
    """predict_both queues the tagger's batches before it reads the sentiment model's back."""
    from worker.nlp.ner import predict_both

    s = load_sentiment(str(tiny_models["sentiment"]), device="cuda", precision="bf16")
    n = load_ner(str(tiny_models["ner"]), device="cuda", precision="bf16")
    texts = TEXTS * 20  # several batches of each model in flight at once
    assert predict_both(s, n, texts) == (s.predict(texts), n.predict(texts))


def test_batches_from_several_threads_on_their_own_streams_give_what_each_gives_alone(tiny_models):
    """A threads-pool worker on a GPU: each thread queues on its own CUDA stream (device.thread_stream)
    and reads back only its own results."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.nlp.ner import predict_both

    s = load_sentiment(str(tiny_models["sentiment"]), device="cuda", precision="bf16")
    n = load_ner(str(tiny_models["ner"]), device="cuda", precision="bf16")
    batches = [(TEXTS[k % len(TEXTS):] + TEXTS[:k % len(TEXTS)]) * (5 + k) for k in range(8)]
    alone = [predict_both(s, n, texts) for texts in batches]
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda texts: predict_both(s, n, texts), batches)) == alone


def test_attention_on_cuda_never_runs_cudnn_kernels(tiny_models):
    """cuDNN's attention builds a plan for each new batch shape (fast.py): with and without padding,
    the engine must use the kernels that need none."""
    from torch.profiler import ProfilerActivity, profile

    s = load_sentiment(str(tiny_models["sentiment"]), device="cuda", precision="bf16")
    n = load_ner(str(tiny_models["ner"]), device="cuda", precision="bf16")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        s.predict(TEXTS), n.predict(TEXTS), s.predict(["same length"] * 3)
    kernels = [e.key for e in prof.key_averages()]
    assert any("attention" in k.lower() or "fmha" in k.lower() or "flash" in k.lower() for k in kernels), kernels
    assert not [k for k in kernels if "cudnn" in k.lower()]


def test_auto_on_cuda_is_half_precision_with_a_gpu_sized_budget(tiny_models):
    from worker.nlp.device import pick_precision

    s = load_sentiment(str(tiny_models["sentiment"]), device="auto", precision="auto")
    assert s.device.type == "cuda"
    assert s.precision == pick_precision("auto", s.device) and s.precision in ("bf16", "fp16")
    assert s.options.token_budget == 16384
    with pytest.raises(ValueError, match="int8 runs on CPU only"):
        load_sentiment(str(tiny_models["sentiment"]), device="cuda", precision="int8")


def test_reviews_run_on_cuda_stores_every_review(sqlite_url, tiny_models, tmp_path):
    settings = make_settings(sqlite_url, tiny_models, model_dir=str(tmp_path / "versions"))
    rows = [{"id": f"r{i}", "text": TEXTS[i % len(TEXTS)] + f" review {i}"} for i in range(40)]
    env = settings_env(settings) | {"REVIEWS_DEVICE": "cuda"}
    result = CliRunner().invoke(main, ["run", str(write_jsonl(tmp_path / "r.jsonl", rows))], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "40/40 done, 0 failed" in result.output
    with session_factory(sqlite_url)() as s:
        assert s.scalar(select(func.count()).select_from(SentimentResult)) == 40
        assert s.scalar(select(func.count()).select_from(NerResult)) == 40
        spans = select(Review.text, EntityRow.start_char, EntityRow.end_char, EntityRow.text).join(
            EntityRow, EntityRow.review_id == Review.id)
        for text, start, end, ent in s.execute(spans):
            assert text[start:end] == ent


def test_training_learns_a_toy_task_on_cuda_in_half_precision(tiny_models, tmp_path):
    """As tests/test_training.py's CPU test, on the GPU at its auto precision (bf16 or fp16)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from worker.training import evaluate as ev
    from worker.training.data import SentimentExample
    from worker.training.train import TrainConfig, train_sentiment

    pos = ["great film", "loved the acting", "good story", "great music and good acting", "loved it"]
    neg = ["awful film", "boring plot", "terrible acting", "bad story and boring music", "hate it"]
    toy = [SentimentExample(t, 1) for t in pos] + [SentimentExample(t, 0) for t in neg]
    tok = AutoTokenizer.from_pretrained(tiny_models["sentiment"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["sentiment"])
    cfg = TrainConfig(epochs=20, lr=3e-3, max_length=32, batch_tokens=64, warmup_ratio=0.0, log_every=1000,
                      device="cuda", precision="auto")
    stats = train_sentiment(model, tok, toy * 8, cfg, progress=lambda m: None)
    assert stats["device"].startswith("cuda") and stats["precision"] in ("bf16", "fp16")
    assert stats["final_loss"] < 0.3  # the mean of the last 50 steps
    model.save_pretrained(tmp_path / "trained")
    tok.save_pretrained(tmp_path / "trained")
    assert ev.evaluate_sentiment(str(tmp_path / "trained"), toy)["accuracy"] == 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,dim", [(1, 768), (5, 100), (4099, 768), (3, 1100)])
def test_the_add_norm_kernel_computes_torch_layer_norm(dtype, rows, dim):
    """gpu_layer's Triton kernel against torch's ops on the same GPU, strided residual rows included."""
    from worker.nlp import gpu_layer

    assert gpu_layer.available(torch.device("cuda")), "Triton ships with torch's CUDA wheels"
    g = torch.Generator(device="cuda").manual_seed(rows + dim)
    norm = torch.nn.LayerNorm(dim).cuda()
    norm.weight.data.normal_(generator=g)
    norm.bias.data.normal_(generator=g)
    h = torch.randn(rows, 3, dim, device="cuda", generator=g) * 4
    a = torch.randn(rows, dim, device="cuda", generator=g).to(dtype)
    for residual in (h[:, 0], h[:, 1].contiguous()):
        got, x = gpu_layer.add_norm(residual, a, norm, dtype)
        want = torch.nn.functional.layer_norm(residual + a.float(), (dim,), norm.weight, norm.bias, norm.eps)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())
        # x is h rounded to dtype (within one unit in the last place: the rounding mode is Triton's)
        assert x.dtype == dtype
        assert torch.allclose(x.float(), got.to(dtype).float(), rtol=2 ** -7 if dtype == torch.bfloat16 else 2 ** -10, atol=0)


def test_the_cuda_forward_runs_the_fused_steps(tiny_models):
    """Between the products, the Triton add + LayerNorm: torch's LayerNorm runs once a forward (the
    embeddings'), the fused kernel twice a layer."""
    from torch.profiler import ProfilerActivity, profile

    s = load_sentiment(str(tiny_models["sentiment"]), device="cuda", precision="bf16")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        s.predict(TEXTS)
    kernels = [e.name.lower() for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    fused = sum("add_norm" in k for k in kernels)
    plain = sum("layer_norm" in k for k in kernels)
    assert plain >= 1 and fused == plain * 2 * s.model.config.n_layers, sorted(set(kernels))
