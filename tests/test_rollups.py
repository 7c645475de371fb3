"""Dashboard rollups: equal to SQL over the results, whatever redelivery, reprocess, promotion or the
session's time zone; and filled by the migration on a database that already holds results."""

import io
import json

import pytest
from sqlalchemy import text

from conftest import make_settings
from worker import batches, ingest, jobs, migrate, registry
from worker.db import forget_engines, get_engine
from worker.resources import Resources
from worker.rollups import entity_key

ROWS = [
    {"id": "a1", "text": "John Smith loved Paris. John Smith's film was great.", "product_id": "p1",
     "created_at": "2025-01-01T23:30:00-05:00"},  # 2025-01-02 in UTC
    {"id": "a2", "text": "Mary Jones hated Berlin and the Sony phone.", "product_id": "p1",
     "created_at": "2025-01-01T10:00:00Z"},
    {"id": "a3", "text": "A dull film about Paris.", "product_id": "p2"},  # no created_at: its ingest day
    {"id": "a4", "text": "The film by Orson Welles in Rome was superb.", "created_at": "2025-01-03T00:00:00+02:00"},
] + [{"id": f"b{i}", "text": f"John Smith met Mary Jones in Paris, story {i}", "product_id": f"p{i % 3}",
      "created_at": f"2025-01-0{1 + i % 4}T12:00:00Z"} for i in range(12)]


def _day(dialect: str) -> str:
    # Written independently of worker/rollups.py: the database's own UTC date of the review.
    if dialect == "postgresql":
        return "(COALESCE(r.created_at, r.ingested_at) AT TIME ZONE 'UTC')::date"
    return "date(COALESCE(r.created_at, r.ingested_at))"


def _expected_sentiment(conn) -> set:
    sql = f"""SELECT {_day(conn.dialect.name)} AS day, COALESCE(r.product_id, '') AS product, s.model_version_id,
                     COUNT(*), SUM(CASE WHEN s.label = 'positive' THEN 1 ELSE 0 END),
                     SUM(CASE WHEN s.label = 'negative' THEN 1 ELSE 0 END), ROUND(CAST(SUM(s.score) AS NUMERIC), 6)
              FROM sentiment_results s JOIN reviews r ON r.id = s.review_id
              GROUP BY 1, 2, 3"""
    return {(str(d), p, v, n, pos, neg, float(sc)) for d, p, v, n, pos, neg, sc in conn.execute(text(sql))}


def _rollup_sentiment(conn) -> set:
    sql = """SELECT day, product_id, model_version_id, reviews, positive, negative,
                    ROUND(CAST(score_sum AS NUMERIC), 6) FROM sentiment_daily WHERE reviews <> 0"""
    return {(str(d), p, v, n, pos, neg, float(sc)) for d, p, v, n, pos, neg, sc in conn.execute(text(sql))}


def _expected_entities(conn) -> dict:
    sql = f"""SELECT {_day(conn.dialect.name)}, e.label, e.text, e.model_version_id, n.sentiment_version_id,
                     e.review_id, s.label
              FROM entities e JOIN reviews r ON r.id = e.review_id
              JOIN ner_results n ON n.review_id = e.review_id AND n.model_version_id = e.model_version_id
              JOIN sentiment_results s ON s.review_id = e.review_id AND s.model_version_id = n.sentiment_version_id"""
    out: dict = {}
    for day, label, surface, nv, sv, rid, sentiment in conn.execute(text(sql)):
        key = (str(day), label, entity_key(surface), nv, sv)
        mentions, reviews, pos = out.get(key, (0, set(), set()))
        out[key] = (mentions + 1, reviews | {rid}, pos | ({rid} if sentiment == "positive" else set()))
    return {k: (m, len(r), len(p)) for k, (m, r, p) in out.items()}


def _rollup_entities(conn) -> dict:
    sql = """SELECT day, label, entity_key, model_version_id, sentiment_version_id, mentions, reviews, positive
             FROM entity_daily WHERE mentions <> 0"""
    return {(str(d), lb, k, nv, sv): (m, n, p) for d, lb, k, nv, sv, m, n, p in conn.execute(text(sql))}


def _check(url: str) -> None:
    with get_engine(url).connect() as conn:
        sentiment = _expected_sentiment(conn)
        assert _rollup_sentiment(conn) == sentiment
        products: dict = {}
        for _day, product, version, reviews, *_ in sentiment:
            products[(product, version)] = products.get((product, version), 0) + reviews
        assert dict(((p, v), n) for p, v, n in conn.execute(text(
            "SELECT product_id, model_version_id, reviews FROM product_totals WHERE reviews <> 0"))) == products
        days: dict = {}
        for day, _product, version, reviews, positive, negative, score in sentiment:
            sums = days.get((day, version), (0, 0, 0, 0.0))
            days[(day, version)] = (sums[0] + reviews, sums[1] + positive, sums[2] + negative, sums[3] + score)
        stored = conn.execute(text("SELECT day, model_version_id, reviews, positive, negative, score_sum "
                                   "FROM sentiment_day_totals WHERE reviews <> 0"))
        assert {(str(d), v): (n, p, ng, pytest.approx(sc, abs=1e-5)) for d, v, n, p, ng, sc in stored} == days
        expected = _expected_entities(conn)
        assert _rollup_entities(conn) == expected
        totals: dict = {}
        for (_day, *key), (mentions, _, _) in expected.items():
            totals[tuple(key)] = totals.get(tuple(key), 0) + mentions
        assert {tuple(r[:4]): r[4] for r in conn.execute(text(
            "SELECT label, entity_key, model_version_id, sentiment_version_id, mentions FROM entity_totals "
            "WHERE mentions <> 0"))} == totals


def _run(resources, rows) -> int:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    report = ingest.ingest(resources.sessions, io.BytesIO(data), "r.jsonl", resources.settings,
                           lambda job, ids: batches.run_to_end(resources, job, ids))
    return report.job_id


def _reprocess(resources) -> None:
    job = jobs.create_reprocess(resources.sessions)
    batches.run_to_end(resources, job, jobs.pending_ids(resources.sessions, job))


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_rollups_follow_the_results_through_redelivery_promotion_and_rollback(db, request, tiny_models, tmp_path):
    url = request.getfixturevalue("migrated_sqlite" if db == "sqlite" else "migrated_pg")
    resources = Resources(make_settings(url, tiny_models, batch_size=5, model_dir=str(tmp_path / "v")))
    job = _run(resources, ROWS)
    _check(url)
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT SUM(reviews) FROM sentiment_daily")).scalar() == len(ROWS)
        days = {str(d) for (d,) in conn.execute(text(
            "SELECT s.day FROM sentiment_daily s WHERE s.product_id = 'p1'"))}
        assert "2025-01-02" in days  # 23:30 at -05:00 is the next day in UTC
    ids = jobs.pending_ids(resources.sessions, job) or [i for i in range(1, len(ROWS) + 1)]
    batches.run_to_end(resources, job, ids[:7])  # a redelivered batch: nothing changes
    _check(url)
    with resources.sessions() as s:
        for task in ("sentiment", "ner"):
            active = registry.active_versions(s, resources.settings)[task]
            registry.register(s, task, active.source, "candidate", parent_id=active.id)
            registry.promote(s, task, 2)
        s.commit()
    _reprocess(resources)  # version 2 counts the same reviews again, apart from version 1
    _check(url)
    with resources.sessions() as s:
        registry.rollback(s, "sentiment")
        s.commit()
    _reprocess(resources)  # sentiment v1 with NER v2: the entities move to the new pairing
    _check(url)
    with get_engine(url).connect() as conn:
        per_version = dict(conn.execute(text(
            "SELECT model_version_id, SUM(reviews) FROM sentiment_daily GROUP BY model_version_id")).all())
    assert sorted(per_version.values()) == [len(ROWS), len(ROWS)]


@pytest.mark.postgres
def test_days_do_not_move_with_the_session_time_zone(pg_url, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("PGTZ", "America/Los_Angeles")  # libpq: every new connection's session time zone
    forget_engines()
    try:
        migrate.upgrade(pg_url)
        resources = Resources(make_settings(pg_url, tiny_models, model_dir=str(tmp_path / "v")))
        _run(resources, ROWS[:4])
        with get_engine(pg_url).connect() as conn:
            assert conn.execute(text("SHOW TIME ZONE")).scalar() == "America/Los_Angeles"
            days = sorted(str(d) for (d,) in conn.execute(text("SELECT day FROM sentiment_daily WHERE product_id='p1'")))
            view = sorted((str(d), v) for d, v in conn.execute(text(
                "SELECT day, model_version FROM sentiment_by_product_day WHERE product_id = 'p1'")))
        assert days == ["2025-01-01", "2025-01-02"]  # the UTC days, not Los Angeles'
        assert view == [("2025-01-01", 1), ("2025-01-02", 1)]  # the view too, with the model version
    finally:
        forget_engines()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_migration_fills_rollups_on_a_database_with_results(db, request, tiny_models, tmp_path):
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    migrate.upgrade(url)
    resources = Resources(make_settings(url, tiny_models, model_dir=str(tmp_path / "v")))
    _run(resources, ROWS)
    with get_engine(url).begin() as conn:  # what a database made before 0004 holds: no rollups, no keys
        before = _expected_sentiment(conn)
        conn.execute(text("DELETE FROM sentiment_daily"))
        conn.execute(text("DELETE FROM entity_daily"))
    migrate.downgrade(url, "0003")
    migrate.upgrade(url)
    with get_engine(url).connect() as conn:
        assert _rollup_sentiment(conn) == before
        keys = {k for (k,) in conn.execute(text("SELECT entity_key FROM entities"))}
    assert keys and all(k == k.lower() for k in keys)
    _check(url)


def test_entity_keys_ignore_case_spacing_and_possessives():
    assert entity_key("John  Smith's") == entity_key("john smith") == "john smith"
    assert entity_key("Welles\u2019s") == "welles" and entity_key("Paris") == "paris"
    assert entity_key("Jones'") == "jones" and entity_key("'s") == "'s"


def _pending(url: str) -> int:
    with get_engine(url).connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM rollup_deltas")).scalar()


def _rollup_reviews(url: str) -> int:
    with get_engine(url).connect() as conn:
        return conn.execute(text("SELECT COALESCE(SUM(reviews), 0) FROM sentiment_daily")).scalar()


def _ingested_not_analysed(url: str, tiny_models, tmp_path):
    """ROWS stored as a job of 4 batches that nobody has analysed yet, and a worker that folds once an hour."""
    settings = make_settings(url, tiny_models, batch_size=4, model_dir=str(tmp_path / "v"), rollup_fold_seconds=3600)
    resources = Resources(settings)
    sent: list = []
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    report = ingest.ingest(resources.sessions, io.BytesIO(data), "r.jsonl", settings, lambda j, ids: sent.append(ids))
    return settings, resources, report.job_id, sent


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_deltas_wait_until_a_fold_and_a_finished_job_is_folded(db, request, tiny_models, tmp_path):
    """Writers append deltas; a worker folds at most every REVIEWS_ROLLUP_FOLD_SECONDS, so in between
    the rollups lag the results, until the dashboard reads or the job completes."""
    from worker import rollups
    from worker.dashboard.app import create_app
    from starlette.testclient import TestClient

    url = request.getfixturevalue("migrated_sqlite" if db == "sqlite" else "migrated_pg")
    settings, resources, job, sent = _ingested_not_analysed(url, tiny_models, tmp_path)
    assert len(sent) == 4
    batches.run_to_end(resources, job, sent[0])  # a process's first batch folds
    assert (_pending(url), _rollup_reviews(url)) == (0, 4)
    batches.run_to_end(resources, job, sent[1])
    batches.run_to_end(resources, job, sent[2])
    assert (_pending(url), _rollup_reviews(url)) == (2, 4)  # not due yet: two batches wait as deltas
    assert TestClient(create_app(settings)).get("/").status_code == 200  # a dashboard page folds first
    assert (_pending(url), _rollup_reviews(url)) == (0, 12)
    batches.run_to_end(resources, job, sent[3])  # the job's last batch: it completes and folds
    assert (_pending(url), _rollup_reviews(url)) == (0, len(ROWS))
    _check(url)
    with resources.sessions() as s:
        assert rollups.fold_pending(s) == 0


@pytest.mark.postgres
def test_concurrent_folders_apply_every_delta_exactly_once(migrated_pg, tiny_models, tmp_path):
    import threading
    from datetime import date, timedelta

    from worker import rollups

    resources = Resources(make_settings(migrated_pg, tiny_models, model_dir=str(tmp_path / "v")))
    with resources.sessions() as s:
        version = registry.active_versions(s, resources.settings)["sentiment"].id
        s.commit()
        expected = 0
        for k in range(120):
            n = 1 + k % 7
            expected += n
            sent = {(date(2025, 1, 1) + timedelta(days=k % 5), f"p{k % 3}", version): [n, n, 0, 0.5 * n]}
            rollups.record(s, sent, {})
        s.commit()

    def folder() -> None:
        with resources.sessions() as s:
            while rollups.fold(s, limit=3):  # small claims, so that the two folders interleave
                s.commit()
            s.commit()

    threads = [threading.Thread(target=folder) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _pending(migrated_pg) == 0
    assert _rollup_reviews(migrated_pg) == expected
    with get_engine(migrated_pg).connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM sentiment_daily")).scalar() == 15  # 5 days x 3 products


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_downgrading_below_the_journal_folds_what_is_pending(db, request, tiny_models, tmp_path):
    url = request.getfixturevalue("migrated_sqlite" if db == "sqlite" else "migrated_pg")
    settings, resources, job, sent = _ingested_not_analysed(url, tiny_models, tmp_path)
    for ids in sent[:3]:
        batches.run_to_end(resources, job, ids)
    assert _pending(url) == 2
    forget_engines()
    migrate.downgrade(url, "0005")
    forget_engines()
    assert _rollup_reviews(url) == 12
    migrate.upgrade(url)
    forget_engines()
    batches.run_to_end(Resources(settings), job, sent[3])
    _check(url)
