"""The inference engine on tiny saved models: loading, windows, batching, offsets, BIO decoding."""

import json

import pytest
import torch

from worker.nlp import ModelLoadError, load_ner, load_sentiment
from worker.nlp.batching import Window, token_budget_batches, window_starts
from worker.nlp.ner import decode_bio, stitch


def test_window_starts_cover_the_text_with_overlap():
    assert window_starts(10, 62, 16) == [0]
    starts = window_starts(200, 62, 16)
    assert starts[0] == 0 and starts[-1] == 200 - 62
    assert all(b - a <= 62 - 16 for a, b in zip(starts, starts[1:]))  # consecutive windows overlap >= 16


def test_token_budget_batches_respect_the_budget_and_keep_every_window():
    windows = [Window(i, 0, [1] * n) for i, n in enumerate([5, 300, 40, 41, 120, 7, 300])]
    batches = token_budget_batches(windows, token_budget=700)
    assert sorted(i for b in batches for i in b) == list(range(len(windows)))
    for b in batches:
        assert len(b) * max(len(windows[i].ids) + 2 for i in b) <= 700 or len(b) == 1
    assert batches[0] == [1, 6]  # longest first


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
    model = load_sentiment(str(tiny_models["sentiment"])).model
    torch.save(model.state_dict(), only_pickle / "pytorch_model.bin")
    with pytest.raises(ModelLoadError):
        load_sentiment(str(only_pickle))


def test_tiny_tokenizer_knows_its_words(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["sentiment"])
    assert tok.convert_ids_to_tokens(tok("Great films!")["input_ids"]) == ["[CLS]", "great", "film", "##s", "!", "[SEP]"]
