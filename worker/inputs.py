"""Read review files (JSONL or CSV with a header) as a stream of validated records or rejected lines.

Each line stands alone: a bad one becomes a `Rejected` with its line number and the reason, and the
rest of the file goes on. Memory stays constant: lines are read one at a time, with a byte limit, so
even a multi-megabyte line is never held whole.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Iterator

KNOWN_FIELDS = ("id", "text", "product_id", "rating", "created_at")


class InputError(ValueError):
    """The whole file is unusable (a CSV without a text column, say)."""


@dataclass(frozen=True)
class Record:
    line_no: int
    external_id: str
    text: str
    text_sha256: str
    product_id: str | None = None
    rating: float | None = None
    created_at: datetime | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    line_no: int
    reason: str
    raw: str


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def detect_format(name: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    return "csv" if name.lower().endswith((".csv", ".csv.gz")) else "jsonl"


def read_records(stream: IO[bytes], fmt: str, max_line_bytes: int) -> Iterator[Record | Rejected]:
    """Records and rejected lines, in file order. `stream` is binary: decoding is checked per line."""
    if fmt == "csv":
        yield from _read_csv(stream, max_line_bytes)
    else:
        yield from _read_jsonl(stream, max_line_bytes)


def _lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, bytes or None when over the limit, size in bytes) for each line."""
    line_no = 0
    while True:
        chunk = stream.readline(max_line_bytes + 1)
        if not chunk:
            return
        line_no += 1
        if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
            size = len(chunk)
            while chunk and not chunk.endswith(b"\n"):  # skip the rest of the line, a piece at a time
                chunk = stream.readline(1 << 20)
                size += len(chunk)
            yield line_no, None, size - chunk.endswith(b"\n")  # the newline is not part of the line
        else:
            yield line_no, chunk, len(chunk)


def _too_long(line_no: int, size: int, limit: int) -> Rejected:
    return Rejected(line_no, f"line is {size:,} bytes, over the limit of {limit:,} (REVIEWS_MAX_LINE_BYTES)", "")


def _decode(line_no: int, raw: bytes) -> str | Rejected:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = raw.decode("utf-8", errors="replace")
        return Rejected(line_no, f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}", shown)


def read_json_objects(stream: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, dict, str] | Rejected]:
    """(line number, object, raw line) for each JSON object line, or a Rejected for a bad line."""
    for line_no, raw, size in _lines(stream, max_line_bytes):
        if raw is None:
            yield _too_long(line_no, size, max_line_bytes)
            continue
        line = _decode(line_no, raw)
        if isinstance(line, Rejected):
            yield line
            continue
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; skipping them loses nothing
        line = line.rstrip("\n")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Rejected(line_no, f"invalid JSON: {exc.msg} at column {exc.colno}", line)
            continue
        if not isinstance(obj, dict):
            yield Rejected(line_no, f"expected a JSON object, got {type(obj).__name__}", line)
            continue
        yield line_no, obj, line


def _read_jsonl(stream: IO[bytes], max_line_bytes: int) -> Iterator[Record | Rejected]:
    for item in read_json_objects(stream, max_line_bytes):
        yield item if isinstance(item, Rejected) else validate(*item)


def _read_csv(stream: IO[bytes], max_line_bytes: int) -> Iterator[Record | Rejected]:
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip().lstrip("\ufeff") for h in header]
    if "text" not in header:
        raise InputError(f"line 1: CSV header has no 'text' column (found: {', '.join(header) or 'nothing'})")
    csv.field_size_limit(max_line_bytes)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Rejected(start, f"invalid CSV: {exc}", "")
            continue
        raw = ",".join(row)
        if not any(cell.strip() for cell in row):
            continue
        if any(_has_surrogates(cell) for cell in row):
            shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            yield Rejected(start, "not valid UTF-8", shown)
            continue
        if len(row) != len(header):
            yield Rejected(start, f"expected {len(header)} fields as in the header, got {len(row)}", raw)
            continue
        obj = {k: v for k, v in zip(header, row) if v != "" or k == "text"}
        yield validate(start, obj, raw)


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def validate(line_no: int, obj: dict[str, Any], raw: str) -> Record | Rejected:
    """Check one input object; unknown fields are kept as metadata."""

    def reject(reason: str) -> Rejected:
        return Rejected(line_no, reason, raw)

    if "text" not in obj:
        return reject("no 'text' field")
    problem = text_problem(obj["text"])
    if problem:
        return reject(problem)
    text = obj["text"]
    ext_id = obj.get("id")
    if ext_id is None or ext_id == "":
        ext_id = "h:" + sha256(text)[:32]  # content hash: the same text enqueued twice is one review
    elif isinstance(ext_id, bool) or not isinstance(ext_id, (str, int)):
        return reject(f"'id' must be a string or an integer, got {_json_type(ext_id)}")
    ext_id = str(ext_id)
    if len(ext_id) > 255 or "\x00" in ext_id:
        return reject("'id' is longer than 255 characters or contains NUL")
    product_id = obj.get("product_id")
    if product_id is not None:
        if isinstance(product_id, bool) or not isinstance(product_id, (str, int)):
            return reject(f"'product_id' must be a string or an integer, got {_json_type(product_id)}")
        product_id = str(product_id)[:255]
    rating = obj.get("rating")
    if isinstance(rating, bool):
        return reject("'rating' must be a number, got a boolean")
    if rating is not None:
        try:
            rating = float(rating)
        except (TypeError, ValueError):
            return reject(f"'rating' must be a number, got {rating!r:.40}")
        if rating != rating:  # NaN
            return reject("'rating' must be a number, got NaN")
    created_at = obj.get("created_at")
    if created_at is not None:
        try:
            created_at = datetime.fromisoformat(str(created_at).replace("Z", "+00:00"))
        except ValueError:
            return reject(f"'created_at' is not an ISO 8601 date-time: {created_at!r:.40}")
    meta = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    try:
        json.dumps(meta)  # CSV surrogates or odd values must not reach the JSON column
    except (TypeError, ValueError):
        return reject("extra fields cannot be stored as JSON")
    return Record(line_no, ext_id, text, sha256(text), product_id, rating, created_at, meta)


def text_problem(text: Any) -> str | None:
    if not isinstance(text, str):
        return f"'text' must be a string, got {_json_type(text)}"
    if not text.strip():
        return "'text' is empty"
    if "\x00" in text:
        return "'text' contains NUL characters"
    return None


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )

