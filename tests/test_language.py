"""The language guard: reviews in languages the models were not trained on are detected, stored and
skipped with the reason, not given confident nonsense."""

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

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


def py3langid(texts: list[str]) -> list[str | None]:
    """What py3langid's own classify says, with the guard's cut-off."""
    out = []
    for text in texts:
        code, probability = language._identifier().classify(text[:language.READ_CHARS])
        out.append(code if probability >= language.CONFIDENCE else None)
    return out


needs_scorer = pytest.mark.skipif(language._scorer() is None, reason="the C++ language detector does not build here "
                                  "(no C++ compiler): py3langid's loop serves, the same code as the reference")
# Letters of several scripts, digits, punctuation, emoji, controls and lone surrogates: whatever a
# review's bytes decode to.
TEXT = st.text(st.one_of(st.characters(), st.sampled_from(list("abcdefghijklmnopqrstuvwxyz éèüñßçø"
                                                               "абвгдежзийклмнопрстуфхцчшщыэюя あいうえおかきく的一是不了人我"))),
               max_size=700)
# Real sentences, cut and joined at random: texts near a language's threshold, not just noise.
SENTENCES = [r["text"] for r in REVIEWS[:4]] + [
    "Das Essen war kalt, aber der Service war freundlich.", "Le film était long mais les acteurs étaient bons.",
    "Il prodotto è arrivato rotto e nessuno ha risposto.", "Deze stofzuiger is stil en zuigt heel goed.",
    "This blender is LOUD but it crushes ice in seconds.", "O produto chegou rápido e funciona muito bem.",
]
MIXED = st.lists(st.tuples(st.sampled_from(SENTENCES), st.integers(0, 80)), min_size=1, max_size=4).map(
    lambda parts: " ".join(text[:cut or None] for text, cut in parts))


@needs_scorer
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(TEXT, MIXED), min_size=1, max_size=6))
def test_the_cpp_detector_gives_py3langids_probabilities(texts):
    encoded = [language._encode(t[:language.READ_CHARS]) for t in texts]
    ours = language._probabilities(encoded)
    for row, data in zip(ours, encoded):
        theirs = language._identifier()._decide(data)
        # Sums in another order: float32 rounding apart, nothing more.
        np.testing.assert_allclose(row, theirs, atol=2e-6, rtol=1e-4)
    # The codes are py3langid's, but where a probability sits within rounding of the cut-off.
    for text, code, row in zip(texts, language.detect(texts), ours):
        if abs(row.max() - language.CONFIDENCE) > 1e-5:
            assert code == py3langid([text])[0], text


@needs_scorer
def test_the_cpp_detector_agrees_on_real_reviews():
    texts = SENTENCES * 3 + ["", " ", "!!!", "ÉTÉ", "THE PLOT WAS BORING", "\x00\x01\x02", "\ud800 lone surrogate"]
    assert language.detect(texts) == py3langid(texts)


def test_without_a_compiler_py3langids_loop_serves_and_says_so(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("REVIEWS_HOME", str(tmp_path / "home"))  # no library built before
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("PATH", str(tmp_path))  # nor g++ or c++
    language._scorer.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="worker.language"):
            texts = [r["text"] for r in REVIEWS]
            assert language.detect(texts) == ["en", "es", "ja", "de", None] == py3langid(texts)
        assert "the C++ language detector is unavailable (BuildError: no C++ compiler found" in caplog.text
    finally:
        language._scorer.cache_clear()


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
