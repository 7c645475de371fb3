"""Reading and validating input files: every bad line is named with its number and reason."""

import gzip
import io
import json
import os
from datetime import datetime, timezone

import pytest

from worker.inputs import InputError, Record, Rejected, detect_format, open_input, read_records

PG_URL = os.environ.get("REVIEWS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def read(data: bytes, fmt: str = "jsonl", limit: int = 1_000_000):
    return list(read_records(io.BytesIO(data), fmt, limit))


def test_good_jsonl_lines_become_records_with_metadata():
    items = read(b'{"id": "a", "text": "Great film", "product_id": 7, "rating": "4", "lang": "en"}\n'
                 b'{"text": "No id here"}\n')
    a, b = items
    assert isinstance(a, Record) and a.external_id == "a" and a.product_id == "7" and a.rating == 4.0
    assert a.meta == {"lang": "en"}
    assert b.external_id.startswith("h:") and b.line_no == 2  # content hash stands in for a missing id


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"id": "x", "text": "unterminated', "invalid JSON"),
        (b'["a list"]', "expected a JSON object, got list"),
        (b'{"id": "x"}', "no 'text' field"),
        (b'{"id": "x", "text": ""}', "'text' is empty"),
        (b'{"id": "x", "text": "   "}', "'text' is empty"),
        (b'{"id": "x", "text": 42}', "'text' must be a string, got a number"),
        (b'{"id": "x", "text": null}', "'text' must be a string, got null"),
        (b'{"id": "x", "text": "a\\u0000b"}', "NUL"),
        (b'{"id": [1], "text": "ok"}', "'id' must be a string or an integer"),
        (b'{"id": "x", "text": "ok", "rating": "five"}', "'rating' must be a finite number, got 'five'"),
        (b'{"id": "x", "text": "ok", "created_at": "yesterday"}', "not an ISO 8601"),
        (b'{"id": "x", "text": "caf\xe9"}', "not valid UTF-8: byte 0xe9"),
    ],
)
def test_bad_line_is_rejected_with_line_number_and_reason(line, reason):
    items = read(b'{"id": "ok-1", "text": "fine"}\n' + line + b'\n{"id": "ok-2", "text": "also fine"}\n')
    assert [type(i) for i in items] == [Record, Rejected, Record]
    assert items[1].line_no == 2 and reason in items[1].reason


def test_overlong_line_is_skipped_without_reading_it_whole():
    big = b'{"id": "big", "text": "' + b"x" * 5_000_000 + b'"}\n'
    items = read(b'{"text": "before"}\n' + big + b'{"text": "after"}\n', limit=100_000)
    assert [type(i) for i in items] == [Record, Rejected, Record]
    assert items[1].line_no == 2 and "5,000,025 bytes, over the limit of 100,000" in items[1].reason
    assert items[2].text == "after" and items[2].line_no == 3


def test_blank_lines_and_empty_file():
    assert read(b"") == []
    assert [r.text for r in read(b'\n{"text": "a"}\n\n')] == ["a"]


def test_csv_with_header_and_bad_rows():
    data = b'id,text,rating\nc1,"Loved it, truly",5\nc2,,3\nc3,"bad \xff byte",1\nc4,too,many,fields\nc5,Fine,\n'
    items = read(data, "csv")
    assert [type(i).__name__ for i in items] == ["Record", "Rejected", "Rejected", "Rejected", "Record"]
    assert items[0].text == "Loved it, truly" and items[0].rating == 5.0
    assert (items[1].line_no, items[1].reason) == (3, "'text' is empty")
    assert items[2].line_no == 4 and "UTF-8" in items[2].reason
    assert items[3].line_no == 5 and "expected 3 fields" in items[3].reason
    assert items[4].rating is None


def test_csv_with_wrong_header_fails_whole_file():
    with pytest.raises(InputError, match="line 1: CSV header has no 'text' column \\(found: id, body\\)"):
        read(b"id,body\n1,hello\n", "csv")


# -- adversarial input: every line ends as a Record or a Rejected naming the field ----------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


def _deep_meta(levels: int) -> bytes:
    return b'{"text": "ok", "tree": ' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize(
    "line, reason",
    [
        # 1. lone surrogate escapes: json.loads accepts them, UTF-8 encoding fails later
        (b'{"id": "x", "text": "a\\ud800b"}', "'text' contains an unpaired surrogate (\\ud800)"),
        (b'{"id": "x\\udfff", "text": "ok"}', "'id' contains an unpaired surrogate (\\udfff)"),
        (b'{"text": "ok", "product_id": "\\udc00"}', "'product_id' contains an unpaired surrogate (\\udc00)"),
        (b'{"text": "ok", "lang": "e\\ud83dn"}', "'lang' contains an unpaired surrogate (\\ud83d)"),
        (b'{"text": "ok", "k\\ud800": 1}', "field name 'k\\ud800' contains an unpaired surrogate (\\ud800)"),
        (b'{"text": "ok", "tags": [1, {"a": "\\ude00\\ud83d"}]}', "'tags[1].a' contains an unpaired surrogate"),
        # 2. NUL: PostgreSQL stores it in neither TEXT nor JSON
        (b'{"text": "ok", "product_id": "p\\u0000"}', "'product_id' contains NUL characters"),
        (b'{"text": "ok", "lang": "\\u0000"}', "'lang' contains NUL characters"),
        (b'{"text": "ok", "a\\u0000b": 1}', "field name 'a\\x00b' contains NUL characters"),
        (b'{"id": "n\\u0000", "text": "ok"}', "'id' contains NUL characters"),
        (b'{"text": "raw \x00 byte"}', "invalid JSON: Invalid control character"),
        (b'{"text": "ok"}\x00', "invalid JSON: Extra data"),
        # 3. nesting: json.loads recurses, and so would json.dumps of the metadata
        (DEEP, "JSON is nested too deeply (more than 64 levels)"),
        (_deep_meta(500), "'tree' is nested too deeply (more than 64 levels)"),
        (_deep_meta(64), "'tree' is nested too deeply (more than 64 levels)"),
        # 4. huge integers: past Python's int/str limit, and no id is that long
        (b'{"id": 1' + b"0" * 4999 + b', "text": "ok"}', "'id' is a number with 5,000 digits (at most 1,000)"),
        (b'{"id": 1' + b"0" * 299 + b', "text": "ok"}', "'id' is longer than 255 characters (300)"),
        (b'{"text": "ok", "n": -' + b"9" * 5000 + b"}", "'n' is a number with 5,000 digits"),
        # 5. ratings must be finite; NaN and Infinity are not JSON anywhere in the line
        (b'{"text": "ok", "rating": 1' + b"0" * 400 + b"}",
         "'rating' must be a finite number, got an integer with 401 digits"),
        (b'{"text": "ok", "rating": 1e400}', "'rating' is out of range for a number (1e400)"),
        (b'{"text": "ok", "rating": NaN}', "'rating' is NaN: NaN/Infinity is not valid JSON"),
        (b'{"text": "ok", "rating": Infinity}', "'rating' is Infinity: NaN/Infinity is not valid JSON"),
        (b'{"text": "ok", "x": [-Infinity]}', "'x[0]' is -Infinity: NaN/Infinity is not valid JSON"),
        (b'{"text": "ok", "rating": NaN, ', "invalid JSON: Expecting property name"),  # both wrong: JSON first
        (b'{"text": "ok", "rating": 1' + b"0" * 250 + b'e99}', "'rating' is out of range for a number (1000"),
        (b'{"text": "ok", "rating": "inf"}', "'rating' must be a finite number, got 'inf'"),
        (b'{"text": "ok", "rating": "nan"}', "'rating' must be a finite number, got 'nan'"),
        (b'{"text": "ok", "rating": "1e999"}', "'rating' must be a finite number, got '1e999'"),
        (b'{"text": "ok", "rating": "4_5"}', "'rating' must be a finite number, got '4_5'"),
        (b'{"text": "ok", "rating": true}', "'rating' must be a finite number, got a boolean"),
        # 6. created_at: ISO 8601, and within years 1..9999 once in UTC
        (b'{"text": "ok", "created_at": "0001-01-01T00:00:00+14:00"}', "'created_at' is outside years 1..9999 in UTC"),
        (b'{"text": "ok", "created_at": "9999-12-31T23:59:59-14:00"}', "'created_at' is outside years 1..9999 in UTC"),
        (b'{"text": "ok", "created_at": 2025}', "'created_at' must be an ISO 8601 date-time string, got a number"),
        (b'{"text": "ok", "created_at": "2025-13-01"}', "'created_at' is not an ISO 8601 date-time"),
        # 9. ids and product ids: strings or integers, at most 255 characters
        (b'{"id": true, "text": "ok"}', "'id' must be a string or an integer, got a boolean"),
        (b'{"id": 1.5, "text": "ok"}', "'id' must be a string or an integer, got a decimal number (1.5)"),
        (b'{"text": "ok", "product_id": 2.0}',
         "'product_id' must be a string or an integer, got a decimal number (2.0)"),
        (b'{"text": "ok", "product_id": "' + b"p" * 256 + b'"}', "'product_id' is longer than 255 characters (256)"),
        (b'\xef\xbb\xbf{"text": "a BOM after line 1"}', "invalid JSON"),
    ],
)
def test_adversarial_line_is_rejected_naming_the_field(line, reason):
    items = read(b'{"id": "ok-1", "text": "fine"}\n' + line + b'\n{"id": "ok-2", "text": "also fine"}\n')
    assert [type(i) for i in items] == [Record, Rejected, Record], items[1]
    assert items[1].line_no == 2 and reason in items[1].reason, items[1].reason
    assert items[2].line_no == 3
    assert "\x00" not in items[1].raw and "\n" not in items[1].reason
    items[1].raw.encode("utf-8")
    items[1].reason.encode("utf-8")


def test_rejected_raw_is_storable_text():
    (item,) = read(b'{"text": "nul \x00 and \\ud800"}\n')
    assert "\\u0000" in item.raw and "\x00" not in item.raw  # visible, and PostgreSQL TEXT takes it
    (item,) = read(b'{"text": "ok", "x": "\\ud800"}\n')
    assert item.raw == '{"text": "ok", "x": "\\ud800"}'  # escapes stay as text; only decoded surrogates are replaced
    assert Rejected(1, "r\x00", "a\x00\ud800").raw == "a\\u0000\ufffd"  # any Rejected, wherever it is made
    assert Rejected(1, "r\x00", "").reason == "r\\u0000"


def test_nested_metadata_within_the_limit_and_valid_values_are_kept():
    line = _deep_meta(63).replace(b"}", b', "emoji": "\\ud83d\\ude00", "big": ' + b"9" * 1000 + b"}")
    (rec,) = read(line + b"\n")
    assert isinstance(rec, Record) and rec.meta["emoji"] == "\U0001F600" and rec.meta["big"] == int("9" * 1000)
    json.dumps(rec.meta, allow_nan=False, ensure_ascii=False).encode("utf-8")


def test_created_at_is_converted_to_utc():
    lines = [b'{"text": "a", "created_at": "2025-01-01T23:30:00-05:00"}',
             b'{"text": "b", "created_at": "2025-01-01T12:00:00"}',
             b'{"text": "c", "created_at": "2025-01-01T12:00:00Z"}',
             b'{"text": "d", "created_at": "0001-01-01T00:00:00"}']
    a, b, c, d = read(b"\n".join(lines))
    assert a.created_at == datetime(2025, 1, 2, 4, 30, tzinfo=timezone.utc)
    assert a.created_at.tzinfo is timezone.utc
    assert b.created_at == datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)  # naive is taken as UTC
    assert c.created_at == b.created_at and d.created_at.year == 1


def test_numbers_ids_and_ratings_that_are_fine():
    a, b, c = read(b'{"id": 12345678901234567890, "text": "a", "rating": "  4.5 ", "product_id": 0}\n'
                   b'{"id": "", "text": "b", "rating": 1e308, "product_id": ""}\n'
                   b'{"text": "c", "rating": -0.0}\n')
    assert (a.external_id, a.rating, a.product_id) == ("12345678901234567890", 4.5, "0")
    assert b.external_id.startswith("h:") and b.rating == 1e308 and b.product_id is None
    assert c.rating == 0.0


def test_bom_crlf_and_lone_cr_lines_in_jsonl():
    data = b'\xef\xbb\xbf{"text": "first"}\r\n\r\n\r\n{"text": "second"}\r\n'
    a, b = read(data)
    assert (a.line_no, a.text, b.line_no, b.text) == (1, "first", 4, "second")
    assert read(b"\xef\xbb\xbf") == [] and read(b"\xef\xbb\xbf\n") == []


def test_csv_with_bom_crlf_nul_and_bad_numbers():
    data = ('\ufeff"id","text","product_id","rating"\r\n'
            'c1,"multi\r\nline",p1,5\r\n'
            'c2,ok,"p\x00",1\r\n'
            'c3,ok,p3,inf\r\n'
            '\r'
            'c4,"fine",p4,\r\n').encode()
    items = read(data, "csv")
    assert [type(i).__name__ for i in items] == ["Record", "Rejected", "Rejected", "Record"]
    assert items[0].text == "multi\r\nline" and items[0].product_id == "p1"
    assert items[1].line_no == 4 and "'product_id' contains NUL characters" in items[1].reason.replace(
        "invalid CSV: line contains NUL", "'product_id' contains NUL characters")  # Python 3.10's csv refuses NUL
    assert "\x00" not in items[1].raw
    assert (items[2].line_no, items[2].reason) == (5, "'rating' must be a finite number, got 'inf'")
    assert items[3].line_no == 7 and items[3].text == "fine"


def test_csv_overlong_line_is_skipped_and_counted():
    data = b"id,text\na,before\nb," + b"x" * 300_000 + b"\nc,after\n"
    items = read(data, "csv", limit=100_000)
    assert [type(i) for i in items] == [Record, Rejected, Record]
    assert items[1].line_no == 3 and "line is 300,002 bytes, over the limit of 100,000" in items[1].reason
    assert (items[2].line_no, items[2].text) == (4, "after")


def test_detect_format_by_name():
    assert detect_format("x.csv.gz") == "csv" and detect_format("X.CSV") == "csv"
    assert detect_format("x.jsonl.gz") == "jsonl" and detect_format("-") == "jsonl"
    assert detect_format("x.jsonl", "csv") == "csv"


# -- gzip: found by its magic bytes, read as a stream ---------------------------------------------------

JSONL = b'{"id": "g1", "text": "one"}\n{"id": "g2", "text": "two"}\n'
CSV = b"id,text\ng1,one\ng2,two\n"


class OneByteAtATime(io.RawIOBase):
    """A pipe that hands over one byte per read, as stdin may."""

    def __init__(self, data: bytes):
        self.data = data

    def readable(self):
        return True

    def readinto(self, buffer):
        chunk, self.data = self.data[:1], self.data[1:]
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("fmt, data", [("jsonl", JSONL), ("csv", CSV)])
@pytest.mark.parametrize("wrap", [io.BytesIO, lambda d: io.BufferedReader(OneByteAtATime(d), 1),
                                  lambda d: OneByteAtATime(d)])
def test_gzip_is_read_transparently_whatever_the_name_or_stream(fmt, data, wrap):
    items = list(read_records(wrap(gzip.compress(b"\xef\xbb\xbf" + data)), fmt, 1_000_000))
    first = 2 if fmt == "csv" else 1  # after the header
    assert [(i.line_no, i.external_id, i.text) for i in items] == [(first, "g1", "one"), (first + 1, "g2", "two")]
    plain = list(read_records(wrap(data), fmt, 1_000_000))
    assert [i.text for i in plain] == ["one", "two"]


def test_open_input_keeps_the_callers_stream_open_and_decompresses():
    raw = io.BytesIO(gzip.compress(b"hello\n") + gzip.compress(b"again\n"))  # two members, as `cat a.gz b.gz`
    assert open_input(raw).read() == b"hello\nagain\n" and not raw.closed
    raw = io.BytesIO(b"\x1f")
    assert open_input(raw).read() == b"\x1f"
    assert open_input(io.BytesIO(b"")).read() == b""


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("damage", ["truncated", "cut-trailer", "corrupt"])
def test_broken_gzip_keeps_what_was_read_and_ends_with_one_rejected_line(fmt, damage):
    rows = [json.dumps({"id": f"r{i}", "text": f"review number {i} " + "words " * (i % 50)}) for i in range(5000)]
    if fmt == "csv":
        rows = ["id,text"] + [f"r{i},review number {i}" for i in range(5000)]
    blob = gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0)  # the same bytes every run
    half = len(blob) // 2
    blob = {"truncated": blob[:half], "cut-trailer": blob[:-4],
            "corrupt": blob[:half] + bytes(b ^ 0x55 for b in blob[half: half + 60]) + blob[half + 60:]}[damage]
    items = read(blob, fmt)
    *records, last = items
    assert isinstance(last, Rejected) and last.reason.startswith("gzip data is corrupt or truncated")
    assert "the rest of the file was not read" in last.reason and "\n" not in last.reason
    first_line = 2 if fmt == "csv" else 1
    assert [r.line_no for r in records] == list(range(first_line, first_line + len(records)))
    assert last.line_no == first_line + len(records)
    if damage == "corrupt":  # deflate decodes garbage until the CRC at the end says so: those lines are rejected
        records = records[: next(i for i, r in enumerate(records) if isinstance(r, Rejected))]
    assert all(isinstance(r, Record) for r in records) and len(records) > 1000


def test_not_gzip_after_the_magic_bytes_is_one_rejected_line():
    (item,) = read(b"\x1f\x8bnot gzip at all\n{\"text\": \"x\"}\n")
    assert item.line_no == 1 and item.reason.startswith("gzip data is corrupt or truncated")


# -- storage: what comes out can go into PostgreSQL and SQLite as it is ---------------------------------

NASTY = b"\n".join([
    '{"id": "\u00e9\U0001F600", "text": "caf\u00e9 \\ud83d\\ude00 \\u0001 \\u2028 \\"q\\"", "product_id": 9, '
    '"rating": "1e308", "created_at": "2025-01-01T23:30:00-05:00", "tags": [{"k": [1, 2.5, null, true]}], '
    '"big": 1234567890123456789012345678901234567890, "\u00fc": "\\u007f"}'.encode(),
    b'{"id": "bad", "text": "nul \x00 byte \xff and \\ud800"}',
    b'{"id": "bad2", "text": "x", "meta": "\\ud800"}',
])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_records_and_rejections_from_nasty_input_store_and_read_back(backend, tmp_path):
    from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, Table, Text, create_engine, select
    from sqlalchemy.dialects.postgresql import JSONB

    if backend == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    else:
        engine = create_engine(PG_URL)
        try:
            with engine.connect():
                pass
        except Exception as exc:  # noqa: BLE001 - any failure to connect means no PostgreSQL here
            pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {str(exc).splitlines()[0]}")
    meta_type = JSONB if backend == "postgresql" else JSON
    table = Table("input_safety_probe", MetaData(), Column("id", Integer, primary_key=True), Column("ext", Text),
                  Column("text", Text), Column("meta", meta_type), Column("created_at", DateTime(timezone=True)),
                  Column("raw", Text), Column("reason", Text), prefixes=["TEMPORARY"])
    rec, rej1, rej2 = read(NASTY)
    assert isinstance(rec, Record) and isinstance(rej1, Rejected) and isinstance(rej2, Rejected)
    with engine.connect() as conn:  # a TEMP table on one connection: nothing shared is touched
        table.create(conn)
        conn.execute(table.insert(), {"id": 1, "ext": rec.external_id, "text": rec.text, "meta": rec.meta,
                                      "created_at": rec.created_at})
        conn.execute(table.insert(), [{"id": 2, "raw": rej1.raw, "reason": rej1.reason},
                                      {"id": 3, "raw": rej2.raw, "reason": rej2.reason}])
        rows = conn.execute(select(table).order_by(table.c.id)).all()
    engine.dispose()
    assert (rows[0].ext, rows[0].text, rows[0].meta) == (rec.external_id, rec.text, rec.meta)
    stored = rows[0].created_at  # SQLite gives it back naive, in UTC as stored
    assert (stored if stored.tzinfo else stored.replace(tzinfo=timezone.utc)) == datetime(2025, 1, 2, 4, 30,
                                                                                          tzinfo=timezone.utc)
    assert (rows[1].raw, rows[2].raw) == (rej1.raw, rej2.raw)
    assert "\\u0000" in rows[1].raw and "\ufffd" in rows[1].raw


CSV_NUL = "line 1: CSV header cannot be read (line contains NUL)"  # Python 3.10's csv refuses NUL itself


def test_csv_header_error_is_one_printable_line():
    with pytest.raises(InputError) as info:
        read(b'"a\nb\x01",c\xff\n1,2\n', "csv")
    assert str(info.value) == "line 1: CSV header has no 'text' column (found: a\\nb\\x01, c\\udcff)"
    assert Rejected(1, "two\r\nlines", "").reason == "two lines"
    with pytest.raises(InputError, match=r"^line 1: CSV header column 'x\\udcff' is not valid UTF-8$"):
        read(b"id,text,x\xff\n1,a,b\n", "csv")
    with pytest.raises(InputError) as info:
        read(b"id,text,x\x00\n1,a,b\n", "csv")
    assert str(info.value) in ("line 1: CSV header column 'x\\x00' contains NUL characters", CSV_NUL)
