"""Structured logs: every line about a batch names its job and batch, as JSON or as a text prefix, on
the in-process path (`reviews run`), on a real Celery worker, and from a `reviews worker` process."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import main
from conftest import make_settings, running_worker, settings_env, wait_for_job, write_jsonl
from worker import batches, ingest, logs
from worker.resources import Resources

ROWS = [{"id": f"g{i}", "text": f"good review {i}"} for i in range(7)] + [{"id": "bad", "text": "POISON"}]


@pytest.fixture
def captured():
    """The root logger writing through logs.configure into a buffer; put back afterwards."""
    root = logging.getLogger()
    level, stream = root.level, io.StringIO()

    def configure(log_format: str) -> io.StringIO:
        logs.configure(log_format, "INFO", stream)
        return stream

    yield configure
    for handler in [h for h in root.handlers if getattr(h, "_reviews", False)]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def run_in_process(settings, tmp_path) -> tuple[int, int]:
    """`reviews run`'s path: ingest with batches.run_to_end. Returns (job id, first review id)."""
    resources = Resources(settings)
    firsts: list[int] = []

    def send(job, ids):
        firsts.append(ids[0])
        return batches.run_to_end(resources, job, ids, sleep=lambda _: None)

    with open(write_jsonl(tmp_path / "r.jsonl", ROWS), "rb") as f:
        report = ingest.ingest(resources.sessions, f, "r.jsonl", settings, send)
    return report.job_id, firsts[0]


def test_json_lines_of_an_in_process_batch_carry_job_and_batch(migrated_sqlite, tiny_models, tmp_path, poisoned,
                                                               captured):
    stream = captured("json")
    settings = make_settings(migrated_sqlite, tiny_models, task_max_retries=1, batch_size=8)
    logging.getLogger("outside").info("not about a batch")
    job, first = run_in_process(settings, tmp_path)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {"time", "level", "logger", "message", "pid"} <= set(records[0])
    assert "job_id" not in records[0] and "batch_id" not in records[0]  # outside any batch: no ids
    about_batch = [r for r in records if r["logger"] == "worker.batches"]
    # The retry, the isolation, the failed review: each names the job and the batch (first review id).
    assert len(about_batch) == 3, about_batch
    assert all((r["job_id"], r["batch_id"]) == (job, f"r{first}") for r in about_batch)
    assert any(r["level"] == "WARNING" and "review" in r["message"] and "RuntimeError" in r["message"]
               for r in about_batch)


def test_text_lines_carry_a_job_and_batch_prefix(migrated_sqlite, tiny_models, tmp_path, poisoned, captured):
    stream = captured("text")
    settings = make_settings(migrated_sqlite, tiny_models, task_max_retries=1, batch_size=8)
    job, first = run_in_process(settings, tmp_path)
    lines = [line for line in stream.getvalue().splitlines() if "failed" in line or "retry" in line]
    assert len(lines) == 3, stream.getvalue()
    for line in lines:
        assert re.match(rf"\[[^\]]+: (WARNING|ERROR)/\w+\] \[job {job} batch r{first}\] ", line), line


def test_ids_nest_and_are_gone_after_the_batch():
    with logs.batch(3, "1a2b3c4d5e6f"):
        assert logs.current().prefix() == "[job 3 batch 1a2b3c4d] "
        with logs.batch(None, "r9"):
            assert logs.current().prefix() == "[batch r9] "
        assert logs.current().job_id == 3
    assert logs.current() is None


@pytest.mark.postgres
@pytest.mark.redis
def test_a_real_worker_names_job_and_task_in_every_line_of_a_batch(migrated_pg, redis_url, tiny_models, tmp_path,
                                                                  poisoned):
    settings = make_settings(migrated_pg, tiny_models, task_max_retries=1, retry_delay=0.01, batch_size=8)
    stream = io.StringIO()
    with running_worker(settings) as app:
        undo = logs.install(app, "json", "INFO", stream)
        try:
            out = CliRunner().invoke(main, ["enqueue", str(write_jsonl(tmp_path / "r.jsonl", ROWS))],
                                     env=settings_env(settings))
            job = int(out.stdout.split()[0])
            assert wait_for_job(settings.database_url, job).failed == 1
        finally:
            undo()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    # The task's retry warning, Celery's retry and success lines, batches.py's isolation: one batch.
    about = [r for r in records if r["logger"] in ("worker.tasks", "worker.batches", "celery.app.trace")]
    assert {r["logger"] for r in about} == {"worker.tasks", "worker.batches", "celery.app.trace"}, records
    assert len({(r.get("job_id"), r.get("batch_id")) for r in about}) == 1
    assert about[0]["job_id"] == job and about[0]["batch_id"] == about[0]["task_id"]
    assert about[0]["batch_id"] in next(r["message"] for r in about if r["logger"] == "celery.app.trace")


@pytest.mark.postgres
@pytest.mark.redis
def test_reviews_worker_writes_only_json_to_stderr(migrated_pg, redis_url, tiny_models, tmp_path):
    settings = make_settings(migrated_pg, tiny_models)
    env = {**os.environ, **settings_env(settings), "REVIEWS_LOG_FORMAT": "json"}
    out = CliRunner().invoke(main, ["enqueue", str(write_jsonl(tmp_path / "r.jsonl", ROWS[:7]))], env=env)
    job = int(out.stdout.split()[0])
    err = tmp_path / "stderr.log"
    worker = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], env=env, stderr=err.open("ab"),
                              stdout=(tmp_path / "stdout.log").open("ab"), start_new_session=True)
    try:
        assert wait_for_job(settings.database_url, job).done == 7
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    records = [json.loads(line) for line in err.read_text().splitlines()]  # Celery's banner: stdout, off
    assert any(r["message"].startswith("worker on redis://") for r in records)
    done = [r for r in records if r["logger"] == "celery.app.trace" and "succeeded" in r["message"]]
    assert len(done) == 1 and done[0]["job_id"] == job and done[0]["batch_id"] in done[0]["message"]
