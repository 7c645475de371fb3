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
