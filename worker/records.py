"""What one input line becomes: a `Record`, safe to store in PostgreSQL and SQLite and to export as
strict JSON, or a `Rejected` with its line number and a one-line reason naming the field.
`validate` decides; worker/inputs.py reads files into the objects it checks."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

KNOWN_FIELDS = ("id", "text", "product_id", "rating", "created_at")
MAX_DEPTH = 64  # nesting of objects and arrays; json.dumps recurses, so deeper could blow the stack
MAX_DIGITS = 1000  # in an integer: below Python's 4,300-digit int/str limit, so str() and json.dumps work
MAX_ID = 255  # characters in 'id' and 'product_id', the width of their columns
_UNSAFE = re.compile("[\x00\ud800-\udfff]")  # what PostgreSQL TEXT or UTF-8 cannot hold
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # float() would also take "inf", "1_0"


@dataclass(frozen=True)
class Record:
    line_no: int
    external_id: str
    text: str
    text_sha256: str
    product_id: str | None = None
    rating: float | None = None
    created_at: datetime | None = None  # aware, in UTC
    meta: dict[str, Any] = field(default_factory=dict)

@dataclass(frozen=True)
class Rejected:
    line_no: int
    reason: str
    raw: str

    def __post_init__(self) -> None:
        # Rejections are stored and printed, wherever they were made: storable and one line by construction.
        object.__setattr__(self, "reason", safe_raw(re.sub("[\r\n]+", " ", self.reason)))
        object.__setattr__(self, "raw", safe_raw(self.raw))

def safe_raw(s: str) -> str:
    """`s` storable as PostgreSQL TEXT and UTF-8: NUL shown as \\u0000, lone surrogates as U+FFFD."""
    return _UNSAFE.sub(lambda m: "\\u0000" if m.group() == "\x00" else "\ufffd", s) if isinstance(s, str) else s

def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

class BadNumber(Exception):
    """A number the parser met that storage cannot take: raised by _STRICT, and put in its place by _MARKING
    so that value_problem can name its field."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem

def validate(line_no: int, obj: dict[str, Any], raw: str, checked: bool = False) -> Record | Rejected:
    """Check one input object; unknown fields are kept as metadata.

    checked: `obj` comes from read_json_objects, which has looked at every value and key already.
    """

    def reject(reason: str) -> Rejected:
        return Rejected(line_no, reason, raw)

    if "text" not in obj:
        return reject("no 'text' field")
    problem = text_problem(obj["text"]) or (None if checked else value_problem(obj))
    if problem:
        return reject(problem)
    text = obj["text"]
    ext_id, problem = _identifier(obj, "id")
    if problem:
        return reject(problem)
    ext_id = ext_id or "h:" + sha256(text)[:32]  # content hash: the same text enqueued twice is one review
    product_id, problem = _identifier(obj, "product_id")  # too long is rejected, not cut: cut ids could collide
    if problem:
        return reject(problem)
    rating = obj.get("rating")
    if rating is not None:
        rating = _finite(rating)
        if rating is None:
            return reject(f"'rating' must be a finite number, got {_brief(obj['rating'])}")
    created_at = obj.get("created_at")
    if created_at is not None:
        created_at = _utc(created_at)
        if isinstance(created_at, str):
            return reject(created_at)
    meta = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    try:  # checked above already; this is the guarantee the JSON column and exports rely on
        json.dumps(meta, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return reject("extra fields cannot be stored as JSON")
    return Record(line_no, ext_id, text, sha256(text), product_id, rating, created_at, meta)

def text_problem(text: Any) -> str | None:
    if not isinstance(text, str):
        return f"'text' must be a string, got {_json_type(text)}"
    if not text.strip():
        return "'text' is empty"
    problem = string_problem(text)
    return f"'text' {problem}" if problem else None

def string_problem(s: str) -> str | None:
    if "\x00" in s:
        return "contains NUL characters"
    bad = _SURROGATE.search(s)  # json.loads turns an unpaired \ud800 escape into one; UTF-8 cannot encode it
    return f"contains an unpaired surrogate (\\u{ord(bad.group()):04x})" if bad else None

def value_problem(obj: dict[str, Any]) -> str | None:
    """The first value or key anywhere in `obj` that storage or strict JSON cannot take. Iterative: no recursion."""
    stack: list[tuple[Any, str, str, int]] = [(obj, "", "", 1)]  # value, path, top-level field, depth
    while stack:
        value, path, top, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                return f"{field_name(top)} is nested too deeply (more than {MAX_DEPTH} levels)"
            if isinstance(value, dict):
                for key in value:
                    problem = string_problem(key) if isinstance(key, str) else None
                    if problem:
                        return f"field name {field_name(key)} {problem}"
                children = [(v, f"{path}.{k}" if path else str(k), top or str(k), depth + 1) for k, v in value.items()]
            else:
                children = [(v, f"{path}[{i}]", top, depth + 1) for i, v in enumerate(value)]
            stack.extend(reversed(children))  # reversed: the first problem in file order is named
        elif isinstance(value, str):
            problem = string_problem(value)
            if problem:
                return f"{field_name(path)} {problem}"
        elif isinstance(value, BadNumber):
            return f"{field_name(path)} {value.problem}"
    return None  # other odd values, from callers that built `obj` themselves, fail validate's json.dumps

def _identifier(obj: dict[str, Any], key: str) -> tuple[str | None, str | None]:
    """(value as a string or None when absent or empty, problem)."""
    value = obj.get(key)
    if value is None or value == "":
        return None, None
    if isinstance(value, float):
        return None, f"'{key}' must be a string or an integer, got a decimal number ({value!r})"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"'{key}' must be a string or an integer, got {_json_type(value)}"
    value = str(value)  # safe: value_problem has refused integers over MAX_DIGITS digits
    if len(value) > MAX_ID:
        return None, f"'{key}' is longer than {MAX_ID} characters ({len(value):,})"
    return value, None

def _finite(value: Any) -> float | None:
    """`value` as a finite float, or None. Strings must look like a number: float() takes 'inf' and '1_0'."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not _NUMBER.fullmatch(value):
            return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer past 1e308
        return None
    return number if math.isfinite(number) else None

def _utc(value: Any) -> datetime | str:
    """An ISO 8601 date-time as an aware UTC datetime (naive is taken as UTC), or the reason it is not one."""
    if not isinstance(value, str):
        return f"'created_at' must be an ISO 8601 date-time string, got {_json_type(value)}"
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat does not know 'Z'
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return f"'created_at' is not an ISO 8601 date-time: {value!r:.40}"
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):  # 0001-01-01T00:00:00+14:00 is in year 0 in UTC
        return f"'created_at' is outside years 1..9999 in UTC: {value!r:.40}"

def field_name(path: str) -> str:
    """A field name or path for a reason: quoted and cut short."""
    return f"'{printable(path[:60])}'"

def printable(s: str) -> str:
    """`s` for a one-line message: control characters, NUL and surrogates escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in s)

def _brief(value: Any) -> str:
    if isinstance(value, str):
        return f"{value!r:.40}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer with {len(str(abs(value))):,} digits"
    return _json_type(value)

def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )
