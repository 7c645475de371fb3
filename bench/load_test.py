"""Load test: enqueue real IMDb reviews and process them with two worker processes, end to end on
Redis and PostgreSQL; report throughput, peak memory, and the totals checked in the database.

    python bench/load_test.py                      # all 50,000 unlabeled IMDb reviews, small models
    python bench/load_test.py --reviews 5000 --models bundled

It also enqueues a tenth of the file alone first, so that the peak memory of `reviews enqueue` can be
compared across file sizes: it should stay flat, since the file is streamed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imdb" / "unsup.jsonl.gz"
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DB_NAME = "reviews_load"


def run_measured(cmd: list[str], env: dict) -> tuple[int, float, float, str]:
    """(exit code, seconds, peak RSS in MiB, output) of a child process."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.monotonic() - started, usage.ru_maxrss / 1024, out


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--reviews", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", choices=["small", "bundled"], default="small",
                    help="small: random DistilBERTs (dim 32) that measure the pipeline, not the model")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="reviews-load-"))
    path = tmp / "reviews.jsonl"
    with gzip.open(args.data, "rt", encoding="utf-8") as src, path.open("w", encoding="utf-8") as dst:
        for n, line in enumerate(src):
            if n == args.reviews:
                break
            dst.write(line)
    tenth = tmp / "tenth.jsonl"
    with path.open() as src, tenth.open("w") as dst:
        for n, line in enumerate(src):
            if n == args.reviews // 10:
                break
            dst.write(json.dumps({**json.loads(line), "id": f"tenth-{n}"}) + "\n")

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {DB_NAME}"))
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}"
    env = {**os.environ, "REVIEWS_DATABASE_URL": url, "REVIEWS_BROKER_URL": "redis://127.0.0.1:6379/13",
           "REVIEWS_BATCH_SIZE": str(args.batch_size), "PYTHONUNBUFFERED": "1"}
    if args.models == "small":
        from tiny_models import save_tiny

        env["REVIEWS_SENTIMENT_MODEL"] = str(save_tiny(tmp / "sentiment", "sentiment"))
        env["REVIEWS_NER_MODEL"] = str(save_tiny(tmp / "ner", "ner"))
        env["REVIEWS_MAX_LENGTH"] = "64"
        env["REVIEWS_WINDOW_STRIDE"] = "16"
    import redis

    redis.Redis.from_url(env["REVIEWS_BROKER_URL"]).flushdb()
    reviews_cmd = [sys.executable, "-m", "cli.main"]
    subprocess.run(reviews_cmd + ["db", "upgrade"], env=env, check=True, capture_output=True)

    code, small_s, small_rss, out = run_measured(reviews_cmd + ["enqueue", str(tenth)], env)
    assert code == 0, out
    code, enqueue_s, enqueue_rss, out = run_measured(reviews_cmd + ["enqueue", str(path)], env)
    assert code == 0, out
    job = int(out.split()[0])
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    workers = [
        subprocess.Popen(reviews_cmd + ["worker", "--hostname", f"load{i}@%h", "--loglevel", "WARNING"],
                         env={**env, "REVIEWS_THREADS": str(threads)}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        for i in range(args.workers)
    ]
    engine = create_engine(url)
    from worker.schema import JobReview, NerResult, Review, SentimentResult

    started = time.monotonic()
    peaks = [0.0] * len(workers)
    try:
        while True:
            with engine.connect() as conn:
                done = conn.scalar(select(func.count()).where(JobReview.status != "pending"))
            peaks = [max(p, peak_rss_mib(w.pid)) for p, w in zip(peaks, workers)]
            total = args.reviews + args.reviews // 10
            elapsed = time.monotonic() - started
            print(f"\r{done}/{total} reviews, {done / max(elapsed, 1e-9):.0f}/s", end="", file=sys.stderr)
            if done >= total:
                break
            time.sleep(1)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(120)
    elapsed = time.monotonic() - started
    print(file=sys.stderr)
    with engine.connect() as conn:
        counts = {name: conn.scalar(select(func.count()).select_from(model)) for name, model in
                  [("reviews", Review), ("sentiment_results", SentimentResult), ("ner_results", NerResult)]}
        dupes = conn.scalar(select(func.count()).select_from(
            select(SentimentResult.review_id).group_by(SentimentResult.review_id, SentimentResult.model_version_id)
            .having(func.count() > 1).subquery()))
        statuses = dict(conn.execute(select(JobReview.status, func.count()).where(JobReview.job_id == job)
                                     .group_by(JobReview.status)).all())
    print(f"models: {args.models}; workers: {args.workers} processes x {threads} torch threads; "
          f"batch size {args.batch_size}")
    print(f"enqueue {args.reviews // 10:,} reviews: {small_s:.1f} s, peak RSS {small_rss:.0f} MiB")
    print(f"enqueue {args.reviews:,} reviews: {enqueue_s:.1f} s ({args.reviews / enqueue_s:,.0f}/s), "
          f"peak RSS {enqueue_rss:.0f} MiB")
    print(f"processing {total:,} reviews: {elapsed:.1f} s ({total / elapsed:,.0f} reviews/s)")
    print(f"worker peak RSS: {', '.join(f'{p:.0f} MiB' for p in peaks)}")
    print(f"database: {counts}, duplicate results: {dupes}, job {job} statuses: {statuses}")
    ok = counts["reviews"] == total and counts["sentiment_results"] == total and counts["ner_results"] == total
    print("totals check:", "OK" if ok and dupes == 0 else "MISMATCH")


if __name__ == "__main__":
    main()
