"""Thin Celery tasks: unpack arguments, call the pipeline, nothing else."""

from __future__ import annotations

from celery.signals import worker_process_init

from . import pipeline
from .app import app
from .runtime import Runtime

_runtime: Runtime | None = None  # one per worker process: the models are loaded once


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(app.conf.reviews_settings)
    return _runtime


@worker_process_init.connect
def _fresh_runtime(**_):
    # A forked child must not share its parent's database connections.
    global _runtime
    _runtime = None


@app.task(name="reviews.analyze", bind=True, max_retries=None)
def analyze(self, job_id: int | None, review_ids: list[int]) -> int:
    rt = runtime()
    return pipeline.analyze_batch(rt.sessions, rt.models(), job_id, review_ids)


def enqueue_batch(job_id: int, review_ids: list[int]) -> None:
    analyze.apply_async(args=[job_id, review_ids], queue="inference")


def check_broker() -> None:
    """Fail fast, with the URL (password hidden), when the broker cannot be reached."""
    from .config import redact_url

    url = app.conf.broker_url
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        raise BrokerError(f"cannot reach the broker {redact_url(url)}: {exc}") from exc


class BrokerError(LookupError):
    """The broker is unreachable (a LookupError so the CLI shows it as one clear line)."""
