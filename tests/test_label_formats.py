"""`reviews label` on labeling tools' exports: Label Studio, doccano, Argilla.

The samples in tests/data/labeling/ were written by hand from each tool's documented export format
(the page is cited above each test that reads one); none is copied from a dataset.
"""

import gzip
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from conftest import make_settings, settings_env, write_jsonl
from worker import label_formats
from worker.db import session_factory
from worker.inputs import InputError, Rejected
from worker.labels import read_items
from worker.schema import Label, RejectedLine, Review

SAMPLES = Path(__file__).parent / "data" / "labeling"


@pytest.fixture
def env(migrated_sqlite, tiny_models):
    return settings_env(make_settings(migrated_sqlite, tiny_models))


def label(env, *args):
    return CliRunner().invoke(main, ["label", *map(str, args)], env=env)


def stored(url) -> list[tuple]:
    with session_factory(url)() as s:
        return [(lb.task, lb.text, lb.sentiment, lb.entities, lb.review_id)
                for lb in s.scalars(select(Label).order_by(Label.id))]


# Label Studio JSON export: https://labelstud.io/guide/export.html ("Label Studio JSON format of annotated
# tasks"); text spans as in https://labelstud.io/guide/predictions.html ("Import span pre-annotations for text").
def test_label_studio_export_with_mapping(env, migrated_sqlite):
    result = label(env, SAMPLES / "label-studio.json", "--map", "neutral=skip,PERSON=PER")
    assert result.exit_code == 0, result.output
    assert ("3 labels added, 0 already known, 0 tasks rejected, 1 value skipped by --map, 1 task without an answer "
            "(label-studio)") in result.output
    # Task 1 has three annotations: the latest (103) was cancelled, so 102 counts, not the older 101.
    assert stored(migrated_sqlite) == [
        ("sentiment", "Loved the acting of Meryl Streep in Paris.", "positive", None, None),
        ("ner", "Loved the acting of Meryl Streep in Paris.", None,
         [{"start": 20, "end": 32, "label": "PER"}, {"start": 36, "end": 41, "label": "LOC"}], None),
        ("sentiment", "An awful film, a waste of an evening.", "negative", None, None),
    ]
    again = label(env, SAMPLES / "label-studio.json", "--map", "neutral=skip", "--map", "person=PER")
    assert "0 labels added, 3 already known" in again.output  # idempotent; --map keys ignore case


# https://labelstud.io/guide/export.html
def test_label_studio_values_the_models_do_not_know_are_rejected_with_a_hint(env, migrated_sqlite):
    result = label(env, SAMPLES / "label-studio.json")
    assert result.exit_code == 0, result.output  # task 2 is usable
    assert "1 labels added, 0 already known, 2 tasks rejected" in result.output
    assert "task 1: entity label 'PERSON' is not one the models know (PER, ORG, LOC, MISC); map it: --map PERSON=..." \
        in result.output
    assert "task 3: sentiment 'Neutral' is not one the models know (negative, positive); map it: --map Neutral=..." \
        in result.output
    # A task is one unit: task 1's sentiment is not stored while its entities are rejected.
    assert [row[2] for row in stored(migrated_sqlite)] == ["negative"]


# https://labelstud.io/guide/export.html
def test_every_task_rejected_names_each_task_and_exits_non_zero(env, migrated_sqlite):
    result = label(env, SAMPLES / "label-studio-bad.json", "--format", "label-studio")
    assert result.exit_code == 1 and "no label could be used" in result.output
    assert "0 labels added, 0 already known, 6 tasks rejected" in result.output
    for expected in [
        "task 1: sentiment 'Mixed' is not one the models know (negative, positive); map it: --map Mixed=...",
        "task 2: entities overlap at characters 4-13",
        "task 3: entity 0: end 40 is past the end of the text (6 characters)",
        "task 4: result 0: characters 0-5 of the text are 'Paris', but the span says 'Rome'",
        "task 5: expected a JSON object (a task), got int",
        "task 6: the sentiment is ambiguous (positive, negative)",
    ]:
        assert expected in result.output
    assert "Traceback" not in result.output
    with session_factory(migrated_sqlite)() as s:
        assert s.scalars(select(RejectedLine.line_no).order_by(RejectedLine.line_no)).all() == [1, 2, 3, 4, 5, 6]
    assert stored(migrated_sqlite) == []


# https://labelstud.io/guide/export.html: "id" is Label Studio's own task id.
def test_a_label_studio_task_id_is_not_a_review_id(env, migrated_sqlite, tmp_path):
    reviews = write_jsonl(tmp_path / "r.jsonl", [{"id": "1", "text": "A slow start."},
                                                 {"id": "2", "text": "A stunning finale."}])
    assert CliRunner().invoke(main, ["run", str(reviews)], env=env).exit_code == 0
    tasks = [{"id": 1, "data": {"text": "A stunning finale."}, "annotations": [
        {"id": 9, "was_cancelled": False, "result": [
            {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["Positive"]}}]}]}]
    export = tmp_path / "project-1-at-2024-06-01.json"
    export.write_text(json.dumps(tasks))
    assert label(env, export).exit_code == 0
    with session_factory(migrated_sqlite)() as s:
        review_2 = s.scalar(select(Review.id).where(Review.external_id == "2"))
    assert stored(migrated_sqlite) == [("sentiment", "A stunning finale.", "positive", None, review_2)]  # by text
    asked = label(env, export, "--id-field", "id")  # only when asked is the task id ours
    assert asked.exit_code == 1 and "task 1: text differs from stored review '1'" in asked.output


# doccano JSONL export, as its Export dialog shows it:
# https://github.com/doccano/doccano/blob/master/backend/data_export/pipeline/examples.py (and
# https://doccano.github.io/doccano/tutorial/#export-data)
def test_doccano_sequence_labeling_and_text_classification(env, migrated_sqlite, tmp_path):
    reviews = write_jsonl(tmp_path / "r.jsonl", [{"id": "d-1", "text": "A warm, funny film."}])
    assert CliRunner().invoke(main, ["run", str(reviews)], env=env).exit_code == 0
    ner = label(env, SAMPLES / "doccano-ner.jsonl", "--map", "PERSON=PER")
    assert "2 labels added, 0 already known, 0 lines rejected, 1 line without an answer (doccano)" in ner.output
    sentiment = label(env, SAMPLES / "doccano-sentiment.jsonl", "--map", "neutral=skip")
    assert "2 labels added, 0 already known, 0 lines rejected, 1 value skipped by --map (doccano)" in sentiment.output
    with session_factory(migrated_sqlite)() as s:
        review = s.scalar(select(Review.id).where(Review.external_id == "d-1"))
    rows = stored(migrated_sqlite)
    assert rows[:2] == [
        ("ner", "Tom Hanks was great but Berlin looked grey.", None,
         [{"start": 0, "end": 9, "label": "PER"}, {"start": 24, "end": 30, "label": "LOC"}], None),
        ("ner", "Acme Films made it.", None, [{"start": 0, "end": 10, "label": "ORG"}], None),
    ]
    assert rows[2:] == [("sentiment", "Terrible pacing and a dull script.", "negative", None, None),
                        ("sentiment", "A warm, funny film.", "positive", None, review)]  # matched by text


# Argilla v2 `dataset.records.to_json` (a list of record dicts: fields, responses, suggestions):
# https://docs.argilla.io/latest/how_to_guides/import_export/ and
# https://docs.argilla.io/latest/reference/argilla/records/records/
def test_argilla_v2_records(env, migrated_sqlite):
    result = label(env, SAMPLES / "argilla-v2.json")
    assert result.exit_code == 0, result.output
    assert "3 labels added, 0 already known, 1 task rejected, 1 task without an answer (argilla)" in result.output
    assert "task 4: the sentiment is ambiguous (positive, negative): several choices, or annotators disagree" \
        in result.output
    assert stored(migrated_sqlite) == [
        ("sentiment", "The score was wonderful.", "positive", None, None),  # the response, not the suggestion
        ("sentiment", "Kate Winslet shines in London.", "positive", None, None),
        ("ner", "Kate Winslet shines in London.", None,
         [{"start": 0, "end": 12, "label": "PER"}, {"start": 23, "end": 29, "label": "LOC"}], None),
    ]


# Argilla v1 records (TextClassificationRecord, TokenClassificationRecord: annotation tuples are
# (label, start, end)): https://docs.argilla.io/en/v1.8.0/reference/datamodel.html
def test_argilla_v1_records(env, migrated_sqlite):
    result = label(env, SAMPLES / "argilla-v1.jsonl", "--format", "argilla")
    assert "2 labels added, 0 already known, 0 lines rejected, 1 line without an answer" in result.output
    assert stored(migrated_sqlite) == [
        ("sentiment", "I want my money back.", "negative", None, None),
        ("ner", "Greta Gerwig directed it in Sacramento.", None,
         [{"start": 0, "end": 12, "label": "PER"}, {"start": 28, "end": 38, "label": "LOC"}], None),
    ]  # the Discarded record is no label


# Every sample's first record, as documented by the pages cited above.
def test_auto_detection_by_fields(env, tmp_path):
    def first(name):
        _, items = read_items(io.BytesIO((SAMPLES / name).read_bytes()), 10**6)
        return next(i for i in items if not isinstance(i, Rejected))[1]

    found = {name: label_formats.detect(first(name)) for name in
             ("label-studio.json", "doccano-ner.jsonl", "doccano-sentiment.jsonl", "argilla-v2.json",
              "argilla-v1.jsonl")}
    assert found == {"label-studio.json": "label-studio", "doccano-ner.jsonl": "doccano",
                     "doccano-sentiment.jsonl": "doccano", "argilla-v2.json": "argilla", "argilla-v1.jsonl": "argilla"}
    assert label_formats.detect({"text": "x", "sentiment": "positive"}) == "jsonl"
    assert label_formats.detect({"text": "x", "sentiment.responses": ["positive"]}) == "argilla"
    named = label(env, SAMPLES / "label-studio.json", "--format", "jsonl")
    assert named.exit_code == 1 and "is one JSON array: our own label format is JSON Lines" in named.output
    unknown = tmp_path / "unknown.json"
    unknown.write_text('[{"review": "x"}]')
    assert "name the format with --format" in label(env, unknown).output
    ours = write_jsonl(tmp_path / "ours.jsonl", [{"text": "Fine.", "sentiment": "positive"}])
    assert "--map" in label(env, ours, "--map", "a=skip").output  # tool options on our JSONL: said, not ignored


# Argilla v2 `records.to_list(flatten=True)`: "<question>.responses", ".responses.status", ".suggestion"
# https://docs.argilla.io/latest/how_to_guides/import_export/
def test_argilla_flattened_records_count_submitted_responses_only():
    options = label_formats.ToolOptions()
    record = {"id": "a", "text": "Fine.", "label.responses": ["positive", "negative"],
              "label.responses.users": ["u1", "u2"], "label.responses.status": ["submitted", "discarded"],
              "label.suggestion": "negative", "label.suggestion.score": 0.9}
    assert label_formats.convert("argilla", record, options) == ([{"text": "Fine.", "sentiment": "positive"}], 0)
    record["label.responses.status"] = ["draft", "discarded"]
    assert label_formats.convert("argilla", record, options) == ([], 0)


# A Label Studio project with two Choices controls: https://labelstud.io/guide/export.html (from_name).
def test_control_picks_the_sentiment_control_and_map_names_values(env, migrated_sqlite, tmp_path):
    def choice(name, value):
        return {"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [value]}}

    tasks = [{"id": 5, "data": {"review": "Brilliant.", "lang": "en"},
              "annotations": [{"result": [choice("sentiment", "Positive"), choice("language", "English")]}]}]
    path = tmp_path / "two-controls.json"
    path.write_text(json.dumps(tasks))
    assert "no text here; name where it lies with --text-field" in label(env, path).output
    both = label(env, path, "--text-field", "data.review")
    assert "task 1: sentiment 'English' is not one the models know" in both.output
    only = label(env, path, "--text-field", "data.review", "--control", "sentiment")
    assert only.exit_code == 0 and "1 labels added" in only.output
    assert stored(migrated_sqlite) == [("sentiment", "Brilliant.", "positive", None, None)]
    for bad in ("neutral", "x=happy", "=skip"):
        result = label(env, path, "--map", bad)
        assert result.exit_code == 2 and "--map" in result.output


def test_a_json_array_is_streamed_and_broken_tasks_are_numbered(tmp_path):
    def items(data: bytes, limit=10**6):
        return list(read_items(io.BytesIO(data), limit)[1])

    tasks = [{"data": {"text": f"review {k}"}} for k in range(3)]
    assert [i[0] for i in items(gzip.compress(json.dumps(tasks).encode()))] == [1, 2, 3]  # gzip found by magic
    cut = items(json.dumps(tasks).encode()[:-30])
    assert [type(i).__name__ for i in cut] == ["tuple", "tuple", "Rejected"]
    assert cut[-1].line_no == 3 and "the rest of the file was not read" in cut[-1].reason
    bad = items(b'[{"a": 1},\n {"b": NaN}, {"c": \x00}]')
    assert bad[1].line_no == 2 and "NaN" in bad[1].reason
    assert bad[2].line_no == 3 and bad[2].reason.startswith("invalid JSON")
    big = items(json.dumps([{"t": "x" * 500}, {"t": "y"}]).encode(), limit=100)
    assert isinstance(big[0], Rejected) and "over 100 (REVIEWS_MAX_LINE_BYTES)" in big[0].reason
    assert big[1][1] == {"t": "y"}  # the task after a long one is read
    missing = items(b'[{"a": 1} {"b": 2}]')
    assert "expected ',' or ']' after task 1" in missing[1].reason
    assert items(b"\xef\xbb\xbf  [ ]") == []
    assert items(b"[1]")[0].reason == "expected a JSON object (a task), got int"
    many = [{"data": {"text": f"review {k} " + "abcdefghij"[k % 10] * (k % 97)}} for k in range(5000)]
    packed = gzip.compress(json.dumps(many).encode())
    broken = items(packed[:len(packed) // 2])  # cut halfway: the tasks before the cut, then one rejection
    assert [i[0] for i in broken[:-1]] == list(range(1, len(broken)))
    assert len(broken) > 100 and "gzip data is corrupt or truncated" in broken[-1].reason
    lines = list(read_items(io.BytesIO(gzip.compress(b'\n\n{"text": "a", "label": ["positive"]}\n')), 10**6)[1])
    assert lines[0][0] == 3  # JSONL line numbers count the blank lines before
    with pytest.raises(InputError, match="is one JSON array"):
        label_formats.resolve("auto", {"review": "x"}, "task", "f.json", label_formats.ToolOptions())
