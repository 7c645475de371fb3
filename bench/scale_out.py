"""Scale-out ceiling, by simulation: the real task, the real write path, real Redis and PostgreSQL on
loopback, and a stub analyser in place of the models (a fixed cost per token, slept, not computed, so
that many workers fit on a small machine), for 1 to 32 worker processes. Prints reviews/s per worker
count and where each batch's time goes (analysis, result and rollup writes, job bookkeeping), and
saves a plot.

    python bench/scale_out.py                       # 1, 2, 4, 8, 16, 32 workers, 6,400 reviews each
    python bench/scale_out.py --workers 1 4 16 --reviews 3200 --us-per-token 20
    python bench/scale_out.py --workers 1 2 4 --us-per-token 0 --compare-rollups   # the rollups' share

With a stub that costs nothing, the ceiling is the host: on a 2-core machine the workers, PostgreSQL
and Redis share the two cores, so what saturates first is the CPU, and the breakdown says who spends it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DB_NAME = "reviews_scale"
BROKER = "redis://127.0.0.1:6379/13"
WORDS = "the film about John Smith in Paris was great and the acting by Mary Jones in Berlin was good".split()


# -- the worker side: the real app with a stub analyser ----------------------------------------------


def run_worker(concurrency: int, us_per_token: float, entities: int, timings: str, rollups: bool = True) -> None:
    """A `reviews worker` whose models are stubs; per-process timings are appended to `timings`.
    rollups=False: results without rollup deltas (batches.store's baseline switch)."""
    import functools

    from worker import batches, jobs, resources, results
    from worker.app import create_app
    from worker.config import Settings
    from worker.nlp.types import Entity, Sentiment

    class Stub:
        def __init__(self, task: str):
            # Keys that differ: batches.analyse's predict_both then calls each model's predict on the texts.
            self.task = self.tokenizer_key = task

        def predict(self, texts: list[str]):
            time.sleep(us_per_token * 1e-6 * sum(len(t.split()) for t in texts))
            if self.task == "sentiment":
                return [Sentiment("positive" if len(t) % 2 else "negative", 0.9, 0.8) for t in texts]
            return [[Entity("PER", t[k * 5:k * 5 + 4], k * 5, k * 5 + 4, 0.9) for k in range(entities)]
                    for t in texts]

        def start(self, texts: list[str], encoded=None):  # predict_both's two halves
            return texts

        def finish(self, texts: list[str]):
            return self.predict(texts)

    resources.load_sentiment = lambda source, options=None, **kw: Stub("sentiment")
    resources.load_ner = lambda source, options=None, **kw: Stub("ner")
    spent = {"analyse": 0.0, "write": 0.0, "bookkeeping": 0.0, "batches": 0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - started
        return wrapper

    real_analyse = batches.analyse

    def analyse(*args, **kwargs):
        spent["batches"] += 1
        started = time.perf_counter()
        try:
            return real_analyse(*args, **kwargs)
        finally:
            spent["analyse"] += time.perf_counter() - started
            with open(timings, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), **spent}) + "\n")

    batches.analyse = analyse
    if not rollups:
        batches.store = functools.partial(batches.store, with_rollups=False)
    results.write = timed("write", results.write)
    jobs.mark_reviews = timed("bookkeeping", jobs.mark_reviews)
    jobs.finish_if_complete = timed("bookkeeping", jobs.finish_if_complete)
    app = create_app(Settings.from_env())
    app.worker_main(["worker", "-Q", "inference", "--pool", "prefork", "--concurrency", str(concurrency),
                     "--loglevel", "WARNING", "--without-mingle", "--without-gossip"])


# -- the driver --------------------------------------------------------------------------------------


def admin(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def measure(n_workers: int, args, env: dict, tmp: Path, rollups: bool = True) -> dict:
    import redis
    from sqlalchemy import create_engine, text

    admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    admin(f"CREATE DATABASE {DB_NAME}")
    redis.Redis.from_url(BROKER).flushdb()
    subprocess.run([sys.executable, "-m", "cli.main", "db", "upgrade"], env=env, check=True, capture_output=True)
    path = tmp / f"reviews-{n_workers}.jsonl"
    with path.open("w") as f:
        for i in range(args.reviews):
            words = [WORDS[(i + k) % len(WORDS)] for k in range(args.tokens)]
            f.write(json.dumps({"id": f"s{i}", "text": " ".join(words), "product_id": f"p{i % 50}"}) + "\n")
    timings = Path(tempfile.mkstemp(suffix=".jsonl", prefix=f"timings-{n_workers}-", dir=tmp)[1])  # one per run
    worker = subprocess.Popen([sys.executable, __file__, "--run-worker", str(n_workers), "--us-per-token",
                               str(args.us_per_token), "--entities", str(args.entities), "--timings", str(timings)]
                              + ([] if rollups else ["--no-rollups"]),
                              env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "worker.log").open("a"))
    try:
        time.sleep(3 + n_workers * 0.2)  # children started
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "cli.main", "enqueue", str(path)], env=env, check=True,
                             capture_output=True, text=True)
        job = int(out.stdout.split()[0])
        enqueued = time.monotonic() - started
        engine = create_engine(env["REVIEWS_DATABASE_URL"])
        while True:
            with engine.connect() as conn:
                status = conn.execute(text("SELECT status FROM jobs WHERE id = :j"), {"j": job}).scalar()
            if status in ("done", "partial", "failed"):
                break
            time.sleep(0.05)
        seconds = time.monotonic() - started
        engine.dispose()
    finally:
        worker.terminate()
        worker.wait(60)
    if status != "done":
        raise SystemExit(f"the job ended {status}, not done: the stub or the worker is broken ({tmp / 'worker.log'})")
    last: dict[int, dict] = {}
    for line in timings.read_text().splitlines():
        row = json.loads(line)
        last[row["pid"]] = row
    total = {k: sum(r[k] for r in last.values()) for k in ("analyse", "write", "bookkeeping", "batches")}
    return {"workers": n_workers, "reviews_per_s": args.reviews / seconds, "seconds": seconds,
            "enqueue_s": enqueued, "status": status, "rollups": rollups, **total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--reviews", type=int, default=6400)
    ap.add_argument("--tokens", type=int, default=60, help="words per synthetic review")
    ap.add_argument("--entities", type=int, default=3, help="entities the stub finds per review")
    ap.add_argument("--us-per-token", type=float, default=50.0, help="stub analysis cost, slept")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--plot", type=Path, default=ROOT / "bench" / "scale_out.png")
    ap.add_argument("--compare-rollups", action="store_true",
                    help="each worker count also without rollups, alternating, to measure their cost")
    ap.add_argument("--no-rollups", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--timings", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_worker:
        run_worker(args.run_worker, args.us_per_token, args.entities, args.timings, not args.no_rollups)
        return

    from common import machine  # noqa: E402  (bench/common.py)

    tmp = Path(tempfile.mkdtemp(prefix="reviews-scale-"))
    env = {**os.environ, "REVIEWS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}",
           "REVIEWS_BROKER_URL": BROKER, "REVIEWS_BATCH_SIZE": str(args.batch_size), "REVIEWS_LANGUAGES": "all",
           "REVIEWS_HOME": str(tmp / "home"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    print(f"host: {machine()}")
    print(f"{args.reviews} reviews of {args.tokens} words, {args.entities} entities each, batches of "
          f"{args.batch_size}, stub cost {args.us_per_token:g} us/token (slept)")
    rows = []
    print(f"{'workers':>7} {'rollups':>7} {'reviews/s':>10} {'seconds':>8} {'enqueue s':>9} {'analyse s':>10} "
          f"{'write s':>8} {'jobs s':>7} {'write share':>11}")
    for n in args.workers:
        for rollups in (True, False) if args.compare_rollups else (True,):
            r = measure(n, args, env, tmp, rollups)
            rows.append(r)
            share = r["write"] / max(r["analyse"], 1e-9)
            print(f"{n:>7} {'on' if rollups else 'off':>7} {r['reviews_per_s']:>10.0f} {r['seconds']:>8.1f} "
                  f"{r['enqueue_s']:>9.1f} {r['analyse']:>10.1f} {r['write']:>8.1f} {r['bookkeeping']:>7.1f} "
                  f"{share:>11.0%}", flush=True)
    rows = [r for r in rows if r["rollups"]]  # the plot: as shipped
    admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["workers"] for r in rows], [r["reviews_per_s"] for r in rows], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("worker processes")
        ax.set_ylabel("reviews/s (stub analyser)")
        ax.set_title(f"Scale-out on {machine()[:60]}", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")


if __name__ == "__main__":
    main()
