"""The training loop, distillation loss, label alignment and data readers, on tiny models."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from worker.nlp.types import NER_TAGS
from worker.training import evaluate as ev
from worker.training.data import NerSentence, SentimentExample
from worker.training.train import (
    TrainConfig,
    bio_to_spans,
    distillation_loss,
    encode_ner,
    encode_sentiment,
    head_tail,
    train_ner,
    train_sentiment,
)

POS = ["great film", "loved the acting", "good story", "great music and good acting", "loved it"]
NEG = ["awful film", "boring plot", "terrible acting", "bad story and boring music", "hate it"]


def toy_sentiment():
    return [SentimentExample(t, 1) for t in POS] + [SentimentExample(t, 0) for t in NEG]


def test_head_tail_keeps_both_ends():
    assert head_tail(list(range(10)), 10, 3) == list(range(10))
    assert head_tail(list(range(100)), 10, 3) == [0, 1, 2, 93, 94, 95, 96, 97, 98, 99]


def test_sentiment_training_learns_a_toy_task(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["sentiment"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["sentiment"])
    data = toy_sentiment() * 8
    cfg = TrainConfig(epochs=20, lr=3e-3, max_length=32, batch_tokens=64, warmup_ratio=0.0, log_every=1000,
                      precision="fp32")
    before = ev.evaluate_sentiment(str(tiny_models["sentiment"]), toy_sentiment())
    stats = train_sentiment(model, tok, data, cfg, progress=lambda m: None)
    assert stats["final_loss"] < 0.3  # the mean of the last 50 steps
    model.save_pretrained(tiny_models["sentiment"].parent / "trained")
    tok.save_pretrained(tiny_models["sentiment"].parent / "trained")
    after = ev.evaluate_sentiment(str(tiny_models["sentiment"].parent / "trained"), toy_sentiment())
    assert after["accuracy"] == 1.0 and after["accuracy"] > before["accuracy"]


def test_distillation_loss_matches_its_formula():
    torch.manual_seed(0)
    s, t = torch.randn(4, 2), torch.randn(4, 2)
    y = torch.tensor([0, 1, 1, 0])
    a, T = 0.3, 2.0
    ce = torch.nn.functional.cross_entropy(s, y)
    p = torch.softmax(t / T, -1)
    kl = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
    assert distillation_loss(s, t, y, a, T).item() == pytest.approx((a * ce + (1 - a) * T * T * kl).item(), rel=1e-5)
    # Token classification: positions labelled -100 take no part.
    s3, t3 = torch.randn(2, 3, 2), torch.randn(2, 3, 2)
    y3 = torch.tensor([[0, -100, 1], [-100, 1, -100]])
    keep = y3 != -100
    assert distillation_loss(s3, t3, y3, a, T).item() == pytest.approx(
        distillation_loss(s3[keep], t3[keep], y3[keep], a, T).item())
    # With alpha = 1 it is plain cross-entropy; the teacher's view is irrelevant.
    assert distillation_loss(s, t, y, 1.0, T).item() == pytest.approx(ce.item())


def test_ner_labels_sit_on_the_first_piece_of_each_word(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["ner"])
    s = NerSentence(["John", "Smith", "visited", "U.S.", "."], ["B-PER", "I-PER", "O", "B-LOC", "O"])
    (enc,) = encode_ner(tok, [s], TrainConfig(max_length=64))
    pieces = tok.convert_ids_to_tokens(enc.ids)
    tags = {p: NER_TAGS[l] for p, l in zip(pieces, enc.labels) if l != -100}
    assert pieces[0] == "[CLS]" and enc.labels[0] == -100 and enc.labels[-1] == -100
    labelled = [(p, NER_TAGS[l]) for p, l in zip(pieces, enc.labels) if l != -100]
    # 'u.s.' is four words to the engine: the first begins the entity, the rest continue it.
    assert labelled[-5:] == [("u", "B-LOC"), (".", "I-LOC"), ("s", "I-LOC"), (".", "I-LOC"), (".", "O")]
    assert all(not p.startswith("##") for p, _ in labelled) and tags


def test_ner_training_learns_a_toy_task(tiny_models, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_models["ner"])
    model = AutoModelForTokenClassification.from_pretrained(tiny_models["ner"])
    sents = [NerSentence(["john", "smith", "loved", "paris"], ["B-PER", "I-PER", "O", "B-LOC"]),
             NerSentence(["mary", "hated", "london"], ["B-PER", "O", "B-LOC"]),
             NerSentence(["the", "film", "in", "new", "york"], ["O", "O", "O", "B-LOC", "I-LOC"])] * 10
    cfg = TrainConfig(epochs=30, lr=3e-3, max_length=32, batch_tokens=64, warmup_ratio=0.0, log_every=1000,
                      precision="fp32")
    teacher = AutoModelForTokenClassification.from_pretrained(tiny_models["ner"])
    stats = train_ner(model, tok, encode_ner(tok, sents, cfg), cfg, teacher=None, progress=lambda m: None)
    assert stats["final_loss"] < 0.3
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    m = ev.evaluate_ner(str(tmp_path / "m"), sents[:3])
    assert m["f1"] == 1.0 and m["entities"] == 5
    # Distilling from an untrained teacher still runs and reports a finite loss.
    stats = train_ner(model, tok, encode_ner(tok, sents, cfg), TrainConfig(epochs=1, precision="fp32"),
                      teacher=teacher, progress=lambda m: None)
    assert math.isfinite(stats["final_loss"])


def test_encode_sentiment_cuts_long_texts_head_and_tail(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["sentiment"])
    long_text = "great " + "the " * 100 + "awful"
    (short, long_), = [encode_sentiment(tok, [SentimentExample("loved it", 1), SentimentExample(long_text, 0)],
                                        TrainConfig(max_length=16, head_tokens=4))]
    pieces = tok.convert_ids_to_tokens(long_.ids)
    assert len(long_.ids) == 16 and pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert pieces[1] == "great" and pieces[-2] == "awful" and long_.labels == 0
    assert tok.convert_ids_to_tokens(short.ids) == ["[CLS]", "loved", "it", "[SEP]"] and short.labels == 1


def test_bio_to_character_spans():
    spans = [(0, 4), (5, 10), (11, 13), (14, 20)]
    assert bio_to_spans(["B-PER", "I-PER", "O", "I-LOC"], spans) == [(0, 10, "PER"), (14, 20, "LOC")]
    assert bio_to_spans(["B-PER", "B-PER", "I-ORG", "O"], spans) == [(0, 4, "PER"), (5, 10, "PER"), (11, 13, "ORG")]
    # The engine's reading (worker/nlp/bio.py): a tag without a prefix is an I- tag.
    assert bio_to_spans(["PER", "I-PER", "O", "LOC"], spans) == [(0, 10, "PER"), (14, 20, "LOC")]
    with pytest.raises(ValueError, match="3 tags for 4 tokens"):
        bio_to_spans(["B-PER", "I-PER", "O"], spans)


def test_readers_on_the_real_data():
    from conftest import DATA
    from worker.training import data

    if not (DATA / "sst2" / "dev.tsv").exists():
        pytest.skip(f"real labeled data not found at {DATA} (set REVIEWS_DATA_DIR)")
    dev = data.read_glue_tsv(DATA / "sst2" / "dev.tsv")
    assert len(dev) == 872 and {e.label for e in dev} == {0, 1} and all(e.text for e in dev)
    valid = data.read_conll(DATA / "conll2003" / "valid.txt")
    assert len(valid) == 3250 and all(len(s.tokens) == len(s.tags) for s in valid)
    assert {t for s in valid for t in s.tags} == set(NER_TAGS)
    assert not any(s.tokens[0] == "-DOCSTART-" for s in valid)
    train, heldout = data.imdb_split(DATA / "imdb" / "train.jsonl.gz")
    assert len(heldout) == data.IMDB_HELDOUT == 2000 and 22_900 < len(train) < 23_000
    assert not {e.text for e in heldout} & {e.text for e in train}
    assert 0.4 < sum(e.label for e in heldout) / len(heldout) < 0.6


def test_model_card_states_recipe_long_text_handling_metrics_and_licence(tmp_path):
    from argparse import Namespace
    from dataclasses import asdict

    from worker.training.cards import rebuild_command, write_card

    args = Namespace(epochs=1.0, lr=5e-5, max_length=256, batch_tokens=4096, max_batch_rows=64, head_tokens=64,
                     imdb_train=8000)
    stats = {"config": asdict(TrainConfig(max_length=256, head_tokens=64)), "steps": 1477, "seconds": 2049.0,
             "examples_per_s": 36.8, "hardware": "AMD EPYC, 2 torch threads, no GPU",
             "data": {"sst2_train": 67349, "imdb_train": 8000}, "command": rebuild_command(args, "sentiment"),
             "metrics": {"sst2_dev": {"accuracy": 0.9, "f1": 0.9, "n": 872}}, "notes": ["a note"]}
    write_card(tmp_path, "sentiment", stats)
    card = (tmp_path / "README.md").read_text()
    assert "python -m worker.training.build sentiment --epochs 1 --lr 5e-05 --max-length 256" in card
    assert "the first 64 and the last 190" in card and "Sun et al. 2019" in card
    assert "accuracy 0.9000" in card and "reviews evaluate sentiment ../shared/data/sst2/dev.tsv" in card
    assert "34.1 minutes" in card and "AMD EPYC" in card and "- a note" in card and "Apache-2.0" in card
