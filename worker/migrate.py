"""Apply Alembic migrations programmatically, so `reviews db upgrade` works from an installed package.

Migrations run under a lock, so that two processes starting at once on a fresh database (two
`reviews run`, a compose `migrate` beside a worker) never both create the tables: the second waits,
then finds the schema at its revision and does nothing. PostgreSQL: a transaction-level advisory lock;
SQLite: an exclusive transaction, which DDL respects there.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations

from .db import get_engine

ADVISORY_KEY = 0x7265766965777321  # "reviews!": one lock for this schema's migrations


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _locked(url: str):
    """A connection in a transaction that holds the migration lock until it commits."""
    engine = get_engine(url)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            # SQLite alters a table by copying it and dropping the old one; with foreign keys on, that
            # drop would cascade and delete the rows of every table that points at it (job_reviews,
            # results...). The pragma only takes effect outside a transaction, hence before BEGIN.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.exec_driver_sql("BEGIN EXCLUSIVE")  # waits for the other writer, up to the busy timeout
            try:
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration left rows pointing nowhere: {broken[:5]}")
                conn.exec_driver_sql("COMMIT")
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            finally:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_KEY})")
            yield conn


def upgrade(url: str, revision: str = "head") -> None:
    with _locked(url) as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(url: str, revision: str) -> None:
    with _locked(url) as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
