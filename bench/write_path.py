"""The write path on PostgreSQL: `worker.results.write` for batches of new reviews, as shipped (one
statement per table, rows as arrays; entities by COPY) against the executemany path it replaced (one
statement per row in psycopg's pipeline; entities as multi-row INSERTs), each with the dashboard
rollups kept and without them, in interleaved rounds on a scratch database that is dropped at the end.

    python bench/write_path.py                                  # 3 entities per review, 30 batches per arm
    python bench/write_path.py --entities 145 --batches 10      # what random models emit
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.dialects import postgresql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from worker import db, migrate, results, rollups  # noqa: E402
from worker.nlp.types import Entity, Sentiment  # noqa: E402
from worker.rollups import ReviewFacts  # noqa: E402
from worker.schema import EntityRow, ModelVersion, Review  # noqa: E402


def executemany_upsert(session, model, rows, index_elements, update) -> None:
    """The path before db.upsert: one statement per row, sent by psycopg's executemany."""
    if rows:
        stmt = postgresql.insert(model)
        session.execute(stmt.on_conflict_do_update(index_elements=index_elements, set_=update(stmt)), rows)


def insert_entities(session, rows) -> None:
    """The path before COPY."""
    session.execute(EntityRow.__table__.insert(), rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--database", default="write_path_bench")
    ap.add_argument("--batches", type=int, default=30, help="batches per arm")
    ap.add_argument("--size", type=int, default=64, help="reviews per batch")
    ap.add_argument("--entities", type=int, default=3, help="entities per review")
    ap.add_argument("--days", type=int, default=30, help="the reviews' created_at spread over this many days")
    args = ap.parse_args()

    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    url = make_url(args.admin_url).set(database=args.database).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {args.database}"))
    try:
        migrate.upgrade(url)
        run(url, args)
    finally:
        db.get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)"))


def run(url: str, args) -> None:
    sessions = db.session_factory(url)
    arms = [(path, kept) for path in ("shipped", "executemany") for kept in (True, False)]
    now = datetime.now(timezone.utc)
    with sessions() as s:
        versions = [ModelVersion(task=t, version=1, source="x", status="active") for t in ("sentiment", "ner")]
        reviews = [Review(external_id=f"r{i}", text="x" * 400, text_sha256=f"{i:064d}", product_id=f"p{i % 50}",
                          created_at=now - timedelta(days=i % args.days))
                   for i in range(args.batches * len(arms) * args.size)]
        s.add_all(versions + reviews)
        s.commit()
        facts = [ReviewFacts(r.id, rollups.utc_day(r.created_at, r.ingested_at), r.product_id) for r in reviews]
        sv, nv = versions[0].id, versions[1].id
    timings: dict[tuple, list[float]] = {arm: [] for arm in arms}
    shipped = (results.upsert, rollups.upsert, results.insert_entities, rollups.update)
    for k in range(args.batches * len(arms)):
        path, kept = arms[k % len(arms)]  # interleaved: every arm sees the same machine load
        batch = facts[k * args.size:(k + 1) * args.size]
        sentiments = [Sentiment("positive" if r.id % 3 else "negative", 0.9, 0.8) for r in batch]
        entities = [[Entity(("PER", "ORG", "LOC", "MISC")[j % 4], f"Name {(r.id * 7 + j) % 300}", 10 * j, 10 * j + 8,
                            0.9) for j in range(args.entities)] for r in batch]
        if path == "executemany":
            results.upsert = rollups.upsert = executemany_upsert
            results.insert_entities = insert_entities
        if not kept:
            rollups.update = lambda *a, **kw: None
        try:
            with sessions() as s:
                started = time.perf_counter()
                results.write(s, batch, sentiments, entities, sv, nv)
                s.commit()
                timings[(path, kept)].append(1000 * (time.perf_counter() - started))
        finally:
            results.upsert, rollups.upsert, results.insert_entities, rollups.update = shipped
    print(f"# {machine()}; batches of {args.size} new reviews, {args.entities} entities each, over {args.days} days;"
          f" {args.batches} batches per arm, interleaved")
    print("| path | rollups | p50 ms | p95 ms | reviews/s | vs executemany |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for path, kept in arms:
        samples = timings[(path, kept)]
        p50 = statistics.median(samples)
        p95 = statistics.quantiles(samples, n=20)[-1]
        base = statistics.median(timings[("executemany", kept)])
        print(f"| {path} | {'kept' if kept else 'off'} | {p50:.1f} | {p95:.1f} | {args.size / p50 * 1000:,.0f} "
              f"| {base / p50:.2f}x |")
    for path in ("shipped", "executemany"):
        on, off = statistics.median(timings[(path, True)]), statistics.median(timings[(path, False)])
        print(f"{path}: the rollups make a batch {on / off - 1:+.0%} slower")


if __name__ == "__main__":
    main()
