"""rollup_deltas' JSON columns are compressed with lz4 on PostgreSQL: the default (pglz) took 1.0 of
a batch's 1.3 ms to store the journal row of 64 reviews with 11 entities each, lz4 0.26 ms
(bench/RESULTS.md, "Insert first"). A server built without lz4, or before PostgreSQL 14, keeps pglz.
SQLite does not compress.

Revision ID: 0009
Revises: 0008
"""
import logging

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)
COLUMNS = ("sentiment", "entities")


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():  # a savepoint: a refusal leaves the migration's transaction usable
            for column in COLUMNS:
                bind.execute(sa.text(f"ALTER TABLE rollup_deltas ALTER COLUMN {column} SET COMPRESSION {method}"))
    except sa.exc.DBAPIError as exc:
        log.warning("rollup_deltas keeps the server's default compression (%s)", str(exc.orig).splitlines()[0])


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("pglz")
