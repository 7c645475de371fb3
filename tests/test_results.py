"""Results: the one "latest result" rule, by analysis time, in export and in the views alike; entity
rows come back exactly as written, on SQLite (INSERT) and on PostgreSQL (COPY), whatever their text."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import select, text

from conftest import make_settings
from worker import batches, jobs, registry, results
from worker.db import session_factory
from worker.nlp.types import Entity, Sentiment
from worker.results import iter_export
from worker.resources import Resources
from worker.rollups import ReviewFacts, entity_key, utc_day
from worker.schema import EntityRow, JobReview, ModelVersion, Review


def _reprocess_all(resources) -> None:
    job = jobs.create_reprocess(resources.sessions, description="reprocess all")
    batches.run_to_end(resources, job, jobs.pending_ids(resources.sessions, job))
    with resources.sessions() as s:
        assert jobs.progress(s, job).status == "done"


def _shown_versions(resources) -> tuple[set, set, set]:
    with resources.sessions() as s:
        exported = list(iter_export(s))
        view = set(s.execute(text("SELECT model_version FROM latest_sentiment")).scalars())
        mentions = set(s.execute(text("SELECT model_version FROM entity_mentions")).scalars())
    return {r["sentiment_model_version"] for r in exported}, view, mentions | {r["ner_model_version"] for r in exported}


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_rollback_then_reprocess_shows_the_active_version(db, request, tiny_models, tmp_path):
    url = request.getfixturevalue("migrated_sqlite" if db == "sqlite" else "migrated_pg")
    settings = make_settings(url, tiny_models, model_dir=str(tmp_path / "versions"))
    resources = Resources(settings)
    with resources.sessions() as s:
        for i in range(6):
            s.add(Review(external_id=f"r{i}", text=f"John Smith liked Paris, film {i}", text_sha256=str(i)))
        s.commit()
    _reprocess_all(resources)  # version 1 of both tasks
    with resources.sessions() as s:
        for task in ("sentiment", "ner"):  # version 2: the same files, registered and promoted
            active = registry.active_versions(s, settings)[task]
            registry.register(s, task, active.source, "candidate", parent_id=active.id)
            registry.promote(s, task, 2)
        s.commit()
    _reprocess_all(resources)
    assert _shown_versions(resources) == ({2}, {2}, {2})
    with resources.sessions() as s:
        registry.rollback(s, "sentiment")
        registry.rollback(s, "ner")
        s.commit()
    _reprocess_all(resources)
    # Version 1's rows are older by id than version 2's; the rule by analysis time still shows them.
    assert _shown_versions(resources) == ({1}, {1}, {1})
    with resources.sessions() as s:
        assert s.query(JobReview).filter(JobReview.status != "done").count() == 0


# --- entity rows: INSERT on SQLite, COPY on PostgreSQL ---------------------------------------------

# What can reach the database: records.py refuses NUL and lone surrogates, which PostgreSQL TEXT cannot hold.
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=30)
# COPY's text format gives these a meaning of their own: each must still come back as itself.
AWKWARD = ["\\N", "a\tb", "line\nbreak", "back\\slash", "\\.", "carriage\rreturn", "quote'\"", "Zoë 東京"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request):
    url = request.getfixturevalue("migrated_sqlite" if request.param == "sqlite" else "migrated_pg")
    return session_factory(url)


_SERIAL = itertools.count(1)  # Hypothesis calls _setup many times on one database


def _setup(sessions, n: int) -> tuple[list[ReviewFacts], int, int]:
    k = next(_SERIAL)
    with sessions() as s:
        versions = [ModelVersion(task=task, version=k, source="x", status="active") for task in ("sentiment", "ner")]
        reviews = [Review(external_id=f"r{k}-{i}", text="x" * 40, text_sha256=f"{i:064d}") for i in range(n)]
        s.add_all(versions + reviews)
        s.commit()
        facts = [ReviewFacts(r.id, utc_day(r.created_at, r.ingested_at), "") for r in reviews]
        return facts, versions[0].id, versions[1].id


def _stored(sessions, ner_id: int) -> list[tuple]:
    with sessions() as s:
        return [tuple(r) for r in s.execute(
            select(EntityRow.review_id, EntityRow.label, EntityRow.text, EntityRow.entity_key, EntityRow.start_char,
                   EntityRow.end_char, EntityRow.score)
            .where(EntityRow.model_version_id == ner_id).order_by(EntityRow.review_id, EntityRow.start_char))]


def _write(sessions, facts, sentiment_id, ner_id, entities) -> None:
    with sessions() as s:
        results.write(s, facts, [Sentiment("positive", 0.9, 0.8)] * len(facts), entities, sentiment_id, ner_id)
        s.commit()


def test_entities_come_back_as_written_and_a_redelivery_replaces_them(sessions):
    facts, sv, nv = _setup(sessions, 3)
    entities = [[Entity("PER", t, 2 * k, 2 * k + 1, 0.5 + k / 100) for k, t in enumerate(AWKWARD)], [],
                [Entity("LOC", "Paris", 0, 5, 0.99)]]
    _write(sessions, facts, sv, nv, entities)
    expected = [(f.id, e.label, e.text, entity_key(e.text), e.start, e.end, pytest.approx(e.score))
                for f, es in zip(facts, entities) for e in es]
    assert _stored(sessions, nv) == expected
    _write(sessions, facts, sv, nv, entities)  # redelivered: the same rows, not twice as many
    assert _stored(sessions, nv) == expected
    _write(sessions, facts, sv, nv, [[], [Entity("ORG", "Sony", 1, 5, 0.7)], []])  # reprocessed: replaced
    assert [row[:3] for row in _stored(sessions, nv)] == [(facts[1].id, "ORG", "Sony")]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXT, min_size=1, max_size=12))
def test_any_entity_text_round_trips(sessions, texts):
    facts, sv, nv = _setup(sessions, 1)
    _write(sessions, facts, sv, nv, [[Entity("MISC", t, k, k + 1, 0.5) for k, t in enumerate(texts)]])
    assert [row[2] for row in _stored(sessions, nv)] == texts


# --- the rollup deltas a write records: new results inserted first, replaced ones read back -------------

# A write: which of 4 reviews, under which (sentiment, NER) version pair, with what labels and entities.
WRITE = st.tuples(
    st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
    st.sampled_from([(0, 0), (0, 1), (1, 0), (1, 1)]),
    st.lists(st.tuples(st.booleans(), st.lists(st.sampled_from(["Paris", "paris", "John's", "Sony"]), max_size=3)),
             min_size=4, max_size=4),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(WRITE, min_size=1, max_size=6))
def test_rollups_equal_sql_over_the_results_after_any_writes(sessions, writes):
    """Redeliveries, reprocessing under another version, a new pairing of sentiment and NER versions:
    whatever the order, the folded rollups equal what SQL computes from the results."""
    from test_rollups import _check
    from worker import rollups

    _empty(sessions)  # each example starts from empty results and rollups
    facts, sv, nv = _setup(sessions, 4)
    with sessions() as s:
        other = [ModelVersion(task=t, version=100 + next(_SERIAL), source="x", status="candidate")
                 for t in ("sentiment", "ner")]
        s.add_all(other)
        s.commit()
        sentiment_ids, ner_ids = (sv, other[0].id), (nv, other[1].id)
    for which, (si, ni), outputs in writes:
        batch = [facts[i] for i in which]
        sentiments = [Sentiment("positive" if outputs[i][0] else "negative", 0.9, 0.5 + i / 10) for i in which]
        entities = [[Entity("LOC", t, k, k + 1, 0.9) for k, t in enumerate(outputs[i][1])] for i in which]
        with sessions() as s:
            results.write(s, batch, sentiments, entities, sentiment_ids[si], ner_ids[ni])
            s.commit()
            rollups.fold_pending(s)
        _check(str(sessions.kw["bind"].url.render_as_string(hide_password=False)))


def _empty(sessions) -> None:
    with sessions() as s:
        for table in ("rollup_deltas", "entity_totals", "entity_daily", "product_totals", "sentiment_day_totals",
                      "sentiment_daily", "entities", "ner_results", "sentiment_results", "reviews", "model_versions"):
            s.execute(text(f"DELETE FROM {table}"))
        s.commit()


ANY_TEXT = TEXT | st.sampled_from(AWKWARD)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(products=st.lists(ANY_TEXT, min_size=1, max_size=3), texts=st.lists(ANY_TEXT, min_size=1, max_size=6))
def test_the_fold_keeps_any_product_and_entity_text_apart(sessions, products, texts):
    """The journal carries product ids and entity keys as JSON, and PostgreSQL's fold reads them back
    in SQL (jsonb): whatever a review's product id or an entity's text, the rollups equal SQL over
    the results."""
    from test_rollups import _check
    from worker import rollups

    _empty(sessions)
    facts, sv, nv = _setup(sessions, len(products))
    with sessions() as s:
        for f, product in zip(facts, products):
            s.execute(text("UPDATE reviews SET product_id = :p WHERE id = :i"), {"p": product, "i": f.id})
        s.commit()
    facts = [ReviewFacts(f.id, f.day, product) for f, product in zip(facts, products)]
    entities = [[Entity(("PER", "ORG")[k % 2], t, k, k + 1, 0.5 + k / 100) for k, t in enumerate(texts[i::len(facts)])]
                for i in range(len(facts))]
    _write(sessions, facts, sv, nv, entities)
    with sessions() as s:
        assert rollups.fold_pending(s) == 1
    _check(str(sessions.kw["bind"].url.render_as_string(hide_password=False)))


@pytest.mark.postgres
def test_the_rollups_cost_one_statement_per_write_on_postgresql(migrated_pg):
    """A batch of new reviews is written with one statement per results table (and the entities'
    COPY), and the rollups add only the journal row's INSERT: nothing is read back. A redelivered
    batch reads what it replaces: two reads more than without rollups, and the journal row. No
    statement has more than 50 parameters, the most whose parsing psycopg caches (db.any_of)."""
    from sqlalchemy import event

    sessions = session_factory(migrated_pg)
    facts, sv, nv = _setup(sessions, 128)  # two batches as the workers write them
    entities = [[Entity("PER", "John", 0, 4, 0.9)] if k % 2 else [] for k in range(64)]
    counts = {}
    # Each batch written twice, the second time as a redelivery, with and without rollups.
    for name, batch, with_rollups in (("new, on", facts[:64], True), ("new, off", facts[64:], False),
                                      ("again, on", facts[:64], True), ("again, off", facts[64:], False)):
        statements: list[str] = []
        engine = sessions.kw["bind"]
        listener = lambda conn, cursor, statement, params, *rest: statements.append((statement, params))  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            with sessions() as s:
                results.write(s, batch, [Sentiment("positive", 0.9, 0.8)] * 64, entities, sv, nv,
                              with_rollups=with_rollups)
                s.commit()
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        counts[name] = [statement.split()[0] for statement, _ in statements]
        assert all(len(params) <= 50 for _, params in statements), [s for s, p in statements if len(p) > 50]
    assert counts["new, on"] == ["INSERT"] * 3
    assert counts["new, off"] == ["INSERT"] * 2
    assert len(counts["again, on"]) == len(counts["again, off"]) + 3
    assert counts["again, on"].count("SELECT") == 2 and "SELECT" not in counts["again, off"]
    with sessions() as s:
        assert s.execute(text("SELECT COUNT(*) FROM rollup_deltas")).scalar() == 2


@pytest.mark.postgres
def test_a_redelivery_racing_the_first_write_counts_once(migrated_pg):
    """A batch redelivered while the first worker still holds its transaction: the second write's
    inserts wait for the first to commit, find its rows and replace them, and the rollups count each
    review once, with the second write's results, as SQL over the results does."""
    import threading

    from test_rollups import _check
    from worker import rollups

    sessions = session_factory(migrated_pg)
    _empty(sessions)
    facts, sv, nv = _setup(sessions, 8)
    first = sessions()
    results.write(first, facts, [Sentiment("positive", 0.9, 0.8)] * 8, [[Entity("PER", "John", 0, 4, 0.9)]] * 8,
                  sv, nv)  # not committed yet
    finished = threading.Event()

    def redelivery() -> None:
        with sessions() as s:
            results.write(s, facts, [Sentiment("negative", 0.8, -0.6)] * 8,
                          [[Entity("ORG", "Acme", 0, 4, 0.8), Entity("LOC", "Paris", 5, 10, 0.7)]] * 8, sv, nv)
            s.commit()
        finished.set()

    thread = threading.Thread(target=redelivery)
    thread.start()
    assert not finished.wait(1.0)  # its inserts wait on the first write's uncommitted rows
    first.commit()
    first.close()
    thread.join(30)
    assert finished.is_set()
    with sessions() as s:
        rollups.fold_pending(s)
        assert s.execute(text("SELECT DISTINCT label FROM sentiment_results")).scalars().all() == ["negative"]
        assert sorted(s.execute(text("SELECT DISTINCT label FROM entities")).scalars()) == ["LOC", "ORG"]
    _check(str(sessions.kw["bind"].url.render_as_string(hide_password=False)))
