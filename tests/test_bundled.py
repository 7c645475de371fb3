"""The bundled default models: the README's first command on a fresh home, real predictions."""

import json

import pytest
from click.testing import CliRunner

from cli.main import main
from conftest import ROOT
from worker.config import BUNDLED_NER, BUNDLED_SENTIMENT
from worker.nlp.ner import load_ner
from worker.nlp.sentiment import load_sentiment

pytestmark = pytest.mark.skipif(not (BUNDLED_SENTIMENT / "model.safetensors").exists()
                                or not (BUNDLED_NER / "model.safetensors").exists(),
                                reason="bundled models not built (python -m worker.training.build sentiment|ner)")


def test_readme_first_command_on_a_fresh_home(tmp_path, monkeypatch):
    env = {"REVIEWS_HOME": str(tmp_path / "home")}
    for var in ("REVIEWS_DATABASE_URL", "REVIEWS_SENTIMENT_MODEL", "REVIEWS_NER_MODEL", "REVIEWS_MAX_LENGTH"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(ROOT / "samples" / "reviews.jsonl")], env=env)
    assert result.exit_code == 0, result.output
    assert "12/12 done, 0 failed" in result.output
    assert (tmp_path / "home" / "reviews.db").exists()
    rows = {r["id"]: r for r in map(json.loads, runner.invoke(main, ["export"], env=env).output.splitlines())}
    assert rows["s-1"]["sentiment"] == "positive" and rows["s-2"]["sentiment"] == "negative"
    assert rows["s-4"]["sentiment"] == "negative" and rows["s-8"]["sentiment"] == "positive"
    found = {(e["label"], e["text"]) for r in rows.values() for e in r["entities"]}
    assert ("LOC", "Tokyo") in found and ("LOC", "Paris") in found


def test_bundled_models_are_half_precision_and_predict_offsets():
    from safetensors import safe_open

    for d in (BUNDLED_SENTIMENT, BUNDLED_NER):
        with safe_open(d / "model.safetensors", "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
        assert (d / "README.md").read_text().count("Apache-2.0") >= 1
    text = "Meryl Streep was wonderful in this film, shot in Paris by Warner Bros."
    (ents,) = load_ner(str(BUNDLED_NER)).predict([text])
    assert all(text[e.start:e.end] == e.text for e in ents)
    assert ("PER", "Meryl Streep") in {(e.label, e.text) for e in ents}
    good, bad = load_sentiment(str(BUNDLED_SENTIMENT)).predict(["A wonderful, moving film.", "Dull and far too long."])
    assert good.label == "positive" and bad.label == "negative" and good.score > 0 > bad.score
