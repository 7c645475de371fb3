"""Results: the one "latest result" rule, by analysis time, in export and in the views alike."""

import pytest
from sqlalchemy import text

from conftest import make_settings
from worker import batches, jobs, registry
from worker.results import iter_export
from worker.resources import Resources
from worker.schema import JobReview, Review


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
