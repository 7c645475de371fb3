"""The one batch processor: backoff, retries, isolation of a failing batch, and `reviews run` with
every guarantee a worker has."""

import random

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from conftest import make_settings, settings_env, write_jsonl
from worker import batches, ingest, jobs
from worker.db import insert
from worker.resources import Resources
from worker.schema import JobReview, NerResult, Review, SentimentResult


def test_backoff_doubles_is_capped_and_jittered():
    rng = random.Random(1)
    waits = [[batches.backoff(n, 2.0, cap=60.0, rng=rng) for n in range(8)] for _ in range(50)]
    for series in waits:
        for n, w in enumerate(series):
            ceiling = min(60.0, 2.0 * 2**n)
            assert ceiling / 2 <= w <= ceiling
    assert len({series[3] for series in waits}) > 40  # a fleet does not retry in lockstep
    assert batches.backoff(10_000, 2.0) <= 60.0  # no overflow on absurd attempt counts


def test_a_failing_review_is_isolated_after_the_retries(migrated_sqlite, tiny_models, tmp_path, poisoned):
    settings = make_settings(migrated_sqlite, tiny_models, task_max_retries=2, retry_delay=0.01, batch_size=8)
    resources = Resources(settings)
    rows = [{"id": f"g{i}", "text": f"good review {i}"} for i in range(7)] + [{"id": "bad", "text": "POISON"}]
    waits: list[float] = []
    with open(write_jsonl(tmp_path / "r.jsonl", rows), "rb") as f:
        report = ingest.ingest(resources.sessions, f, "r.jsonl", settings,
                               lambda job, ids: batches.run_to_end(resources, job, ids, sleep=waits.append))
    assert len(waits) == 2  # two retries of the whole batch, then one review at a time
    with resources.sessions() as s:
        p = jobs.progress(s, report.job_id)
        assert (p.status, p.done, p.failed, p.pending) == ("partial", 7, 1, 0)
        assert jobs.failed_reviews(s, report.job_id) == [("bad", "RuntimeError: engine failed on this input")]
        assert s.scalar(select(func.count()).select_from(SentimentResult)) == 7
        assert s.scalar(select(func.count()).select_from(NerResult)) == 7


def test_process_says_when_to_retry_and_never_isolates_early(migrated_sqlite, tiny_models, poisoned):
    settings = make_settings(migrated_sqlite, tiny_models, task_max_retries=1, retry_delay=4.0)
    resources = Resources(settings)
    job = jobs.create(resources.sessions, "test")
    with resources.sessions() as s:
        s.execute(insert(s, Review).values([dict(external_id="x", text="POISON", text_sha256="0" * 64)]))
        rid = s.scalar(select(Review.id))
        s.execute(insert(s, JobReview).values([dict(job_id=job, review_id=rid)]))
        s.commit()
    jobs.queued(resources.sessions, job)
    with pytest.raises(batches.RetryLater) as retry:
        batches.process(resources, job, [rid], attempt=0)
    assert 2.0 <= retry.value.delay <= 4.0 and "engine failed" in retry.value.reason
    outcome = batches.process(resources, job, [rid], attempt=1)  # retries used up: isolated
    assert outcome == batches.BatchOutcome(written=0, failed=1)
    with resources.sessions() as s:
        assert jobs.progress(s, job).status == "failed"  # its only review failed


def test_reviews_run_gives_the_worker_guarantees(sqlite_url, tiny_models, tmp_path, poisoned):
    settings = make_settings(sqlite_url, tiny_models, model_dir=str(tmp_path / "versions"))
    env = settings_env(settings) | {"REVIEWS_RETRY_DELAY": "0.01", "REVIEWS_TASK_MAX_RETRIES": "1"}
    rows = [{"id": f"g{i}", "text": f"good review {i}"} for i in range(20)]
    rows.insert(11, {"id": "bad", "text": "a POISON review"})
    result = CliRunner().invoke(main, ["run", str(write_jsonl(tmp_path / "r.jsonl", rows))], env=env)
    assert result.exit_code == 3, result.output  # partial
    assert "job 1 [partial]" in result.output and "20/21 done, 1 failed" in result.output
    assert "Traceback" not in result.output
    status = CliRunner().invoke(main, ["status", "1", "--failed"], env=env)
    assert "bad: RuntimeError: engine failed on this input" in status.output
    exported = CliRunner().invoke(main, ["export", "--job", "1", "--no-text"], env=env).output.splitlines()
    assert len(exported) == 20  # every good review has its results


def test_entities_under_the_minimum_score_are_not_stored(tmp_path, tiny_models):
    from worker import migrate
    from worker.schema import EntityRow

    texts = [{"id": f"e{i}", "text": f"John Smith met Mary Jones in Paris and Berlin, story {i}"} for i in range(12)]
    path = write_jsonl(tmp_path / "r.jsonl", texts)
    scores = {}
    for floor in (0.0, 0.13):
        url = f"sqlite:///{tmp_path / f'floor{floor}.db'}"
        migrate.upgrade(url)
        settings = make_settings(url, tiny_models, model_dir=str(tmp_path / "versions"))
        env = settings_env(settings) | {"REVIEWS_MIN_ENTITY_SCORE": str(floor)}
        assert CliRunner().invoke(main, ["run", str(path)], env=env).exit_code == 0
        resources = Resources(settings)
        with resources.sessions() as s:
            scores[floor] = sorted(s.scalars(select(EntityRow.score)))
    assert scores[0.0], "the tiny model found no entities at all: the test needs some"
    assert any(x < 0.13 for x in scores[0.0]) and any(x >= 0.13 for x in scores[0.0])  # the floor cuts
    assert scores[0.13] == [x for x in scores[0.0] if x >= 0.13]
