"""`reviews export --for label-studio`: tasks with the models' predictions, the least sure first, and the
round trip back through `reviews label`.

Task and prediction format: https://labelstud.io/guide/predictions.html ("Import span pre-annotations for
text"); what Label Studio adds when a task is labelled: https://labelstud.io/guide/export.html.
"""

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from cli.main import main
from conftest import make_settings, settings_env, write_jsonl
from worker.db import session_factory
from worker.schema import Label, Review, SentimentResult

TEXTS = {"1": "Loved the acting of Meryl Streep in Paris.", "2": "An awful film, a waste of an evening.",
         "3": "The plot was fine, I suppose.", "4": "Tom Hanks was great but Berlin looked grey."}


@pytest.fixture(params=["sqlite", "postgres"])
def analysed(request, tiny_models, tmp_path):
    """A database whose reviews (external ids "1".."4": the ids Label Studio gives its tasks too) were
    analysed by `reviews run`; yields (url, env)."""
    url = request.getfixturevalue("migrated_sqlite" if request.param == "sqlite" else "migrated_pg")
    env = settings_env(make_settings(url, tiny_models))
    reviews = write_jsonl(tmp_path / "r.jsonl", [{"id": k, "text": t} for k, t in TEXTS.items()])
    assert CliRunner().invoke(main, ["run", str(reviews)], env=env).exit_code == 0
    return url, env


def cli(env, *args):
    return CliRunner().invoke(main, list(map(str, args)), env=env)


def set_probabilities(url, probabilities: dict[str, float]) -> None:
    """The sentiment model's probabilities that a test needs, in place of the tiny model's."""
    with session_factory(url)() as s:
        for ext_id, p in probabilities.items():
            review = s.scalar(select(Review.id).where(Review.external_id == ext_id))
            s.execute(update(SentimentResult).where(SentimentResult.review_id == review).values(probability=p))
        s.commit()


def test_tasks_carry_the_latest_results_as_predictions(analysed, tmp_path):
    url, env = analysed
    set_probabilities(url, {"1": 0.9, "2": 0.8, "3": 0.7, "4": 0.6})
    target = tmp_path / "tasks.json"
    result = cli(env, "export", "--for", "label-studio", "-o", target)
    assert result.exit_code == 0 and "wrote 4 tasks" in result.stderr
    tasks = json.loads(target.read_text())
    assert [t["data"] for t in tasks] == [{"text": t, "review_id": k} for k, t in TEXTS.items()]
    rows = [json.loads(line) for line in cli(env, "export").stdout.splitlines()]  # the same latest results
    for task, row in zip(tasks, rows):
        [prediction] = task["predictions"]
        assert prediction["model_version"] == "sentiment v1 / ner v1" and prediction["score"] == row["probability"]
        choices, *spans = prediction["result"]
        assert (choices["type"], choices["from_name"], choices["to_name"], choices["value"]) == \
            ("choices", "sentiment", "text", {"choices": [row["sentiment"]]})
        assert {(s["type"], s["from_name"], s["to_name"]) for s in spans} <= {("labels", "label", "text")}
        assert [s["value"] for s in spans] == [
            {"start": e["start"], "end": e["end"], "text": e["text"], "labels": [e["label"]], "score": e["score"]}
            for e in row["entities"]]
        assert all(task["data"]["text"][s["value"]["start"]:s["value"]["end"]] == s["value"]["text"] for s in spans)
    assert [t["predictions"][0]["score"] for t in tasks] == [0.9, 0.8, 0.7, 0.6]
    ids = [r["id"] for t in tasks for r in t["predictions"][0]["result"]]
    assert len(ids) == len(set(ids))  # Label Studio wants result ids that differ
    piped = cli(env, "export", "--for", "label-studio")  # stdout: the same document, written at the end
    assert json.loads(piped.stdout) == tasks


def test_uncertain_gives_the_least_sure_first(analysed, tmp_path):
    url, env = analysed
    set_probabilities(url, {"1": 0.93, "2": 0.55, "3": 0.71, "4": 0.52})
    out = cli(env, "export", "--for", "label-studio", "--uncertain", 3)
    assert out.exit_code == 0, out.stderr
    tasks = json.loads(out.stdout)
    assert [(t["data"]["review_id"], t["predictions"][0]["score"]) for t in tasks] == \
        [("4", 0.52), ("2", 0.55), ("3", 0.71)]
    one_job = cli(env, "export", "--for", "label-studio", "--uncertain", 10, "--job", 1)
    assert len(json.loads(one_job.stdout)) == 4


def test_export_annotate_import_round_trip(analysed, tmp_path):
    url, env = analysed
    target = tmp_path / "tasks.json"
    assert cli(env, "export", "--for", "label-studio", "-o", target).exit_code == 0
    tasks = json.loads(target.read_text())
    # Label Studio numbers the tasks it imports itself: here 4, 3, 2, 1, so that task 1 is review "4".
    for n, task in zip(range(len(tasks), 0, -1), tasks):
        task["id"] = n
    by_review = {t["data"]["review_id"]: t for t in tasks}
    hanks, berlin = TEXTS["4"].index("Tom Hanks"), TEXTS["4"].index("Berlin")
    by_review["2"]["annotations"] = [_annotation(801, "2024-06-01T10:00:00Z", [_choice("Negative")])]
    by_review["4"]["annotations"] = [
        _annotation(802, "2024-06-01T10:00:00Z", [_choice("Negative")]),
        _annotation(803, "2024-06-02T10:00:00Z", [_choice("Positive"), _span(hanks, "Tom Hanks", "PER"),
                                                  _span(berlin, "Berlin", "LOC")]),
    ]  # corrected the next day: the later annotation counts
    by_review["1"]["annotations"] = [_annotation(804, "2024-06-03T10:00:00Z", [_choice("Negative")], cancelled=True)]
    labelled = tmp_path / "project-3-at-2024-06-03.json"
    labelled.write_text(json.dumps(tasks))

    result = cli(env, "label", labelled, "--format", "label-studio", "--id-field", "data.review_id")
    assert result.exit_code == 0, result.output
    assert "3 labels added, 0 already known, 0 tasks rejected, 2 tasks without an answer" in result.stdout
    with session_factory(url)() as s:
        review = dict(s.execute(select(Review.id, Review.external_id)).all())
        got = sorted((review[lb.review_id], lb.task, lb.sentiment, lb.entities)
                     for lb in s.scalars(select(Label)))
    assert got == [
        ("2", "sentiment", "negative", None),
        ("4", "ner", None, [{"start": hanks, "end": hanks + 9, "label": "PER"},
                            {"start": berlin, "end": berlin + 6, "label": "LOC"}]),
        ("4", "sentiment", "positive", None),
    ]
    by_text = cli(env, "label", labelled)  # auto, by text: the same reviews, the same labels
    assert "0 labels added, 3 already known" in by_text.stdout


def test_export_for_labeling_usage(analysed, tmp_path):
    _, env = analysed
    assert "--uncertain chooses reviews to label" in cli(env, "export", "--uncertain", 2).stderr
    assert "--format is for results" in cli(env, "export", "--for", "label-studio", "--format", "jsonl").stderr
    assert "need their text" in cli(env, "export", "--for", "label-studio", "--no-text").stderr
    missing = cli(env, "export", "--for", "label-studio", "--job", 99)
    assert missing.exit_code == 1 and missing.stdout == ""
    assert cli(env, "export", "--for", "label-studio", "-o", tmp_path / "no" / "x.json").exit_code == 1
    assert not (tmp_path / "no").exists()
    plain = cli(env, "export")  # the default is unchanged: JSONL results
    assert [json.loads(line)["id"] for line in plain.stdout.splitlines()] == list(TEXTS)


def _choice(value: str) -> dict:
    return {"id": "c", "from_name": "sentiment", "to_name": "text", "type": "choices", "origin": "manual",
            "value": {"choices": [value]}}


def _span(start: int, text: str, label: str) -> dict:
    return {"id": f"s{start}", "from_name": "label", "to_name": "text", "type": "labels", "origin": "manual",
            "value": {"start": start, "end": start + len(text), "text": text, "labels": [label]}}


def _annotation(ann_id: int, when: str, result: list[dict], cancelled: bool = False) -> dict:
    return {"id": ann_id, "completed_by": 1, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": when, "updated_at": when, "lead_time": 3.5}
