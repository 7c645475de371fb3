"""A page's query string, checked: which model versions, which days, which label, which page. A bad
value is a BadRequest whose message the page shows (HTTP 400), never a database error."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Mapping, Sequence

LABELS = ("PER", "ORG", "LOC", "MISC")
# A page opens on the last days with data: a rollup row per day and product (or entity) makes "all
# time" on a large database a scan of every row; a longer range is one click away. Entities open on a
# week: a week of a long-tailed vocabulary is already tens of thousands of rollup rows at 10M reviews
# (bench/dashboard_scale.py: 7 days ~60 ms, 90 days ~360 ms there).
DEFAULT_DAYS = 90
ENTITY_DAYS = 7
MAX_PAGE = 10_000


class BadRequest(ValueError):
    """A query parameter outside what the page accepts; the message names it."""


@dataclass(frozen=True)
class Version:
    id: int
    task: str
    version: int
    status: str
    promoted_at: datetime | None


@dataclass(frozen=True)
class DayRange:
    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def as_query(self) -> dict[str, str]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat()}


def choose_version(versions: Sequence[Version], task: str, wanted: str | None) -> Version | None:
    """The version named in the query (its number), else the active one, else the newest: a database
    whose active version has no results yet still shows what an older one found."""
    if wanted:
        number = _int(wanted, task)
        for v in versions:
            if v.version == number:
                return v
        raise BadRequest(f"{task}={wanted}: no {task} model version {number}")
    active = [v for v in versions if v.status == "active"]
    if active:
        return active[0]
    return max(versions, key=lambda v: v.version) if versions else None


def day_range(query: Mapping[str, str], bounds: tuple[date | None, date | None],
              default_days: int = DEFAULT_DAYS) -> DayRange | None:
    """The days asked for (`from`, `to`, ISO dates, both included), or the last `default_days` days
    with data. None when there is no data and no range was asked for."""
    lo, hi = bounds
    start, end = _date(query, "from"), _date(query, "to")
    if start is None and end is None:
        if hi is None:
            return None
        end = hi
        start = max(lo or hi, hi - timedelta(days=default_days - 1))
    elif start is None:
        start = min(lo or end, end)
    elif end is None:
        end = max(hi or start, start)
    if start > end:
        raise BadRequest(f"from={start} is after to={end}")
    return DayRange(start, end)


def label(query: Mapping[str, str]) -> str | None:
    value = (query.get("label") or "").strip().upper()
    if not value:
        return None
    if value not in LABELS:
        raise BadRequest(f"label={query.get('label')}: must be one of {', '.join(LABELS)}")
    return value


def page(query: Mapping[str, str]) -> int:
    raw = query.get("page")
    if not raw:
        return 1
    n = _int(raw, "page")
    if not 1 <= n <= MAX_PAGE:
        raise BadRequest(f"page={raw}: must be from 1 to {MAX_PAGE}")
    return n


def fraction(query: Mapping[str, str], name: str) -> float:
    raw = query.get(name)
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw}: not a number") from None
    if not 0.0 <= value <= 1.0:
        raise BadRequest(f"{name}={raw}: must be from 0 to 1")
    return value


def text(query: Mapping[str, str], name: str, required: bool = False) -> str | None:
    value = query.get(name)
    if required and not value:
        raise BadRequest(f"{name} is required")
    if value is not None and len(value) > 1000:
        raise BadRequest(f"{name}: longer than 1000 characters")
    return value


def _int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw}: not a whole number") from None


def _date(query: Mapping[str, str], name: str) -> date | None:
    raw = (query.get(name) or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw}: expected a date such as 2025-01-31") from None
