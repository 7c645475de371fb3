"""Migrations go up and down on SQLite and PostgreSQL, and the schema matches the models."""

import pytest
from sqlalchemy import inspect

from worker import migrate
from worker.db import get_engine

TABLES = {"jobs", "reviews", "job_reviews", "model_versions", "sentiment_results", "ner_results", "entities",
          "labels", "rejected_lines"}
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
    assert migrate.current(url) == "0005"


def test_sqlite_up_and_down(sqlite_url):
    _check_up_and_down(sqlite_url)


@pytest.mark.postgres
def test_postgres_up_and_down(pg_url):
    _check_up_and_down(pg_url)


def test_models_match_the_migrations(migrated_sqlite):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from worker.schema import Base

    with get_engine(migrated_sqlite).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
