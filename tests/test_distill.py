"""`reviews distill`: soft targets (cached, resumable), the student's losses, the gate, the CLI and the
Celery path; and case markers, which the engine and every trainer must insert alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import main
from conftest import make_settings, running_worker, settings_env, write_jsonl
from test_retrain import NEG, POS, add_labels, toy_labels
from tiny_models import save_tiny
from worker import distill, registry, retrain
from worker.db import session_factory
from worker.nlp import batching, casing, loading
from worker.nlp.ner import load_ner, word_spans
from worker.training import soft_targets
from worker.training.data import SentimentExample
from worker.training.losses import MeanWordTargets, WordTargets, soft_target_loss
from worker.training.train import TrainConfig, encode_ner_spans, train_sentiment


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REVIEWS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# --- losses -------------------------------------------------------------------------------------

def test_soft_target_loss_uses_labels_and_targets_where_each_exists():
    student = torch.tensor([[2.0, -1.0], [0.5, 0.5], [1.0, 0.0], [3.0, 3.0]])
    teacher = torch.log_softmax(torch.tensor([[2.0, -1.0], [0.0, 4.0], [0.0, 0.0], [0.0, 0.0]]), -1)
    teacher[2:] = float("nan")  # rows 2 and 3: no soft targets
    labels = torch.tensor([-100, -100, 0, -100])  # row 3: nothing at all, ignored
    loss = soft_target_loss(student, teacher, labels, alpha=0.5, temperature=1.0)
    # Row 0 matches its teacher exactly (KL 0), row 1 does not, row 2 is plain cross-entropy.
    kl1 = torch.nn.functional.kl_div(torch.log_softmax(student[1], -1), teacher[1], log_target=True, reduction="sum")
    ce2 = torch.nn.functional.cross_entropy(student[2:3], labels[2:3])
    assert loss.item() == pytest.approx((0.0 + kl1.item() + ce2.item()) / 3, rel=1e-5)
    nothing = soft_target_loss(student, torch.full_like(teacher, float("nan")), torch.full((4,), -100), 0.5, 2.0)
    assert nothing.item() == 0.0


def test_word_targets_align_a_teacher_that_cuts_words_differently():
    # Teacher words: "New York" as one span, "rocks" as another; student pieces: new, york, rocks.
    teacher = WordTargets([(0, 8), (9, 14)], torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]])))
    offsets = [(0, 3), (4, 8), (9, 11), (11, 14)]
    rows = teacher.rows(offsets, [True, True, True, False])
    assert torch.allclose(rows[0].exp(), torch.tensor([0.9, 0.1])) and torch.allclose(rows[1], rows[0])
    assert torch.allclose(rows[2].exp(), torch.tensor([0.2, 0.8]))
    assert torch.isnan(rows[3]).all()  # not a first piece: no target
    other = WordTargets([(0, 3)], torch.log(torch.tensor([[0.5, 0.5]])))  # knows only the first word
    mean = MeanWordTargets([teacher, other]).rows(offsets, [True, True, True, False]).exp()
    assert torch.allclose(mean[0], torch.tensor([0.7, 0.3])) and torch.allclose(mean[2], torch.tensor([0.2, 0.8]))


# --- case markers ---------------------------------------------------------------------------------

def test_word_case():
    assert [casing.word_case(w) for w in ["Paris", "NATO", "I", "iPhone", "the", "3M", "42", "McDonald"]] == \
        ["title", "upper", "title", None, None, "title", None, "title"]


@pytest.fixture(params=["added", "inserted"])
def marked_ner(tmp_path, request) -> Path:
    directory = save_tiny(tmp_path / "marked", "ner", seed=3)
    config = json.loads((directory / "config.json").read_text())
    config[casing.CONFIG_KEY] = {**casing.DEFAULT_MARKERS, "style": request.param}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_marked_model_reads_case_and_engine_and_training_mark_alike(marked_ner):
    engine = load_ner(str(marked_ner), precision="fp32")
    assert engine.casing is not None
    text = "John Smith loved PARIS and the film"
    enc = batching.encode(engine.tokenizer, [text])[0]
    marked = engine._mark(text, enc)
    cased_words = {"John", "Smith", "PARIS"}
    if engine.casing.style == "inserted":
        assert len(marked.ids) == len(enc.ids) + 3  # a marker before each cased word
    else:  # the same tokens, each piece of a cased word carrying its case in its id
        assert len(marked.ids) == len(enc.ids) and marked.offsets == enc.offsets
        vocab = engine.casing.vocab_size
        changed = {text[s:e] for (s, e), a, b in zip(enc.offsets, enc.ids, marked.ids) if a != b}
        assert changed and all(any(piece in w for w in cased_words) for piece in changed)
        assert [i % vocab for i in marked.ids] == enc.ids
        assert {i // vocab for i in marked.ids} == {0, 1, 2}
    # Markers are no words: words and their spans are those of the unmarked text.
    assert [(s, e) for _, s, e in word_spans(marked, engine.continues_word, engine.markers)] == \
        [(s, e) for _, s, e in word_spans(enc, engine.continues_word)]
    # Training marks exactly the ids the engine reads, and never puts a label on a marker.
    (example,) = encode_ner_spans(engine.tokenizer, [(text, [(0, 10, "PER"), (17, 22, "LOC")])],
                                  TrainConfig(max_length=64), marking=engine.casing)
    assert example.ids[1:-1] == marked.ids
    assert all(y == -100 for tok, y in zip(example.ids, example.labels) if tok in engine.markers)
    assert sum(y != -100 for y in example.labels) == len(text.split())  # one tag per word
    # The engine's forward and transformers' forward (which training runs) read the ids alike.
    ids = torch.tensor([example.ids])
    mask = torch.ones_like(ids)
    reference, *_ = loading.load(str(marked_ner), "ner", "cpu", "fp32", use_transformers=True)
    with torch.inference_mode():
        ours = engine.forward(ids, mask)
        theirs = reference(**casing.model_inputs(reference, ids, engine.casing), attention_mask=mask).logits
    assert torch.allclose(ours, theirs, atol=1e-4)
    # Capitals change what the model sees, and so its probabilities.
    (_, upper), (_, lower) = engine.word_probabilities([text, text.lower()])
    assert not torch.allclose(upper, lower)
    spans = [(e.start, e.end) for e in engine.predict([text])[0]]
    assert all(0 <= s < e <= len(text) for s, e in spans)


def test_case_style_must_be_known(tmp_path):
    directory = save_tiny(tmp_path / "style", "ner")
    config = json.loads((directory / "config.json").read_text())
    config[casing.CONFIG_KEY] = {**casing.DEFAULT_MARKERS, "style": "sideways"}
    (directory / "config.json").write_text(json.dumps(config))
    from worker.nlp.types import ModelLoadError

    with pytest.raises(ModelLoadError, match="style 'sideways' is not one of added, inserted"):
        load_ner(str(directory), precision="fp32")


def test_bad_case_marker_config_is_a_load_error(tmp_path):
    directory = save_tiny(tmp_path / "bad", "ner")
    config = json.loads((directory / "config.json").read_text())
    config[casing.CONFIG_KEY] = {"title": "[unused1]", "upper": "[no such token]"}
    (directory / "config.json").write_text(json.dumps(config))
    from worker.nlp.types import ModelLoadError

    with pytest.raises(ModelLoadError, match="case_markers.*not two distinct tokens"):
        load_ner(str(directory), precision="fp32")


# --- soft targets ---------------------------------------------------------------------------------

def test_soft_targets_are_cached_in_parts_and_a_stopped_run_resumes(tiny_models, home, monkeypatch):
    monkeypatch.setattr(soft_targets, "PART_SIZE", 8)
    texts = [f"the film was {w} and the plot {v}" for w in POS + NEG for v in POS + NEG][:30]
    options = make_settings("sqlite://", tiny_models, precision="fp32").engine_options()
    first_log: list[str] = []
    first = soft_targets.compute("ner", str(tiny_models["ner"]), texts, options, home / "cache", first_log.append)
    assert "30/30 reviews (100%)" in first_log[-1] and "ETA" in first_log[-1]
    (directory,) = (home / "cache").iterdir()
    assert sorted(p.name for p in directory.iterdir()) == [f"part-{k:05d}.pt" for k in range(4)]
    (directory / "part-00002.pt").unlink()  # as if the run had stopped there
    log: list[str] = []
    again = soft_targets.compute("ner", str(tiny_models["ner"]), texts, options, home / "cache", log.append)
    assert log[0].startswith("teacher: 22 of 30 reviews' targets cached") and len(log) == 2
    for (s1, p1), (s2, p2) in zip(first.ner, again.ner):
        assert torch.equal(s1, s2) and torch.allclose(p1, p2, atol=1e-3)
    # Other texts are another cache entry, never stale targets.
    soft_targets.compute("ner", str(tiny_models["ner"]), texts[:5], options, home / "cache", lambda m: None)
    assert len(list((home / "cache").iterdir())) == 2


# --- the whole distillation -------------------------------------------------------------------------

def _toy_teacher(directory: Path) -> Path:
    """A tiny sentiment model that has learnt the toy task from labels none of the students sees."""
    save_tiny(directory, "sentiment", seed=7)
    model, tokenizer, *_ = loading.load(str(directory), "sentiment", "cpu", "fp32", use_transformers=True)
    train = [SentimentExample(t, 1 if y == "positive" else 0) for t, y in toy_labels() if not retrain.is_heldout(t)]
    train_sentiment(model, tokenizer, train, TrainConfig(epochs=25, lr=3e-3, precision="fp32"), progress=lambda m: None)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def test_a_student_learns_the_task_from_the_teacher_alone(migrated_sqlite, tiny_models, home, tmp_path):
    """Only the held-out texts carry labels (for the gate): the student sees unlabeled texts and the
    teacher's probabilities, and must end up doing the task."""
    teacher = _toy_teacher(tmp_path / "teacher")
    student = save_tiny(tmp_path / "student", "sentiment", seed=1)
    settings = make_settings(migrated_sqlite, {**tiny_models, "sentiment": student}, model_dir=str(tmp_path / "v"))
    labels = toy_labels()
    add_labels(migrated_sqlite, [(t, y) for t, y in labels if retrain.is_heldout(t)])
    data = write_jsonl(tmp_path / "unlabeled.jsonl", [{"id": f"u{i}", "text": t} for i, (t, _) in enumerate(labels)])
    request = distill.DistillRequest("sentiment", [str(teacher)], data=str(data), epochs=25, lr=3e-3,
                                     cosine_weight=1.0)
    log: list[str] = []
    outcome = distill.distill(settings, session_factory(migrated_sqlite), request, log.append)
    assert outcome.status == "promoted", outcome
    assert outcome.metrics["candidate"]["accuracy"] >= 0.9 > outcome.metrics["active"]["accuracy"]
    assert outcome.metrics["train"]["hidden_state_loss"].startswith("on")
    heldout_n = sum(retrain.is_heldout(t) for t, _ in labels)
    assert any(f"{len(labels) - heldout_n} texts (0 with a human label" in m for m in log)  # held-out texts dropped
    with session_factory(migrated_sqlite)() as s:
        assert registry.active_versions(s, settings)["sentiment"].version == 2


def test_ner_distillation_from_an_ensemble_into_a_marked_student(migrated_sqlite, tiny_models, home, tmp_path,
                                                                   marked_ner):
    teachers = [str(save_tiny(tmp_path / f"t{k}", "ner", seed=10 + k)) for k in range(2)]
    settings = make_settings(migrated_sqlite, tiny_models, model_dir=str(tmp_path / "v"))
    texts = [f"John Smith loved the {w} film in Paris" for w in POS + NEG]
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    before = load_ner(str(marked_ner), precision="fp32").word_probabilities(texts)
    request = distill.DistillRequest("ner", teachers, data=str(data), student=str(marked_ner), epochs=30, lr=3e-3,
                                     cosine_weight=1.0)
    outcome = distill.distill(settings, session_factory(migrated_sqlite), request, lambda m: None)
    assert outcome.status == "candidate" and "no held-out ner labels" in outcome.reason  # nothing to gate on
    assert outcome.metrics["train"]["hidden_state_loss"].startswith("off: an ensemble")
    with session_factory(migrated_sqlite)() as s:
        new = registry.get(s, "ner", outcome.version)
    after = load_ner(new.source, precision="fp32").word_probabilities(texts)
    assert json.loads((Path(new.source) / "config.json").read_text())[casing.CONFIG_KEY]  # the marking stays
    targets = [load_ner(t, precision="fp32").word_probabilities(texts) for t in teachers]

    def distance(rows) -> float:  # mean L1 between the student's and the ensemble's word probabilities
        return sum((p - (targets[0][i][1] + targets[1][i][1]) / 2).abs().mean().item()
                   for i, (_, p) in enumerate(rows)) / len(rows)

    assert distance(after) < 0.5 * distance(before)


def test_hidden_state_loss_only_where_shapes_allow(tiny_models, tmp_path):
    from worker.training.students import hidden_teacher, load_student

    student = load_student("sentiment", str(tiny_models["sentiment"]), "unused")
    same = str(save_tiny(tmp_path / "same", "sentiment", seed=4))
    wider = str(save_tiny(tmp_path / "wide", "sentiment", seed=4, size="medium"))
    assert hidden_teacher("sentiment", [same], student)[1].startswith("on")
    assert hidden_teacher("sentiment", [wider], student)[1] == "off: teacher width 256 is not the student's 32"
    assert hidden_teacher("sentiment", [same, same], student)[0] is None


def test_cli_reports_bad_lines_and_refuses_without_texts(migrated_sqlite, tiny_models, home, tmp_path):
    settings = make_settings(migrated_sqlite, tiny_models, model_dir=str(tmp_path / "v"))
    env = settings_env(settings) | {"REVIEWS_HOME": str(home)}
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": 1}\nnot json\n\xff\xfe\n')
    args = ["distill", "sentiment", "--teacher", str(tiny_models["sentiment"]), "--data", str(bad), "--local"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "bad.jsonl:1: skipped" in result.stderr and "bad.jsonl:3: skipped" in result.stderr
    assert "no texts to distill on" in result.stderr
    assert "give the texts" in CliRunner().invoke(main, args[:4] + ["--local"], env=env).output
    with session_factory(migrated_sqlite)() as s:
        assert [mv.version for mv in registry.versions(s, "sentiment")] in ([], [1])


def test_a_student_that_cannot_train_is_refused_before_the_teacher_runs(migrated_sqlite, tiny_models, home,
                                                                         tmp_path):
    settings = make_settings(migrated_sqlite, tiny_models, model_dir=str(tmp_path / "v"))
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "1", "text": "the film was great"}])
    args = ["distill", "sentiment", "--teacher", str(tiny_models["sentiment"]), "--data", str(data), "--local",
            "--student", str(tmp_path / "nothing-here")]
    result = CliRunner().invoke(main, args, env=settings_env(settings) | {"REVIEWS_HOME": str(home)})
    assert result.exit_code == 1 and "not a saved model directory" in result.stderr
    assert not (home / "cache").exists()  # no teacher work was done for it


_line = st.one_of(st.binary(max_size=60),
                  st.builds(lambda t: json.dumps({"id": "x", "text": t}).encode(), st.text(max_size=40)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(lines=st.lists(_line, max_size=12), packing=st.sampled_from(["plain", "gzip", "cut gzip"]))
def test_any_bytes_become_texts_or_numbered_skips(tmp_path_factory, lines, packing):
    import gzip

    path = tmp_path_factory.mktemp("prop") / "in.jsonl"
    raw = b"\n".join(line.replace(b"\n", b" ") for line in lines)
    if packing != "plain":
        raw = gzip.compress(raw)
        raw = raw[: len(raw) // 2] if packing == "cut gzip" else raw
    path.write_bytes(raw)
    log: list[str] = []
    texts = distill.read_texts(distill.DistillRequest("sentiment", ["t"], data=str(path)),
                               make_settings("sqlite://", {"sentiment": "x", "ner": "x"}), None, log.append)
    skipped = [m for m in log if ": skipped: " in m]
    assert all(m.startswith("in.jsonl:") and m.split(":")[1].isdigit() for m in skipped)
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert len(texts) == len(set(texts))


@pytest.mark.postgres
def test_distill_through_a_trainer_worker(migrated_pg, redis_url, tiny_models, home, tmp_path):
    teacher = _toy_teacher(tmp_path / "teacher")
    settings = make_settings(migrated_pg, tiny_models, model_dir=str(tmp_path / "v"))
    labels = toy_labels()
    add_labels(migrated_pg, [(t, y) for t, y in labels if retrain.is_heldout(t)])
    data = write_jsonl(tmp_path / "u.jsonl", [{"id": str(i), "text": t} for i, (t, _) in enumerate(labels)])
    args = ["distill", "sentiment", "--teacher", str(teacher), "--data", str(data), "--epochs", "25", "--lr",
            "0.003", "--wait"]
    with running_worker(settings, queues=("training",), shutdown_timeout=60):
        result = CliRunner().invoke(main, args, env=settings_env(settings) | {"REVIEWS_HOME": str(home)})
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "promoted" and outcome["version"] == 2, outcome
