"""The job lifecycle: terminal states, and recovery of a job whose ingest died (`reviews resume`)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from conftest import REDIS_URL, Proxy, make_settings, running_worker, settings_env, wait_for_job, write_jsonl
from worker import jobs
from worker.db import session_factory
from worker.schema import Job, JobReview, Review, SentimentResult


def test_an_empty_or_all_bad_file_ends_failed_with_the_reason(migrated_sqlite):
    sessions = session_factory(migrated_sqlite)
    job = jobs.create(sessions, "empty.jsonl")
    p = jobs.queued(sessions, job, rejected=3)
    assert (p.status, p.error) == ("failed", "no reviews to analyse: 3 lines rejected")


def test_a_live_ingest_is_not_taken_over_but_a_dead_one_is(migrated_sqlite):
    sessions = session_factory(migrated_sqlite)
    job = jobs.create(sessions, "big.jsonl")
    with pytest.raises(jobs.JobBusy, match="still being ingested"):
        jobs.recover(sessions, job, lease_seconds=60)
    jobs.release(sessions, job, "broker gone")  # what an ingest that stops on an error does
    assert jobs.recover(sessions, job, lease_seconds=60) is True
    with sessions() as s:
        assert jobs.progress(s, job).status == "failed"  # it had stored nothing
    with pytest.raises(jobs.JobNotFound):
        jobs.recover(sessions, 999, 60)



def _analysed(url: str, job_id: int) -> tuple[int, int]:
    """(reviews in the job, reviews of the job with a sentiment result)"""
    with session_factory(url)() as s:
        total = s.scalar(select(func.count()).where(JobReview.job_id == job_id))
        with_result = s.scalar(select(func.count(func.distinct(SentimentResult.review_id)))
                               .join(JobReview, JobReview.review_id == SentimentResult.review_id)
                               .where(JobReview.job_id == job_id))
    return total, with_result


@pytest.mark.postgres
@pytest.mark.redis
def test_broker_gone_mid_file_then_resume_finishes_the_job(migrated_pg, redis_url, tiny_models, tmp_path):
    settings = make_settings(migrated_pg, tiny_models, batch_size=4)
    proxy = Proxy(("127.0.0.1", 6379))
    proxied = REDIS_URL.replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}")
    rows = [{"id": f"b{i}", "text": f"review number {i}"} for i in range(6000)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    client = redis.Redis.from_url(redis_url)

    def cut_when_sending():  # the broker goes away once the first batches are out
        deadline = time.monotonic() + 60
        while client.llen("inference") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.down()

    threading.Thread(target=cut_when_sending, daemon=True).start()
    env = settings_env(settings) | {"REVIEWS_BROKER_URL": proxied}
    result = CliRunner().invoke(main, ["enqueue", str(path)], env=env)
    assert result.exit_code == 1, result.output
    assert "ingest stopped after line" in result.output and "reviews resume" in result.output
    assert "Traceback" not in result.output
    with session_factory(migrated_pg)() as s:
        job = s.scalars(select(Job)).one()
        assert job.status == "ingesting" and job.heartbeat_at is None  # released: no live ingest holds it
        stored = s.scalar(select(func.count()).select_from(Review))
    assert 0 < stored < 6000
    with running_worker(settings):
        resumed = CliRunner().invoke(main, ["resume", str(job.id), "--wait", "--timeout", "240"],
                                     env=settings_env(settings))
        assert resumed.exit_code == 0, resumed.output
    assert "its ingest had stopped" in resumed.output and f"job {job.id} [done]" in resumed.output
    assert _analysed(migrated_pg, job.id) == (stored, stored)


@pytest.mark.postgres
@pytest.mark.redis
def test_killed_ingest_is_recovered_after_its_lease(migrated_pg, redis_url, tiny_models, tmp_path):
    settings = make_settings(migrated_pg, tiny_models, batch_size=8)
    env = settings_env(settings) | {"REVIEWS_INGEST_LEASE": "5"}
    ingest = subprocess.Popen([sys.executable, "-m", "cli.main", "enqueue", "-"], stdin=subprocess.PIPE,
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    lines = b"".join(b'{"id": "k%d", "text": "review %d"}\n' % (i, i) for i in range(1200))
    ingest.stdin.write(lines)  # more than one chunk of 500: two are stored, the rest waits in the pipe
    ingest.stdin.flush()
    sessions = session_factory(migrated_pg)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sessions() as s:
            if s.scalar(select(func.count()).select_from(Review)) >= 1000:
                break
        time.sleep(0.1)
    os.killpg(ingest.pid, signal.SIGKILL)  # no chance to release the job
    ingest.wait(10)
    with sessions() as s:
        job = s.scalars(select(Job)).one()
    assert job.status == "ingesting" and job.heartbeat_at is not None
    busy = CliRunner().invoke(main, ["resume", str(job.id)], env=env)
    assert busy.exit_code == 1 and "still being ingested" in busy.output
    time.sleep(5.5)
    with running_worker(settings):
        resumed = CliRunner().invoke(main, ["resume", str(job.id), "--wait", "--timeout", "240"], env=env)
    assert resumed.exit_code == 0, resumed.output
    p = wait_for_job(migrated_pg, job.id)
    assert p.status == "done" and p.total >= 1000
    assert _analysed(migrated_pg, job.id) == (p.total, p.total)


def test_a_batch_that_is_not_the_last_does_not_count_the_job(migrated_sqlite):
    """Every batch asks whether its job is complete; while reviews are pending the answer comes from
    one index probe, never from counting all the job's reviews (which grows with the job)."""
    from sqlalchemy import event

    sessions = session_factory(migrated_sqlite)
    with sessions() as s:
        s.add_all([Review(external_id=f"r{i}", text=f"review {i}", text_sha256=str(i)) for i in range(6)])
        s.commit()
    job = jobs.create_reprocess(sessions)
    statements: list[str] = []
    engine = sessions.kw["bind"]
    listener = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
    ids = jobs.pending_ids(sessions, job)
    for k in range(0, 6, 2):
        with sessions() as s:
            jobs.mark_reviews(s, job, ids[k:k + 2], jobs.DONE)
            s.commit()
            statements.clear()
            event.listen(engine, "before_cursor_execute", listener)
            try:
                closed = jobs.finish_if_complete(s, job)
            finally:
                event.remove(engine, "before_cursor_execute", listener)
        counted = any("GROUP BY" in st for st in statements)
        assert (closed, counted) == ((False, False) if k < 4 else (True, True))
    with sessions() as s:
        assert (jobs.progress(s, job).status, jobs.progress(s, job).done) == ("done", 6)
