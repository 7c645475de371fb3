"""Real worker processes under faults: SIGKILL and SIGTERM mid-batch, and a database that goes away.

Workers run as `reviews worker` subprocesses on real PostgreSQL and a real broker, Redis and RabbitMQ
in turn, with a model big enough that a batch takes seconds, so that a signal lands while a batch is in
hand. Run with -s to see how long each broker takes from SIGKILL to the job done.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from conftest import PG_URL, Proxy, make_settings, settings_env, wait_for_job, write_jsonl
from tiny_models import save_tiny
from worker.db import session_factory
from worker.schema import JobReview, NerResult, SentimentResult

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
BROKERS = pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)

LONG_TEXT = "The film in Paris was great and the acting by John Smith was good. " * 60  # ~1,000 tokens


@pytest.fixture(scope="module")
def medium_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("medium")
    return {"sentiment": save_tiny(root / "s", "sentiment", size="medium"),
            "ner": save_tiny(root / "n", "ner", size="medium")}


def start_worker_process(env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cli.main", "worker", "--loglevel", "INFO"]
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def log_times(log: Path, pattern: str) -> list[tuple[float, str]]:
    """(epoch seconds, first group of `pattern`) of each line of a worker log that matches it."""
    stamped = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] " + pattern)
    return [(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), m[2])
            for m in map(stamped.match, log.read_text(errors="replace").splitlines()) if m]


def where_the_time_went(killed_log: Path, second_log: Path, killed_at: float) -> str:
    """When, after the SIGKILL, the second worker was ready (it loads the models first) and received
    the killed worker's batch, read from the two logs; informative only, so never a failure."""
    received = r"Task reviews\.analyze\[([0-9a-f-]+)\] received"
    in_hand = [task for _, task in log_times(killed_log, received)]
    ready = [t for t, _ in log_times(second_log, r"(\S+) ready\.")]
    again = [t for t, task in log_times(second_log, received) if in_hand and task == in_hand[-1]]
    if not (ready and again):
        return "the worker logs do not say when the batch came back"
    return (f"the second worker ready after {ready[0] - killed_at:.1f} s, the killed batch delivered to it "
            f"after {again[0] - killed_at:.1f} s")


def exactly_once(url: str, n: int) -> None:
    with session_factory(url)() as s:
        for model in (SentimentResult, NerResult):
            assert s.scalar(select(func.count()).select_from(model)) == n
            dupes = s.execute(select(model.review_id, model.model_version_id, func.count())
                              .group_by(model.review_id, model.model_version_id).having(func.count() > 1)).all()
            assert dupes == []


@BROKERS
def test_sigkill_mid_batch_is_redelivered_and_completed(migrated_pg, broker, medium_models, tmp_path,
                                                        record_property):
    settings = make_settings(migrated_pg, medium_models, broker_url=broker.url, max_length=512, window_stride=64,
                             batch_size=8)
    env = settings_env(settings) | {"REVIEWS_MAX_LENGTH": "512"}
    if broker.name == "redis":
        # A short visibility timeout so the killed worker's batch comes back within the test. RabbitMQ
        # has none: it keeps the default (an hour), which this test would not survive if it mattered.
        env["REVIEWS_VISIBILITY_TIMEOUT"] = "8"
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": f"k{i}", "text": f"{i} {LONG_TEXT}"} for i in range(24)])
    result = CliRunner().invoke(main, ["enqueue", str(path)], env=env)
    assert result.exit_code == 0, result.output
    job = int(result.stdout.split()[0])
    first = start_worker_process(env, tmp_path / "w1.log")
    try:
        wait_until(lambda: broker.ready("inference") < 3, 120, "the first worker to take a batch")
        time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)
        killed, killed_at = time.monotonic(), time.time()
        first.wait(10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(func.count()).where(JobReview.job_id == job, JobReview.status == "pending")) > 0
    if broker.name == "redis":
        assert broker.counts("inference")[1] >= 1  # the batch in hand is not lost: Redis still holds it
    else:
        # The killed worker's connection closed with it: RabbitMQ puts its batch back at once.
        wait_until(lambda: broker.ready("inference") == 3, 10, "RabbitMQ to requeue the batch")
        print(f"\n[rabbitmq] the batch is back in the queue {time.monotonic() - killed:.2f} s after SIGKILL")
        wait_until(lambda: broker.counts("inference") == (3, 0), 20, "rabbitmqctl to show nothing unacked")
    second = start_worker_process(env, tmp_path / "w2.log")
    try:
        p = wait_for_job(settings.database_url, job, timeout=240)
        elapsed = time.monotonic() - killed
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(60)
    print(f"\n[{broker.name}] SIGKILL to job done: {elapsed:.1f} s "
          f"({where_the_time_went(tmp_path / 'w1.log', tmp_path / 'w2.log', killed_at)})")
    record_property("sigkill_to_done_seconds", round(elapsed, 1))
    assert (p.status, p.done, p.failed, p.pending) == ("done", 24, 0, 0)
    exactly_once(settings.database_url, 24)


@BROKERS
def test_sigterm_finishes_the_batch_in_hand(migrated_pg, broker, medium_models, tmp_path):
    settings = make_settings(migrated_pg, medium_models, broker_url=broker.url, max_length=512, window_stride=64,
                             batch_size=8)
    env = settings_env(settings) | {"REVIEWS_MAX_LENGTH": "512"}
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": f"t{i}", "text": f"{i} {LONG_TEXT}"} for i in range(24)])
    result = CliRunner().invoke(main, ["enqueue", str(path)], env=env)
    assert result.exit_code == 0, result.output
    job = int(result.stdout.split()[0])
    worker = start_worker_process(env, tmp_path / "w.log")
    try:
        wait_until(lambda: broker.ready("inference") < 3, 120, "the worker to take a batch")
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.wait(120) == 0  # a warm shutdown: the batch is finished, then the worker exits
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    with session_factory(settings.database_url)() as s:
        done = s.scalar(select(func.count()).where(JobReview.job_id == job, JobReview.status == "done"))
    assert done >= 8 and done % 8 == 0  # whole batches only
    wait_until(lambda: broker.counts("inference")[1] == 0, 20, "nothing half-done left behind")
    assert broker.ready("inference") == (24 - done) // 8  # the rest waits in the queue
    second = start_worker_process(env, tmp_path / "w2.log")
    try:
        p = wait_for_job(settings.database_url, job, timeout=240)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(60)
    assert (p.status, p.done) == ("done", 24)
    exactly_once(settings.database_url, 24)


@BROKERS
def test_database_outage_is_retried_until_it_returns(migrated_pg, broker, tiny_models, tmp_path):
    """Retries wait with a countdown: on RabbitMQ that is Celery's native delayed delivery through
    the quorum queues, with delays under a second (REVIEWS_RETRY_DELAY 0.5) among them."""
    proxy = Proxy(("127.0.0.1", 5432))
    proxied = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = make_settings(migrated_pg, tiny_models, broker_url=broker.url)
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": f"d{i}", "text": f"review {i}"} for i in range(48)])
    job = int(CliRunner().invoke(main, ["enqueue", str(path)], env=settings_env(settings)).stdout.split()[0])
    proxy.down()  # the worker starts while its database is unreachable
    env = settings_env(settings) | {"REVIEWS_DATABASE_URL": proxied, "REVIEWS_RETRY_DELAY": "0.5"}
    log = tmp_path / "w.log"
    # Not `reviews worker`, which checks the schema and loads the models before it consumes: this
    # worker must start while its database is away and wait for it.
    code = ("from worker.app import create_app; from worker.config import Settings; create_app(Settings.from_env())"
            ".worker_main(['worker', '-Q', 'inference', '--pool', 'solo', '--loglevel', 'INFO'])")
    worker = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env}, stdout=log.open("ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "database unavailable" in log.read_text(), 60, "a retry for the database")
        proxy.restore()
        p = wait_for_job(settings.database_url, job, timeout=120)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    assert (p.status, p.done, p.failed) == ("done", 48, 0)
    exactly_once(settings.database_url, 48)


def test_prefork_children_get_their_share_of_the_cores(migrated_pg, redis_url, tiny_models, tmp_path):
    """...and their own database connections: the parent connects before it forks (schema check), and
    a child that used the parent's socket failed its first batch."""
    settings = make_settings(migrated_pg, tiny_models, batch_size=4)
    env = {**os.environ, **settings_env(settings)}
    env.pop("REVIEWS_THREADS", None)
    log = tmp_path / "w.log"
    cmd = [sys.executable, "-m", "cli.main", "worker", "--pool", "prefork", "-c", "2", "--loglevel", "INFO"]
    worker = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: len(re.findall(r"worker process \d+: \d+ torch threads", log.read_text())) >= 2, 120,
                   "both children to start")
        path = write_jsonl(tmp_path / "r.jsonl", [{"id": f"p{i}", "text": f"review {i}"} for i in range(16)])
        job = int(CliRunner().invoke(main, ["enqueue", str(path)], env=settings_env(settings)).stdout.split()[0])
        p = wait_for_job(settings.database_url, job, timeout=120)
        assert (p.status, p.done) == ("done", 16)
        assert "database unavailable" not in log.read_text()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    share = max(1, (os.cpu_count() or 1) // 2)
    threads = [int(n) for n in re.findall(r"worker process \d+: (\d+) torch threads", log.read_text())]
    assert len(threads) >= 2 and set(threads) == {share}, threads
    assert f"{share} torch threads per child" in log.read_text()
    # ...and the tokenizer's pool the same share (RAYON_NUM_THREADS), not one thread per core each.
    assert len(re.findall(rf"worker process \d+: {share} torch threads, tokenizer threads {share}\b",
                          log.read_text())) >= 2
