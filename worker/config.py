"""Settings in one place: every knob is a REVIEWS_* environment variable with a default that works on
one machine (SQLite, local Redis, the bundled models), checked here, once, with its range.

A bad value stops any command with one line that names the variable and what it accepts
(`SettingsError`), whether it came from the environment or from a CLI flag.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .nlp.options import EngineOptions

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_MODELS = PACKAGE_DIR / "models"
BUNDLED_SENTIMENT = BUNDLED_MODELS / "sentiment"
BUNDLED_NER = BUNDLED_MODELS / "ner"


class SettingsError(ValueError):
    """A setting outside what it accepts; the message is one line naming the variable."""


def home_dir() -> Path:
    """REVIEWS_HOME: the default SQLite file, model versions, the beat schedule, caches."""
    return Path(os.environ.get("REVIEWS_HOME", Path.home() / ".local" / "share" / "reviews"))


# Accepted values: (lowest, highest) for numbers, a tuple of words for choices. A setting missing here
# takes any value of its type.
LIMITS: dict[str, tuple] = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16", "fp16", "int8"),
    "batch_size": (1, 10_000),
    "token_budget": (0, 1_048_576),
    "max_length": (8, 8192),
    "window_stride": (0, 4096),
    "max_review_chars": (1, 100_000_000),
    "max_line_bytes": (64, 1_073_741_824),
    "threads": (0, 1024),
    "visibility_timeout": (1, 30 * 24 * 3600),
    "task_max_retries": (0, 100),
    "db_max_retries": (0, 1000),
    "retry_delay": (0.0, 3600.0),
    "ingest_lease": (5, 24 * 3600),
    "retrain_min_labels": (0, 100_000_000),
    "promote_tolerance": (0.0, 1.0),
    "min_entity_score": (0.0, 1.0),
    "rollup_fold_seconds": (0.0, 24 * 3600.0),
    "metrics_port": (0, 65535),
    "log_format": ("text", "json"),
}


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    broker_url: str = "redis://localhost:6379/0"
    result_backend: str = ""
    model_dir: str = ""
    sentiment_model: str = str(BUNDLED_SENTIMENT)
    ner_model: str = str(BUNDLED_NER)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8 (CPU)
    batch_size: int = 64  # reviews per Celery message
    token_budget: int = 0  # padded tokens per forward pass; 0: 2048 on CPU, 16384 on CUDA
    max_length: int = 512  # tokens per window, model limit
    window_stride: int = 128  # overlap between windows of long reviews
    max_review_chars: int = 100_000  # longer reviews are cut to this before analysis
    max_line_bytes: int = 1_000_000  # an input line longer than this is rejected
    threads: int = 0  # torch intra-op threads and the tokenizer's pool (RAYON_NUM_THREADS); 0 = their defaults
    visibility_timeout: int = 3600  # seconds before Redis redelivers an unacked message
    task_max_retries: int = 3  # a failing batch is retried this often, then its reviews run one by one
    db_max_retries: int = 12  # with retry_delay 2: waits of 2, 4, ... 60 s, about 8 minutes in all
    retry_delay: float = 2.0  # seconds before the first retry of a batch; doubles each time
    ingest_lease: int = 120  # an ingest silent for this long is dead: `reviews resume` may take its job over
    retrain_schedule: str = "0 3 * * *"  # cron: minute hour day month weekday
    retrain_min_labels: int = 200
    promote_tolerance: float = 0.005
    min_entity_score: float = 0.0  # entities the NER model scores below this are not stored
    rollup_fold_seconds: float = 5.0  # a worker applies pending rollup deltas at most this often (rollups.py)
    metrics_port: int = 0  # Prometheus metrics of `reviews worker` on this port; 0: off
    log_format: str = "text"  # text | json (one object a line, with job and batch ids)
    languages: str = "en"  # languages analysed (ISO 639-1, comma-separated); others are skipped; "all": no guard

    def __post_init__(self) -> None:
        data_dir = home_dir()
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'reviews.db'}")
        if not self.model_dir:
            object.__setattr__(self, "model_dir", str(data_dir / "models"))
        for name, limits in LIMITS.items():
            _check(name, getattr(self, name), limits)
        _check_database_url(self.database_url)
        if "://" not in self.broker_url:
            raise SettingsError(f"REVIEWS_BROKER_URL={self.broker_url!r}: expected a URL such as "
                                "redis://localhost:6379/0 or amqp://guest:guest@localhost:5672//")
        if len(self.retrain_schedule.split()) != 5:
            raise SettingsError(f"REVIEWS_RETRAIN_SCHEDULE={self.retrain_schedule!r}: expected a cron line of 5 "
                                "fields (minute hour day month weekday)")
        if self.languages.strip().lower() != "all" and not all(
                re.fullmatch("[a-z]{2,3}", code.strip().lower()) for code in self.languages.split(",")):
            raise SettingsError(f"REVIEWS_LANGUAGES={self.languages!r}: expected ISO 639-1 codes separated by "
                                "commas (en,de) or all")
        if self.window_stride >= self.max_length - 2:
            raise SettingsError(f"REVIEWS_WINDOW_STRIDE={self.window_stride} must be smaller than "
                                f"REVIEWS_MAX_LENGTH - 2 ({self.max_length - 2})")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> "Settings":
        """Read REVIEWS_<FIELD> variables; explicit keyword overrides (CLI flags) win."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in fields(cls):
            raw = env.get(f"REVIEWS_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = {"int": int, "float": float}.get(str(f.type), str)
            try:
                values[f.name] = kind(raw.strip()) if kind is not str else raw
            except ValueError:
                raise SettingsError(f"REVIEWS_{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def engine_options(self) -> EngineOptions:
        """The engine as serving runs it: the worker, `reviews run`, `reviews evaluate`, the retrain
        gate and the benchmarks all take their options from here."""
        return EngineOptions(device=self.device, precision=self.precision, token_budget=self.token_budget,
                             max_length=self.max_length, stride=self.window_stride, max_chars=self.max_review_chars)


def _check(name: str, value, limits: tuple) -> None:
    var = f"REVIEWS_{name.upper()}"
    if isinstance(limits[0], str):
        if value not in limits:
            raise SettingsError(f"{var}={value!r}: must be one of {', '.join(limits)}")
        return
    low, high = limits
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not low <= value <= high:
        raise SettingsError(f"{var}={value!r}: must be a number from {low} to {high}")


def _check_database_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise SettingsError(f"REVIEWS_DATABASE_URL={redact_url(url)!r} is not a database URL; expected "
                            "sqlite:///path/to/file.db or postgresql+psycopg://user@host/db") from None
    if url.startswith("postgres:"):
        raise SettingsError("REVIEWS_DATABASE_URL: write postgresql+psycopg:// instead of postgres:// "
                            "(SQLAlchemy does not accept the short scheme)")
    if backend not in ("sqlite", "postgresql"):
        raise SettingsError(f"REVIEWS_DATABASE_URL={redact_url(url)!r}: {backend} is not supported; "
                            "use PostgreSQL (postgresql+psycopg://) or SQLite (sqlite:///)")


def redact_url(url: str) -> str:
    """Hide the password in a database or broker URL before it reaches a log or a terminal."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an unparsable URL (a bad port, say) may still hold a secret: show none of it
        return "<unparsable URL>"
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
