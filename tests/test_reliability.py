"""Faults with real services: a lost queue, a batch that keeps failing, reprocessing."""

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from conftest import make_settings, running_worker, settings_env, wait_for_job, write_jsonl
from worker.db import session_factory
from worker.nlp.sentiment import SentimentModel
from worker.schema import JobReview, SentimentResult

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_resume_after_redis_flush_loses_nothing(migrated_pg, redis_url, tiny_models, tmp_path):
    settings = make_settings(migrated_pg, tiny_models)
    env = settings_env(settings)
    runner = CliRunner()
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": f"r{i}", "text": f"review number {i}"} for i in range(40)])
    job = int(runner.invoke(main, ["enqueue", str(path)], env=env).stdout.split()[0])  # no worker yet
    client = redis.Redis.from_url(redis_url)
    assert client.llen("inference") == 3  # 40 reviews in batches of 16
    client.flushdb()  # the queue is gone
    assert "job %d: 40 reviews sent again" % job in runner.invoke(main, ["resume", str(job)], env=env).output
    with running_worker(settings):
        p = wait_for_job(settings.database_url, job)
    assert (p.status, p.done) == ("done", 40)
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(SentimentResult)) == 40
    # Nothing is pending any more, so a second resume sends nothing.
    assert "0 reviews sent again" in runner.invoke(main, ["resume", str(job)], env=env).output


def test_failing_batch_is_retried_then_isolated(migrated_pg, redis_url, tiny_models, tmp_path, monkeypatch):
    real_start = SentimentModel.start  # predict and predict_both both begin here

    def start(self, texts, encoded=None):  # a model that breaks on one particular input
        if any("POISON" in t for t in texts):
            raise RuntimeError("model failed on this input")
        return real_start(self, texts, encoded)

    monkeypatch.setattr(SentimentModel, "start", start)
    settings = make_settings(migrated_pg, tiny_models, retry_delay=0.1, task_max_retries=2)
    env = settings_env(settings) | {"REVIEWS_RETRY_DELAY": "0.1", "REVIEWS_TASK_MAX_RETRIES": "2"}
    rows = [{"id": f"g{i}", "text": f"good review {i}"} for i in range(10)]
    rows.insert(4, {"id": "bad", "text": "POISON review"})
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    with running_worker(settings):
        result = CliRunner().invoke(main, ["enqueue", "--wait", str(path)], env=env)
    assert result.exit_code == 3, result.output  # the exit code of a job that ended partial
    assert "[partial]" in result.output and "10/11 done, 1 failed" in result.output
    status = CliRunner().invoke(main, ["status", "1", "--failed"], env=env).output
    assert "bad: RuntimeError: model failed on this input" in status
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(SentimentResult)) == 10
        assert s.scalar(select(func.count()).where(JobReview.status == "failed")) == 1


def test_reprocess_creates_a_job_over_stored_reviews(app_worker, tmp_path):
    settings = app_worker
    env = settings_env(settings)
    runner = CliRunner()
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": f"r{i}", "text": f"review {i}"} for i in range(20)])
    first = int(runner.invoke(main, ["enqueue", str(path)], env=env).stdout.split()[0])
    wait_for_job(settings.database_url, first)
    result = runner.invoke(main, ["reprocess", "--job", str(first), "--wait"], env=env)
    assert result.exit_code == 0, result.output
    assert "20/20 done" in result.output and "reprocess job 1" in result.output
    nothing = runner.invoke(main, ["reprocess"], env=env)
    assert nothing.exit_code == 2 and "choose reviews with --job" in nothing.output
