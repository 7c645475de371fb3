"""Safety settings: JSON-only messages, secrets kept out of output."""

import json

import pytest

from worker.app import create_app
from worker.config import Settings, redact_url


def test_celery_accepts_json_only():
    app = create_app(Settings.from_env())
    assert app.conf.task_serializer == "json" and app.conf.result_serializer == "json"
    assert list(app.conf.accept_content) == ["json"]
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1


@pytest.mark.redis
def test_a_pickled_message_is_never_executed(redis_url, migrated_pg, tiny_models):
    """A message in the inference queue with a pickle body is refused by the worker, not run."""
    import base64
    import pickle
    import time
    import uuid

    import redis

    from conftest import make_settings, running_worker
    from worker.db import session_factory
    from worker.schema import Review, SentimentResult

    settings = make_settings(migrated_pg, tiny_models)
    with session_factory(settings.database_url)() as s:
        review = Review(external_id="p1", text="a stored review", text_sha256="0" * 64)
        s.add(review)
        s.commit()
        review_id = review.id
    # The pickle names a real review: had the task run, that review would have a result.
    body = base64.b64encode(pickle.dumps(([None, [review_id]], {}, {}))).decode()
    task_id = str(uuid.uuid4())
    message = {
        "body": body, "content-encoding": "binary", "content-type": "application/x-python-serialize",
        "headers": {"lang": "py", "task": "reviews.analyze", "id": task_id, "root_id": task_id, "retries": 0,
                    "argsrepr": "", "kwargsrepr": "", "origin": "test"},
        "properties": {"correlation_id": task_id, "delivery_mode": 2, "delivery_info": {"exchange": "",
                       "routing_key": "inference"}, "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    }
    client = redis.Redis.from_url(redis_url)
    client.lpush("inference", json.dumps(message))
    with running_worker(settings):
        deadline = time.monotonic() + 10
        while client.llen("inference") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    assert client.llen("inference") == 0  # taken off the queue...
    with session_factory(settings.database_url)() as s:
        assert s.query(SentimentResult).count() == 0  # ...and never run


def test_passwords_are_redacted():
    assert redact_url("postgresql+psycopg://app:s3cret@db:5432/reviews") == "postgresql+psycopg://app:***@db:5432/reviews"
    assert redact_url("redis://:pw@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
