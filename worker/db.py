"""Engine and session factory, and the dialect-specific things the writers need: upserts and bulk updates."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from typing import Callable, Sequence

from sqlalchemy import Engine, any_, bindparam, create_engine, event, func, inspect, select
from sqlalchemy import update as sa_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from .config import redact_url


class DatabaseError(RuntimeError):
    """The database cannot be reached or is not set up; the message says what to do."""


_engines: dict[str, Engine] = {}  # one per URL and process: its pool is the process's connections


def get_engine(url: str) -> Engine:
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = _create_engine(url)
    return engine


def forget_engines() -> None:
    """Drop every engine, so the next get_engine connects afresh (tests that change PGTZ, say)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    return engine


def _forget_inherited_connections() -> None:
    """In a forked child (a prefork worker), the pooled connections belong to the parent: sharing one
    socket between processes corrupts both sides' conversation with the server. The child drops them
    without closing them (closing would end the parent's), and opens its own."""
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    # WAL: readers (status, dashboards) don't block the writer. The mode is stored in the file, so only
    # the first connection ever needs to set it; setting it takes an exclusive lock and fails at once,
    # without waiting, while another process holds one (a migration, say), which has set it already.
    try:
        if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cur.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


def check_schema(url: str) -> None:
    """Fail with a clear message when the database is unreachable or has no schema yet."""
    try:
        with get_engine(url).connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except Exception as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise DatabaseError(f"cannot connect to the database {redact_url(url)}: {reason}") from exc
    if "reviews" not in tables:
        raise DatabaseError(f"the database {redact_url(url)} has no schema yet: run `reviews db upgrade`")


def insert(session: Session, model):
    """An INSERT that supports ON CONFLICT on both PostgreSQL and SQLite."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def any_of(session: Session, column, values: Sequence):
    """`column IN values`, as `column = ANY(:array)` on PostgreSQL: one parameter where IN sends one per
    value. psycopg caches the parsing of a statement only up to 50 parameters; a batch's IN list of 64
    ids cost 2 ms of worker CPU to re-parse, each time (bench/RESULTS.md, "The rollups' overhead")."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(list(values))


def _rows_as_arrays(table, rows: list[dict]):
    """PostgreSQL: SELECT unnest(:col1), unnest(:col2), ... over the rows, one array parameter per column:
    a single statement to plan and run, where executemany sent one statement per row."""
    columns = list(rows[0])
    arrays = [func.unnest(bindparam(None, [r[c] for r in rows], type_=postgresql.ARRAY(table.c[c].type)))
              for c in columns]
    return columns, select(*arrays)


def _last_per_key(rows: list[dict], index_elements: list[str]) -> list[dict]:
    """Rows with the same key: the last one wins, as if executed one by one."""
    return list({tuple(r[k] for k in index_elements): r for r in rows}.values())


def upsert(session: Session, model, rows: list[dict], index_elements: list[str],
           update: Callable[[object], dict]) -> None:
    """INSERT `rows` ON CONFLICT (index_elements) DO UPDATE SET update(stmt) (`stmt.excluded` is the
    row that was refused). Rows with the same key: the last one wins, as if executed one by one.
    PostgreSQL gets one statement whose rows come from arrays (_rows_as_arrays); SQLite runs
    in-process, where executemany costs little."""
    if not rows:
        return
    rows = _last_per_key(rows, index_elements)
    table = getattr(model, "__table__", model)
    if session.get_bind().dialect.name == "postgresql":
        columns, source = _rows_as_arrays(table, rows)
        stmt = postgresql.insert(table).from_select(columns, source)
        session.execute(stmt.on_conflict_do_update(index_elements=index_elements, set_=update(stmt)))
        return
    stmt = sqlite.insert(table)
    session.execute(stmt.on_conflict_do_update(index_elements=index_elements, set_=update(stmt)), rows)


def insert_new(session: Session, model, rows: list[dict], index_elements: list[str]) -> set[tuple]:
    """INSERT the `rows` whose key (index_elements) is not in the table yet, leaving the others as they
    are (ON CONFLICT DO NOTHING); returns the keys inserted. A writer that mostly writes new rows
    learns from this which rows it replaces, without reading first (results.write)."""
    if not rows:
        return set()
    rows = _last_per_key(rows, index_elements)
    table = getattr(model, "__table__", model)
    keys = [table.c[k] for k in index_elements]
    if session.get_bind().dialect.name == "postgresql":
        columns, source = _rows_as_arrays(table, rows)
        stmt = postgresql.insert(table).from_select(columns, source)
        return {tuple(r) for r in session.execute(stmt.on_conflict_do_nothing(index_elements=index_elements)
                                                  .returning(*keys))}
    stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements).returning(*keys)
    return {tuple(r) for r in session.execute(stmt, rows)}


def update_by_id(session: Session, model, column: str, values: dict[int, object]) -> None:
    """UPDATE model SET column = values[id] for each id (`model` a mapped class keyed by `id`).
    PostgreSQL gets one statement joined to two arrays (unnest), where executemany sent one UPDATE
    per row: 10 of a batch's 118 ms on the 2-core host (bench/RESULTS.md, "Worker CPU per batch")."""
    if not values:
        return
    table = model.__table__
    if session.get_bind().dialect.name == "postgresql":
        pairs = func.unnest(bindparam(None, list(values), type_=postgresql.ARRAY(table.c.id.type)),
                            bindparam(None, list(values.values()), type_=postgresql.ARRAY(table.c[column].type))
                            ).table_valued("id", "value").render_derived()
        session.execute(sa_update(table).where(table.c.id == pairs.c.id).values({column: pairs.c.value}))
    else:
        # The ORM's bulk UPDATE by primary key: one executemany, cheap in-process.
        session.execute(sa_update(model), [{"id": k, column: v} for k, v in values.items()])
