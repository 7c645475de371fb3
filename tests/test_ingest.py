"""Ingest through the CLI, on SQLite and PostgreSQL: one line of every class that used to abort a whole
file or break things later is named with its number, and every good line after it is analysed."""

import gzip
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from conftest import make_settings, settings_env
from worker.db import session_factory
from worker.schema import Review

GOOD = b'{"id": "good-%d", "text": "A fine film number %d", "created_at": "2025-01-01T23:30:00-05:00"}'
BAD = [  # (line, what the rejection says)
    (b'{"id": "s1", "text": "lone \\ud800 surrogate"}', "'text' contains an unpaired surrogate"),
    (b'{"id": "s2\\udc00", "text": "surrogate in the id"}', "'id' contains an unpaired surrogate"),
    (b'{"id": "n1", "text": "ok", "product_id": "p\\u0000"}', "'product_id' contains NUL"),
    (b'{"id": "n2", "text": "ok", "extra": {"k": "v\\u0000"}}', "'extra.k' contains NUL"),
    (b'{"id": "n3", "text": "raw \x00 NUL byte"}', "invalid JSON"),
    (b"\xff\xfe\x00binary\x9c\x00", "not valid UTF-8"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"id": ' + b"7" * 5000 + b', "text": "huge id"}', "'id' is a number with 5,000 digits"),
    (b'{"id": "r1", "text": "huge rating", "rating": 1' + b"0" * 400 + b"}", "'rating'"),
    (b'{"id": "r2", "text": "infinite rating", "rating": Infinity}', "NaN/Infinity is not valid JSON"),
    (b'{"id": "r3", "text": "nan rating", "rating": "nan"}', "'rating' must be a finite number"),
    (b'{"id": "d1", "text": "too early", "created_at": "0001-01-01T00:00:00+14:00"}', "outside years 1..9999"),
    (b'{"id": "d2", "text": "too late", "created_at": "9999-12-31T23:59:59-14:00"}', "outside years 1..9999"),
]


def _file(tmp_path, compress: bool):
    lines = [b"\xef\xbb\xbf" + GOOD % (0, 0)]  # a byte-order mark on line 1 is not an error
    for k, (line, _) in enumerate(BAD, 1):
        lines += [line, GOOD % (k, k)]
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / ("mixed.jsonl.gz" if compress else "mixed.jsonl")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_every_class_of_bad_line_is_named_and_nothing_else_is_lost(db, compress, request, tiny_models, tmp_path):
    url = request.getfixturevalue("migrated_sqlite" if db == "sqlite" else "migrated_pg")
    env = settings_env(make_settings(url, tiny_models, model_dir=str(tmp_path / "versions")))
    result = CliRunner().invoke(main, ["run", str(_file(tmp_path, compress))], env=env)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    for k, (_, reason) in enumerate(BAD, 1):
        line = f"line {2 * k}: "
        assert any(out.startswith(line) and reason in out for out in result.output.splitlines()), (line, reason)
    n = len(BAD) + 1
    assert f"{n}/{n} done, 0 failed" in result.output and f"{len(BAD)} lines rejected" in result.output
    with session_factory(url)() as s:
        stored = s.execute(select(Review.external_id, Review.created_at)).all()
    assert {ext for ext, _ in stored} == {f"good-{k}" for k in range(n)}
    # 23:30 at -05:00 is 04:30 the next day in UTC, on either database.
    assert {(c.year, c.month, c.day, c.hour, c.minute) for _, c in stored} == {(2025, 1, 2, 4, 30)}
    exported = CliRunner().invoke(main, ["export"], env=env)
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"export holds {c}"))
            for line in exported.output.splitlines()]
    assert len(rows) == n
