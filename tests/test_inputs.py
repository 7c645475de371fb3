"""Reading and validating input files: every bad line is named with its number and reason."""

import io

import pytest

from worker.inputs import InputError, Record, Rejected, read_records


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
        (b'{"id": "x", "text": "ok", "rating": "five"}', "'rating' must be a number"),
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
