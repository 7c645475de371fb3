"""Where a worker's time goes, batch by batch, without Celery or Redis in the way: the reviews are
ingested into PostgreSQL, then `batches.run_to_end` (what a worker's task runs) takes one batch after
another in this process, under cProfile. Prints reviews/s of that loop next to the engine alone on
the same texts (predict_both, the same batches), and the functions that cost the most.

    python bench/worker_profile.py --reviews 1024 --device cuda     # on a GPU host (bench/gpu.sh)
    python bench/worker_profile.py --reviews 256 --model-size tiny  # anywhere
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_inference import admin  # noqa: E402
from bench.common import machine, model_dirs, now, real_reviews  # noqa: E402

DB_NAME = "reviews_profile"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64, help="reviews per batch (REVIEWS_BATCH_SIZE)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model-size", choices=["base", "small", "tiny", "bundled"], default="base")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from worker import batches, ingest, migrate
    from worker.config import Settings
    from worker.nlp.ner import predict_both
    from worker.resources import Resources

    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}"
    admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    admin(f"CREATE DATABASE {DB_NAME}")
    migrate.upgrade(url)
    dirs = model_dirs(args.model_size)
    settings = Settings(database_url=url, sentiment_model=dirs["sentiment"], ner_model=dirs["ner"],
                        device=args.device, batch_size=args.batch_size, model_dir=tempfile.mkdtemp())
    resources = Resources(settings)
    rows = real_reviews(args.reviews + args.batch_size)
    sent: list[tuple[int, list[int]]] = []
    stream = io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())
    ingest.ingest(resources.sessions, stream, "profile.jsonl", settings, lambda job, ids: sent.append((job, ids)))
    batches.run_to_end(resources, *sent[0])  # loads the models: not timed
    models = resources.models()
    texts = [r["text"] for r in rows]
    chunks = [texts[k : k + args.batch_size] for k in range(args.batch_size, len(texts), args.batch_size)]

    started = time.perf_counter()
    for chunk in chunks:
        predict_both(models.sentiment, models.ner, chunk)
    engine_s = time.perf_counter() - started
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.runcall(lambda: [batches.run_to_end(resources, job, ids) for job, ids in sent[1:]])
    worker_s = time.perf_counter() - started
    n = sum(len(c) for c in chunks)
    print(f"# {machine()}; {now()}")
    print(f"# {n} IMDb reviews in batches of {args.batch_size}; models {args.model_size} on "
          f"{models.sentiment.device} at {models.sentiment.precision}")
    print(f"engine alone (predict_both): {n / engine_s:.0f} reviews/s")
    print(f"worker path (run_to_end: fetch, language, engine, write, job; under cProfile): {n / worker_s:.0f} "
          f"reviews/s = {engine_s / worker_s:.2f}x the engine")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
