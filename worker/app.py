"""The Celery app: queues, routes, the settings an ML worker needs, and the beat schedule."""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from .config import Settings


def configure(app: Celery, settings: Settings) -> Celery:
    """(Re)apply settings; the CLI calls this with its flags, tests with their own settings."""
    minute, hour, day, month, weekday = settings.retrain_schedule.split()
    app.conf.update(
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
        beat_schedule={
            "retrain": {
                "task": "reviews.scheduled_retrain",
                "schedule": crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month,
                                    day_of_week=weekday),
                "options": {"queue": "training"},
            }
        },
    )
    app.conf.reviews_settings = settings
    return app


app = configure(Celery("reviews", include=["worker.tasks"]), Settings.from_env())
