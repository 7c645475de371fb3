"""The build of a default model, on a tiny base and a tiny copy of the data layout."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from worker.nlp.types import SENTIMENT_LABELS
from worker.training import build, targets_file, teacher


@pytest.fixture
def tiny_base(monkeypatch, tiny_models):
    """The build's base encoder replaced by the tiny sentiment model: seconds instead of minutes."""
    def with_base(head_cls, labels, seed=0):
        torch.manual_seed(seed)
        return (AutoModelForSequenceClassification.from_pretrained(tiny_models["sentiment"]),
                AutoTokenizer.from_pretrained(tiny_models["sentiment"]))

    monkeypatch.setattr(build, "_with_base", with_base)


def _build(monkeypatch, data, out, *options):
    monkeypatch.setattr("sys.argv", ["build", "sentiment", "--data-dir", str(data), "--out", str(out), "--epochs", "40",
                                     "--lr", "3e-3", "--max-length", "32", "--batch-tokens", "128", "--imdb-train", "100",
                                     *options])
    build.main()


def test_a_student_follows_its_teachers_targets_and_its_card_names_the_teacher(tiny_base, tiny_sentiment_data,
                                                                               tmp_path, monkeypatch):
    examples = teacher.training_texts(tiny_sentiment_data, None)
    # A teacher sure of the opposite of every label: with alpha 0 the student learns from it alone.
    wrong = torch.tensor([[0.02, 0.98] if e.label == 0 else [0.98, 0.02] for e in examples])
    targets = targets_file.save(tmp_path / "t.pt", "sentiment", SENTIMENT_LABELS, [e.text for e in examples], wrong,
                                {"teacher": "contrarian", "recipe": "none", "sst2_dev": 0.0, "imdb_heldout": 0.0})
    out = tmp_path / "model"
    _build(monkeypatch, tiny_sentiment_data, out, "--teacher-targets", str(targets), "--alpha", "0")

    from worker.nlp.sentiment import load_sentiment

    predicted = load_sentiment(str(out), precision="fp32").predict([e.text for e in examples])
    followed = sum(p.label != SENTIMENT_LABELS[e.label] for p, e in zip(predicted, examples)) / len(examples)
    assert followed >= 0.9  # the teacher's labels, not the gold ones
    card = (out / "README.md").read_text()
    assert "contrarian" in card and "--teacher-targets" in card and "--alpha 0" in card


def test_targets_that_miss_training_texts_stop_the_build_with_the_count(tiny_base, tiny_sentiment_data, tmp_path,
                                                                        monkeypatch, capsys):
    targets = targets_file.save(tmp_path / "t.pt", "sentiment", SENTIMENT_LABELS, ["great film"],
                                torch.tensor([[0.1, 0.9]]))
    with pytest.raises(SystemExit) as exit_:
        _build(monkeypatch, tiny_sentiment_data, tmp_path / "model", "--teacher-targets", str(targets))
    assert exit_.value.code == 2
    assert "19 of 20 training texts have no targets" in capsys.readouterr().err
