"""The dashboard's top entities and products: the bounded way (entity_totals, product_totals) gives
exactly what summing every entity or product of the range gives, for any rollups, range, label,
count, page and confidence filter."""

import itertools
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import text

from worker import rollups
from worker.dashboard import queries
from worker.dashboard.params import DayRange
from worker.db import session_factory
from worker.schema import ModelVersion

FIRST = date(2025, 1, 1)
KEYS = [f"name {k}" for k in range(12)]
# One batch's deltas: (day offset, label, key) -> mentions and the NER confidence of each mention.
DELTAS = st.dictionaries(st.tuples(st.integers(0, 9), st.sampled_from(["PER", "ORG", "LOC"]), st.sampled_from(KEYS)),
                         st.tuples(st.integers(1, 40), st.floats(0.3, 1.0)), min_size=1, max_size=25)
_SERIAL = itertools.count(1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request):
    return session_factory(request.getfixturevalue("migrated_sqlite" if request.param == "sqlite" else "migrated_pg"))


def _fill(sessions, batches: list[dict]) -> tuple[int, int]:
    with sessions() as s:
        for table in ("rollup_deltas", "entity_totals", "entity_daily", "product_totals", "sentiment_day_totals", "sentiment_daily"):
            s.execute(text(f"DELETE FROM {table}"))
        k = next(_SERIAL)
        versions = [ModelVersion(task=t, version=k, source="x", status="active") for t in ("ner", "sentiment")]
        s.add_all(versions)
        s.commit()
        nv, sv = versions[0].id, versions[1].id
        for deltas in batches:  # the same numbers as entity mentions and as product reviews
            ents = {(FIRST + timedelta(days=d), label, key, nv, sv): [m, 1, 1, 0, 0.5, m * conf]
                    for (d, label, key), (m, conf) in deltas.items()}
            sent = {(FIRST + timedelta(days=d), f"{label} {key}", sv): [m, m, 0, 0.5 * m]
                    for (d, label, key), (m, _) in deltas.items()}
            rollups.record(s, sent, ents)
        s.commit()
        rollups.fold_pending(s)
    return nv, sv


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(DELTAS, min_size=1, max_size=4), start=st.integers(0, 9), length=st.integers(1, 10),
       label=st.sampled_from([None, "PER", "ORG", "MISC"]), n=st.integers(1, 6),
       min_confidence=st.sampled_from([0.0, 0.6, 0.9]), max_candidates=st.sampled_from([2, 5, 2000]))
def test_the_bounded_top_entities_equal_the_full_sum(sessions, monkeypatch, batches, start, length, label, n,
                                                      min_confidence, max_candidates):
    nv, sv = _fill(sessions, batches)
    rng = DayRange(FIRST + timedelta(days=start), FIRST + timedelta(days=start + length - 1))
    monkeypatch.setattr(queries, "MAX_CANDIDATES", max_candidates)  # both ways: bounded, and the fallback
    with sessions() as s:
        totals = dict(((lb, key), m) for lb, key, m in s.execute(text(
            "SELECT label, entity_key, mentions FROM entity_totals")))
        summed = dict(((lb, key), m) for lb, key, m in s.execute(text(
            "SELECT label, entity_key, SUM(mentions) FROM entity_daily GROUP BY label, entity_key")))
        assert totals == summed  # the fold keeps the totals
        fast = queries.top_entities(s, nv, sv, rng, label, n, min_confidence)
        full = queries.top_entities_scan(s, nv, sv, rng, label, n, min_confidence)
    assert fast == full


@pytest.mark.postgres
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(DELTAS, min_size=1, max_size=4), start=st.integers(0, 9), length=st.integers(1, 10),
       label=st.sampled_from([None, "PER", "ORG", "MISC"]), n=st.integers(1, 6),
       min_confidence=st.sampled_from([0.0, 0.6, 0.9]))
def test_postgresql_takes_the_top_of_each_label_as_the_window_ranks_it(migrated_pg, batches, start, length, label, n,
                                                                      min_confidence):
    """PostgreSQL's LATERAL ... LIMIT per label gives the rows, order and ranks of the window that SQLite uses."""
    sessions = session_factory(migrated_pg)
    nv, sv = _fill(sessions, batches)
    rng = DayRange(FIRST + timedelta(days=start), FIRST + timedelta(days=start + length - 1))
    with sessions() as s:
        summed = queries.entity_sums(nv, sv, rng, label, min_confidence)
        windowed = queries._top_by_window(s, summed, n)
        assert queries.top_entities_scan(s, nv, sv, rng, label, n, min_confidence) == windowed
    for one in {r["label"] for r in windowed}:
        assert [r["rank"] for r in windowed if r["label"] == one] == list(range(1, min(n, len(
            [r for r in windowed if r["label"] == one])) + 1))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(DELTAS, min_size=1, max_size=4), start=st.integers(0, 9), length=st.integers(1, 10),
       limit=st.integers(1, 6), offset=st.integers(0, 4), max_candidates=st.sampled_from([2, 5, 2000]))
def test_the_bounded_top_products_equal_the_full_sum(sessions, monkeypatch, batches, start, length, limit, offset,
                                                      max_candidates):
    _, sv = _fill(sessions, batches)
    rng = DayRange(FIRST + timedelta(days=start), FIRST + timedelta(days=start + length - 1))
    monkeypatch.setattr(queries, "MAX_CANDIDATES", max_candidates)
    with sessions() as s:
        totals = dict(s.execute(text("SELECT product_id, reviews FROM product_totals")).all())
        summed = dict(s.execute(text("SELECT product_id, SUM(reviews) FROM sentiment_daily GROUP BY product_id")).all())
        assert totals == summed
        assert queries.products(s, sv, rng, limit, offset) == queries.products_scan(s, sv, rng, limit, offset)
