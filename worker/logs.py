"""Log lines that say which job and batch they are about, as text or as one JSON object a line.

The ids live in a context variable set around a batch: by `reviews worker` from Celery's
task_prerun/task_postrun signals (so Celery's own "retry in"/"succeeded" lines carry them too), and by
`batches.run_to_end` for `reviews run`. A filter on the handler copies them onto every record, so
code that logs (batches.py, the engine) never passes them along.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone

ANALYZE = "reviews.analyze"
FORMATS = ("text", "json")
# Celery's own layout, with the ids in front of the message.
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(batch_prefix)s%(message)s"


@dataclass(frozen=True)
class Ids:
    job_id: int | None = None
    batch_id: str | None = None
    task_id: str | None = None

    def prefix(self) -> str:
        parts = [] if self.job_id is None else [f"job {self.job_id}"]
        if self.batch_id:
            parts.append(f"batch {self.batch_id[:8]}")  # a uuid's first 8 digits are enough to grep for
        elif self.task_id:
            parts.append(f"task {self.task_id[:8]}")
        return f"[{' '.join(parts)}] " if parts else ""


_current: ContextVar[Ids | None] = ContextVar("reviews_log_ids", default=None)


def current() -> Ids | None:
    return _current.get()


@contextmanager
def batch(job_id: int | None, batch_id: str, task_id: str | None = None):
    """Every line logged inside carries these ids."""
    token = _current.set(Ids(job_id, str(batch_id), task_id))
    try:
        yield
    finally:
        _current.reset(token)


class ContextFilter(logging.Filter):
    """Puts job_id, batch_id, task_id and batch_prefix on each record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _current.get() or Ids()
        record.job_id, record.batch_id, record.task_id = ids.job_id, ids.batch_id, ids.task_id
        record.batch_prefix = ids.prefix()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, pid, and the ids known."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # tells prefork children apart
        }
        for key in ("job_id", "batch_id", "task_id"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def make_handler(log_format: str, stream=None) -> logging.Handler:
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler._reviews = True  # type: ignore[attr-defined]  # ours: replaced, never doubled, on a second call
    return handler


def configure(log_format: str, level: int | str, stream=None) -> logging.Handler:
    """The root logger writes through one handler of ours (to stderr), at `level`."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_reviews", False)]:
        root.removeHandler(old)
    handler = make_handler(log_format, stream)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if log_format == "json":
        logging.captureWarnings(True)  # a library's warning would otherwise be a bare line among the JSON
    return handler


def install(app, log_format: str, loglevel: int | str, stream=None) -> Callable[[], None]:
    """Logging for `reviews worker`: configure the root logger now (model loading logs too), keep Celery
    from adding its own handler, and put each task's ids in the context. Returns an undo (for tests)."""
    from celery import signals

    root = logging.getLogger()
    previous_level = root.level
    configure(log_format, loglevel, stream)

    def setup_logging(loglevel=None, **_):
        # Any receiver of this signal makes Celery leave logging alone, in the parent and each child.
        configure(log_format, loglevel or root.level, stream)

    def prerun(sender=None, task_id=None, args=None, kwargs=None, **_):
        if getattr(sender, "app", None) is not app:
            return
        if sender.name == ANALYZE:  # analyze(job_id, review_ids): the task id names the batch
            job = kwargs["job_id"] if kwargs and "job_id" in kwargs else (args[0] if args else None)
            _current.set(Ids(job, task_id, task_id))
        else:
            _current.set(Ids(task_id=task_id))

    def postrun(sender=None, **_):
        if getattr(sender, "app", None) is app:
            _current.set(None)  # set, not reset: the token would belong to prerun's call

    receivers = [(signals.setup_logging, setup_logging), (signals.task_prerun, prerun),
                 (signals.task_postrun, postrun)]
    for signal, receiver in receivers:
        signal.connect(receiver, weak=False)

    def undo() -> None:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
        for old in [h for h in root.handlers if getattr(h, "_reviews", False)]:
            root.removeHandler(old)
        root.setLevel(previous_level)
        logging.captureWarnings(False)

    return undo
