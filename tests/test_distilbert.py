"""distilbert.py: the engine's own loader reads a saved DistilBERT exactly as transformers does
(the same token ids and offsets for any text, the same predictions), refuses a file that does not
match its config with a clear error, and leaves anything else to transformers."""

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import load_file, save_file

from worker.nlp import batching, distilbert, loading
from worker.nlp.ner import load_ner
from worker.nlp.sentiment import load_sentiment
from worker.nlp.types import ModelLoadError

BUNDLED = Path(__file__).resolve().parents[1] / "worker" / "models"
TEXTS = ["Orson Welles's Citizen Kane (1941) was GREAT, said Mary-Jane O'Neil in Paris.",
         "Ça coûte 10€ — naïve café 東京 😀 ﬁne", "", "   \t\n", "e\u0301 \u200b \ufeffx " * 40, "I HATED it. " * 300]


def _pair(directory: Path, task: str):
    light = loading.load(str(directory), task, "cpu", "fp32")
    reference = loading.load(str(directory), task, "cpu", "fp32", use_transformers=True)
    return light, reference


@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_the_bundled_models_load_without_transformers_into_the_same_weights_and_tokens(task):
    (model, tok, *_), (ref_model, ref_tok, *_) = _pair(BUNDLED / task, task)
    assert isinstance(model, distilbert.Classifier) and isinstance(tok, distilbert.Tokenizer)
    assert batching.encode(tok, TEXTS) == batching.encode(ref_tok, TEXTS)
    assert len(tok) == len(ref_tok)
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id) == \
        (ref_tok.cls_token_id, ref_tok.sep_token_id, ref_tok.pad_token_id, ref_tok.unk_token_id)
    assert tok.all_special_ids == sorted(ref_tok.all_special_ids)
    assert tok.convert_ids_to_tokens(list(range(len(tok)))) == ref_tok.convert_ids_to_tokens(list(range(len(tok))))
    mine, theirs = model.state_dict(), ref_model.state_dict()
    assert set(mine) == set(theirs) and all((mine[k] == theirs[k]).all() for k in mine)
    assert model.config.id2label == ref_model.config.id2label
    assert getattr(model.config, "case_markers", None) == getattr(ref_model.config, "case_markers", None)


_NER_TOKENIZERS: dict = {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=300), min_size=1, max_size=4))
def test_any_text_tokenizes_as_transformers_tokenizes_it(texts):
    if not _NER_TOKENIZERS:
        _NER_TOKENIZERS["light"] = distilbert.Tokenizer(BUNDLED / "ner")
        from transformers import AutoTokenizer

        _NER_TOKENIZERS["ref"] = AutoTokenizer.from_pretrained(str(BUNDLED / "ner"))
    assert batching.encode(_NER_TOKENIZERS["light"], texts) == batching.encode(_NER_TOKENIZERS["ref"], texts)


def test_the_engines_predict_the_same_through_either_loader(tiny_models, monkeypatch):
    texts = ["A great film about Paris and London by John Smith. " * 30, "bad", "  ", "Ça va, Zoë?"]
    light = (load_sentiment(str(tiny_models["sentiment"]), precision="fp32").predict(texts),
             load_ner(str(tiny_models["ner"]), precision="fp32").predict(texts))
    real_load = loading.load
    monkeypatch.setattr(loading, "load", lambda *a, **k: real_load(*a, **k, use_transformers=True))
    reference = (load_sentiment(str(tiny_models["sentiment"]), precision="fp32").predict(texts),
                 load_ner(str(tiny_models["ner"]), precision="fp32").predict(texts))
    assert [s.label for s in light[0]] == [s.label for s in reference[0]]
    assert [s.score for s in light[0]] == pytest.approx([s.score for s in reference[0]], abs=1e-5)
    assert [[(e.label, e.start, e.end) for e in es] for es in light[1]] == \
        [[(e.label, e.start, e.end) for e in es] for es in reference[1]]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_weights_that_do_not_match_the_config_are_one_clear_error(tiny_models, tmp_path):
    directory = _copy(tiny_models["sentiment"], tmp_path / "m")
    state = load_file(str(directory / "model.safetensors"))
    state.pop("pre_classifier.weight")
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"cannot load sentiment model .*missing \['pre_classifier.weight'\]"):
        load_sentiment(str(directory))


def test_a_config_without_labels_reads_as_transformers_reads_it(tiny_models, tmp_path):
    directory = _copy(tiny_models["sentiment"], tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (directory / "config.json").write_text(json.dumps(config))
    model, *_ = loading.load(str(directory), "sentiment", "cpu", "fp32")
    ref, *_ = loading.load(str(directory), "sentiment", "cpu", "fp32", use_transformers=True)
    assert model.config.id2label == ref.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}


def test_what_the_loader_does_not_read_goes_to_transformers(tiny_models, tmp_path):
    assert distilbert.can_load(tiny_models["ner"], "ner") and not distilbert.can_load(tiny_models["ner"], "sentiment")
    no_tokenizer_json = _copy(tiny_models["ner"], tmp_path / "a")
    (no_tokenizer_json / "tokenizer.json").unlink()
    assert not distilbert.can_load(no_tokenizer_json, "ner")
    other_activation = _copy(tiny_models["ner"], tmp_path / "b")
    config = json.loads((other_activation / "config.json").read_text())
    (other_activation / "config.json").write_text(json.dumps(config | {"activation": "relu"}))
    assert not distilbert.can_load(other_activation, "ner")
    model, *_ = loading.load(str(other_activation), "ner", "cpu", "fp32")
    assert not isinstance(model, distilbert.Classifier)
