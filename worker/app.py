"""The Celery app factory: `create_app(settings)` builds an app with its queues, routes, the settings
an ML worker needs, the beat schedule and the tasks. The CLI calls it once per command; nothing
reads settings from a global."""

from __future__ import annotations

import logging

from celery import Celery, Task, bootsteps
from celery.schedules import crontab
from kombu import Exchange, Queue

from .config import Settings, redact_url

log = logging.getLogger(__name__)


class BrokerError(LookupError):
    """The broker is unreachable (a LookupError so the CLI shows it as one clear line)."""


def broker_kind(url: str) -> str:
    """'redis', 'rabbitmq' or 'other' (memory:// in tests, say), by the URL's scheme."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return "redis"
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "rabbitmq"
    return "other"


QUEUES = ("inference", "training")


def broker_config(settings: Settings) -> dict:
    """The settings that differ between brokers: queues, transport options, result backend."""
    kind = broker_kind(settings.broker_url)
    if kind == "redis":
        return dict(
            task_queues=[Queue(name) for name in QUEUES],
            # Redis cannot tell that a worker died: it hands an unacked message to another worker only
            # after this many seconds, so it must exceed the longest batch (and retrain).
            broker_transport_options={"visibility_timeout": settings.visibility_timeout},
            # The results of `reviews retrain --wait` live in the same Redis.
            result_backend=settings.result_backend or settings.broker_url,
        )
    if kind == "rabbitmq":
        return dict(
            # Quorum queues: replicated, durable, and a message in hand comes back the moment its
            # worker's connection closes (SIGKILL included), with no visibility timeout to wait out.
            # Topic exchanges, not direct: Celery's native delayed delivery (how `self.retry(countdown=)`
            # works on quorum queues, which have no per-message TTL for ETA tasks) routes a delayed
            # message back to its queue through a topic exchange; on a direct one the ETA message would
            # sit unacked in the worker instead.
            task_queues=[Queue(name, Exchange(name, type="topic"), routing_key=name,
                               queue_arguments={"x-queue-type": "quorum"}) for name in QUEUES],
            # Quorum queues reject global QoS; Celery sees them and switches to per-consumer prefetch
            # (the default, spelled out), and sets up the delayed-delivery exchanges as it starts.
            worker_detect_quorum_queues=True,
            broker_native_delayed_delivery_queue_type="quorum",
            # Publisher confirms: a send returns once RabbitMQ has the message (written to the quorum
            # log), so an enqueue that reported its batches sent cannot have lost one in a socket buffer.
            broker_transport_options={"confirm_publish": True},
            # rpc://: the outcome of `reviews retrain --wait` comes back as a message to the command
            # that waits for it; nothing else to run. REVIEWS_RESULT_BACKEND (redis://, db+postgresql://)
            # where outcomes must outlive that command.
            result_backend=settings.result_backend or "rpc://",
        )
    return dict(task_queues=[Queue(name) for name in QUEUES], result_backend=settings.result_backend or None)


def celery_config(settings: Settings) -> dict:
    minute, hour, day, month, weekday = settings.retrain_schedule.split()
    return dict(
        broker_url=settings.broker_url,
        # JSON only: a pickled message can run code on the worker that reads it.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # progress lives in the database; only retrain keeps its outcome
        result_expires=7 * 24 * 3600,
        # A batch is acknowledged after it is written, and given back if the worker dies mid-batch.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time: a batch takes seconds, and prefetched ones would wait behind it.
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
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
    ) | broker_config(settings)


class ReviewsTask(Task):
    """The tasks' base class. On RabbitMQ a countdown is served by Celery's native delayed delivery,
    which counts whole seconds and fails on a countdown under one (the retry would be rejected and
    its batch lost): such a countdown waits one second instead."""

    def apply_async(self, args=None, kwargs=None, task_id=None, producer=None, link=None, link_error=None,
                    shadow=None, **options):
        countdown = options.get("countdown")
        if countdown and 0 < countdown < 1 and broker_kind(self.app.conf.broker_url) == "rabbitmq":
            options["countdown"] = 1
        return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)


class RabbitMQSetup(bootsteps.StartStopStep):
    """A worker step for RabbitMQ, run before the worker consumes.

    It declares every queue of the app, not only those this worker consumes: as it starts, Celery
    binds each of them to the delayed-delivery exchange, which fails for a queue (and exchange) no one
    has declared yet, such as 'training' on a fleet that has only inference workers so far.

    And it warns a trainer on the solo pool: that pool runs a task in the thread that would send the
    connection's heartbeats, so RabbitMQ drops the connection of a worker busy with one task for more
    than about two heartbeat intervals (60 s each by default) and delivers the task again."""

    def start(self, worker) -> None:
        app = worker.app
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=3)
                for queue in app.amqp.queues.values():
                    queue.bind(conn.default_channel).declare()
        except Exception as exc:  # the consumer reconnects on its own; say why retries may be slow
            log.warning("could not declare the queues on %s: %s", redact_url(app.conf.broker_url), exc)
        consumed = set(app.amqp.queues.consume_from or app.amqp.queues)
        if worker.pool_cls.__module__.endswith(".solo") and "training" in consumed:
            log.warning("on RabbitMQ a retrain longer than two heartbeats (about 2 minutes) blocks the solo "
                        "pool's heartbeats: the broker drops the connection and delivers the retrain again. "
                        "Start trainers with --pool threads")


def create_app(settings: Settings) -> Celery:
    from . import tasks

    app = Celery("reviews", set_as_current=False, task_cls=ReviewsTask)
    app.conf.update(celery_config(settings))
    if broker_kind(settings.broker_url) == "rabbitmq":
        app.steps["worker"].add(RabbitMQSetup)
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
