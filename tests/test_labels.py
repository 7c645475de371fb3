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
