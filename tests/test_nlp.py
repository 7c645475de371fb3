"""The inference engine on tiny saved models: loading, windows, batching, offsets, BIO decoding."""


import pytest
import torch

from conftest import int8_layer_pairs
from worker.nlp.ner import load_ner
from worker.nlp.sentiment import load_sentiment
from worker.nlp.types import ModelLoadError
from worker.nlp.batching import Window, token_budget_batches, window_spans
from worker.nlp.ner import decode_bio, stitch


def test_window_spans_cover_the_text_with_overlap_and_equal_lengths():
    assert window_spans(10, 62, 16) == [(0, 10)]
    assert window_spans(62, 62, 16) == [(0, 62)]
    for n in (63, 100, 200, 1000, 5001):
        spans = window_spans(n, 62, 16)
        assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] == n  # the whole text
        assert all(length <= 62 for _, length in spans)
        assert len({length for _, length in spans}) == 1
        for (a, la), (b, _) in zip(spans, spans[1:]):
            assert a + la - b >= 16  # consecutive windows share at least 16 tokens
        assert len(spans) == -(-(n - 16) // (62 - 16))  # no more windows than full ones would need
    assert window_spans(100, 62, 16) == [(0, 58), (42, 58)]  # two equal windows, not 62 + 62


def test_token_budget_batches_respect_the_budget_and_keep_every_window():
    windows = [Window(i, 0, [1] * n) for i, n in enumerate([5, 300, 40, 41, 120, 7, 300])]
    batches = token_budget_batches(windows, token_budget=700)
    assert sorted(i for b in batches for i in b) == list(range(len(windows)))
    for b in batches:
        assert len(b) * max(len(windows[i].ids) + 2 for i in b) <= 700 or len(b) == 1
    assert batches[0] == [1, 6]  # longest first


def test_group_by_budget_caps_rows_and_gives_an_oversized_row_its_own_group():
    from worker.nlp.batching import group_by_budget

    lengths = [10, 10, 10, 10, 10, 900]
    groups = group_by_budget(list(range(6)), lengths, token_budget=100, max_rows=3)
    assert groups == [[0, 1, 2], [3, 4], [5]]  # 3 rows at most; 900 > budget, alone
    assert group_by_budget([], [], 100) == []


def test_stitch_prefers_the_window_where_a_token_is_most_central():
    a = torch.zeros(6, 2)
    a[:, 0] = 1  # window 0 covers tokens 0-5 and votes class 0
    b = torch.zeros(6, 2)
    b[:, 1] = 1  # window 1 covers tokens 4-9 and votes class 1
    out = stitch(10, [(0, a), (4, b)]).argmax(-1).tolist()
    assert out[:4] == [0, 0, 0, 0] and out[6:] == [1, 1, 1, 1]
    assert out[4] == 1 or out[5] == 1  # in the overlap the more central window wins


def test_decode_bio_follows_seqeval():
    text = "John Smith visited New York City"
    words = [(0, 0, 4), (1, 5, 10), (2, 11, 18), (3, 19, 22), (4, 23, 27), (5, 28, 32)]
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC"]
    ents = decode_bio(text, words, tags, [0.9] * 6)
    assert [(e.label, e.text, e.start, e.end) for e in ents] == [
        ("PER", "John Smith", 0, 10), ("LOC", "New York", 19, 27), ("LOC", "City", 28, 32)]


# seqeval.metrics.sequence_labeling.get_entities (1.2.2, default mode) worked by hand for each case:
# its (type, first, last inclusive) is turned into bio_spans' (first, last exclusive, type) below.
@pytest.mark.parametrize("tags, seqeval_entities", [
    ([], []),
    (["O", "O"], []),
    (["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O", "B-MISC"],
     [("PER", 0, 1), ("LOC", 3, 5), ("MISC", 7, 7)]),  # mixed, the last one runs to the end
    (["O", "I-ORG", "I-ORG", "O"], [("ORG", 1, 2)]),  # I- after O begins an entity
    (["I-PER", "O"], [("PER", 0, 0)]),  # so does I- at the start
    (["I-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # a type change inside I- splits
    (["B-PER", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 1)]),
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),  # B- after B- of the same type
    (["I-LOC", "B-LOC", "O", "B-ORG", "O", "I-ORG"], [("LOC", 0, 0), ("LOC", 1, 1), ("ORG", 3, 3), ("ORG", 5, 5)]),
    (["O-PER", "B-LOC"], [("LOC", 1, 1)]),  # seqeval reads the letter O as outside
])
def test_bio_spans_match_seqeval(tags, seqeval_entities):
    from worker.nlp.bio import bio_spans

    assert bio_spans(tags) == [(first, last + 1, kind) for kind, first, last in seqeval_entities]


def test_a_tag_without_prefix_reads_as_i():
    from worker.nlp.bio import bio_spans, is_bio_tag

    bare = ["PER", "PER", "O", "B-LOC", "LOC", "ORG", "I-ORG"]
    assert bio_spans(bare) == bio_spans(["I-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-ORG", "I-ORG"])
    assert bio_spans(bare) == [(0, 2, "PER"), (3, 5, "LOC"), (5, 7, "ORG")]
    # A labelled file may hold only O, B-TYPE and I-TYPE.
    assert all(is_bio_tag(t) for t in ("O", "B-PER", "I-MISC"))
    assert not any(is_bio_tag(t) for t in ("PER", "B-", "I-", "E-PER", "S-LOC", "O-PER", "b-PER", "B", "", "B- X"))


def test_decode_bio_averages_word_scores():
    text = "Obama met Angela Merkel"
    words = [(0, 0, 5), (1, 6, 9), (2, 10, 16), (3, 17, 23)]
    tags = ["B-PER", "O", "B-PER", "I-PER"]  # per word: its first piece's
    ents = decode_bio(text, words, tags, [0.9, 0.5, 0.8, 0.6])
    assert [(e.label, e.text, e.start, e.end) for e in ents] == [("PER", "Obama", 0, 5), ("PER", "Angela Merkel", 10, 23)]
    assert ents[1].score == pytest.approx(0.7)
    assert decode_bio(text, [], [], []) == []


def test_the_bio_decoder_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, worker.nlp.bio; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_models_load_and_predict(tiny_models):
    s = load_sentiment(str(tiny_models["sentiment"]), max_length=64, stride=16)
    n = load_ner(str(tiny_models["ner"]), max_length=64, stride=16)
    texts = ["A great film about Paris and London. " * 30, "bad", "  "]
    for r in s.predict(texts):
        assert r.label in ("negative", "positive") and 0.5 <= r.probability <= 1 and -1 <= r.score <= 1
    for text, ents in zip(texts, n.predict(texts)):
        for e in ents:
            assert text[e.start:e.end] == e.text and e.label in ("PER", "ORG", "LOC", "MISC")
    assert s.predict([]) == [] and n.predict([]) == []


def test_long_text_is_read_in_windows_and_order_is_kept(tiny_models):
    s = load_sentiment(str(tiny_models["sentiment"]), max_length=64, stride=16, token_budget=256)
    texts = ["good " * 500, "bad movie", "the plot " * 100]
    together = s.predict(texts)
    alone = [s.predict([t])[0] for t in texts]
    for a, b in zip(together, alone):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=2e-2)


def test_fp32_and_bf16_agree_on_labels(tiny_models):
    texts = ["the acting was great", "boring plot", "I loved the music and the ending"]
    a = load_sentiment(str(tiny_models["sentiment"]), precision="fp32").predict(texts)
    b = load_sentiment(str(tiny_models["sentiment"]), precision="bf16").predict(texts)
    assert [x.score for x in a] == pytest.approx([x.score for x in b], abs=2e-2)


def test_missing_or_broken_model_gives_one_clear_error(tmp_path, tiny_models):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_sentiment(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_sentiment(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_models["sentiment"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot load sentiment model"):
        load_sentiment(str(broken))


def test_pickle_weights_are_refused(tmp_path, tiny_models):
    only_pickle = tmp_path / "pickle"
    only_pickle.mkdir()
    for f in tiny_models["sentiment"].iterdir():
        if f.name != "model.safetensors":
            (only_pickle / f.name).write_bytes(f.read_bytes())
    # fp32: a bf16 engine's weights may be packed for oneDNN (packed.py), which torch.save cannot write
    model = load_sentiment(str(tiny_models["sentiment"]), precision="fp32").model
    torch.save(model.state_dict(), only_pickle / "pytorch_model.bin")
    with pytest.raises(ModelLoadError):
        load_sentiment(str(only_pickle))


def test_tiny_tokenizer_knows_its_words(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["sentiment"])
    assert tok.convert_ids_to_tokens(tok("Great films!")["input_ids"]) == ["[CLS]", "great", "film", "##s", "!", "[SEP]"]


# -- the fast DistilBERT forward, window rules, lazy imports ----------------------------------------


def _batch(vocab_size: int, rows: int = 3, width: int = 40):
    torch.manual_seed(1)
    ids = torch.randint(5, vocab_size, (rows, width))
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[1, 25:] = 0  # padded rows, as length-sorted batches have
    mask[2, 7:] = 0
    return ids, mask


@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_fast_forward_matches_transformers_in_fp32(tiny_models, task):
    """The engine's own loader and forward give transformers' logits (from_pretrained, its forward)."""
    from worker.nlp import distilbert, fast, loading

    model, *_ = loading.load(str(tiny_models[task]), task, "cpu", "fp32")
    reference, *_ = loading.load(str(tiny_models[task]), task, "cpu", "fp32", use_transformers=True)
    assert isinstance(model, distilbert.Classifier) and not isinstance(reference, distilbert.Classifier)
    assert fast.supports(model) and fast.supports(reference)
    ids, mask = _batch(model.config.vocab_size)
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = fast.DistilBertForward(model, per_token=task == "ner")(ids, mask)
        full = fast.DistilBertForward(model, per_token=task == "ner", cls_only=False)(ids, mask)
        on_reference = fast.DistilBertForward(reference, per_token=task == "ner")(ids, mask)
    keep = mask.bool() if task == "ner" else slice(None)  # padded positions of a token head are never read
    assert torch.allclose(got[keep], expected[keep], atol=1e-5)
    assert torch.allclose(full[keep], expected[keep], atol=1e-5)  # [CLS]-only last layer changes nothing
    assert torch.equal(got, on_reference)  # the same weights, read into either model


def test_bf16_keeps_layernorms_and_embeddings_in_fp32(tiny_models):
    s = load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision="bf16")
    assert s.forward.fast
    layer = s.model.distilbert.transformer.layer[0]
    assert layer.attention.q_lin.weight.dtype == torch.bfloat16 and layer.ffn.lin2.weight.dtype == torch.bfloat16
    assert layer.sa_layer_norm.weight.dtype == torch.float32
    assert s.model.distilbert.embeddings.word_embeddings.weight.dtype == torch.float32
    ids, mask = _batch(s.model.config.vocab_size)
    with torch.inference_mode():
        logits = s.forward(ids, mask)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_the_fused_cpu_forward_computes_what_the_torch_ops_did(tiny_models, task, precision):
    """kernels.cpp's passes between the products (fast.py's fused layers) against the same forward
    in torch ops. int8 differs a little by design: it quantizes the float32 LayerNorm output where
    the torch ops quantized its bf16 copy."""
    from worker.nlp import int8, native

    if not native.available() or (precision == "int8" and not int8.available()):
        pytest.skip("the CPU kernels do not build here")
    loader = load_sentiment if task == "sentiment" else load_ner
    fwd = loader(str(tiny_models[task]), device="cpu", precision=precision).forward._forward
    assert fwd.int8 == (precision == "int8")
    ids, mask = _batch(fwd.model.config.vocab_size)
    with torch.inference_mode():
        got = fwd(ids, mask)
        assert fwd.fused  # decided at the first call on CPU
        fwd.fused = False
        want = fwd(ids, mask)
    keep = mask.bool() if task == "ner" else slice(None)
    tolerance = {"fp32": 1e-4, "bf16": 0.05, "int8": 0.1}[precision] * float(want[keep].abs().max())
    assert torch.allclose(got[keep], want[keep], atol=tolerance)


def _sentiment_model_of(architecture: str, directory, tiny_models, **size):
    """A tiny transformers sentiment model of `architecture` (e.g. "Bert") with the tiny tokenizer."""
    import transformers

    config = getattr(transformers, f"{architecture}Config")(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}, **size)
    getattr(transformers, f"{architecture}ForSequenceClassification")(config).save_pretrained(directory)
    for f in tiny_models["sentiment"].iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special")):
            (directory / f.name).write_bytes(f.read_bytes())
    return str(directory)


def test_other_architectures_run_through_transformers_forward(tmp_path, tiny_models):
    directory = _sentiment_model_of("Bert", tmp_path / "bert", tiny_models, max_position_embeddings=64)
    s = load_sentiment(directory, precision="bf16")
    assert not s.forward.fast
    texts = ["the film was great " * 20, "bad"]
    a = s.predict(texts)
    b = load_sentiment(directory, precision="fp32").predict(texts)
    assert [x.score for x in a] == pytest.approx([x.score for x in b], abs=2e-2)


def test_an_architecture_without_fused_attention_loads_with_its_own(tmp_path, tiny_models):
    # MPNet (all-mpnet-base-v2, the sentiment teacher) has no SDPA attention in transformers: asking
    # for it raised, so such a model could be neither a teacher nor imported.
    directory = _sentiment_model_of("MPNet", tmp_path / "mpnet", tiny_models, max_position_embeddings=66)
    s = load_sentiment(directory, precision="fp32", max_length=64, stride=16)
    probs = s.probabilities(["the film was great " * 20, "bad"])
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(1), torch.ones(2))


def test_owners_give_every_token_exactly_one_window():
    from worker.nlp.batching import owners

    spans = [(0, 62), (46, 62), (92, 62), (138, 62)]
    owner = owners(200, spans)
    assert owner.shape == (200,)
    for k, (start, length) in enumerate(spans):
        mine = (owner == k).nonzero().squeeze(1)
        assert bool(((mine >= start) & (mine < start + length)).all())  # only tokens the window covers
    assert owner[:40].eq(0).all() and owner[-40:].eq(3).all()
    assert torch.bincount(owner).sum() == 200


def test_combine_windows_rules():
    from worker.nlp.sentiment import combine_windows

    rows = [torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0]), torch.tensor([0.0, 0.0])]
    windows = [Window(0, 0, [1] * 10), Window(0, 6, [1] * 10), Window(0, 12, [1] * 10)]  # 22 tokens
    parts = list(zip(windows, rows))
    assert combine_windows(parts, 22, "mean").tolist() == pytest.approx([1.0, 1.0])
    # Owned tokens: window 0 has tokens 0-7, window 1 tokens 8-13, window 2 tokens 14-21.
    assert combine_windows(parts, 22, "owned").tolist() == pytest.approx([24 / 22, 18 / 22])
    single = [(windows[0], torch.tensor([0.3, 0.7]))]
    assert combine_windows(single, 10, "owned").tolist() == pytest.approx([0.3, 0.7])
    with pytest.raises(ValueError):
        combine_windows(parts, 22, "vote")


def test_an_entity_in_a_window_overlap_is_decoded_once():
    # Two windows over 12 tokens (one word each) overlap on tokens 4-7; both tag tokens 5-6 as a PER.
    tags = ["O", "B-PER", "I-PER"]
    a = torch.full((8, 3), -5.0)
    a[:, 0] = 5.0
    b = torch.full((8, 3), -5.0)
    b[:, 0] = 5.0
    a[5, 0], a[5, 1], a[6, 0], a[6, 2] = -5.0, 5.0, -5.0, 5.0  # tokens 5-6 in window a
    b[1, 0], b[1, 1], b[2, 0], b[2, 2] = -5.0, 5.0, -5.0, 5.0  # the same tokens in window b (start 4)
    tag_ids = stitch(12, [(0, a), (4, b)]).argmax(-1).tolist()
    text = " ".join(f"w{i:02d}" for i in range(12))
    words = [(i, 4 * i, 4 * i + 3) for i in range(12)]
    ents = decode_bio(text, words, [tags[t] for t in tag_ids], [1.0] * 12)
    assert [(e.label, e.start, e.end) for e in ents] == [("PER", 20, 27)]


def test_long_review_entities_do_not_overlap(tiny_models):
    n = load_ner(str(tiny_models["ner"]), max_length=64, stride=16, token_budget=256)
    text = "John Smith met Mary in Paris and London for Warner Bros. " * 40
    ents = n.predict([text])[0]
    spans = [(e.start, e.end) for e in ents]
    assert spans == sorted(spans) and len(set(spans)) == len(spans)
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))  # no two entities share a character
    assert all(text[e.start:e.end] == e.text for e in ents)


def test_importing_the_result_types_does_not_import_torch_or_transformers():
    import subprocess
    import sys

    code = ("import sys, worker.nlp.types, cli.main; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "transformers" not in out


def test_int8_quantizes_every_linear_but_the_head_and_stays_close_to_fp32(tiny_models):
    from worker.nlp.int8 import Int8Linear

    texts = ["the film was great " * 30, "bad", "an average evening at the cinema"]
    ref = load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision="fp32").predict(texts)
    s = load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision="int8")
    assert s.forward.fast
    plain = [name for name, m in s.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert plain == ["pre_classifier", "classifier"]
    n_layers = s.model.config.n_layers
    assert [name for name, m in s.model.named_modules() if getattr(m, "centered", False)] == [
        f"distilbert.transformer.layer.{i}.ffn.lin2" for i in range(n_layers)]
    assert sum(isinstance(m, Int8Linear) for m in s.model.modules()) == 6 * n_layers  # q, k, v, out, lin1, lin2
    got = s.predict(texts)
    assert [g.score for g in got] == pytest.approx([r.score for r in ref], abs=0.05)
    assert n_entities_ok(load_ner(str(tiny_models["ner"]), device="cpu", precision="int8").predict(texts), texts)


def int8_kernels():
    from worker.nlp import int8

    return ["int_mm", pytest.param("onednn", marks=[pytest.mark.cpu_feature, pytest.mark.skipif(
        not int8.onednn_available(), reason="this torch has no oneDNN int8 Linear for this CPU")]),
        pytest.param("cpp", marks=[pytest.mark.cpu_feature, pytest.mark.skipif(
            not int8.cpp_available(), reason="no C++ int8 product here (it needs AVX2 and a C++ compiler)")])]


@pytest.mark.parametrize("kernel", int8_kernels())
@pytest.mark.parametrize("centered", [False, True])
def test_int8_linear_matches_the_float_product_per_token(centered, kernel):
    from worker.nlp.int8 import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 20, 64) + (2.0 if centered else 0.0)  # one-sided input, as after GELU
    x[0, 0] *= 100  # one loud token: with one scale per token it does not coarsen the others
    with torch.inference_mode():
        want, got = linear(x), Int8Linear(linear, centered=centered, kernel=kernel)(x)
    assert got.shape == want.shape and got.dtype == x.dtype
    quiet = (got - want)[:, 1:].abs().max() / want[:, 1:].abs().max()
    assert quiet < 0.02
    assert ((got - want)[0, 0].abs().max() / want[0, 0].abs().max()) < 0.02


@pytest.mark.cpu_feature
def test_both_int8_products_give_the_same_outputs_and_the_faster_one_is_measured(caplog, monkeypatch, tmp_path):
    """The two kernels compute the same products (int32 sums, exact): they differ in where the column
    scales are applied, so by float rounding only. product_kernel times both and says so."""
    from worker.nlp import int8

    if not int8.onednn_available():
        pytest.skip("this torch has no oneDNN int8 Linear for this CPU")
    for a, b in int8_layer_pairs(("int_mm", "onednn"), seed=1):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="int8 kernel must be one of int_mm, onednn, cpp, not 'vnni'"):
        int8.Int8Linear(torch.nn.Linear(96, 80), kernel="vnni")
    monkeypatch.setenv("REVIEWS_HOME", str(tmp_path / "home"))  # measured, not read from a cache
    int8.product_kernel.cache_clear()
    with caplog.at_level("INFO", logger="worker.nlp.int8"):
        pick = int8.product_kernel(96, 80)
    assert pick in int8.KERNELS
    # Every kernel offered here is timed and named (oneDNN's is not offered where it runs its
    # reference kernel: an AVX-512 EPYC without AMX).
    offered = int8.offered_kernels()
    if len(offered) > 1:  # one alone is taken without timing
        line = next(t for t in caplog.text.splitlines() if "int8 product for hidden 96 / 80: " in t)
        assert f": {pick} (" in line and all(f"{k} " in line.split("(", 1)[1] for k in offered)
    int8.product_kernel.cache_clear()  # the next process on this host reads the pick
    with caplog.at_level("INFO", logger="worker.nlp"):
        assert int8.product_kernel(96, 80) == pick
    assert f"int8 product hidden=96 intermediate=80: {pick} (measured before" in caplog.text
    int8.product_kernel.cache_clear()


def test_only_int8_products_that_run_a_real_kernel_are_offered(caplog):
    """Without AMX, oneDNN ran this torch's s8 x s8 product in its reference kernel (ref_int8) on an
    AVX-512 EPYC: 0.8 s for 128 x 768 x 768, some 3,000x torch._int_mm, and product_kernel's probe
    took minutes of every worker's start; without VNNI, torch._int_mm itself ran 30-70x slower than
    the float product. Every offered kernel must be in the same league as the fastest at a model's
    shape; one that works but is not offered is named in the log."""
    import time

    from worker.nlp import int8

    if not int8.available():
        pytest.skip("int8 inference is unavailable here")
    int8.offered_kernels.cache_clear()
    with caplog.at_level("INFO", logger="worker.nlp.int8"):
        offered = int8.offered_kernels()
    assert offered
    for kernel in int8.KERNELS:
        if kernel not in offered and int8._built(kernel):
            assert f"int8 product {kernel} not offered: it ran " in caplog.text
    torch.manual_seed(0)
    linear = torch.nn.Linear(768, 768)
    x = torch.randn(128, 768)

    def best(layer) -> float:
        layer(x)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - started)
        return min(times)

    with torch.inference_mode():
        seconds = {k: best(int8.Int8Linear(linear, kernel=k)) for k in offered}
    fastest = min(seconds.values())
    assert all(t < 10 * fastest for t in seconds.values()), {k: f"{t * 1000:.1f} ms" for k, t in seconds.items()}


@pytest.mark.cpu_feature
def test_cpu_attention_between_bf16_products_is_measured_and_used(tiny_models, caplog, monkeypatch, tmp_path):
    """torch's fp32 attention ran faster than its bf16 on an AVX-512 EPYC, its bf16 2-3x faster on a
    Xeon with AMX, kernels.cpp's 2-3x torch's best on the EPYC: the engine times them once per
    host and both bf16 and int8 engines use the pick; later processes read it from the cache."""
    from worker.nlp import attention, native
    from worker.nlp import device as dev

    if not dev.cpu_has_fast_bf16():
        pytest.skip("no fast bf16 on this CPU: attention stays fp32 there, nothing is measured")
    monkeypatch.setenv("REVIEWS_HOME", str(tmp_path / "home"))
    attention.cpu_attention.cache_clear()
    with caplog.at_level("INFO", logger="worker.nlp"):
        pick = attention.cpu_attention(2, 32)
    assert pick in attention.ATTENTION_KERNELS
    assert f"attention between bf16 products: {pick} (bf16 " in caplog.text and " ms, fp32 " in caplog.text
    assert (", native " in caplog.text) == native.attention_available()
    assert (", tiles " in caplog.text) == native.attention_tiles_available()
    # A new process (here: the function's memo cleared) takes the pick from the cache, timing nothing.
    attention.cpu_attention.cache_clear()
    caplog.clear()
    with monkeypatch.context() as m, caplog.at_level("INFO", logger="worker.nlp"):
        m.setattr(attention, "fastest", lambda runs: pytest.fail("measured again"))
        assert attention.cpu_attention(2, 32) == pick
    assert f"attention heads=2 head_dim=32: {pick} (measured before" in caplog.text
    attention.cpu_attention.cache_clear()
    for precision in ("bf16", "int8"):
        engine = load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision=precision)
        config, fwd = engine.model.config, engine.forward._forward
        pick = attention.cpu_attention(config.n_heads, config.dim // config.n_heads)
        assert fwd.native_attention == (pick in ("native", "tiles"))
        assert fwd.attention_tiles == (pick == "tiles")
        assert fwd.attention_dtype == (torch.float32 if pick == "fp32" else torch.bfloat16)
    fp32 = load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision="fp32").forward._forward
    assert fp32.attention_dtype == torch.float32 and not fp32.native_attention


@pytest.mark.cpu_feature
def test_a_native_attention_that_computes_wrong_is_no_candidate(monkeypatch, caplog, tmp_path):
    """The kernel is built per host with the host's compiler: before it is timed, cpu_attention checks
    it against torch's fp32 attention on the probe batches, and one that disagrees is not used. Here a
    kernel that forgets the softmax's scale stands in for a miscompiled one."""
    from worker.nlp import attention, native

    if not native.attention_available():
        pytest.skip("no native attention here (it needs AVX-512 BF16 and a C++ compiler)")
    real = native.attention
    monkeypatch.setenv("REVIEWS_HOME", str(tmp_path / "home"))  # no choice kept from an earlier test
    attention.cpu_attention.cache_clear()
    monkeypatch.setattr(native, "attention", lambda q, k, v, lengths, heads, tiles=False:
                        real(q * 2, k, v, lengths, heads, tiles=tiles))
    with caplog.at_level("INFO", logger="worker.nlp.attention"):
        pick = attention.cpu_attention(12, 64)
    attention.cpu_attention.cache_clear()
    assert pick in ("bf16", "fp32")
    assert "native attention disagrees with torch's here (largest difference" in caplog.text
    assert ", native " not in caplog.text and ", tiles " not in caplog.text
    if native.attention_tiles_available():
        assert "native attention on AMX's tiles disagrees with torch's here" in caplog.text


@pytest.mark.cpu_feature
@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_native_attention_in_the_forward_computes_what_torch_attention_did(tiny_models, task, precision):
    """The same engine with kernels.cpp's attention and with torch's (bf16), on a batch with padded
    rows: the logits of the positions anyone reads agree to bf16's rounding; a mask that is not
    padding on the right falls back to torch's."""
    from worker.nlp import fast, int8, native

    if not native.attention_available() or (precision == "int8" and not int8.available()):
        pytest.skip("no native attention here (it needs AVX-512 BF16 and a C++ compiler)")
    loader = load_sentiment if task == "sentiment" else load_ner
    fwd = loader(str(tiny_models[task]), device="cpu", precision=precision).forward._forward
    ids, mask = _batch(fwd.model.config.vocab_size)
    with torch.inference_mode():
        fwd.native_attention, fwd.attention_dtype = True, torch.bfloat16
        got = fwd(ids, mask)
        fwd.native_attention = False
        want = fwd(ids, mask)
    keep = mask.bool() if task == "ner" else slice(None)
    assert torch.allclose(got[keep], want[keep], atol=0.05 * float(want[keep].abs().max()))
    holes = mask.clone()
    holes[0, 3] = 0  # a key masked inside a row: no prefix, no lengths
    assert fast.prefix_lengths(holes.bool()) is None
    assert fast.prefix_lengths(mask.bool()).tolist() == mask.sum(1).tolist()


def test_auto_precision_is_measured_on_the_model_and_never_int8_for_training(tiny_models, tmp_path, monkeypatch):
    """Flags alone no longer choose int8: it beat bf16 on an AVX-512 EPYC and lost to it 1.8x on a
    Xeon with AMX. Without a model (training), "auto" is the float precision of the flags; a loaded
    inference model gets the fastest candidate that agrees with fp32 (tests/test_precision.py)."""
    from worker.nlp import device as dev
    from worker.nlp import precision

    monkeypatch.setenv("REVIEWS_HOME", str(tmp_path))
    cpu = torch.device("cpu")
    floating = "bf16" if dev.cpu_has_fast_bf16() else "fp32"
    assert dev.pick_precision("auto", cpu) == floating  # training
    assert dev.pick_precision("auto", cpu, "sentiment") == floating  # no model to measure: never int8
    assert dev.pick_precision("fp32", cpu, "sentiment") == "fp32"
    assert "int8" not in precision.candidates(None)
    for task, loader in (("sentiment", load_sentiment), ("ner", load_ner)):
        assert loader(str(tiny_models[task])).precision in precision.candidates(task)


def test_int8_is_not_picked_where_its_kernels_cannot_be_built(monkeypatch, caplog, tmp_path):
    from worker.nlp import device as dev
    from worker.nlp import int8, native

    def load_without_a_compiler():  # a fresh REVIEWS_HOME, on an image without g++
        native.build(tmp_path / "kernels.so", str(tmp_path / "no-such-g++"))

    monkeypatch.setattr(native, "library", load_without_a_compiler)
    monkeypatch.setattr(dev, "cpu_has_vnni", lambda: True)
    int8.available.cache_clear()
    try:
        assert not int8.available()
        assert "int8 inference unavailable (BuildError: cannot run" in caplog.text
        assert dev.pick_precision("auto", torch.device("cpu"), "sentiment") != "int8"
        from worker.nlp import precision

        assert "int8" not in precision.candidates("sentiment")  # nor is it measured
    finally:
        int8.available.cache_clear()


def n_entities_ok(entities, texts) -> bool:
    return all(text[e.start:e.end] == e.text for ents, text in zip(entities, texts) for e in ents)


def test_int8_is_refused_on_cuda_and_unknown_precisions_in_settings(tiny_models):
    from worker.config import Settings
    from worker.nlp import batching, loading

    model, *_ = loading.load(str(tiny_models["sentiment"]), "sentiment", "cpu", "fp32")
    with pytest.raises(ValueError, match="CPU only"):
        batching.Forward(model, torch.device("cuda"), "int8", per_token=False)
    with pytest.raises(ValueError, match="int8"):
        Settings(precision="int4")


def test_entity_edges_are_trimmed_of_stray_punctuation():
    from worker.nlp.ner import trim_span

    text = 'e.g. Kroko met Jeffrey Anderson- at "U.S. Steel" in ... town'
    def trimmed(a: str) -> str:
        start = text.index(a)
        s, e = trim_span(text, start, start + len(a))
        return text[s:e]

    assert trimmed(". Kroko") == "Kroko"
    assert trimmed("Jeffrey Anderson-") == "Jeffrey Anderson"
    assert trimmed('"U.S.') == "U.S."  # a name may end with a full stop
    assert trimmed("...") == ""  # nothing left: the entity is dropped
    tags = ["B-PER", "I-PER", "O"]
    words = [(0, 3, 4), (1, 5, 10), (2, 11, 14)]  # ".", "Kroko", "met"
    ents = decode_bio(text, words, tags, [0.9, 0.9, 0.9])
    assert [(e.text, e.start, e.end) for e in ents] == [("Kroko", 5, 10)]
    assert decode_bio(text, [(0, 53, 56)], ["B-LOC"], [0.9]) == []  # "..." alone



def test_batches_from_several_threads_at_once_give_what_each_gives_alone(tiny_models):
    """A threads-pool worker runs several batches at once over the same loaded models."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.nlp.ner import predict_both

    s = load_sentiment(str(tiny_models["sentiment"]), device="cpu", max_length=64, stride=16, token_budget=512)
    n = load_ner(str(tiny_models["ner"]), device="cpu", max_length=64, stride=16, token_budget=512)
    texts = ["Orson Welles made Citizen Kane in Hollywood. " * (1 + k % 9) + "bad" * (k % 2) for k in range(20)]
    batches = [[f"{t} ({k})" for t in texts[k:] + texts[:k]] for k in range(12)]
    alone = [predict_both(s, n, texts) for texts in batches]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda texts: predict_both(s, n, texts), batches)) == alone


def test_both_tasks_tokenize_once_when_the_models_share_a_tokenizer(tiny_models, monkeypatch, tmp_path):
    from worker.nlp import batching
    from worker.nlp.ner import predict_both

    texts = ["Orson Welles made Citizen Kane. " * 60, "bad", "", "An evening with Meryl Streep in New York"]
    s = load_sentiment(str(tiny_models["sentiment"]), device="cpu", precision="fp32")
    n = load_ner(str(tiny_models["ner"]), device="cpu", precision="fp32")
    alone = (s.predict(texts), n.predict(texts))
    calls = []
    encode = batching.encode
    monkeypatch.setattr(batching, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    assert s.tokenizer_key == n.tokenizer_key
    assert predict_both(s, n, texts) == alone
    assert len(calls) == 1
    # A model with another vocabulary tokenizes for itself.
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tiny_models["ner"])
    other.add_tokens(["welles"])
    other.save_pretrained(tmp_path / "tok")
    n.tokenizer_key = batching.tokenizer_key(AutoTokenizer.from_pretrained(tmp_path / "tok"))
    calls.clear()
    assert predict_both(s, n, texts) == alone
    assert len(calls) == 2
