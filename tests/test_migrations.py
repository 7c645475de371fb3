"""Migrations go up and down on SQLite and PostgreSQL, and the schema matches the models."""

import pytest
from sqlalchemy import inspect

from worker import migrate
from worker.db import get_engine

TABLES = {"jobs", "reviews", "job_reviews", "model_versions", "sentiment_results", "ner_results", "entities",
          "labels", "rejected_lines", "sentiment_daily", "entity_daily", "rollup_deltas", "entity_totals",
          "product_totals", "sentiment_day_totals"}
VIEWS = {"latest_sentiment", "sentiment_by_product_day", "entity_mentions"}


def _check_up_and_down(url):
    migrate.upgrade(url)
    insp = inspect(get_engine(url))
    assert TABLES <= set(insp.get_table_names())
    assert VIEWS <= set(insp.get_view_names())
    migrate.downgrade(url, "0001")
    insp = inspect(get_engine(url))
    assert not VIEWS & set(insp.get_view_names())
    migrate.downgrade(url, "base")
    assert not TABLES & set(inspect(get_engine(url)).get_table_names())
    migrate.upgrade(url)
    assert migrate.current(url) == "0009"
    _check_foreign_keys(inspect(get_engine(url)))
    migrate.downgrade(url, "0007")  # and back: the rollups' keys return
    assert {t for t in ROLLUPS if inspect(get_engine(url)).get_foreign_keys(t)} == ROLLUPS
    migrate.upgrade(url)


ROLLUPS = {"sentiment_daily", "entity_daily", "entity_totals", "product_totals", "sentiment_day_totals"}


def _check_foreign_keys(insp) -> None:
    """Results keep their keys to model_versions; the rollups, derived from them, have none (0008)."""
    assert not [t for t in ROLLUPS if insp.get_foreign_keys(t)]
    for table in ("sentiment_results", "ner_results", "entities"):
        assert {k["referred_table"] for k in insp.get_foreign_keys(table)} >= {"model_versions"}


def test_sqlite_up_and_down(sqlite_url):
    _check_up_and_down(sqlite_url)


@pytest.mark.postgres
def test_postgres_up_and_down(pg_url):
    _check_up_and_down(pg_url)


@pytest.mark.postgres
def test_the_journal_is_compressed_with_lz4_where_the_server_has_it(pg_url):
    """0009: rollup_deltas' JSON columns use lz4 (pglz cost the writer 1 ms a batch), and go back to
    the default on the way down; a server without lz4 keeps its default and the upgrade succeeds."""
    from sqlalchemy import text

    def methods() -> set[str]:
        with get_engine(pg_url).connect() as conn:
            return set(conn.execute(text(
                "SELECT attcompression FROM pg_attribute WHERE attrelid = 'rollup_deltas'::regclass "
                "AND attname IN ('sentiment', 'entities')")).scalars())

    migrate.upgrade(pg_url)
    with get_engine(pg_url).connect() as conn:
        try:
            conn.execute(text("SET default_toast_compression = 'lz4'"))
            has_lz4 = True
        except Exception:
            has_lz4 = False
    assert methods() == ({"l"} if has_lz4 else {""})
    migrate.downgrade(pg_url, "0008")
    assert methods() == ({"p"} if has_lz4 else {""})
    migrate.upgrade(pg_url)
    assert migrate.current(pg_url) == "0009"


def test_models_match_the_migrations(migrated_sqlite):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from worker.schema import Base

    with get_engine(migrated_sqlite).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_down_and_up_keeps_the_data(db, request, tiny_models, tmp_path):
    """SQLite alters a table by copying it: with foreign keys on, dropping the old copy would cascade
    into every table that points at it. Going down to 0002 and back must lose no row."""
    from click.testing import CliRunner
    from sqlalchemy import text

    from cli.main import main
    from conftest import make_settings, settings_env, write_jsonl

    url = request.getfixturevalue("migrated_sqlite" if db == "sqlite" else "migrated_pg")
    env = settings_env(make_settings(url, tiny_models, model_dir=str(tmp_path / "v")))
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": f"r{i}", "text": f"John Smith in Paris, {i}"} for i in range(9)])
    assert CliRunner().invoke(main, ["run", str(path)], env=env).exit_code == 0
    tables = ["reviews", "jobs", "job_reviews", "sentiment_results", "ner_results", "entities", "model_versions"]

    def counts():
        with get_engine(url).connect() as conn:
            return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in tables}

    before = counts()
    assert before["job_reviews"] == 9 and before["sentiment_results"] == 9
    migrate.downgrade(url, "0002")
    migrate.upgrade(url)
    assert counts() == before
