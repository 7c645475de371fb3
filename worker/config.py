"""Settings in one place: every knob is a REVIEWS_* environment variable with a default that works on
one machine (SQLite, local Redis, the bundled models)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_MODELS = PACKAGE_DIR / "models"
BUNDLED_SENTIMENT = BUNDLED_MODELS / "sentiment"
BUNDLED_NER = BUNDLED_MODELS / "ner"


def _default_data_dir() -> Path:
    return Path(os.environ.get("REVIEWS_HOME", Path.home() / ".local" / "share" / "reviews"))


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
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    visibility_timeout: int = 3600  # seconds before Redis redelivers an unacked message
    task_max_retries: int = 3  # a failing batch is retried this often, then its reviews run one by one
    db_max_retries: int = 12  # with retry_delay 2: waits of 2, 4, ... 60 s, about 8 minutes in all
    retry_delay: float = 2.0  # seconds before the first retry of a batch; doubles each time
    retrain_schedule: str = "0 3 * * *"  # cron: minute hour day month weekday
    retrain_min_labels: int = 200
    promote_tolerance: float = 0.005

    def __post_init__(self) -> None:
        data_dir = _default_data_dir()
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'reviews.db'}")
        if not self.model_dir:
            object.__setattr__(self, "model_dir", str(data_dir / "models"))
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"REVIEWS_DEVICE must be auto, cpu or cuda, not {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16", "int8"):
            raise ValueError(f"REVIEWS_PRECISION must be auto, fp32, bf16, fp16 or int8, not {self.precision!r}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> "Settings":
        """Read REVIEWS_<FIELD> variables; explicit keyword overrides (CLI flags) win."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in fields(cls):
            raw = env.get(f"REVIEWS_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = f.type if isinstance(f.type, type) else {"int": int, "float": float}.get(f.type, str)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"REVIEWS_{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def redact_url(url: str) -> str:
    """Hide the password in a database or broker URL before it reaches a log or a terminal."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
