"""`reviews label`: validated line by line, idempotent."""

from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from conftest import make_settings, settings_env, write_jsonl
from worker.db import session_factory
from worker.schema import Label


def test_label_import_validates_and_is_idempotent(migrated_sqlite, tiny_models, tmp_path):
    settings = make_settings(migrated_sqlite, tiny_models)
    env = settings_env(settings)
    runner = CliRunner()
    reviews = write_jsonl(tmp_path / "r.jsonl", [{"id": "r-1", "text": "An awful film"}])
    assert runner.invoke(main, ["run", str(reviews)], env=env).exit_code == 0
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join([
        '{"id": "r-1", "sentiment": "negative"}',
        '{"text": "A lovely film", "sentiment": "positive"}',
        '{"text": "Meryl Streep in Paris", "entities": [{"start": 0, "end": 12, "label": "PER"}, '
        '{"start": 16, "end": 21, "label": "LOC"}]}',
        '{"id": "r-404", "sentiment": "positive"}',
        '{"text": "x", "sentiment": "meh"}',
        '{"text": "Paris", "entities": [{"start": 0, "end": 9, "label": "LOC"}]}',
        '{"text": "Paris", "entities": [{"start": 0, "end": 5, "label": "CITY"}]}',
        '{"text": "Paris", "sentiment": "positive", "entities": []}',
        'not json',
    ]) + "\n")
    result = runner.invoke(main, ["label", str(labels)], env=env)
    assert result.exit_code == 0, result.output
    assert "3 labels added, 0 already known, 6 lines rejected" in result.output
    assert "line 4: no stored review with id 'r-404'" in result.output
    assert "line 5: 'sentiment' must be one of negative, positive" in result.output
    assert "line 6: entity 0: end 9 is past the end of the text" in result.output
    assert "line 7: entity 0: label must be one of PER, ORG, LOC, MISC" in result.output
    assert "line 8: needs exactly one of 'sentiment' or 'entities'" in result.output
    assert "line 9: invalid JSON" in result.output
    again = runner.invoke(main, ["label", str(labels)], env=env)
    assert "0 labels added, 3 already known" in again.output
    with session_factory(migrated_sqlite)() as s:
        rows = s.scalars(select(Label).order_by(Label.id)).all()
    assert [(r.task, r.sentiment) for r in rows] == [("sentiment", "negative"), ("sentiment", "positive"), ("ner", None)]
    assert rows[0].review_id is not None and rows[0].text == "An awful film"
    assert rows[2].entities == [{"start": 0, "end": 12, "label": "PER"}, {"start": 16, "end": 21, "label": "LOC"}]


def test_the_latest_label_of_a_text_wins_even_when_it_was_given_before(migrated_sqlite, tiny_models, tmp_path):
    from worker.retrain import latest_labels

    env = settings_env(make_settings(migrated_sqlite, tiny_models))
    runner = CliRunner()
    outcomes = []
    for value in ("positive", "negative", "positive"):
        path = write_jsonl(tmp_path / f"{value}.jsonl", [{"text": "A film about nothing", "sentiment": value}])
        outcomes.append(runner.invoke(main, ["label", str(path)], env=env).output)
    assert all("1 labels added" in out for out in outcomes), outcomes
    with session_factory(migrated_sqlite)() as s:
        assert [lb.sentiment for lb in latest_labels(s, "sentiment")] == ["positive"]
    again = runner.invoke(main, ["label", str(tmp_path / "positive.jsonl")], env=env)
    assert "0 labels added, 1 already known" in again.output  # the same as the latest: nothing changes


def test_a_file_with_no_usable_label_exits_non_zero(migrated_sqlite, tiny_models, tmp_path):
    env = settings_env(make_settings(migrated_sqlite, tiny_models))
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "x", "sentiment": "meh"}\n{"text": "a\\ud800b", "sentiment": "positive"}\n')
    result = CliRunner().invoke(main, ["label", str(path)], env=env)
    assert result.exit_code == 1 and "no label could be used" in result.output
    assert "line 2:" in result.output and "Traceback" not in result.output


def test_a_labeling_tool_export_is_read_as_such(migrated_sqlite, tiny_models, tmp_path):
    """A JSON array was refused as "not JSON Lines"; now the tool is recognised by its fields. Formats and
    their pages: tests/test_label_formats.py."""
    env = settings_env(make_settings(migrated_sqlite, tiny_models))
    path = tmp_path / "project-1-at-2025.json"
    path.write_text('[\n  {"id": 1, "data": {"text": "Great"}, "annotations": [{"result": []}]}\n]\n')
    result = CliRunner().invoke(main, ["label", str(path)], env=env)
    assert result.exit_code == 1 and "1 task without an answer (label-studio)" in result.output
    assert "no label could be used" in result.output and "Traceback" not in result.output
    path.write_text('[{"id": 1, "data": {"text": "Great"}, "annotations": [{"result": [{"type": "choices", '
                    '"from_name": "sentiment", "to_name": "text", "value": {"choices": ["Positive"]}}]}]}]')
    result = CliRunner().invoke(main, ["label", str(path)], env=env)
    assert result.exit_code == 0 and "1 labels added" in result.output
    ours = CliRunner().invoke(main, ["label", str(path), "--format", "jsonl"], env=env)
    assert ours.exit_code == 1 and "our own label format is JSON Lines" in ours.output
