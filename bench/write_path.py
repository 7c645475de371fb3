"""The write path on PostgreSQL: `worker.results.write` for batches of new reviews (one statement per
table, rows as arrays; entities by COPY) with the dashboard rollups kept three ways, in interleaved
rounds on a scratch database that is dropped at the end:

- journal: as shipped, the batch's rollup deltas appended as one row of `rollup_deltas`, folded into
  the rollup tables later (rollups.fold_pending after every --fold-every journal batches, as a worker
  folds every REVIEWS_ROLLUP_FOLD_SECONDS; timed per batch folded);
- in transaction: the deltas upserted into the rollup tables in the writer's transaction (the path
  before the journal);
- off: no rollups at all.

Each batch is written as a worker writes it (`worker.batches.store`: one transaction with the
reviews' languages, the results, the job's review states; then the job's completion check); the
table shows that whole write and, within it, `results.write` (its statements, before the commit).

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from worker import batches, db, jobs, migrate, results, rollups  # noqa: E402
from worker.nlp.types import Entity, Sentiment  # noqa: E402
from worker.rollups import ReviewFacts  # noqa: E402
from worker.schema import EntityDaily, ModelVersion, Review, SentimentDaily  # noqa: E402

ARMS = ("journal", "in transaction", "off")


def upsert_in_transaction(session, sent, ents) -> None:
    """The path before the journal: rollups.deltas applied to the rollup rows at once."""
    rollups._apply(session, SentimentDaily, rollups.SENTIMENT_KEYS, rollups.SENTIMENT_SUMS, sent)
    rollups._apply(session, EntityDaily, rollups.ENTITY_KEYS, rollups.ENTITY_SUMS, ents)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--database", default="write_path_bench")
    ap.add_argument("--batches", type=int, default=30, help="batches per arm")
    ap.add_argument("--size", type=int, default=64, help="reviews per batch")
    ap.add_argument("--entities", type=int, default=3, help="entities per review")
    ap.add_argument("--days", type=int, default=30, help="the reviews' created_at spread over this many days")
    ap.add_argument("--fold-every", type=int, default=10, help="journal batches per fold")
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
    now = datetime.now(timezone.utc)
    with sessions() as s:
        versions = [ModelVersion(task=t, version=1, source="x", status="active") for t in ("sentiment", "ner")]
        reviews = [Review(external_id=f"r{i}", text="x" * 400, text_sha256=f"{i:064d}", product_id=f"p{i % 50}",
                          created_at=now - timedelta(days=i % args.days))
                   # one more than the batches write: the job stays open, so its last batch folds nothing
                   for i in range(args.batches * len(ARMS) * args.size + 1)]
        s.add_all(versions + reviews)
        s.commit()
        facts = [ReviewFacts(r.id, rollups.utc_day(r.created_at, r.ingested_at), r.product_id) for r in reviews]
        sv, nv = versions[0].id, versions[1].id
    job = jobs.create_reprocess(sessions)  # every review pending in one job, as a worker finds them
    timings: dict[str, list[float]] = {arm: [] for arm in ARMS}
    whole: dict[str, list[float]] = {arm: [] for arm in ARMS}
    folds: list[tuple[float, int]] = []  # (ms, journal rows folded)
    shipped, write = rollups.record, results.write
    for k in range(args.batches * len(ARMS)):
        arm = ARMS[k % len(ARMS)]  # interleaved: every arm sees the same machine load
        batch = facts[k * args.size:(k + 1) * args.size]
        sentiments = [Sentiment("positive" if r.id % 3 else "negative", 0.9, 0.8) for r in batch]
        entities = [[Entity(("PER", "ORG", "LOC", "MISC")[j % 4], f"Name {(r.id * 7 + j) % 300}", 10 * j, 10 * j + 8,
                            0.9) for j in range(args.entities)] for r in batch]
        part: list[float] = []

        def timed(session, *a, **kw) -> None:  # results.write within store(), before its commit
            started = time.perf_counter()
            write(session, *a, **kw)
            part.append(1000 * (time.perf_counter() - started))

        if arm == "in transaction":
            rollups.record = upsert_in_transaction
        results.write = timed
        try:
            started = time.perf_counter()
            batches.store(sessions, job, {r.id: "en" for r in batch}, batch, sentiments, entities, (sv, nv), {},
                          with_rollups=arm != "off")
            whole[arm].append(1000 * (time.perf_counter() - started))
            timings[arm].append(part[0])
        finally:
            rollups.record, results.write = shipped, write
        if arm == "journal" and len(whole[arm]) % args.fold_every == 0:
            with sessions() as s:
                started = time.perf_counter()
                folded = rollups.fold_pending(s)
                folds.append((1000 * (time.perf_counter() - started), folded))
    assert sum(n for _, n in folds) == args.batches - args.batches % args.fold_every
    print(f"# {machine()}; batches of {args.size} new reviews, {args.entities} entities each, over {args.days} days;"
          f" {args.batches} batches per arm, interleaved")
    print("| rollups | write | p50 ms | p95 ms | reviews/s | vs off |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for what, samples_of in (("the batch's (store)", whole), ("results.write", timings)):
        off = statistics.median(samples_of["off"])
        for arm in ARMS:
            samples = samples_of[arm]
            p50 = statistics.median(samples)
            p95 = statistics.quantiles(samples, n=20)[-1]
            print(f"| {arm} | {what} | {p50:.1f} | {p95:.1f} | {args.size / p50 * 1000:,.0f} | {p50 / off - 1:+.0%} |")
    fold_ms = statistics.median(ms / n for ms, n in folds)
    print(f"fold: {len(folds)} folds of {args.fold_every} journal rows, p50 {fold_ms:.2f} ms per batch folded")
    per_batch = statistics.median(whole["journal"]) + fold_ms
    off = statistics.median(whole["off"])
    print(f"the batch's write with the journal and its fold, per batch: {per_batch:.1f} ms ({per_batch / off - 1:+.0%} "
          "over off)")


if __name__ == "__main__":
    main()
