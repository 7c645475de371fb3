"""The language guard: reviews in languages the models were not trained on are detected, stored and
skipped with the reason, not given confident nonsense."""

import json

import pytest
from click.testing import CliRunner

from cli.main import main
from conftest import make_settings, settings_env, write_jsonl
from worker import language
from worker.config import Settings, SettingsError

REVIEWS = [
    {"id": "en1", "text": "The plot was boring and the acting was terrible, a waste of two hours."},
    {"id": "es1", "text": "Me encantó la película, los actores son geniales y la historia es preciosa."},
    {"id": "ja1", "text": "最悪の映画でした。二度と見たくない。"},
    {"id": "de1", "text": "Ich habe mich furchtbar gelangweilt, der Film war viel zu lang."},
    {"id": "en2", "text": "Great!"},  # too short to judge: analysed
]


def test_detection_names_languages_and_leaves_short_texts_unknown():
    assert language.detect([r["text"] for r in REVIEWS]) == ["en", "es", "ja", "de", None]


def test_a_run_skips_other_languages_with_the_reason_and_stores_the_language(sqlite_url, tiny_models, tmp_path):
    settings = make_settings(sqlite_url, tiny_models, model_dir=str(tmp_path / "v"), languages="en")
    env = settings_env(settings)
    path = write_jsonl(tmp_path / "r.jsonl", REVIEWS)
    result = CliRunner().invoke(main, ["run", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert "job 1 [done]" in result.output and "2/5 done, 0 failed, 3 skipped" in result.output
    status = CliRunner().invoke(main, ["status", "1", "--skipped"], env=env).output
    assert "es1: language 'es' is not one the models were trained on (REVIEWS_LANGUAGES=en)" in status
    rows = {r["id"]: r for r in map(json.loads, CliRunner().invoke(main, ["export"], env=env).output.splitlines())}
    assert set(rows) == {"en1", "en2"} and rows["en1"]["language"] == "en" and rows["en2"]["language"] is None
    # With the guard off, the same reviews are analysed again, whatever their language.
    env["REVIEWS_LANGUAGES"] = "all"
    path2 = write_jsonl(tmp_path / "r2.jsonl", REVIEWS)
    result = CliRunner().invoke(main, ["run", str(path2)], env=env)
    assert "5/5 done, 0 failed, 0 pending" in result.output


@pytest.mark.parametrize("value", ["en,de", "all", "EN", "en, fr"])
def test_languages_setting_accepts_codes_or_all(value):
    Settings(languages=value)


def test_languages_setting_rejects_other_values():
    with pytest.raises(SettingsError, match="REVIEWS_LANGUAGES='english'"):
        Settings(languages="english")
