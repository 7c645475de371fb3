"""Read review files (JSONL or CSV with a header) as a stream of validated records or rejected lines.

Input is adversarial: whatever bytes a line holds, it becomes a `Record` that PostgreSQL, SQLite and
strict JSON all take as it is, or a `Rejected` with its line number and a one-line reason naming the
field; the rest of the file goes on. Memory stays constant: lines are read one at a time with a byte
limit, so even a multi-megabyte line is never held whole.

Gzip is found by its magic bytes (1f 8b), whatever the file is called, stdin included, and read as a
stream. A corrupt or truncated gzip stream ends the input with one `Rejected` at the line being read
("gzip data is corrupt or truncated (...); the rest of the file was not read"); the lines before it
were yielded already. `InputError` is only for a CSV header that makes the whole file unusable.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

# Record, Rejected, validate and the rest of what a line becomes live in records.py; they are
# imported here too, as the names callers of the reader use.
from .records import (MAX_DEPTH, MAX_DIGITS, BadNumber, Record, Rejected, field_name, printable,  # noqa: F401
                      safe_raw, sha256, string_problem, text_problem, validate, value_problem)

GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (OSError, EOFError, zlib.error)  # BadGzipFile is an OSError
_ESCAPED = re.compile("[\udc80-\udcff]")  # undecodable bytes, as surrogateescape shows them
# The only way a NUL or a lone surrogate gets into a parsed string: raw NUL is invalid JSON, raw
# surrogates invalid UTF-8. Lines without such an escape skip the walk over every string.
NUL_OR_SURROGATE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


class InputError(ValueError):
    """The whole file is unusable (a CSV without a text column, say)."""


def detect_format(name: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    return "csv" if name.lower().endswith((".csv", ".csv.gz")) else "jsonl"


class Prefixed(io.RawIOBase):
    """The bytes already read from `stream`, then the rest of it. Never closes `stream`: the caller owns it."""

    def __init__(self, head: bytes, stream: IO[bytes]):
        super().__init__()
        self._head, self._stream = head, stream
        self._read = getattr(stream, "read1", stream.read)  # read1: a slow pipe's lines come out as they arrive

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._head:
            data, self._head = self._head[: len(buffer)], self._head[len(buffer):]
        else:
            data = self._read(len(buffer)) or b""
        buffer[: len(data)] = data
        return len(data)


def open_input(stream: IO[bytes]) -> IO[bytes]:
    """`stream` as a buffered binary stream, decompressed on the fly when it starts with the gzip magic.

    Needs no seek (stdin works): the bytes looked at are put back in front.
    """
    head = b""
    while len(head) < 2:  # a pipe may hand over one byte at a time
        more = stream.read(2 - len(head))
        if not more:
            break
        head += more
    buffered = io.BufferedReader(Prefixed(head, stream), buffer_size=1 << 16)
    return gzip.GzipFile(fileobj=buffered, mode="rb") if head == GZIP_MAGIC else buffered  # type: ignore[return-value]


def read_records(stream: IO[bytes], fmt: str, max_line_bytes: int) -> Iterator[Record | Rejected]:
    """Records and rejected lines, in file order. `stream` is binary, plain or gzip: decoding is checked per line."""
    if fmt == "csv":
        yield from _read_csv(stream, max_line_bytes)
    else:
        for item in read_json_objects(stream, max_line_bytes):
            yield item if isinstance(item, Rejected) else validate(*item, checked=True)


def _too_long(line_no: int, size: int, limit: int) -> Rejected:
    return Rejected(line_no, f"line is {size:,} bytes, over the limit of {limit:,} (REVIEWS_MAX_LINE_BYTES)", "")


def _unreadable(line_no: int, exc: BaseException) -> Rejected:
    detail = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
    return Rejected(line_no, f"gzip data is corrupt or truncated ({detail}); the rest of the file was not read", "")


def _lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes] | Rejected]:
    """(line number, bytes) for each line, or a Rejected for one over the limit or unreadable gzip."""
    errors = _GZIP_ERRORS if isinstance(stream, gzip.GzipFile) else ()  # a plain file's I/O error stays an error
    line_no = 0
    while True:
        line_no += 1
        try:
            chunk = stream.readline(max_line_bytes + 1)
            size = len(chunk)
            if size > max_line_bytes and not chunk.endswith(b"\n"):
                while chunk and not chunk.endswith(b"\n"):  # skip the rest of the line, a piece at a time
                    chunk = stream.readline(1 << 20)
                    size += len(chunk)
                yield _too_long(line_no, size - chunk.endswith(b"\n"), max_line_bytes)
                continue
        except errors as exc:
            yield _unreadable(line_no, exc)
            return
        if not chunk:
            return
        if line_no == 1 and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]  # a UTF-8 byte-order mark, as some editors write
        yield line_no, chunk


def _decode(line_no: int, raw: bytes) -> str | Rejected:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = raw.decode("utf-8", errors="replace")
        return Rejected(line_no, f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}", shown)


def _decoder(bad: Callable[[str], Any]) -> json.JSONDecoder:
    # The default decoder takes NaN, Infinity and any number of digits: not strict JSON, and not storable.
    def parse_int(s: str) -> Any:
        digits = len(s) - s.startswith("-")
        return int(s) if digits <= MAX_DIGITS else bad(f"is a number with {digits:,} digits (at most {MAX_DIGITS:,})")

    def parse_float(s: str) -> Any:
        value = float(s)
        return value if math.isfinite(value) else bad(f"is out of range for a number ({s[:20]})")

    return json.JSONDecoder(parse_int=parse_int, parse_float=parse_float,
                            parse_constant=lambda name: bad(f"is {name}: NaN/Infinity is not valid JSON"))


def _raise(problem: str) -> Any:
    raise BadNumber(problem)


STRICT_JSON = _decoder(_raise)  # fast: no walk over the values afterwards to find a bad number
MARKING_JSON = _decoder(BadNumber)  # for the rare line STRICT_JSON refuses: parsed again to name the field


def read_json_objects(stream: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, dict, str] | Rejected]:
    """(line number, object, raw line) for each JSON object line, or a Rejected for a bad line.

    Objects come out strict: no NaN/Infinity, integers of at most MAX_DIGITS digits, no NUL or lone
    surrogate in any string or key, nesting at most MAX_DEPTH deep.
    """
    for item in _lines(open_input(stream), max_line_bytes):
        if isinstance(item, Rejected):
            yield item
            continue
        line_no, raw = item
        line = _decode(line_no, raw)
        if isinstance(line, Rejected):
            yield line
            continue
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; skipping them loses nothing
        line = line.rstrip("\r\n")
        suspect = ("\\u" in line and NUL_OR_SURROGATE_ESCAPE.search(line)) or \
            line.count("[") + line.count("{") > MAX_DEPTH
        try:
            try:
                obj = STRICT_JSON.decode(line)
            except BadNumber:
                obj, suspect = MARKING_JSON.decode(line), True
        except json.JSONDecodeError as exc:
            yield Rejected(line_no, f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}", line)
            continue
        except RecursionError:  # the C parser recurses per level and stops near 1,000
            yield Rejected(line_no, f"JSON is nested too deeply (more than {MAX_DEPTH} levels)", line)
            continue
        if not isinstance(obj, dict):
            yield Rejected(line_no, f"expected a JSON object, got {type(obj).__name__}", line)
            continue
        problem = value_problem(obj) if suspect else None
        yield Rejected(line_no, problem, line) if problem else (line_no, obj, line)


class _LineTooLong(Exception):
    """args[0]: the line's size in bytes."""


class _CsvLines:
    """Physical lines for csv.reader, each at most `limit` bytes; raises _LineTooLong (once) for a longer one.

    A class, not a generator: the reader calls it again after an exception, and the next line follows.
    """

    def __init__(self, text: io.TextIOWrapper, limit: int):
        self.text, self.limit, self.line_no = text, limit, 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        self.line_no += 1
        line = self.text.readline(self.limit + 1)
        if not line:
            raise StopIteration
        size = len(line.rstrip("\r\n").encode("utf-8", "surrogateescape"))  # the line ending does not count
        if size <= self.limit:
            return line
        while line and not line.endswith(("\n", "\r")):  # skip the rest of the line, a piece at a time
            line = self.text.readline(1 << 20)
            size += len(line.rstrip("\r\n").encode("utf-8", "surrogateescape"))
        raise _LineTooLong(size)


def _read_csv(stream: IO[bytes], max_line_bytes: int) -> Iterator[Record | Rejected]:
    binary = open_input(stream)
    errors = _GZIP_ERRORS if isinstance(binary, gzip.GzipFile) else ()
    # utf-8-sig drops a byte-order mark; surrogateescape keeps undecodable bytes visible per row.
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
    lines = _CsvLines(text, max_line_bytes)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except errors as exc:
        yield _unreadable(1, exc)
        return
    except (csv.Error, _LineTooLong) as exc:
        raise InputError(f"line 1: CSV header cannot be read ({'too long' if isinstance(exc, _LineTooLong) else exc})")
    header = [h.strip() for h in header]
    if "text" not in header:
        found = printable(", ".join(header))[:200] or "nothing"
        raise InputError(f"line 1: CSV header has no 'text' column (found: {found})")
    for name in header:  # a bad column name would fail every row with a misleading reason: fail once here
        problem = "is not valid UTF-8" if _ESCAPED.search(name) else string_problem(name)
        if problem:
            raise InputError(f"line 1: CSV header column {field_name(name)} {problem}")
    csv.field_size_limit(max_line_bytes)  # bounds a quoted field spanning lines
    while True:
        start = lines.line_no + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except _LineTooLong as exc:
            yield _too_long(lines.line_no, exc.args[0], max_line_bytes)
            continue
        except csv.Error as exc:
            yield Rejected(start, f"invalid CSV: {exc}", "")
            continue
        except errors as exc:
            yield _unreadable(lines.line_no, exc)
            return
        raw = ",".join(row)
        if not any(cell.strip() for cell in row):
            continue
        escaped = next((m for m in map(_ESCAPED.search, row) if m), None)
        if escaped:
            yield Rejected(start, f"not valid UTF-8: byte 0x{ord(escaped.group()) - 0xdc00:02x}", raw)
            continue
        if len(row) != len(header):
            yield Rejected(start, f"expected {len(header)} fields as in the header, got {len(row)}", raw)
            continue
        obj = {k: v for k, v in zip(header, row) if v != "" or k == "text"}
        yield validate(start, obj, raw)


