"""Shared fixtures: tiny models saved to disk, SQLite and PostgreSQL databases, Redis, RabbitMQ, a real
worker.

Tests that need PostgreSQL, Redis, RabbitMQ or ../shared/data skip with the reason where those are missing;
with REVIEWS_TEST_STRICT=1 (set by .ci/run) every skip is a failure instead, so CI cannot pass by
skipping.
"""

from __future__ import annotations

import gzip
import json
import os
import select as select_mod
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_tiny  # noqa: E402

from worker.config import Settings, redact_url  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REVIEWS_DATA_DIR", ROOT.parent / "shared" / "data"))
PG_URL = os.environ.get("REVIEWS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REVIEWS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# A vhost of its own, as Redis has database 15: the tests delete the queues they use. .ci/run creates it.
RABBITMQ_URL = os.environ.get("REVIEWS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/reviews_test")
STRICT = os.environ.get("REVIEWS_TEST_STRICT") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # CI has no GPU: a `cuda` test's skip stays a skip (bench/gpu.sh runs them where there is one);
    # so does a `cpu_feature` test's on a CPU without the feature (CI's hosts differ from stop to stop).
    hardware = item.get_closest_marker("cuda") or item.get_closest_marker("cpu_feature")
    if STRICT and report.skipped and not hasattr(report, "wasxfail") and hardware is None:
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


def _rabbitmq_reset(url: str) -> str | None:
    """Delete the test vhost's 'inference' and 'training' queues and their exchanges, so that a test
    starts with empty queues, declared afresh as the app declares them. None, or why RabbitMQ cannot
    be used."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            for name in ("inference", "training"):
                channel.queue_delete(name)
                channel.exchange_delete(name)
    except Exception as exc:  # refused, no such vhost, bad credentials: no RabbitMQ for these tests
        return f"{type(exc).__name__}: {exc}"
    # Celery's producers come from kombu's process-wide pools, whose connections remember what they
    # declared: they would publish to the exchanges just deleted without declaring them again.
    import kombu.pools

    kombu.pools.reset()
    return None


@pytest.fixture
def rabbitmq_url() -> str:
    problem = _rabbitmq_reset(RABBITMQ_URL)
    if problem:
        pytest.skip(f"RabbitMQ not reachable at {redact_url(RABBITMQ_URL)}: {problem} "
                    "(a vhost of its own: rabbitmqctl add_vhost reviews_test && rabbitmqctl set_permissions "
                    "-p reviews_test guest '.*' '.*' '.*')")
    return RABBITMQ_URL


class Broker:
    """A broker under test: its name ('redis' or 'rabbitmq'), its URL, and what its queues hold."""

    def __init__(self, name: str, url: str):
        self.name, self.url = name, url

    def ready(self, queue: str) -> int:
        """Messages waiting in `queue`, none of them delivered to a worker: exact, at once."""
        if self.name == "redis":
            import redis

            return redis.Redis.from_url(self.url).llen(queue)
        from kombu import Connection

        with Connection(self.url) as conn:
            return conn.default_channel.queue_declare(queue, passive=True).message_count

    def counts(self, queue: str) -> tuple[int, int]:
        """(ready, unacked): messages waiting in `queue`, and messages delivered to workers and not yet
        acknowledged. On Redis the second counts every queue's (Redis keeps them in one hash). On
        RabbitMQ it comes from `rabbitmqctl list_queues` (AMQP cannot tell), whose figures for a quorum
        queue are statistics, refreshed every few seconds: wait for them."""
        if self.name == "redis":
            import redis

            return self.ready(queue), redis.Redis.from_url(self.url).hlen("unacked")
        from kombu import Connection

        vhost = Connection(self.url).virtual_host
        out = subprocess.run(["rabbitmqctl", "list_queues", "-p", vhost, "-q", "--no-table-headers", "name",
                              "messages_unacknowledged"], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        unacked = next((int(f[1]) for f in map(str.split, out.splitlines()) if len(f) == 2 and f[0] == queue), 0)
        return self.ready(queue), unacked


@pytest.fixture
def broker(request) -> Broker:
    """The broker named by indirect parametrization, emptied for this test:
    `@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)`."""
    name = request.param
    if name == "redis":
        return Broker(name, request.getfixturevalue("redis_url"))
    if name == "rabbitmq":
        url = request.getfixturevalue("rabbitmq_url")
        if shutil.which("rabbitmqctl") is None:
            pytest.skip("rabbitmqctl not found: the RabbitMQ tests read queue depths with it")
        return Broker(name, url)
    raise ValueError(f"unknown broker {name!r}")


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


def int8_layer_pairs(kernels: tuple[str, str], seed: int):
    """The same Linear (96 -> 80) and inputs through int8.Int8Linear with each of two product kernels,
    plain and centered: (output with the first, output with the second) per variant."""
    import torch

    from worker.nlp import int8

    torch.manual_seed(seed)
    linear = torch.nn.Linear(96, 80)
    x = torch.randn(2, 33, 96)
    with torch.inference_mode():
        return [tuple(int8.Int8Linear(linear, centered=centered, kernel=k)(x + centered) for k in kernels)
                for centered in (False, True)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@contextmanager
def running_worker(settings: Settings, queues: tuple[str, ...] = ("inference",), shutdown_timeout: float = 30,
                   pool: str = "solo", concurrency: int = 1):
    """A real Celery worker in this process (a thread) on the settings' broker (Redis or RabbitMQ),
    built by the app factory as `reviews worker` builds it. Yields the app."""
    from celery.contrib.testing.worker import start_worker

    from worker.app import create_app

    app = create_app(settings)
    with start_worker(app, pool=pool, concurrency=concurrency, perform_ping_check=False, queues=list(queues),
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


def poison_ner(monkeypatch) -> None:
    """The NER engine raises on any batch holding the word POISON, as a real bug on one input would."""
    from worker.nlp.ner import NerModel

    real = NerModel.start  # predict and predict_both both begin here

    def start(self, texts, encoded=None):
        if any("POISON" in t for t in texts):
            raise RuntimeError("engine failed on this input")
        return real(self, texts, encoded)

    monkeypatch.setattr(NerModel, "start", start)


@pytest.fixture
def poisoned(monkeypatch):
    poison_ner(monkeypatch)


@pytest.fixture
def tiny_sentiment_data(tmp_path, monkeypatch):
    """A tiny copy of the build's data layout (SST-2 train/dev, IMDb train with 3 held out)."""
    import gzip
    import json

    from worker.training import data

    POS = ["great film", "loved the acting", "good story", "a wonderful cast", "loved it"]
    NEG = ["awful film", "boring plot", "terrible acting", "a dreadful cast", "hate it"]
    monkeypatch.setattr(data, "IMDB_HELDOUT", 3)
    monkeypatch.setenv("REVIEWS_HOME", str(tmp_path / "home"))
    (tmp_path / "sst2").mkdir()
    (tmp_path / "imdb").mkdir()
    rows = [f"1\t{t}" for t in POS] + [f"0\t{t}" for t in NEG]
    (tmp_path / "sst2" / "train.tsv").write_text("label\tsentence\n" + "\n".join(rows) + "\n")
    (tmp_path / "sst2" / "dev.tsv").write_text("label\tsentence\n1\tgood acting\n0\tbad acting\n")
    reviews = [{"text": f"{t} , truly {t}", "label": "positive"} for t in POS] + \
              [{"text": f"{t} , truly {t}", "label": "negative"} for t in NEG]
    reviews += [{"text": "held out and great", "label": "positive"}, {"text": "held out and awful", "label": "negative"},
                {"text": "held out and fine", "label": "positive"}]
    with gzip.open(tmp_path / "imdb" / "train.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in reviews)
    return tmp_path
