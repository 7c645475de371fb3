"""Bring your own model: `reviews models add` checks, maps labels, copies, registers; serving uses the copy."""

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)

from cli.main import main
from conftest import make_settings, settings_env
from tiny_models import SIZES, make_tokenizer
from worker import model_import, registry
from worker.nlp import loading
from worker.db import session_factory
from worker.nlp.labels import Folded, LabelError, fold_plan, map_labels, parse_map
from worker.nlp.ner import load_ner
from worker.nlp.sentiment import load_sentiment
from worker.nlp.types import NER_TYPES
from worker.resources import Resources

TEXTS = ["John Smith loved the film in Paris", "a boring , terrible movie", "great acting by Mary in London"]


def save_labelled(directory: Path, task: str, labels: list[str], seed: int = 0, pickle: bool = False,
                  head: bool = True) -> Path:
    """A tiny DistilBERT saved with the labels a third-party model might carry."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(directory)
    config = DistilBertConfig(vocab_size=len(tokenizer), **SIZES["tiny"], num_labels=len(labels),
                              id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    cls = DistilBertModel if not head else (
        DistilBertForSequenceClassification if task == "sentiment" else DistilBertForTokenClassification)
    model = cls(config)
    if pickle:
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    else:
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def setup(migrated_sqlite, tiny_models, tmp_path):
    settings = make_settings(migrated_sqlite, tiny_models, model_dir=str(tmp_path / "versions"))
    runner = CliRunner()

    def cli(*args, **env):
        return runner.invoke(main, list(args), env=settings_env(settings) | env)

    return settings, cli, session_factory(migrated_sqlite)


def _statuses(sessions, task, settings=None):
    with sessions() as s:
        if settings is not None:  # as `models list` does: the configured model is version 1
            registry.active_versions(s, settings)
        return [(m.version, m.status) for m in registry.versions(s, task)]


def _leftovers(settings, task):
    root = Path(settings.model_dir) / task
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_own_labels_are_mapped_copied_promoted_and_served_after_the_source_is_gone(setup, tmp_path):
    settings, cli, sessions = setup
    # Its own names, and positive first: the mapping must follow the index, not the position.
    src = save_labelled(tmp_path / "third-party", "sentiment", ["POSITIVE", "NEGATIVE"], seed=3)
    added = cli("models", "add", "sentiment", str(src))
    assert added.exit_code == 0, added.output
    assert "sentiment version 2 added from" in added.output and "as candidate" in added.output
    assert "POSITIVE -> positive" in added.output and "reviews models promote sentiment 2" in added.output
    assert _statuses(sessions, "sentiment") == [(1, "active"), (2, "candidate")]
    copy = Path(settings.model_dir) / "sentiment" / "2"
    assert json.loads((copy / "config.json").read_text())["id2label"] == {"0": "positive", "1": "negative"}
    assert (copy / "model.safetensors").is_file() and (copy / "tokenizer.json").is_file()
    with sessions() as s:
        mv = registry.get(s, "sentiment", 2)
        assert mv.source == str(copy)
        assert mv.metrics["import"]["from"] == str(src.resolve())
        assert mv.metrics["import"]["labels"]["original"] == ["POSITIVE", "NEGATIVE"]
        assert "POSITIVE->positive" in mv.note

    assert "sentiment version 2 is active" in cli("models", "promote", "sentiment", "2").output
    moved = shutil.move(str(src), str(tmp_path / "moved"))
    shutil.rmtree(moved)
    served = Resources(settings).models()
    with sessions() as s:
        assert served.sentiment_version_id == registry.get(s, "sentiment", 2).id
    predictions = served.sentiment.predict(TEXTS)
    assert {p.label for p in predictions} <= {"negative", "positive"}
    # Class 0 of the model is POSITIVE: where its logit wins, the label is "positive".
    model, tok, *_ = loading.load(str(copy), "sentiment", "cpu", "fp32", use_transformers=True)  # its raw logits
    with torch.inference_mode():
        raw = model(**tok(TEXTS, return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    assert [p.label for p in predictions] == ["positive" if i == 0 else "negative" for i in raw]
    listing = cli("models", "list")
    assert "warning:" not in listing.output  # the setting still names the seed: nothing changed there


def test_activate_makes_it_active_at_once_and_label_0_1_are_known(setup, tmp_path):
    settings, cli, sessions = setup
    src = save_labelled(tmp_path / "generic", "sentiment", ["LABEL_0", "LABEL_1"], seed=4)
    added = cli("models", "add", "sentiment", str(src), "--activate")
    assert added.exit_code == 0, added.output and "as active" in added.output
    assert _statuses(sessions, "sentiment") == [(1, "retired"), (2, "active")]
    assert "sentiment version 1 is active again" in cli("models", "rollback", "sentiment").output


def test_pickle_only_model_is_refused_and_leaves_nothing(setup, tmp_path):
    settings, cli, sessions = setup
    src = save_labelled(tmp_path / "pickled", "sentiment", ["negative", "positive"], pickle=True)
    out = cli("models", "add", "sentiment", str(src))
    assert out.exit_code == 1
    assert "only pickle weights (pytorch_model.bin), refused: loading a pickle can run code" in out.output
    assert _statuses(sessions, "sentiment", settings) == [(1, "active")] and _leftovers(settings, "sentiment") == []


def test_ner_person_tags_map_and_a_skipped_type_reads_as_o(setup, tmp_path):
    settings, cli, sessions = setup
    tags = ["O", "B-PERSON", "I-PERSON", "B-LOC", "I-LOC", "B-ORGANIZATION", "I-ORGANIZATION", "B-MISC", "I-MISC"]
    src = save_labelled(tmp_path / "person", "ner", tags, seed=5)
    added = cli("models", "add", "ner", str(src), "--activate")
    assert added.exit_code == 0, added.output
    config = json.loads((Path(settings.model_dir) / "ner" / "2" / "config.json").read_text())
    assert list(config["id2label"].values()) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG",
                                                 "B-MISC", "I-MISC"]
    served = Resources(settings).models()
    assert {e.label for ents in served.ner.predict(TEXTS) for e in ents} <= set(NER_TYPES)

    dated = save_labelled(tmp_path / "dated", "ner", ["O", "B-per", "I-per", "B-DATE", "I-DATE"], seed=6)
    refused = cli("models", "add", "ner", str(dated))
    assert refused.exit_code == 1
    assert "NER tags not mapped: types DATE" in refused.output and "--map DATE=<PER|ORG|LOC|MISC|skip>" in refused.output
    added = cli("models", "add", "ner", str(dated), "--map", "DATE=skip")
    assert added.exit_code == 0, added.output and "no ORG/LOC/MISC tags" in added.output
    copy = Path(settings.model_dir) / "ner" / "3"
    assert list(json.loads((copy / "config.json").read_text())["id2label"].values()) == ["O", "B-PER", "I-PER", "O", "O"]
    engine = load_ner(str(copy), precision="fp32")
    assert engine.tags == ["O", "B-PER", "I-PER"]  # the three O classes merged into one
    assert {e.label for ents in engine.predict(TEXTS) for e in ents} <= {"PER"}


def test_unmapped_labels_are_a_clear_error_and_map_fixes_them(setup, tmp_path):
    settings, cli, sessions = setup
    src = save_labelled(tmp_path / "three", "sentiment", ["bad", "neutral", "good"], seed=7)
    out = cli("models", "add", "sentiment", str(src))
    assert out.exit_code == 1
    assert ("sentiment labels not mapped: bad, neutral, good" in out.output
            and "--map bad=<negative|positive|skip>,neutral=<negative|positive|skip>" in out.output)
    typo = cli("models", "add", "sentiment", str(src), "--map", "bad=negative,neutrall=skip,good=positive")
    assert typo.exit_code == 1 and "'neutrall', which the model does not have" in typo.output
    ok = cli("models", "add", "sentiment", str(src), "--map", "bad=negative,neutral=skip", "--map", "good=positive")
    assert ok.exit_code == 0, ok.output
    assert _statuses(sessions, "sentiment") == [(1, "active"), (2, "candidate")]
    assert _leftovers(settings, "sentiment") == ["2"]
    engine = load_sentiment(str(Path(settings.model_dir) / "sentiment" / "2"), precision="fp32")
    assert engine.labels == ["negative", "positive"]
    for p in engine.predict(TEXTS):  # neutral left out: the two kept classes renormalised
        assert p.label in ("negative", "positive") and 0.5 <= p.probability <= 1 and -1 <= p.score <= 1


def test_hub_ids_fail_with_one_clear_line_offline(setup, monkeypatch):
    settings, cli, sessions = setup
    out = cli("models", "add", "sentiment", "reviews-test/no-such-model", "--revision", "v2")
    assert out.exit_code == 1
    line = out.output.strip().splitlines()[-1]
    assert line.startswith("Error: cannot download hub model reviews-test/no-such-model@v2: ")
    offline = cli("models", "add", "ner", "reviews-test/no-such-model", HF_HUB_OFFLINE="1")
    assert offline.exit_code == 1
    assert "cannot download hub model reviews-test/no-such-model@main: HF_HUB_OFFLINE is set" in offline.output
    assert _statuses(sessions, "sentiment", settings) == [(1, "active")] and _leftovers(settings, "sentiment") == []
    local_rev = cli("models", "add", "sentiment", settings.sentiment_model, "--revision", "v1")
    assert local_rev.exit_code == 1 and "--revision is for hub ids" in local_rev.output


def test_hub_download_is_pinned_to_a_commit_and_copied(setup, tmp_path, monkeypatch):
    """The download path with the hub replaced by a local model: what is asked for, kept and recorded."""
    import huggingface_hub

    settings, cli, sessions = setup
    src = save_labelled(tmp_path / "hub-files", "sentiment", ["NEGATIVE", "POSITIVE"], seed=8)
    sha = "0123456789abcdef0123456789abcdef01234567"
    calls = {}

    class Info:
        siblings = [type("S", (), {"rfilename": f.name})() for f in src.iterdir()]

    def model_info(self, repo, revision=None, timeout=None):
        calls["info"] = (repo, revision)
        return type("I", (Info,), {"sha": sha})()

    def snapshot_download(repo, revision, local_dir, allow_patterns):
        calls["download"] = (repo, revision, allow_patterns)
        for f in src.iterdir():
            shutil.copyfile(f, Path(local_dir) / f.name)
        (Path(local_dir) / ".cache").mkdir()
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    out = cli("models", "add", "sentiment", "acme/reviews-sentiment", "--revision", "main", "--activate")
    assert out.exit_code == 0, out.output
    assert calls["info"] == ("acme/reviews-sentiment", "main")
    assert calls["download"] == ("acme/reviews-sentiment", sha, model_import.ALLOW)
    copy = Path(settings.model_dir) / "sentiment" / "2"
    assert not (copy / ".cache").exists()
    with sessions() as s:
        mv = registry.get(s, "sentiment", 2)
        assert (mv.source, mv.status) == (str(copy), "active")
        assert mv.metrics["import"]["from"] == f"acme/reviews-sentiment@{sha}"
        assert mv.metrics["import"]["revision"] == sha and mv.metrics["import"]["requested_revision"] == "main"
    # The setting naming the hub id is what the active version serves: no warning.
    assert "warning:" not in cli("models", "list", REVIEWS_SENTIMENT_MODEL="acme/reviews-sentiment").output


def test_changed_setting_warning_says_what_to_do(setup, tmp_path):
    settings, cli, sessions = setup
    other = save_labelled(tmp_path / "other", "sentiment", ["negative", "positive"], seed=9)
    assert "warning:" not in cli("models", "list").output  # the database is seeded with the tiny model
    listing = cli("models", "list", REVIEWS_SENTIMENT_MODEL=str(other))
    assert f"`reviews models add sentiment {other} --activate`" in listing.output
    assert cli("models", "add", "sentiment", str(other), "--activate").exit_code == 0
    assert "warning:" not in cli("models", "list", REVIEWS_SENTIMENT_MODEL=str(other)).output
    # Back to the seed's setting after an import: the import was deliberate, nothing to say.
    assert "warning:" not in cli("models", "list").output


def test_wrong_heads_are_refused(setup, tmp_path, tiny_models):
    settings, cli, sessions = setup
    base = save_labelled(tmp_path / "base", "sentiment", ["LABEL_0", "LABEL_1"], head=False)
    out = cli("models", "add", "sentiment", str(base))
    assert out.exit_code == 1 and "the model is a DistilBertModel" in out.output
    cfg = json.loads((base / "config.json").read_text())
    cfg["architectures"] = ["DistilBertForSequenceClassification"]  # a config that claims a head it lacks
    (base / "config.json").write_text(json.dumps(cfg))
    out = cli("models", "add", "sentiment", str(base))
    assert out.exit_code == 1 and "the checkpoint lacks weights of the sentiment model" in out.output
    out = cli("models", "add", "sentiment", str(tiny_models["ner"]))
    assert out.exit_code == 1 and "must be a *ForSequenceClassification" in out.output
    assert _leftovers(settings, "sentiment") == []


def test_engines_read_synonyms_and_refuse_unknown_labels(tmp_path):
    src = save_labelled(tmp_path / "neg-pos", "sentiment", ["neg", "pos"])
    assert load_sentiment(str(src), precision="fp32").labels == ["negative", "positive"]
    unknown = save_labelled(tmp_path / "bad-good", "sentiment", ["bad", "good"])
    with pytest.raises(LabelError, match="reviews models add sentiment SOURCE"):
        load_sentiment(str(unknown), precision="fp32")


@pytest.mark.parametrize("task, labels, user, expected", [
    ("sentiment", ["LABEL_0", "LABEL_1"], "", ["negative", "positive"]),
    ("sentiment", ["Positive", "Negative"], "", ["positive", "negative"]),
    ("sentiment", ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"],
     "1 star=negative,2 stars=neg,3 stars=skip,4 stars=positive,5 stars=POSITIVE",
     ["negative", "negative", "skip", "positive", "positive"]),
    ("ner", ["O", "B-per", "I-per", "S-LOCATION", "E-LOCATION", "B-Organisation"], "",
     ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"]),
    ("ner", ["O", "PERSON", "MISCELLANEOUS"], "", ["O", "I-PER", "I-MISC"]),
    ("ner", ["O", "B-PER", "B-PRODUCT", "I-PRODUCT"], "B-PRODUCT=B-MISC,I-PRODUCT=misc",
     ["O", "B-PER", "B-MISC", "I-MISC"]),
])
def test_label_mapping_rules(task, labels, user, expected):
    assert map_labels(task, labels, parse_map(user)).names == expected


def test_label_mapping_errors():
    with pytest.raises(LabelError, match="LABEL_0=<negative|positive|skip>"):
        map_labels("sentiment", ["LABEL_0", "LABEL_1", "LABEL_2"])  # three classes: order says nothing
    with pytest.raises(LabelError, match="no positive class"):
        map_labels("sentiment", ["a", "b"], {"a": "negative", "b": "skip"})
    with pytest.raises(LabelError, match="no O tag"):
        map_labels("ner", ["B-PER", "I-PER"])
    with pytest.raises(LabelError, match="expected LABEL=NAME"):
        parse_map("LABEL_0")


def test_folded_logits_sum_probabilities_and_drop_skipped_classes():
    names, groups = fold_plan(["negative", "skip", "negative", "positive"])
    assert names == ["negative", "positive"] and groups == [[0, 2], [3]]
    logits = torch.randn(3, 4)
    folded = Folded(lambda ids, mask: logits, groups)(None, None)
    p = logits.softmax(-1)
    expected = torch.stack([p[:, 0] + p[:, 2], p[:, 3]], dim=-1)
    assert torch.allclose(folded.softmax(-1), expected / expected.sum(-1, keepdim=True), atol=1e-6)
    assert fold_plan(["O", "B-PER"]) == (["O", "B-PER"], None)


@pytest.mark.postgres
def test_concurrent_imports_get_distinct_versions_and_one_active(migrated_pg, tiny_models, tmp_path):
    settings = make_settings(migrated_pg, tiny_models, model_dir=str(tmp_path / "versions"))
    sessions = session_factory(migrated_pg)
    src = save_labelled(tmp_path / "src", "sentiment", ["NEGATIVE", "POSITIVE"], seed=10)
    results, errors = [], []

    def add():
        try:
            results.append(model_import.import_model(settings, sessions, "sentiment", str(src), activate=True))
        except Exception as exc:  # reported below with the others
            errors.append(exc)

    threads = [threading.Thread(target=add) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.version for r in results) == [2, 3, 4]
    statuses = dict(_statuses(sessions, "sentiment"))
    assert list(statuses.values()).count("active") == 1 and statuses[1] == "retired"
    assert _leftovers(settings, "sentiment") == ["2", "3", "4"]
    with sessions() as s:
        for mv in registry.versions(s, "sentiment")[1:]:
            assert mv.source == str(Path(settings.model_dir) / "sentiment" / str(mv.version))
            assert json.loads(Path(mv.source, "reviews_import.json").read_text())["from"] == str(src.resolve())
