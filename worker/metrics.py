"""Prometheus metrics of `reviews worker`, served on REVIEWS_METRICS_PORT (0: off).

Counts come from Celery's task_prerun/task_postrun signals for this app's analyze task, and from
batches.py for what only it knows (a review's failure reason, a retry's kind). Queue depth and rejected
lines are read at scrape time by collectors, so they are fresh and need no worker to count them.

Until `install` runs, every call from batches.py is a no-op: `reviews run` and the tests pay nothing,
and prometheus_client is not imported before the prefork parent has named its multiprocess directory
(the library picks where values live when it is first imported).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import time

log = logging.getLogger(__name__)

ANALYZE = "reviews.analyze"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A batch takes from a fraction of a second (tiny model, GPU) to minutes (long reviews on a CPU).
BATCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

_active: Metrics | None = None  # this process's metrics once installed


def prepare_multiprocess() -> str:
    """For the prefork pool, before prometheus_client is imported: a fresh directory where each child
    writes its values for the parent to add up. Fresh, because files left by an earlier run would
    be counted again. Removed when the parent exits."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    path = tempfile.mkdtemp(prefix="reviews-metrics-")
    os.environ[MULTIPROC_ENV] = path
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    return path


class Metrics:
    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        self.analysed = Counter("reviews_analysed", "Reviews analysed, their results written", registry=registry)
        self.batches = Counter("reviews_batches", "Batches analysed to the end (isolated ones included)",
                               registry=registry)
        self.batch_seconds = Histogram("reviews_batch_seconds", "Seconds per batch attempt, by outcome: "
                                       "done, retry, error", ["outcome"], buckets=BATCH_BUCKETS, registry=registry)
        self.failed = Counter("reviews_failed", "Reviews recorded failed, by exception type", ["reason"],
                              registry=registry)
        self.retries = Counter("reviews_retries", "Batch retries, by kind: database, engine", ["kind"],
                               registry=registry)
        # livesum: across prefork children, the number of live processes serving each version.
        self.serving = Gauge("reviews_model_version_serving", "Worker processes serving each model version",
                             ["task", "version"], multiprocess_mode="livesum", registry=registry)
        self.exposed = registry  # what the endpoint serves; install() replaces it in multiprocess mode
        self._serving_ids: tuple[int, int] | None = None
        self._serving_labels: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._undo: list = []
        self.server = None

    def set_serving(self, sessions, models) -> None:
        """Point the model-version gauge at the versions `models` (a LoadedModels) serves. It holds ids;
        the version numbers are looked up once per switch, not per batch."""
        ids = (models.sentiment_version_id, models.ner_version_id)
        if ids == self._serving_ids:
            return
        from sqlalchemy import select

        from .schema import ModelVersion

        with self._lock:
            with sessions() as session:
                rows = session.execute(select(ModelVersion.task, ModelVersion.version)
                                       .where(ModelVersion.id.in_(ids))).all()
            for labels in self._serving_labels:  # 0, not removed: in multiprocess mode removal is not seen
                self.serving.labels(*labels).set(0)
            self._serving_labels = [(row.task, str(row.version)) for row in rows]
            for labels in self._serving_labels:
                self.serving.labels(*labels).set(1)
            self._serving_ids = ids

    def connect(self, app) -> None:
        from celery import signals

        def ours(sender) -> bool:
            return getattr(sender, "name", None) == ANALYZE and getattr(sender, "app", None) is app

        def prerun(sender=None, task_id=None, **_):
            if ours(sender):
                self._started[task_id] = time.perf_counter()

        def postrun(sender=None, task_id=None, retval=None, state=None, **_):
            if not ours(sender):
                return
            started = self._started.pop(task_id, None)
            outcome = {"SUCCESS": "done", "RETRY": "retry"}.get(state, "error")
            if started is not None:
                self.batch_seconds.labels(outcome).observe(time.perf_counter() - started)
            if state == "SUCCESS":
                self.batches.inc()
                self.analysed.inc(retval if isinstance(retval, int) else 0)

        for signal, receiver in ((signals.task_prerun, prerun), (signals.task_postrun, postrun)):
            signal.connect(receiver, weak=False)
            self._undo.append((signal, receiver))

    def close(self) -> None:
        """Disconnect and stop serving (tests install several in one process)."""
        global _active
        for signal, receiver in self._undo:
            signal.disconnect(receiver)
        self._undo.clear()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if _active is self:
            _active = None


class QueueDepth:
    """reviews_queue_depth{queue}: messages waiting, read from the broker at each scrape. Redis only
    (LLEN of the queue's list); RabbitMQ reports its queues through its own Prometheus plugin."""

    def __init__(self, broker_url: str, queues: list[str]):
        self.url, self.queues = broker_url, queues
        self._client = None
        self._failing = False

    def describe(self):  # without it, registering would call collect(), and reach the broker, at start
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("reviews_queue_depth", "Messages waiting in each queue", labels=["queue"])

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("reviews_queue_depth", "Messages waiting in each queue", labels=["queue"])
        if self.url.startswith(("redis://", "rediss://")):
            import redis

            try:
                if self._client is None:
                    self._client = redis.Redis.from_url(self.url, socket_timeout=3, socket_connect_timeout=3)
                pipe = self._client.pipeline()
                for queue in self.queues:  # kombu keeps priority 0, the only one we send, under the bare name
                    pipe.llen(queue)
                for queue, depth in zip(self.queues, pipe.execute()):
                    family.add_metric([queue], depth)
                self._failing = False
            except redis.RedisError as exc:
                _warn_once(self, "queue depth", exc)
        yield family


class RejectedLines:
    """reviews_rejected_lines_total: input lines rejected at ingest, which runs in the CLI, not here;
    read from the database (SUM(jobs.rejected)) at each scrape, so every worker shows the same total."""

    def __init__(self, database_url: str):
        self.url = database_url
        self._engine = None
        self._failing = False

    def describe(self):
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("reviews_rejected_lines", "Input lines rejected at ingest, all jobs")

    def collect(self):
        from prometheus_client.core import CounterMetricFamily
        from sqlalchemy import create_engine, func, select
        from sqlalchemy.pool import NullPool

        from .schema import Job

        family = CounterMetricFamily("reviews_rejected_lines", "Input lines rejected at ingest, all jobs")
        try:
            if self._engine is None:
                # No pool: a scrape every 15 s needs no idle connection, and a prefork parent must not
                # hold one that its children would inherit.
                args = {"connect_timeout": 3} if self.url.startswith("postgresql") else {}
                self._engine = create_engine(self.url, poolclass=NullPool, connect_args=args)
            with self._engine.connect() as conn:
                family.add_metric([], conn.scalar(select(func.coalesce(func.sum(Job.rejected), 0))))
            self._failing = False
        except Exception as exc:  # a scrape must still answer with the other metrics
            _warn_once(self, "rejected lines", exc)
        yield family


def _warn_once(collector, what: str, exc: Exception) -> None:
    if not collector._failing:
        log.warning("metrics: cannot read %s: %s", what, str(exc).strip().splitlines()[0] if str(exc) else exc)
    collector._failing = True


def install(app, settings, *, pool: str = "solo", serve: bool = True) -> Metrics:
    """Count this app's batches in this process (and, for prefork, its children), and serve them on
    settings.metrics_port when `serve` (bound now: a port in use stops the worker before it loads models)."""
    global _active
    from celery import signals
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    multiprocess = pool == "prefork"
    if multiprocess and not os.environ.get(MULTIPROC_ENV):
        raise RuntimeError("the prefork pool needs prepare_multiprocess() before prometheus_client is imported")
    # Multiprocess: the metrics write to files (registry None) and the parent serves their sum.
    metrics = Metrics(None if multiprocess else CollectorRegistry())
    if multiprocess:
        from prometheus_client.multiprocess import (
            MultiProcessCollector,
            mark_process_dead,
        )

        metrics.exposed = CollectorRegistry()
        MultiProcessCollector(metrics.exposed)
        # A child's "live" gauge values go with it (one killed outright leaves them until restart).
        def on_exit(**_):
            mark_process_dead(os.getpid())

        signals.worker_process_shutdown.connect(on_exit, weak=False)
        metrics._undo.append((signals.worker_process_shutdown, on_exit))
    else:
        ProcessCollector(registry=metrics.exposed)  # the one process that holds the models: memory, CPU
    metrics.exposed.register(QueueDepth(settings.broker_url, [q.name for q in app.conf.task_queues]))
    metrics.exposed.register(RejectedLines(settings.database_url))
    metrics.connect(app)
    _active = metrics
    if serve and settings.metrics_port:
        try:
            metrics.server, _ = start_http_server(settings.metrics_port, registry=metrics.exposed)
        except OSError as exc:
            metrics.close()
            raise OSError(exc.errno, f"metrics port {settings.metrics_port}: {exc.strerror or exc}") from exc
    return metrics


def serving_at_start(app, pool: str) -> None:
    """Set the model-version gauge as soon as the models are loaded, not at the first batch: now (solo,
    threads: call after the warm-up), or in each prefork child after it loaded its own (connect after
    tasks.WorkerContext.warm_up_quietly, as receivers run in the order they were connected)."""
    if _active is None:
        return
    metrics = _active

    def at_start(**_):
        try:
            resources = app.reviews_context.resources
            metrics.set_serving(resources.sessions, resources.models())
        except Exception:  # loading failed: warm_up_quietly logged it, and the first batch will say more
            log.debug("model-version gauge not set at start", exc_info=True)

    if pool == "prefork":
        from celery import signals

        signals.worker_process_init.connect(at_start, weak=False)
        metrics._undo.append((signals.worker_process_init, at_start))
    else:
        at_start()


# Called from batches.py; nothing happens until install() ran in this process (or its parent).

def review_failed(exc: BaseException) -> None:
    if _active is not None:
        _active.failed.labels(type(exc).__name__).inc()  # the type, never the message: bounded label values


def retried(kind: str) -> None:
    if _active is not None:
        _active.retries.labels(kind).inc()


def models_serving(sessions, models) -> None:
    if _active is not None:
        try:
            _active.set_serving(sessions, models)
        except Exception as exc:  # a metric must never fail a batch
            log.warning("model-version gauge not updated: %s: %s", type(exc).__name__, exc)
