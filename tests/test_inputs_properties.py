"""Properties of worker/inputs.py over generated adversarial input: any bytes at all end as Records that
PostgreSQL, SQLite and strict JSON take, or as Rejected lines with their number and a storable raw text."""

from __future__ import annotations

import gzip
import io
import json
import math
import re
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.inputs import InputError, Record, Rejected, read_records
from worker.records import KNOWN_FIELDS

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------------------

# Strings a valid record may hold: anything but NUL and lone surrogates.
safe_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
review_text = safe_text.filter(lambda t: t.strip())
# Strings an attacker may send: surrogates, NUL, BOM, line separators, anything.
nasty_char = st.one_of(st.characters(), st.characters(categories=("Cs",)),
                       st.sampled_from(["\x00", "\ud800", "\udfff", "\ufeff", "\r", "\u2028", "\x85", '"', "\\"]))
nasty_text = st.text(nasty_char, max_size=20)


class Token(str):
    """JSON text written as it is: numbers json.dumps cannot write, NaN, deep nesting."""


nasty_number = st.one_of(
    st.integers().map(str),
    st.integers(300, 6000).map(lambda n: "-" * (n % 2) + "1" + "0" * n),  # past float range and the int/str limit
    st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),  # NaN, Infinity, -Infinity
    st.sampled_from(["1e400", "-1e999", "1.5", "-0", "0.0", "2e308", "1E5"]),
).map(Token)
deep = st.integers(0, 3000).map(lambda n: Token("[" * n + "]" * n))
nasty_scalar = st.one_of(st.none(), st.booleans(), nasty_text, nasty_number, deep)
nasty_value = st.recursive(nasty_scalar, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(nasty_text, inner, max_size=3), max_leaves=8)
nasty_object = st.dictionaries(st.one_of(st.sampled_from(KNOWN_FIELDS), nasty_text), nasty_value, max_size=6)

json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), safe_text, st.integers(-10**100, 10**100), st.floats(allow_nan=False,
                                                                                           allow_infinity=False)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(safe_text, inner, max_size=3), max_leaves=10)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
created = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets | st.none())


@st.composite
def good_objects(draw) -> dict:
    obj = {"text": draw(review_text)}
    if draw(st.booleans()):
        obj["id"] = draw(st.one_of(safe_text, st.integers(-10**200, 10**200)))
    if draw(st.booleans()):
        obj["product_id"] = draw(st.one_of(safe_text, st.integers(-10**200, 10**200)))
    if draw(st.booleans()):
        obj["rating"] = draw(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                                       st.integers(-10**300, 10**300)))
    if draw(st.booleans()):
        obj["created_at"] = draw(created).isoformat()
    extra = draw(st.dictionaries(safe_text.filter(lambda k: k not in KNOWN_FIELDS), json_value, max_size=3))
    return obj | extra


def to_json(value, ascii_only: bool) -> str:
    """json.dumps, but writing Tokens as they are."""
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, dict):
        items = (f"{to_json(str(k), ascii_only)}: {to_json(v, ascii_only)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8: nasty too


no_newline_bytes = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b""))


@st.composite
def jsonl_lines(draw) -> tuple[list[bytes], dict[int, dict]]:
    """Lines (without newlines) and, by index, the objects of the good ones."""
    lines, good = [], {}
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["good", "nasty", "bytes", "blank"]))
        if kind == "good":
            obj = draw(good_objects())
            good[len(lines)] = obj
            lines.append(encode(to_json(obj, draw(st.booleans()))))
        elif kind == "nasty":
            lines.append(encode(to_json(draw(nasty_object), draw(st.booleans()))).replace(b"\n", b""))
        elif kind == "bytes":
            lines.append(draw(no_newline_bytes))
        else:
            lines.append(draw(st.sampled_from([b"", b"\r", b" \t", b"\xef\xbb\xbf"])))
    return lines, good


# -- invariants -------------------------------------------------------------------------------------------


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def check_items(items: list, n_lines: int) -> None:
    numbers = [i.line_no for i in items]
    assert numbers == sorted(set(numbers)), numbers  # one item per line at most, in file order
    assert all(1 <= n <= n_lines for n in numbers), (numbers, n_lines)
    for item in items:
        if isinstance(item, Rejected):
            assert isinstance(item.reason, str) and item.reason and "\n" not in item.reason
            for s in (item.raw, item.reason):
                assert "\x00" not in s
                s.encode("utf-8")
            continue
        assert isinstance(item, Record)
        values = [item.text, item.external_id, item.text_sha256, item.product_id, item.meta]
        for s in strings(values):
            assert "\x00" not in s
            s.encode("utf-8")
        json.dumps(values + [item.rating], allow_nan=False, ensure_ascii=False).encode("utf-8")
        assert item.text.strip() and len(item.external_id) <= 255 and len(item.product_id or "") <= 255
        assert item.rating is None or math.isfinite(item.rating)
        assert item.created_at is None or item.created_at.tzinfo is timezone.utc


def check_good(obj: dict, rec) -> None:
    assert isinstance(rec, Record), (obj, rec)
    assert rec.text == obj["text"]
    if obj.get("id") not in (None, ""):
        assert rec.external_id == str(obj["id"])
    if "rating" in obj:
        assert rec.rating == float(obj["rating"])
    if "created_at" in obj:
        moment = datetime.fromisoformat(obj["created_at"])
        assert rec.created_at == (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))
    assert rec.meta == {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}


def read(data: bytes, fmt: str, limit: int) -> list:
    return list(read_records(io.BytesIO(data), fmt, limit))


# -- JSONL ------------------------------------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.binary(max_size=120), max_size=8), st.booleans(), st.sampled_from([16, 1_000_000]))
def test_any_bytes_never_raise(lines, gz, limit):
    data = b"\n".join(lines)
    items = read(gzip.compress(data) if gz else data, "jsonl", limit)
    check_items(items, data.count(b"\n") + 1)


@SETTINGS
@given(jsonl_lines(), st.booleans(), st.booleans(), st.sampled_from([200, 1_000_000]))
def test_good_lines_are_records_and_nothing_raises(case, gz, trailing_newline, limit):
    lines, good = case
    data = b"\n".join(lines) + b"\n" * trailing_newline
    if data.startswith(b"\x1f\x8b") and not gz:
        return  # a plain file whose first bytes are the gzip magic is read as gzip, and rejected
    items = read(gzip.compress(data) if gz else data, "jsonl", limit)
    check_items(items, data.count(b"\n") + 1)
    by_line = {i.line_no: i for i in items}
    for index, obj in good.items():
        if len(lines[index]) <= limit:
            check_good(obj, by_line.get(index + 1))


@settings(max_examples=60, deadline=None)
@given(jsonl_lines(), st.floats(0, 1))
def test_truncated_gzip_never_raises(case, cut):
    data = b"\n".join(case[0]) + b"\n"
    blob = gzip.compress(data)
    items = read(blob[: int(len(blob) * cut)], "jsonl", 1_000_000)
    check_items(items, data.count(b"\n") + 1)


# -- CSV --------------------------------------------------------------------------------------------------

HEADER = ["id", "text", "product_id", "rating", "created_at", "extra"]
good_row = st.tuples(st.one_of(safe_text, st.integers(-10**100, 10**100).map(str)), review_text, safe_text,
                     st.one_of(st.just(""), st.floats(allow_nan=False, allow_infinity=False).map(repr)),
                     st.one_of(st.just(""), created.map(datetime.isoformat)), safe_text)
nasty_row = st.lists(nasty_text, min_size=0, max_size=8)


def csv_line(row, newline: str) -> str:
    """One CSV record. Not csv.writer: before 3.13 it leaves "\r" unquoted after "\n" lines, 3.10 refuses NUL."""
    return ",".join(f'"{c.replace(chr(34), chr(34) * 2)}"' if re.search('[,"\r\n]', c) else c for c in row) + newline


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), st.one_of(good_row, nasty_row)), max_size=8), st.booleans(),
       st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_csv_good_rows_are_records_and_nothing_raises(rows, gz, newline, bom):
    text = csv_line(HEADER, newline)
    starts, line = [], 2
    for _, row in rows:
        starts.append(line)
        text += csv_line(row, newline)
        line = len(re.findall("\r\n|\r|\n", text)) + 1  # physical lines, as the reader counts them
    data = ("\ufeff" * bom).encode() + encode(text)
    items = read(gzip.compress(data) if gz else data, "csv", 1_000_000)
    check_items(items, line)
    by_line = {i.line_no: i for i in items}
    for (_, row), start in zip(rows, starts):
        if isinstance(row, tuple):  # a good row
            rec = by_line.get(start)
            assert isinstance(rec, Record) and rec.text == row[1], (row, rec)
            assert rec.meta == ({"extra": row[5]} if row[5] else {})
            assert rec.rating == (float(row[3]) if row[3] else None)


@SETTINGS
@given(st.lists(st.binary(max_size=120), max_size=8), st.booleans(), st.sampled_from([16, 1_000_000]))
def test_csv_any_bytes_never_raise(lines, with_header, limit):
    data = (b"id,text,rating,x\n" if with_header else b"") + b"\n".join(lines)
    try:
        items = read(data, "csv", limit)
    except InputError as exc:  # only a header that makes the whole file unusable
        assert not with_header and "\n" not in str(exc) and "\x00" not in str(exc)
        str(exc).encode("utf-8")
        return
    check_items(items, len(re.findall(rb"\r\n|\r|\n", data)) + 1)
