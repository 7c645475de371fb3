"""Property: whatever the bytes of a file, ingest ends every job in a terminal state, every good line
gets a result, every other line is rejected with its number, and export is strict JSON whose entity
offsets slice the stored text. Run through the path `reviews run` takes (ingest + batch processor),
on SQLite and on PostgreSQL."""

import io
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_settings
from worker import batches, ingest, jobs
from worker.resources import Resources
from worker.results import iter_export
from worker.schema import RejectedLine

_ids = itertools.count()

# Text a reviewer could type, emoji and other planes included, never blank.
good_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                    max_size=80).filter(lambda t: t.strip())
junk_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def good_line(draw) -> tuple[str, bytes]:
    ext = f"p{next(_ids)}"
    obj = {"id": ext, "text": draw(good_text)}
    if draw(st.booleans()):
        obj["product_id"] = draw(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                         min_size=1, max_size=10))
    if draw(st.booleans()):
        obj["rating"] = draw(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
    return ext, json.dumps(obj).encode()


def _blank(b: bytes) -> bool:
    """A line the reader skips as blank: whitespace only once decoded (a leading BOM too)."""
    try:
        return not b.decode("utf-8").lstrip("\ufeff").strip()
    except UnicodeDecodeError:
        return False


bad_line = st.one_of(
    st.binary(min_size=1, max_size=60).filter(lambda b: not _blank(b) and b"\n" not in b and b"\r" not in b),
    st.builds(lambda v: json.dumps({"text": v}).encode(), junk_value.filter(lambda v: not isinstance(v, str))),
    st.builds(lambda t: ('{"text": "%s\\ud800"}' % t).encode(), st.text("abc", max_size=5)),
    st.builds(lambda n: b'{"text": "x", "rating": 1' + b"0" * n + b"}", st.integers(320, 500)),
    st.just(b'{"text": "x", "rating": NaN}'),
    st.just(b'{"text": "x", "created_at": "0001-01-01T00:00:00+14:00"}'),
    st.just(b"[" * 5000),
)

lines = st.lists(st.one_of(st.tuples(st.just("good"), good_line()), st.tuples(st.just("bad"), bad_line)),
                 min_size=1, max_size=12)


def _check(resources, job_lines) -> None:
    data = b"\n".join(b if kind == "bad" else b[1] for kind, b in job_lines) + b"\n"
    good = {b[0]: n for n, (kind, b) in enumerate(job_lines, 1) if kind == "good"}
    bad = {n for n, (kind, _) in enumerate(job_lines, 1) if kind == "bad"}
    report = ingest.ingest(resources.sessions, io.BytesIO(data), "prop.jsonl", resources.settings,
                           lambda job, ids: batches.run_to_end(resources, job, ids, sleep=lambda s: None))
    with resources.sessions() as s:
        p = jobs.progress(s, report.job_id)
        assert p.finished
        assert (p.status == "done") == bool(good) and p.pending == 0
        rejected = {r.line_no for r in s.query(RejectedLine).filter(RejectedLine.job_id == report.job_id)}
        assert rejected == bad  # every bad line, by its number, and no good one
        rows = {r["id"]: r for r in iter_export(s, report.job_id)}
    assert set(rows) == set(good)
    for row in rows.values():
        json.dumps(row, allow_nan=False).encode("utf-8")  # strict JSON, encodable
        for e in row["entities"]:
            assert row["text"][e["start"]:e["end"]] == e["text"]


@pytest.fixture(scope="module")
def sqlite_resources(tmp_path_factory, tiny_models):
    from worker import migrate

    url = f"sqlite:///{tmp_path_factory.mktemp('prop') / 'p.db'}"
    migrate.upgrade(url)
    return Resources(make_settings(url, tiny_models, batch_size=4, task_max_retries=0))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(job_lines=lines)
def test_any_file_ends_in_results_or_numbered_rejections_sqlite(sqlite_resources, job_lines):
    _check(sqlite_resources, job_lines)


@pytest.mark.postgres
def test_any_file_ends_in_results_or_numbered_rejections_postgres(migrated_pg, tiny_models):
    resources = Resources(make_settings(migrated_pg, tiny_models, batch_size=4, task_max_retries=0))

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(job_lines=lines)
    def check(job_lines):
        _check(resources, job_lines)

    check()
