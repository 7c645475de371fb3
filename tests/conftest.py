"""Shared fixtures: tiny models saved to disk, SQLite and PostgreSQL databases, Redis, a real worker.

Tests that need PostgreSQL, Redis or ../shared/data skip with the reason where those are missing;
with REVIEWS_TEST_STRICT=1 (set by .ci/run) every skip is a failure instead, so CI cannot pass by
skipping.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_tiny  # noqa: E402

from worker.config import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REVIEWS_DATA_DIR", ROOT.parent / "shared" / "data"))
PG_URL = os.environ.get("REVIEWS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REVIEWS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
STRICT = os.environ.get("REVIEWS_TEST_STRICT") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under REVIEWS_TEST_STRICT=1, which makes skips failures: {reason}"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sentiment": save_tiny(root / "sentiment", "sentiment"), "ner": save_tiny(root / "ner", "ner")}


def make_settings(database_url: str, tiny_models: dict[str, Path], **extra) -> Settings:
    values = dict(database_url=database_url, broker_url=REDIS_URL, sentiment_model=str(tiny_models["sentiment"]),
                  ner_model=str(tiny_models["ner"]), max_length=64, window_stride=16, batch_size=16)
    return Settings(**(values | extra))


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a CLI invocation needs to see `settings`."""
    return {
        "REVIEWS_DATABASE_URL": settings.database_url,
        "REVIEWS_BROKER_URL": settings.broker_url,
        "REVIEWS_SENTIMENT_MODEL": settings.sentiment_model,
        "REVIEWS_NER_MODEL": settings.ner_model,
        "REVIEWS_MAX_LENGTH": str(settings.max_length),
        "REVIEWS_WINDOW_STRIDE": str(settings.window_stride),
        "REVIEWS_BATCH_SIZE": str(settings.batch_size),
        "REVIEWS_MODEL_DIR": settings.model_dir,
    }


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'reviews.db'}"


def _postgres_available() -> str | None:
    from sqlalchemy import create_engine

    try:
        engine = create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure to connect means: no PostgreSQL here
        return str(exc).splitlines()[0]


@pytest.fixture
def pg_url() -> str:
    """A PostgreSQL database emptied for this test (schema 'public' dropped and recreated)."""
    problem = _postgres_available()
    if problem:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {problem}")
    from worker.db import get_engine

    engine = get_engine(PG_URL)
    engine.dispose()  # connections from an earlier test may hold locks on the old schema
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    return PG_URL


@pytest.fixture
def migrated_pg(pg_url) -> str:
    from worker import migrate

    migrate.upgrade(pg_url)
    return pg_url


@pytest.fixture
def migrated_sqlite(sqlite_url) -> str:
    from worker import migrate

    migrate.upgrade(sqlite_url)
    return sqlite_url


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.flushdb()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def imdb_reviews() -> list[dict]:
    """The first 200 unlabeled IMDb reviews (real traffic), or a skip where the data is absent."""
    path = DATA / "imdb" / "unsup.jsonl.gz"
    if not path.exists():
        pytest.skip(f"real review data not found at {path} (set REVIEWS_DATA_DIR)")
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == 200:
                break
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@contextmanager
def running_worker(settings: Settings):
    """A real Celery worker in this process (a thread), consuming queue 'inference' on real Redis."""
    from celery.contrib.testing.worker import start_worker

    from worker import tasks
    from worker.app import configure

    configure(tasks.app, settings)
    tasks._runtime = None
    try:
        with start_worker(tasks.app, pool="solo", concurrency=1, perform_ping_check=False, queues=["inference"],
                          loglevel="WARNING", shutdown_timeout=30):
            yield settings
    finally:
        tasks._runtime = None


@pytest.fixture
def app_worker(migrated_pg, redis_url, tiny_models):
    with running_worker(make_settings(migrated_pg, tiny_models)) as settings:
        yield settings
