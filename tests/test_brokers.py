"""Redis and RabbitMQ as brokers: the settings each one gets, and the CLI's paths through RabbitMQ with
a real worker (enqueue --wait, resume, retrain --wait through the rpc:// result backend).

The worker faults (SIGKILL, SIGTERM, retries while the database is away) run on both brokers in
test_faults.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from kombu import Connection
from sqlalchemy import func, select

from cli.main import main
from conftest import make_settings, running_worker, settings_env, write_jsonl
from worker.app import broker_kind, celery_config, create_app
from worker.config import Settings
from worker.db import session_factory
from worker.schema import JobReview, SentimentResult

AMQP = "amqp://guest:guest@localhost:5672//"


def test_each_broker_gets_its_own_settings():
    redis = celery_config(Settings(broker_url="redis://localhost:6379/0", visibility_timeout=900))
    assert redis["broker_transport_options"] == {"visibility_timeout": 900}
    assert redis["result_backend"] == "redis://localhost:6379/0"
    assert all(not q.queue_arguments for q in redis["task_queues"])

    rabbit = celery_config(Settings(broker_url=AMQP))
    assert rabbit["broker_transport_options"] == {"confirm_publish": True}  # no visibility timeout
    assert rabbit["result_backend"] == "rpc://"
    assert rabbit["worker_detect_quorum_queues"] is True
    queues = {q.name: q for q in rabbit["task_queues"]}
    assert set(queues) == {"inference", "training"}
    for name, q in queues.items():
        assert q.queue_arguments == {"x-queue-type": "quorum"}
        # Native delayed delivery (retries with a countdown) routes through topic exchanges only.
        assert (q.exchange.name, q.exchange.type, q.routing_key) == (name, "topic", name)

    chosen = celery_config(Settings(broker_url=AMQP, result_backend="redis://cache:6379/1"))
    assert chosen["result_backend"] == "redis://cache:6379/1"
    assert celery_config(Settings(broker_url="memory://"))["result_backend"] is None
    assert [broker_kind(u) for u in ("rediss://h", "amqps://h", "pyamqp://h", "memory://")] == [
        "redis", "rabbitmq", "rabbitmq", "other"]


def test_a_countdown_under_a_second_waits_a_second_on_rabbitmq():
    """Celery's native delayed delivery counts whole seconds and rejects a countdown of 0.4 s: the
    batch of such a retry would be lost. Redis keeps the countdown it was given."""
    sent = {}
    for url in (AMQP, "redis://localhost:6379/0"):
        app = create_app(Settings(broker_url=url))
        task = app.tasks["reviews.analyze"]
        app.send_task = lambda name, args=None, kwargs=None, url=url, **options: sent.update({url: options["countdown"]})
        task.apply_async((1, [1]), countdown=0.4)
    assert sent == {AMQP: 1, "redis://localhost:6379/0": 0.4}


def _queue_types(url: str) -> dict[str, str]:
    vhost = Connection(url).virtual_host
    out = subprocess.run(["rabbitmqctl", "list_queues", "-p", vhost, "-q", "--no-table-headers", "name", "type"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)


def _analysed(url: str, job_id: int) -> tuple[int, int]:
    with session_factory(url)() as s:
        total = s.scalar(select(func.count()).where(JobReview.job_id == job_id))
        results = s.scalar(select(func.count()).select_from(SentimentResult)
                           .join(JobReview, JobReview.review_id == SentimentResult.review_id)
                           .where(JobReview.job_id == job_id))
    return total, results


@pytest.mark.postgres
def test_enqueue_wait_and_resume_through_rabbitmq(migrated_pg, rabbitmq_url, tiny_models, tmp_path):
    settings = make_settings(migrated_pg, tiny_models, broker_url=rabbitmq_url, batch_size=8)
    env = settings_env(settings)
    rows = [{"id": f"q{i}", "text": f"review {i}: the film was great"} for i in range(40)]
    with running_worker(settings):
        result = CliRunner().invoke(main, ["enqueue", str(write_jsonl(tmp_path / "a.jsonl", rows)), "--wait",
                                           "--timeout", "180"], env=env)
    assert result.exit_code == 0, result.output
    first = int(result.stdout.split()[0])
    assert _analysed(migrated_pg, first) == (40, 40)
    if shutil.which("rabbitmqctl"):
        types = _queue_types(rabbitmq_url)
        assert (types.get("inference"), types.get("training")) == ("quorum", "quorum"), types

    # Messages lost on the broker (a queue purged by hand): `reviews resume` sends what has no result.
    rows = [{"id": f"r{i}", "text": f"review {i}: the plot was boring"} for i in range(24)]
    queued = CliRunner().invoke(main, ["enqueue", str(write_jsonl(tmp_path / "b.jsonl", rows))], env=env)
    assert queued.exit_code == 0, queued.output
    second = int(queued.stdout.split()[0])
    with Connection(rabbitmq_url) as conn:
        assert conn.default_channel.queue_purge("inference") == 3
    with running_worker(settings):
        resumed = CliRunner().invoke(main, ["resume", str(second), "--wait", "--timeout", "180"], env=env)
    assert resumed.exit_code == 0, resumed.output
    assert f"job {second}: 24 reviews sent again" in resumed.output
    assert _analysed(migrated_pg, second) == (24, 24)


@pytest.mark.postgres
def test_retrain_wait_gets_its_outcome_through_rpc_on_rabbitmq(migrated_pg, rabbitmq_url, tiny_models, tmp_path):
    from test_retrain import add_labels, toy_labels

    settings = make_settings(migrated_pg, tiny_models, broker_url=rabbitmq_url, model_dir=str(tmp_path / "versions"))
    add_labels(migrated_pg, toy_labels())
    args = ["retrain", "--task", "sentiment", "--wait", "--alpha", "1", "--epochs", "25", "--lr", "0.003"]
    with running_worker(settings, queues=("training",), shutdown_timeout=60):
        result = CliRunner().invoke(main, args, env=settings_env(settings))
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "promoted" and outcome["version"] == 2
