"""Prometheus metrics: real `reviews worker` processes (solo, and prefork with two children) scraped
over HTTP after a job on PostgreSQL and Redis; failures, retries and model switches in process."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from cli.main import main
from conftest import make_settings, running_worker, settings_env, wait_for_job, write_jsonl
from worker import batches, metrics, registry
from worker.app import create_app
from worker.resources import Resources


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the worker's /metrics; {} while it is not up."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def scrape_until(port: int, predicate, timeout: float = 60) -> dict:
    """Counters move in task_postrun, just after the batch's commit ends the job: poll a little."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if samples and predicate(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never matched: {sorted(k for k in samples if k[0].startswith('reviews'))}")
        time.sleep(0.2)


def enqueue(env: dict, path: Path) -> int:
    out = CliRunner().invoke(main, ["enqueue", str(path)], env=env)
    assert out.exit_code == 0, out.output
    return int(out.stdout.split()[0])


def start_worker(env: dict, log: Path, *args: str, stdout: Path | None = None) -> subprocess.Popen:
    """Logs to `log`, with stdout (Celery's banner and shutdown notices) there too unless `stdout` says."""
    cmd = [sys.executable, "-m", "cli.main", "worker", "--loglevel", "INFO", *args]
    err = log.open("ab")
    return subprocess.Popen(cmd, env={**os.environ, **env}, stderr=err, stdout=stdout.open("ab") if stdout else err,
                            start_new_session=True)


def stop(worker: subprocess.Popen) -> None:
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


@pytest.mark.postgres
@pytest.mark.redis
def test_solo_worker_serves_its_counts(migrated_pg, redis_url, tiny_models, tmp_path):
    settings = make_settings(migrated_pg, tiny_models, batch_size=16)
    env = settings_env(settings)
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": f"m{i}", "text": f"review {i} of a film in Paris"}
                                              for i in range(40)])
    with path.open("a") as f:
        f.write("not json\n{\"id\": \"no text\"}\n")  # two rejected lines
    job = enqueue(env, path)
    redis.Redis.from_url(redis_url).rpush("training", "a", "b")  # a queue nobody here consumes: depth 2
    port = free_port()
    log = tmp_path / "w.log"
    worker = start_worker(env, log, "--metrics-port", str(port))
    try:
        assert wait_for_job(settings.database_url, job).done == 40
        m = scrape_until(port, lambda m: value(m, "reviews_analysed_total") == 40)
    finally:
        stop(worker)
    assert value(m, "reviews_batches_total") == 3
    assert value(m, "reviews_batch_seconds_count", outcome="done") == 3
    assert value(m, "reviews_batch_seconds_sum", outcome="done") > 0
    assert value(m, "reviews_model_version_serving", task="sentiment", version="1") == 1
    assert value(m, "reviews_model_version_serving", task="ner", version="1") == 1
    assert value(m, "reviews_queue_depth", queue="inference") == 0
    assert value(m, "reviews_queue_depth", queue="training") == 2
    assert value(m, "reviews_rejected_lines_total") == 2
    assert not [k for k in m if k[0] in ("reviews_failed_total", "reviews_retries_total")]
    assert value(m, "process_resident_memory_bytes") > 0
    # Text logs name the job and batch of each line about a batch, Celery's own lines included.
    text = log.read_text()
    assert f"metrics on port {port}" in text
    assert len(re.findall(rf"\[job {job} batch [0-9a-f]{{8}}\] Task reviews.analyze\[[0-9a-f-]+\] succeeded",
                          text)) == 3


@pytest.mark.postgres
@pytest.mark.redis
def test_prefork_children_counts_add_up(migrated_pg, redis_url, tiny_models, tmp_path):
    settings = make_settings(migrated_pg, tiny_models, batch_size=4)
    env = settings_env(settings)
    job = enqueue(env, write_jsonl(tmp_path / "r.jsonl", [{"id": f"p{i}", "text": f"review {i} by John Smith"}
                                                          for i in range(96)]))
    port = free_port()
    log = tmp_path / "w.log"
    worker = start_worker(env, log, "--pool", "prefork", "-c", "2", "--metrics-port", str(port), "--log-format", "json",
                          stdout=tmp_path / "stdout.txt")
    try:
        assert wait_for_job(settings.database_url, job).done == 96
        m = scrape_until(port, lambda m: value(m, "reviews_analysed_total") == 96)
    finally:
        stop(worker)
    assert value(m, "reviews_batches_total") == 24
    assert value(m, "reviews_batch_seconds_count", outcome="done") == 24
    # Each child loaded the models and counts itself: livesum over the live children.
    assert value(m, "reviews_model_version_serving", task="sentiment", version="1") == 2
    assert value(m, "reviews_model_version_serving", task="ner", version="1") == 2
    assert value(m, "reviews_queue_depth", queue="inference") == 0
    # The logs (every line on stderr is JSON) say which child ran which batch: both ran some, and
    # their batches add up to the total.
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    done = [r for r in records if r.get("job_id") == job and "succeeded" in r["message"]]
    per_child = {pid: sum(r["pid"] == pid for r in done) for pid in {r["pid"] for r in done}}
    assert len(per_child) == 2 and sum(per_child.values()) == 24, per_child


@pytest.mark.postgres
@pytest.mark.redis
def test_failed_reviews_by_reason_and_retries_on_a_real_worker(migrated_pg, redis_url, tiny_models, tmp_path,
                                                               poisoned):
    settings = make_settings(migrated_pg, tiny_models, task_max_retries=1, retry_delay=0.01, batch_size=8)
    rows = [{"id": f"g{i}", "text": f"good review {i}"} for i in range(7)] + [{"id": "bad", "text": "POISON"}]
    with running_worker(settings) as app:
        installed = metrics.install(app, settings, serve=False)
        try:
            job = enqueue(settings_env(settings), write_jsonl(tmp_path / "r.jsonl", rows))
            p = wait_for_job(settings.database_url, job)
            sample = installed.exposed.get_sample_value
            deadline = time.monotonic() + 30
            while sample("reviews_analysed_total") != 7 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert (p.status, p.done, p.failed) == ("partial", 7, 1)
            assert sample("reviews_analysed_total") == 7
            assert sample("reviews_failed_total", {"reason": "RuntimeError"}) == 1
            assert sample("reviews_retries_total", {"kind": "engine"}) == 1
            assert sample("reviews_batch_seconds_count", {"outcome": "retry"}) == 1
            assert sample("reviews_batch_seconds_count", {"outcome": "done"}) == 1
            assert sample("reviews_batches_total") == 1
            assert sample("reviews_queue_depth", {"queue": "inference"}) == 0
        finally:
            installed.close()


def test_a_database_outage_counts_as_a_database_retry(tmp_path, tiny_models):
    # A directory is no SQLite file: every query fails as an unreachable database does.
    settings = make_settings(f"sqlite:///{tmp_path}", tiny_models, retry_delay=0.01)
    installed = metrics.install(create_app(settings), settings, serve=False)
    try:
        with pytest.raises(batches.RetryLater, match="database unavailable"):
            batches.process(Resources(settings), None, [1])
        assert installed.exposed.get_sample_value("reviews_retries_total", {"kind": "database"}) == 1
    finally:
        installed.close()


def test_the_model_version_gauge_follows_a_promotion(migrated_sqlite, tiny_models):
    from worker import ingest

    settings = make_settings(migrated_sqlite, tiny_models)
    resources = Resources(settings)
    installed = metrics.install(create_app(settings), settings, serve=False)
    serving = installed.exposed.get_sample_value
    try:
        def analyse(name: str) -> None:
            line = io.BytesIO(json.dumps({"id": name, "text": "fine"}).encode() + b"\n")
            ingest.ingest(resources.sessions, line, name, settings,
                          lambda job, ids: batches.run_to_end(resources, job, ids))

        analyse("a")
        assert serving("reviews_model_version_serving", {"task": "sentiment", "version": "1"}) == 1
        with resources.sessions() as s:
            registry.register(s, "sentiment", settings.sentiment_model, "candidate")
            registry.promote(s, "sentiment", 2)
            s.commit()
        analyse("b")
        assert serving("reviews_model_version_serving", {"task": "sentiment", "version": "1"}) == 0
        assert serving("reviews_model_version_serving", {"task": "sentiment", "version": "2"}) == 1
        assert serving("reviews_model_version_serving", {"task": "ner", "version": "1"}) == 1
    finally:
        installed.close()


def test_metrics_are_off_until_installed(migrated_sqlite, tiny_models):
    """`reviews run` and every path without `install` count nothing and import no prometheus_client."""
    code = ("import sys; from worker import batches, metrics; metrics.review_failed(ValueError()); "
            "metrics.retried('engine'); print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
