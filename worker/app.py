"""The Celery app factory: `create_app(settings)` builds an app with its queues, routes, the settings
an ML worker needs, the beat schedule and the tasks. The CLI calls it once per command; nothing
reads settings from a global."""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from .config import Settings, redact_url


class BrokerError(LookupError):
    """The broker is unreachable (a LookupError so the CLI shows it as one clear line)."""


def celery_config(settings: Settings) -> dict:
    minute, hour, day, month, weekday = settings.retrain_schedule.split()
    return dict(
        broker_url=settings.broker_url,
        # JSON only: a pickled message can run code on the worker that reads it.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # progress lives in the database; only retrain keeps its outcome
        result_backend=settings.result_backend or (
            settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://")) else None),
        result_expires=7 * 24 * 3600,
        # A batch is acknowledged after it is written, and given back if the worker dies mid-batch.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time: a batch takes seconds, and prefetched ones would wait behind it.
        worker_prefetch_multiplier=1,
        # Redis redelivers an unacked message after this long; it must exceed the longest batch.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_queues=[Queue("inference"), Queue("training")],
        task_default_queue="inference",
        task_routes={"reviews.analyze": {"queue": "inference"}, "reviews.retrain": {"queue": "training"},
                     "reviews.scheduled_retrain": {"queue": "training"}},
        worker_hijack_root_logger=False,
        # A prefork child loads its models as it starts (tasks.WorkerContext.warm_up_quietly): seconds,
        # with int8 kernels to compile, where Celery gives a child 4 s before it counts it as failed.
        worker_proc_alive_timeout=600,
        # Task events, sent ones included, so that Flower and `celery events` see queued and running work.
        worker_send_task_events=True,
        task_send_sent_event=True,
        beat_schedule={
            "retrain": {
                "task": "reviews.scheduled_retrain",
                "schedule": crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month,
                                    day_of_week=weekday),
                "options": {"queue": "training"},
            }
        },
    )


def create_app(settings: Settings) -> Celery:
    from . import tasks

    app = Celery("reviews", set_as_current=False)
    app.conf.update(celery_config(settings))
    tasks.register(app, tasks.WorkerContext(settings))
    return app


def batch_sender(app: Celery):
    """send(job_id, review_ids): one message on queue 'inference' (ids only; the texts stay in the
    database)."""

    def send(job_id: int, review_ids: list[int]) -> None:
        app.send_task("reviews.analyze", args=[job_id, review_ids], queue="inference")

    return send


def check_broker(app: Celery) -> None:
    """Fail fast, with the URL (password hidden), when the broker cannot be reached."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        raise BrokerError(f"cannot reach the broker {redact_url(app.conf.broker_url)}: {exc}") from exc


def consumers(app: Celery, queue: str = "inference", timeout: float = 2.0) -> int | None:
    """How many workers consume `queue` right now, by asking them (Celery's remote control); None
    when the broker cannot be asked."""
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:
        return None
    return sum(any(q.get("name") == queue for q in queues) for queues in replies.values())
