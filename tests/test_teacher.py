"""The build's teacher step and its targets file, on a tiny model and a tiny copy of the data layout."""

import argparse

import pytest
import torch

from worker.nlp.types import SENTIMENT_LABELS
from worker.training import data, targets_file, teacher


def _args(tiny_models, tiny_sentiment_data, out, **extra):
    values = dict(base=str(tiny_models["sentiment"]), out=out, data_dir=tiny_sentiment_data, imdb_train=None,
                  epochs=2.0, lr=1e-3, max_length=32, head_tokens=8, batch_tokens=128, max_batch_rows=8, seed=42, checkpoint_minutes=10)
    return argparse.Namespace(**(values | extra))


def test_teacher_step_writes_a_teacher_its_metrics_and_targets_for_the_training_texts_only(tiny_models, tiny_sentiment_data,
                                                                                           tmp_path):
    out = tmp_path / "teacher"
    said = []
    stats = teacher.run(_args(tiny_models, tiny_sentiment_data, out), say=said.append)
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "teacher.json").is_file()
    assert set(stats["metrics"]) == {"sst2_dev", "imdb_heldout"} and stats["metrics"]["imdb_heldout"]["n"] == 3

    texts = [e.text for e in teacher.training_texts(tiny_sentiment_data, None)]
    assert len(texts) == 10 + 10
    soft = targets_file.log_probs([out / "sentiment.targets.pt"], "sentiment", texts, SENTIMENT_LABELS)
    assert len(soft) == 20 and all(torch.allclose(s.exp().sum(), torch.tensor(1.0), atol=1e-3) for s in soft)
    payload = targets_file.load(out / "sentiment.targets.pt", "sentiment")
    keys = set(payload["keys"].tolist())
    _, heldout = data.imdb_split(tiny_sentiment_data / "imdb" / "train.jsonl.gz")
    held = [e.text for e in heldout] + [e.text for e in data.read_glue_tsv(tiny_sentiment_data / "sst2" / "dev.tsv")]
    assert not keys & {targets_file.text_key(t) for t in held}  # evaluation texts are never in the targets
    assert payload["about"]["imdb_heldout"] == round(stats["metrics"]["imdb_heldout"]["accuracy"], 4)
    assert not list(out.glob("*.ckpt"))  # the finished run left no checkpoint

    # A second run finds the teacher and the cached pass over the texts: nothing is trained or run again.
    said.clear()
    teacher.run(_args(tiny_models, tiny_sentiment_data, out), say=said.append)
    assert any("holds this fine-tuned teacher already" in m for m in said)
    assert any("20 of 20 reviews' targets cached" in m for m in said)
    assert not any(m.startswith("step ") for m in said)


def test_a_teacher_of_another_recipe_in_out_is_refused_not_reused(tiny_models, tiny_sentiment_data, tmp_path):
    out = tmp_path / "teacher"
    teacher.run(_args(tiny_models, tiny_sentiment_data, out, epochs=1.0), say=lambda m: None)
    with pytest.raises(ValueError, match="another recipe"):
        teacher.run(_args(tiny_models, tiny_sentiment_data, out, epochs=2.0), say=lambda m: None)
    with pytest.raises(ValueError, match="another recipe"):
        teacher.run(_args(tiny_models, tiny_sentiment_data, out, epochs=1.0, base=str(tiny_models["ner"])), say=lambda m: None)


def test_targets_file_refuses_texts_it_does_not_cover_and_other_tasks(tmp_path):
    path = targets_file.save(tmp_path / "t.pt", "sentiment", ["positive", "negative"], ["a", "b", "a"],
                             torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]))
    got = targets_file.log_probs([path], "sentiment", ["b", "a"], SENTIMENT_LABELS)  # columns in our order
    assert torch.allclose(got[0].exp(), torch.tensor([0.8, 0.2]), atol=1e-3)
    assert torch.allclose(got[1].exp(), torch.tensor([0.1, 0.9]), atol=1e-3)  # a repeated text keeps its first row
    with pytest.raises(ValueError, match="1 of 3 training texts have no targets"):
        targets_file.log_probs([path], "sentiment", ["a", "b", "c"], SENTIMENT_LABELS)
    with pytest.raises(ValueError, match="targets for sentiment, not ner"):
        targets_file.load(path, "ner")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a targets file"):
        targets_file.load(tmp_path / "junk.pt", "sentiment")
    with pytest.raises(ValueError, match="no such file"):
        targets_file.load(tmp_path / "missing.pt", "sentiment")


def test_an_ensemble_of_targets_files_is_the_mean_of_their_probabilities(tmp_path):
    a = targets_file.save(tmp_path / "a.pt", "sentiment", SENTIMENT_LABELS, ["x"], torch.tensor([[0.8, 0.2]]))
    b = targets_file.save(tmp_path / "b.pt", "sentiment", SENTIMENT_LABELS, ["x"], torch.tensor([[0.4, 0.6]]))
    (got,) = targets_file.log_probs([a, b], "sentiment", ["x"], SENTIMENT_LABELS)
    assert torch.allclose(got.exp(), torch.tensor([0.6, 0.4]), atol=1e-3)


def test_bad_training_data_ends_the_steps_with_its_line_not_a_traceback(tiny_sentiment_data, tmp_path, monkeypatch, capsys):
    from worker.training import build

    with open(tiny_sentiment_data / "sst2" / "train.tsv", "a") as f:
        f.write("maybe\tan unlabeled line\n")
    for module, argv in ((teacher, ["teacher", "--base", "unused", "--out", str(tmp_path / "t")]),
                         (build, ["build", "sentiment", "--out", str(tmp_path / "s")])):
        monkeypatch.setattr("sys.argv", argv + ["--data-dir", str(tiny_sentiment_data)])
        with pytest.raises(SystemExit) as exit_:
            module.main()
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "train.tsv:12: label must be negative/positive or 0/1" in err and "Traceback" not in err
