"""End to end with real parts: enqueue -> Redis -> a Celery worker -> PostgreSQL."""

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from conftest import make_settings, running_worker, settings_env, wait_for_job, write_jsonl
from worker.app import batch_sender, create_app
from worker.db import session_factory
from worker.schema import EntityRow, JobReview, ModelVersion, NerResult, Review, SentimentResult

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_enqueue_to_worker_to_postgres(app_worker, imdb_reviews, tmp_path):
    settings = app_worker
    rows = imdb_reviews[:64]
    path = write_jsonl(tmp_path / "reviews.jsonl", rows + [{"id": "bad", "text": 3}])
    result = CliRunner().invoke(main, ["enqueue", str(path)], env=settings_env(settings), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    job_id = int(result.stdout.strip().splitlines()[0])
    assert "line 65: 'text' must be a string" in result.output
    assert "64 reviews queued in 4 batches" in result.output
    p = wait_for_job(settings.database_url, job_id)
    assert (p.status, p.total, p.done, p.failed, p.rejected) == ("done", 64, 64, 0, 1)

    sessions = session_factory(settings.database_url)
    with sessions() as s:
        stored = dict(s.execute(select(Review.external_id, Review.text)).all())
        assert stored == {r["id"]: r["text"] for r in rows}
        versions = {mv.task: mv for mv in s.scalars(select(ModelVersion))}
        assert versions["sentiment"].status == "active" and versions["sentiment"].version == 1
        sentiment = s.execute(select(SentimentResult)).scalars().all()
        assert len(sentiment) == 64 and {r.model_version_id for r in sentiment} == {versions["sentiment"].id}
        for r in sentiment:
            assert r.label in ("negative", "positive") and 0.5 <= r.probability <= 1
            assert r.score == pytest.approx((1 if r.label == "positive" else -1) * (2 * r.probability - 1), abs=1e-5)
        assert s.scalar(select(func.count()).select_from(NerResult)) == 64
        entity_count = s.scalar(select(func.sum(NerResult.entity_count)))
        ents = s.execute(select(Review.text, EntityRow).join(EntityRow, EntityRow.review_id == Review.id)).all()
        assert len(ents) == entity_count
        for text, e in ents:
            assert text[e.start_char:e.end_char] == e.text and e.model_version_id == versions["ner"].id
        assert set(s.scalars(select(JobReview.status).where(JobReview.job_id == job_id))) == {"done"}

    # --wait on a second job follows it to the end; the same reviews again add no result rows.
    result = CliRunner().invoke(main, ["enqueue", "--wait", str(path)], env=settings_env(settings))
    assert result.exit_code == 0 and "[done]" in result.output and "64/64 done" in result.output
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(SentimentResult)) == 64
        assert s.scalar(select(func.count()).select_from(EntityRow)) == entity_count


def test_a_threads_pool_worker_runs_batches_at_once_with_the_same_results(migrated_pg, redis_url, tiny_models,
                                                                          imdb_reviews, tmp_path):
    """`reviews worker --pool threads -c N` (for GPUs: one process, its models shared by N batches in
    flight) stores what the engine gives each review alone."""
    from worker.nlp.ner import load_ner
    from worker.nlp.sentiment import load_sentiment

    settings = make_settings(migrated_pg, tiny_models, batch_size=8)
    rows = imdb_reviews[:96]
    path = write_jsonl(tmp_path / "reviews.jsonl", rows)
    with running_worker(settings, pool="threads", concurrency=3):
        result = CliRunner().invoke(main, ["enqueue", str(path)], env=settings_env(settings))
        assert result.exit_code == 0, result.output
        p = wait_for_job(settings.database_url, int(result.stdout.strip().splitlines()[0]))
    assert (p.status, p.done, p.failed) == ("done", 96, 0)
    texts = [r["text"] for r in rows]
    options = settings.engine_options()
    labels = [s.label for s in load_sentiment(str(tiny_models["sentiment"]), options).predict(texts)]
    spans = [sorted((e.start, e.end, e.label) for e in es)
             for es in load_ner(str(tiny_models["ner"]), options).predict(texts)]
    with session_factory(settings.database_url)() as s:
        stored = dict(s.execute(select(Review.external_id, SentimentResult.label)
                                .join(SentimentResult, SentimentResult.review_id == Review.id)).all())
        found = {r["id"]: [] for r in rows}
        for rid, start, end, label in s.execute(select(Review.external_id, EntityRow.start_char, EntityRow.end_char,
                                                       EntityRow.label).join(EntityRow, EntityRow.review_id == Review.id)):
            found[rid].append((start, end, label))
    assert [stored[r["id"]] for r in rows] == labels
    assert [sorted(found[r["id"]]) for r in rows] == spans


def test_redelivered_batch_creates_no_duplicates(app_worker, tmp_path):
    settings = app_worker
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": f"r{i}", "text": f"Paris film number {i} was great"}
                                              for i in range(10)])
    result = CliRunner().invoke(main, ["enqueue", "--wait", str(path)], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    sessions = session_factory(settings.database_url)
    with sessions() as s:
        ids = s.scalars(select(Review.id)).all()
        before = (s.scalar(select(func.count()).select_from(SentimentResult)),
                  s.scalar(select(func.count()).select_from(EntityRow)))
        assert before[0] == 10
    send = batch_sender(create_app(settings))
    for _ in range(2):  # the same batch, delivered twice more
        send(1, ids)
    # One solo worker takes messages in order: when a job sent after them is done, so are they.
    marker = write_jsonl(tmp_path / "m.jsonl", [{"id": "marker", "text": "sent last"}])
    assert CliRunner().invoke(main, ["enqueue", "--wait", str(marker)], env=settings_env(settings)).exit_code == 0
    with sessions() as s:
        after = (s.scalar(select(func.count()).select_from(SentimentResult)),
                 s.scalar(select(func.count()).select_from(EntityRow).where(EntityRow.review_id.in_(ids))))
        assert s.scalar(select(func.count()).select_from(NerResult)) == 11
    assert after == (before[0] + 1, before[1])  # only the marker review is new


def test_enqueue_says_clearly_when_the_broker_is_down(migrated_pg, tiny_models, tmp_path):
    from conftest import make_settings

    settings = make_settings(migrated_pg, tiny_models)
    env = settings_env(settings) | {"REVIEWS_BROKER_URL": "redis://:hunter2@127.0.0.1:1/0"}
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "hello"}])
    result = CliRunner().invoke(main, ["enqueue", str(path)], env=env)
    assert result.exit_code == 1 and "cannot reach the broker redis://:***@127.0.0.1:1/0" in result.output
    assert "hunter2" not in result.output


def test_wait_without_a_worker_warns_and_times_out(migrated_pg, redis_url, tiny_models, tmp_path):
    from conftest import make_settings

    settings = make_settings(migrated_pg, tiny_models)
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "nobody will read this"}])
    result = CliRunner().invoke(main, ["enqueue", "--wait", "--timeout", "1", str(path)], env=settings_env(settings))
    assert result.exit_code == 5, result.output  # timed out: the job goes on without us
    assert "no worker answered on queue 'inference' within 2 s: none runs, or each is busy" in result.output
    assert "timed out after 1 s" in result.output and "[queued]" in result.output
