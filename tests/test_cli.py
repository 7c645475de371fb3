"""The CLI through click's CliRunner: run (embedded default), status, jobs, export, db, errors."""

import csv
import io
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from conftest import make_settings, settings_env, write_jsonl
from cli.main import main
from worker.db import session_factory
from worker.schema import EntityRow, NerResult, RejectedLine, Review, SentimentResult


@pytest.fixture
def cli(sqlite_url, tiny_models, tmp_path):
    settings = make_settings(sqlite_url, tiny_models, model_dir=str(tmp_path / "versions"))
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(main, list(args), env=settings_env(settings), input=input, catch_exceptions=False)

    invoke.settings = settings
    return invoke


def _count(url, model):
    with session_factory(url)() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_run_processes_real_reviews_into_sqlite(cli, imdb_reviews, tmp_path):
    rows = imdb_reviews[:60]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli("run", str(path))
    assert result.exit_code == 0, result.output
    assert "job 1 [done]" in result.output and "60/60 done, 0 failed" in result.output
    url = cli.settings.database_url
    assert _count(url, Review) == 60 and _count(url, SentimentResult) == 60 and _count(url, NerResult) == 60
    with session_factory(url)() as s:
        for text, start, end, ent in s.execute(
            select(Review.text, EntityRow.start_char, EntityRow.end_char, EntityRow.text)
            .join(EntityRow, EntityRow.review_id == Review.id)
        ):
            assert text[start:end] == ent
        scores = s.scalars(select(SentimentResult.score)).all()
        assert all(-1 <= x <= 1 for x in scores)
    # Running the same file again stores nothing twice.
    assert cli("run", str(path)).exit_code == 0
    assert _count(url, Review) == 60 and _count(url, SentimentResult) == 60 and _count(url, NerResult) == 60


def test_run_keeps_bad_lines_and_processes_the_rest(cli, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"id": "a", "text": "A great film"}\n'
        b'{"id": "b", "text": }\n'
        b'{"id": "c"}\n'
        b'{"id": "d", "text": ["x"]}\n'
        b'{"id": "a", "text": "A great film"}\n'
        b'{"id": "e", "text": "The plot was boring"}\n'
    )
    result = cli("run", str(path))
    assert result.exit_code == 0
    assert "line 2: invalid JSON" in result.output
    assert "line 3: no 'text' field" in result.output
    assert "line 4: 'text' must be a string, got an array" in result.output
    assert "line 5: duplicate id 'a': already on line 1" in result.output
    assert "2/2 done" in result.output and "4 lines rejected" in result.output
    status = cli("status", "1", "--rejected")
    assert "line 2: invalid JSON" in status.output and "line 5: duplicate id" in status.output
    with session_factory(cli.settings.database_url)() as s:
        assert [r.line_no for r in s.scalars(select(RejectedLine).order_by(RejectedLine.line_no))] == [2, 3, 4, 5]


def test_same_id_with_other_text_in_a_later_file_is_rejected(cli, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "first text"}])
    second = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "changed text"}, {"id": "y", "text": "new"}])
    assert cli("run", str(first)).exit_code == 0
    result = cli("run", str(second))
    assert "line 1: id 'x' is already stored with a different text" in result.output
    with session_factory(cli.settings.database_url)() as s:
        assert s.scalar(select(Review.text).where(Review.external_id == "x")) == "first text"


def test_run_reads_csv_and_stdin(cli, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,text,product_id\nc1,"Loved it, truly",p1\nc2,Awful,p2\n')
    assert "2/2 done" in cli("run", str(path)).output
    result = cli("run", "-", input='{"id": "s1", "text": "from stdin"}\n')
    assert "1/1 done" in result.output


def test_jobs_status_and_export(cli, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "r1", "text": "Great acting by John Smith in Paris", "product_id": "m1", "rating": 9},
        {"id": "r2", "text": "Terrible plot", "product_id": "m2"},
    ])
    cli("run", str(path))
    assert "job 1 [done]" in cli("jobs").output
    assert "2/2 done" in cli("status", "1").output
    out = cli("export", "--job", "1").output
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == ["r1", "r2"]
    assert rows[0]["sentiment"] in ("positive", "negative") and rows[0]["sentiment_model_version"] == 1
    assert isinstance(rows[0]["entities"], list) and rows[0]["product_id"] == "m1"
    target = tmp_path / "out.csv"
    assert cli("export", "--format", "csv", "-o", str(target), "--no-text").exit_code == 0
    table = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["id"] for r in table] == ["r1", "r2"] and "text" not in table[0]
    assert isinstance(json.loads(table[0]["entities"]), list)


def test_clear_errors_instead_of_tracebacks(cli, tmp_path):
    missing = cli("run", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = cli("run", str(empty))
    assert result.exit_code == 1 and "empty.jsonl: no reviews to analyse" in result.output
    cli("db", "downgrade", "base")
    result = cli("status", "99")
    assert result.exit_code == 1 and "no schema yet" in result.output
    cli("db", "upgrade")
    assert "no job 99" in cli("status", "99").output
    runner = CliRunner()
    env = settings_env(cli.settings) | {"REVIEWS_SENTIMENT_MODEL": str(tmp_path / "missing-model")}
    bad = runner.invoke(main, ["run", str(write_jsonl(tmp_path / "x.jsonl", [{"text": "hi"}]))], env=env)
    assert bad.exit_code == 1 and "sentiment model" in bad.output and "no such directory" in bad.output
    assert "Traceback" not in bad.output
    env = settings_env(cli.settings) | {"REVIEWS_DATABASE_URL": "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"}
    down = runner.invoke(main, ["jobs"], env=env)
    assert down.exit_code == 1 and "cannot connect to the database" in down.output
    assert "s3cret" not in down.output and "u:***@" in down.output


def test_db_upgrade_and_downgrade(cli):
    assert "at revision 0009" in cli("db", "upgrade").output
    assert "at revision base" in cli("db", "downgrade", "base").output


def test_every_kind_of_bad_input_is_named_and_the_rest_goes_through(cli, tmp_path):
    big = "x" * 5_000_000
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([
        b'{"id": "ok-1", "text": "A fine film"}',
        b'{"id": "j", "text": "broken',
        b'{"id": "m"}',
        b'{"id": "e", "text": ""}',
        b'{"id": "n", "text": 7}',
        b'{"id": "u", "text": "caf\xe9 au lait"}',
        b'{"id": "z", "text": "nul \\u0000 here"}',
        ('{"id": "big", "text": "%s"}' % big).encode(),
        b'{"id": "ok-1", "text": "A fine film"}',
        b'{"id": "ok-2", "text": "The last line still counts"}',
    ]) + b"\n")
    result = cli("run", str(path))
    assert result.exit_code == 0, result.output
    for expected in ["line 2: invalid JSON", "line 3: no 'text' field", "line 4: 'text' is empty",
                     "line 5: 'text' must be a string, got a number", "line 6: not valid UTF-8: byte 0xe9",
                     "line 7: 'text' contains NUL characters", "line 8: line is 5,000,025 bytes, over the limit",
                     "line 9: duplicate id 'ok-1': already on line 1"]:
        assert expected in result.output
    assert "2/2 done" in result.output and "8 lines rejected" in result.output
    wrong_header = tmp_path / "wrong.csv"
    wrong_header.write_text("id,body\n1,hello\n")
    result = cli("run", str(wrong_header))
    assert result.exit_code == 1 and "line 1: CSV header has no 'text' column (found: id, body)" in result.output
    assert "[failed] " + str(wrong_header) in cli("jobs").output


def test_commands_that_used_to_mislead(cli, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "r1", "text": "Fine"}])
    assert cli("run", str(path)).exit_code == 0
    bad_limit = cli("jobs", "--limit", "-1")
    assert bad_limit.exit_code == 2 and "-1 is not in the range" in bad_limit.output
    no_dir = cli("export", "-o", "/no/such/dir/x.csv")
    assert no_dir.exit_code == 1 and "/no/such/dir" in no_dir.output and "does not exist" in no_dir.output
    no_job = cli("export", "--job", "99999")
    assert no_job.exit_code == 1 and "no job 99999" in no_job.output
    assert cli("status", "1", "--json").output.strip().startswith('{"job": 1, "status": "done"')
    assert json.loads(cli("jobs", "--json").output.splitlines()[0])["total"] == 1


def test_export_to_a_file_is_whole_or_not_at_all(cli, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"review {i}"} for i in range(3)])
    assert cli("run", str(path)).exit_code == 0
    target = tmp_path / "out.jsonl"
    target.write_text("the previous export\n")
    with session_factory(cli.settings.database_url)() as s:  # a value strict JSON cannot hold
        s.query(Review).filter(Review.external_id == "r2").update({"rating": float("inf")})
        s.commit()
    result = cli("export", "-o", str(target))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert target.read_text() == "the previous export\n"  # untouched by the failed export
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".reviews-")] == []


def test_two_runs_at_once_on_a_fresh_sqlite_file(sqlite_url, tiny_models, tmp_path):
    import os
    import subprocess
    import sys

    settings = make_settings(sqlite_url, tiny_models, model_dir=str(tmp_path / "versions"))
    env = {**os.environ, **settings_env(settings)}
    files = [write_jsonl(tmp_path / f"{k}.jsonl", [{"id": f"{k}-{i}", "text": f"review {i}"} for i in range(5)])
             for k in "ab"]
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", "run", str(f)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for f in files]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("5/5 done" in out for out in outputs)
    assert _count(sqlite_url, Review) == 10


def test_a_changed_model_setting_is_reported_loudly(cli, tmp_path):
    import shutil

    assert cli("run", str(write_jsonl(tmp_path / "in.jsonl", [{"text": "Fine"}]))).exit_code == 0
    other = tmp_path / "other-sentiment"
    shutil.copytree(cli.settings.sentiment_model, other)
    env = settings_env(cli.settings) | {"REVIEWS_SENTIMENT_MODEL": str(other)}
    listing = CliRunner().invoke(main, ["models", "list"], env=env)
    assert f"warning: REVIEWS_SENTIMENT_MODEL is {other}, but the active sentiment version 1 serves" in listing.output
    quiet = cli("models", "list")
    assert "warning" not in quiet.output


@pytest.mark.parametrize("given, inference, gpu, chosen", [
    ((None, None), True, True, ("threads", 4)),  # a GPU worker: batches in flight together
    ((None, None), True, False, ("solo", 1)),  # a CPU worker: one batch uses every core
    ((None, None), False, False, ("threads", 1)),  # a trainer answers pings while it trains
    ((None, 2), True, True, ("threads", 2)),
    (("solo", None), True, True, ("solo", 1)),  # what the user names stays
    (("prefork", 3), True, False, ("prefork", 3)),
])
def test_the_worker_pool_left_out_fits_the_device(given, inference, gpu, chosen):
    from cli.ops import choose_pool

    assert choose_pool(*given, inference, gpu) == chosen
