"""Shared fixtures: tiny models saved to disk, SQLite and PostgreSQL databases, Redis, a real worker.

Tests that need PostgreSQL, Redis or ../shared/data skip with the reason where those are missing;
with REVIEWS_TEST_STRICT=1 (set by .ci/run) every skip is a failure instead, so CI cannot pass by
skipping.
"""

from __future__ import annotations

import gzip
import json
import os
import select as select_mod
import socket
import sys
import threading
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
    # languages="all": random test texts are no language at all; tests of the guard set it themselves.
    values = dict(database_url=database_url, broker_url=REDIS_URL, sentiment_model=str(tiny_models["sentiment"]),
                  ner_model=str(tiny_models["ner"]), max_length=64, window_stride=16, batch_size=16, languages="all")
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
        "REVIEWS_LANGUAGES": settings.languages,
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
def running_worker(settings: Settings, queues: tuple[str, ...] = ("inference",), shutdown_timeout: float = 30):
    """A real Celery worker in this process (a thread) on real Redis, built by the app factory as
    `reviews worker` builds it. Yields the app."""
    from celery.contrib.testing.worker import start_worker

    from worker.app import create_app

    app = create_app(settings)
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False, queues=list(queues),
                      loglevel="WARNING", shutdown_timeout=shutdown_timeout):
        yield app


def wait_for_job(url: str, job_id: int, timeout: float = 240):
    """The job's progress once it has ended; fails the test after `timeout` seconds."""
    import time

    from worker import jobs
    from worker.db import session_factory

    sessions = session_factory(url)
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as s:
            p = jobs.progress(s, job_id)
        if p.finished:
            return p
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish in {timeout}s: {p}")
        time.sleep(0.2)


@pytest.fixture
def app_worker(migrated_pg, redis_url, tiny_models):
    settings = make_settings(migrated_pg, tiny_models)
    with running_worker(settings):
        yield settings


class Proxy:
    """A TCP proxy to PostgreSQL that the test can take down and bring back: a real outage of the
    worker's database connections, without stopping the server other tests use."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if not self.up.is_set():
                client.close()
                continue
            server = socket.create_connection(self.target)
            self.conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select_mod.select([a, b], [], [], 1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def down(self) -> None:
        self.up.clear()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def restore(self) -> None:
        self.up.set()
