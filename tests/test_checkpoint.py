"""A training run stopped anywhere resumes from its checkpoint and ends where an unbroken run ends."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from worker.training.data import SentimentExample
from worker.training.train import TrainConfig, encode_sentiment, fit

TEXTS = ["great film", "loved the acting", "good story", "awful film", "boring plot", "terrible acting",
         "great music and good acting", "bad story and boring music"]


class Stop(Exception):
    pass


def _run(model_dir, cfg, checkpoint=None, stop_at=None, every=0.0):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = encode_sentiment(tok, [SentimentExample(t, i % 2) for i, t in enumerate(TEXTS * 3)], cfg)
    logged = []

    def progress(message):
        logged.append(message)
        if stop_at is not None and message.startswith(f"step {stop_at}/"):
            raise Stop  # as a killed process would, right after the checkpoint of this step

    stats = fit(model, examples, cfg, tok.pad_token_id, False, progress=progress, checkpoint=checkpoint,
                checkpoint_every_s=every)
    return model, stats, logged


@pytest.mark.parametrize("stop_at", [3, 6, 11])  # inside the first epoch, at its end, inside the second
def test_a_resumed_run_ends_with_the_weights_of_an_unbroken_one(tiny_models, tmp_path, stop_at):
    # 24 examples in batches of 4 rows: 6 steps an epoch, 3 epochs, so that a later epoch's batch order
    # comes from the restored shuffling state; dropout on, so its random state counts.
    cfg = TrainConfig(epochs=3, lr=1e-3, max_length=16, batch_tokens=64, max_batch_rows=4, log_every=1,
                      precision="fp32", device="cpu")
    unbroken, stats, _ = _run(tiny_models["sentiment"], cfg)
    assert stats["steps"] == 18

    path = tmp_path / "run.ckpt"
    with pytest.raises(Stop):
        _run(tiny_models["sentiment"], cfg, checkpoint=path, stop_at=stop_at)
    assert path.is_file()
    resumed, stats, logged = _run(tiny_models["sentiment"], cfg, checkpoint=path)
    assert f"at step {stop_at}/18" in logged[0]
    assert stats["steps"] == 18 and stats["examples"] == 72
    for (name, a), b in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not path.exists()  # a finished run leaves no checkpoint behind


def test_no_checkpoint_is_written_before_its_interval(tiny_models, tmp_path):
    cfg = TrainConfig(epochs=1, lr=1e-3, max_length=16, batch_tokens=64, max_batch_rows=4, log_every=1,
                      precision="fp32", device="cpu")
    path = tmp_path / "run.ckpt"
    with pytest.raises(Stop):
        _run(tiny_models["sentiment"], cfg, checkpoint=path, stop_at=3, every=3600)
    assert not path.exists()
