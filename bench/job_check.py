"""What a batch pays to ask whether its job is complete, on PostgreSQL, for jobs of growing size:
counting the job's reviews by status (`jobs.progress`, which every batch ran before) against
`jobs.finish_if_complete` (one index probe while reviews are pending). Half of each job's reviews
are pending. A scratch database, dropped at the end.

    python bench/job_check.py --reviews 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from worker import db, jobs, migrate  # noqa: E402


def median_ms(sessions, call, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        with sessions() as s:
            started = time.perf_counter()
            call(s)
            samples.append(1000 * (time.perf_counter() - started))
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--database", default="job_check_bench")
    ap.add_argument("--reviews", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    url = make_url(args.admin_url).set(database=args.database).render_as_string(hide_password=False)
    print(f"# {machine()}; median of {args.rounds} calls; half of each job's reviews pending")
    print("| reviews in the job | count by status (before) ms | finish_if_complete ms |\n| ---: | ---: | ---: |")
    for n in args.reviews:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)"))
            conn.execute(text(f"CREATE DATABASE {args.database}"))
        try:
            migrate.upgrade(url)
            sessions = db.session_factory(url)
            job = jobs.create(sessions, "bench")
            with db.get_engine(url).begin() as conn:  # rows by SQL: a million ORM objects would take minutes
                conn.execute(text("INSERT INTO reviews (external_id, text, text_sha256, ingested_at, metadata) "
                                  "SELECT 'r' || g, 'x', lpad(g::text, 64, '0'), now(), '{}' "
                                  "FROM generate_series(1, :n) g"), {"n": n})
                conn.execute(text("UPDATE jobs SET status = 'queued' WHERE id = :job"), {"job": job})
                conn.execute(text("INSERT INTO job_reviews (job_id, review_id, status, updated_at) "
                                  "SELECT :job, id, CASE WHEN id % 2 = 0 THEN 'done' ELSE 'pending' END, now() "
                                  "FROM reviews"), {"job": job})
                conn.execute(text("ANALYZE"))
            count = median_ms(sessions, lambda s: jobs.progress(s, job), args.rounds)
            probe = median_ms(sessions, lambda s: jobs.finish_if_complete(s, job), args.rounds)
            print(f"| {n:,} | {count:.2f} | {probe:.2f} |", flush=True)
        finally:
            db.get_engine(url).dispose()
            db.forget_engines()
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)"))


if __name__ == "__main__":
    main()
