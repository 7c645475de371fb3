"""Thin Celery tasks: unpack arguments, call the pipeline, nothing else."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init
from sqlalchemy.exc import InterfaceError, OperationalError

from . import pipeline
from .app import app
from .nlp.types import ModelLoadError
from .runtime import Runtime

log = logging.getLogger(__name__)

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


def backoff(retries: int, base: float) -> float:
    """Seconds before retry number `retries` + 1: base, 2 base, 4 base, ... capped at a minute."""
    return min(60.0, base * 2**retries)


@app.task(name="reviews.analyze", bind=True, max_retries=None)
def analyze(self, job_id: int | None, review_ids: list[int]) -> int:
    rt = runtime()
    settings = rt.settings
    try:
        return pipeline.analyze_batch(rt.sessions, rt.models(), job_id, review_ids)
    except (OperationalError, InterfaceError) as exc:
        # The database is away: the whole batch waits for it, for up to db_retry_seconds in all.
        if self.request.retries >= settings.db_max_retries:
            raise
        log.warning("database unavailable, batch of %d retried in %ss: %s", len(review_ids),
                    backoff(self.request.retries, settings.retry_delay), exc)
        raise self.retry(exc=exc, countdown=backoff(self.request.retries, settings.retry_delay))
    except ModelLoadError:
        raise  # a broken model fails every batch the same way: retrying or isolating cannot help
    except Exception as exc:
        if self.request.retries < settings.task_max_retries:
            raise self.retry(exc=exc, countdown=backoff(self.request.retries, settings.retry_delay))
        log.error("batch of %d failed %d times (%s): isolating its reviews", len(review_ids),
                  self.request.retries + 1, exc)
        written, _failed = pipeline.analyze_isolated(rt.sessions, rt.models(), job_id, review_ids)
        return written


@app.task(name="reviews.retrain", ignore_result=False)
def retrain(task: str, min_new_labels: int = 0, **train_options) -> dict:
    """Runs on a trainer (queue 'training'); the outcome is kept in the result backend for --wait."""
    from . import retrain as retraining

    rt = runtime()
    return retraining.retrain(rt.settings, rt.sessions, task, min_new_labels, **train_options).as_dict()


@app.task(name="reviews.scheduled_retrain")
def scheduled_retrain() -> list[dict]:
    """The beat schedule's entry: retrain each task that received enough labels since its active version."""
    from . import retrain as retraining

    rt = runtime()
    return [retraining.retrain(rt.settings, rt.sessions, task, rt.settings.retrain_min_labels).as_dict()
            for task in ("sentiment", "ner")]


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
