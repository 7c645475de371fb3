"""Inference speed, in one run on the same real reviews: transformers' pipeline as the baseline, the
engine alone (sentiment, NER, both), and the full path enqueue -> Redis -> Celery worker -> PostgreSQL.

    python bench/bench_inference.py --reviews 256                      # random DistilBERT-base (66M)
    python bench/bench_inference.py --reviews 256 --model-size bundled # the project's default models
    python bench/bench_inference.py --baselines-only --reviews 128     # ONNX Runtime, OpenVINO vs the engine

Needs PostgreSQL on 127.0.0.1:5432 (trust auth; a database `reviews_bench` is created and dropped
again) and Redis on 127.0.0.1:6379 (database 14 is flushed) for the end-to-end part; --no-e2e skips it.

What is measured:
- pipeline: transformers.pipeline("text-classification") in float32 (its default), batch_size 1 and
  16, truncation to 512 tokens; and pipeline("token-classification", stride=128) for NER, batch 1.
- engine: worker.nlp as a worker runs it (precision auto: measured on each model at load, or read
  from REVIEWS_HOME's cache; default options), predict() on chunks of --batch-size reviews (one
  queue message), after a warm-up on other reviews.
- with --baselines (or --baselines-only): other runtimes on the same reviews and model, inside the
  engine's windows and batches: ONNX Runtime fp32 and int8 on a fused graph, OpenVINO f32 and bf16,
  against the engine at bf16, int8 and auto (bench/baselines.py; optional dependencies:
  `pip install onnxruntime openvino onnx onnxscript`, rows skipped with the reason without them).
- end to end: a real `reviews worker` subprocess (solo pool) on a fresh database; after a warm-up job
  (which also loads the models), `reviews enqueue FILE --wait`, timed from the start of the command
  to the job's finished_at in the database, each job right after an in-process engine pass over the
  same reviews (the note gives their paired ratio: the engine rows, minutes apart, drift with a
  shared host). Peak memory is the worker's VmHWM.
- start-up: `reviews run samples/reviews.jsonl` three times with a fresh REVIEWS_HOME and new SQLite
  databases, the "ready in" it prints (schema, models): the first with a cold precision cache.
- agreement: the engine's labels and entity spans against the same models in float32 through
  transformers' own forward (sentiment: same label; NER: same (label, start, end)).
Tokens/s counts every WordPiece token of the reviews once (specials and window overlaps excluded),
whatever a method does with them; the pipeline reads at most 512 tokens of each review.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    chunks,
    count_params,
    entity_agreement,
    label_agreement,
    machine,
    model_dirs,
    now,
    real_reviews,
)

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BROKER_URL = "redis://127.0.0.1:6379/14"
DB_NAME = "reviews_bench"


class Table:
    def __init__(self, n_reviews: int, n_tokens: int):
        self.n_reviews, self.n_tokens = n_reviews, n_tokens
        self.rows: list[tuple[str, float, str]] = []

    def add(self, name: str, seconds: float, note: str = "") -> float:
        self.rows.append((name, seconds, note))
        print(f"  measured {name}: {self.n_reviews / seconds:.2f} reviews/s", file=sys.stderr, flush=True)
        return self.n_reviews / seconds

    def rate(self, name: str) -> float:
        return next(self.n_reviews / s for n, s, _ in self.rows if n == name)

    def render(self, baselines: dict[str, str]) -> str:
        out = [f"| {'what':<58} | reviews/s | tokens/s | ratio | {'note':<40} |",
               f"|{'-' * 60}|----------:|---------:|------:|{'-' * 42}|"]
        for name, seconds, note in self.rows:
            base = baselines.get(name)
            ratio = f"{self.rate(name) / self.rate(base):.2f}x" if base else ""
            out.append(f"| {name:<58} | {self.n_reviews / seconds:9.2f} | {self.n_tokens / seconds:8.0f} | "
                       f"{ratio:>5} | {note:<40} |")
        return "\n".join(out)


def median_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# -- transformers' pipeline -------------------------------------------------------------------------


def pipeline_runs(dirs: dict[str, str], texts: list[str], warm: list[str], rounds: int, table: Table,
                  with_ner: bool) -> None:
    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    clf = pipeline("text-classification", model=dirs["sentiment"], device=-1, dtype=torch.float32)
    for bs in (1, 16):
        clf(warm, batch_size=bs, truncation=True, max_length=512)
        t = median_time(lambda: clf(texts, batch_size=bs, truncation=True, max_length=512), rounds)  # noqa: B023
        table.add(f"pipeline text-classification, batch_size={bs}", t, "fp32, truncates at 512 tokens")
    clf = None  # its memory back before the NER pipeline loads
    if with_ner:
        ner = pipeline("token-classification", model=dirs["ner"], device=-1, dtype=torch.float32,
                       aggregation_strategy="simple", stride=128)
        ner(warm, batch_size=1)
        t = median_time(lambda: ner(texts, batch_size=1), rounds)
        table.add("pipeline token-classification, batch_size=1", t, "fp32, stride 128, simple aggregation")


# -- the engine -------------------------------------------------------------------------------------


def engine_runs(dirs: dict[str, str], texts: list[str], warm: list[str], batch_size: int, rounds: int,
                table: Table) -> dict:
    from worker.config import Settings
    from worker.nlp.ner import load_ner
    from worker.nlp.sentiment import load_sentiment

    from worker.memory import keep_freed_memory

    keep_freed_memory()  # as a worker process does (worker/memory.py): like for like with end to end
    options = Settings.from_env().engine_options()  # the engine as the worker runs it
    sentiment = load_sentiment(dirs["sentiment"], options)
    ner = load_ner(dirs["ner"], options)
    sentiment.predict(warm)
    ner.predict(warm)
    out: dict = {"precision": f"sentiment {sentiment.precision}, NER {ner.precision}", "device": str(sentiment.device),
                 "sentiment_precision": sentiment.precision, "ner_precision": ner.precision}

    def run(model):
        return [r for c in chunks(texts, batch_size) for r in model.predict(c)]

    def both():
        out["sentiment"], out["ner"] = [], []
        for c in chunks(texts, batch_size):
            out["sentiment"] += sentiment.predict(c)
            out["ner"] += ner.predict(c)

    per_call = f"{batch_size} reviews per call"
    rows = {"engine sentiment": (lambda: run(sentiment), f"{sentiment.precision}, {per_call}"),
            "engine NER": (lambda: run(ner), f"{ner.precision}, {per_call}"),
            "engine both tasks": (both, f"{sentiment.precision} + {ner.precision}, {per_call}")}
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):  # interleaved: a shared host's speed drifts by up to 2x over minutes
        for name, (fn, _) in rows.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    for name, (_, note) in rows.items():
        table.add(name, statistics.median(times[name]), note)
    out["both"] = both  # end_to_end pairs each job with a pass of its own
    # The CPU share of tokenizing (what a tokenizer thread beside the model could hide at best).
    from worker.nlp import batching

    from bench.flops import engine_flops, matmul_peak

    for name, engine in (("sentiment", sentiment), ("ner", ner)):
        out[f"{name}_flops"] = engine_flops(engine, texts)
    out["peak"] = matmul_peak(sentiment.model.config)
    out["tokenize_s"] = median_time(lambda: [batching.make_windows(batching.encode(sentiment.tokenizer, c),
                                                                   sentiment.options.max_length,
                                                                   sentiment.options.stride)
                                             for c in chunks(texts, batch_size)], rounds)
    return out


def peak_line(engine_out: dict, table: Table) -> str:
    """The engine's achieved model FLOP/s against the host's measured matrix-product peak (bench/flops.py)."""
    peak = engine_out["peak"]
    parts = []
    for name, row in (("sentiment", "engine sentiment"), ("ner", "engine NER")):
        achieved = engine_out[f"{name}_flops"] * table.rate(row) / table.n_reviews
        ran = engine_out[f"{name}_precision"]  # against the peak of the precision the engine ran at
        parts.append(f"{name} {achieved / 1e9:.0f} GFLOP/s at {ran} = "
                     + (f"{achieved / peak[ran]:.0%} of the {ran} peak" if ran in peak else "no peak measured"))
    return ("fraction of peak (model FLOPs of a plain forward over the engine's windows; peak: the model's "
            "fastest linear shape at 2048 rows, " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peak.items())
            + "): " + "; ".join(parts))


def reference_runs(dirs: dict[str, str], texts: list[str], batch_size: int) -> dict:
    """The same models in float32 through transformers' own forward: the accuracy reference."""
    from worker.nlp import batching, loading
    from worker.nlp.ner import load_ner
    from worker.nlp.sentiment import load_sentiment

    out = {}
    for task, loader in (("sentiment", load_sentiment), ("ner", load_ner)):
        engine = loader(dirs[task], device="cpu", precision="fp32")
        model, _, dev, _ = loading.load(dirs[task], task, "cpu", "fp32", use_transformers=True)
        engine.forward, engine.model = batching.Forward(model, dev, "fp32", task == "ner", use_fast=False), model
        out[task] = [r for c in chunks(texts, batch_size) for r in engine.predict(c)]
    return out


# -- end to end -------------------------------------------------------------------------------------


def admin(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reviews_cmd() -> list[str]:
    exe = shutil.which("reviews")
    return [exe] if exe else [sys.executable, "-m", "cli.main"]


def end_to_end(dirs: dict[str, str], rows: list[dict], warm_rows: list[dict], batch_size: int, rounds: int,
               table: Table, engine_out: dict, workers: int = 1, repeat: int = 1,
               worker_args: list[str] | None = None) -> dict:
    """`workers` solo worker processes (on one GPU, say) take the job's messages from one queue;
    worker_args: `reviews worker` options in place of "--pool solo" (["--pool", "threads", "-c", "2"]);
    named, since a worker on a GPU would otherwise take 4 batches at once.
    repeat: each job holds the reviews that many times (new ids after the first), and the engine pass
    paired with it runs that many times: a job's fixed costs (the CLI's start, the first message's
    trip) spread over a bigger job, as in a bulk job."""
    import redis
    from sqlalchemy import func, select

    from worker.db import session_factory
    from worker.schema import EntityRow, Job, NerResult, Review, SentimentResult

    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}"
    admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    admin(f"CREATE DATABASE {DB_NAME}")
    redis.Redis.from_url(BROKER_URL).flushdb()
    env = dict(os.environ, REVIEWS_DATABASE_URL=url, REVIEWS_BROKER_URL=BROKER_URL,
               REVIEWS_SENTIMENT_MODEL=dirs["sentiment"], REVIEWS_NER_MODEL=dirs["ner"],
               REVIEWS_BATCH_SIZE=str(batch_size), REVIEWS_MODEL_DIR=tempfile.mkdtemp(prefix="reviews-bench-"))
    if workers > 1:  # the host's cores shared among the workers, as `--pool prefork` shares them among children
        env.setdefault("REVIEWS_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    subprocess.run(reviews_cmd() + ["db", "upgrade"], env=env, check=True, capture_output=True)
    tmp = Path(tempfile.mkdtemp(prefix="reviews-bench-"))
    main_file, warm_file = tmp / "reviews.jsonl", tmp / "warm.jsonl"
    job_rows = [dict(r, id=r["id"] if k == 0 else f"{r['id']}~{k}") for k in range(repeat) for r in rows]
    main_file.write_text("".join(json.dumps(r) + "\n" for r in job_rows))
    warm_file.write_text("".join(json.dumps(r) + "\n" for r in warm_rows))
    log = open(tmp / "worker.log", "w")
    procs = [subprocess.Popen(reviews_cmd() + ["worker", "--loglevel", "WARNING", "-n", f"bench{k}@%h",
                                               *(worker_args or ["--pool", "solo"])], env=env,
                              stdout=log, stderr=subprocess.STDOUT) for k in range(workers)]
    worker = procs[0]
    result: dict = {}
    try:
        sessions = session_factory(url)

        def enqueue(path: Path) -> tuple[float, float]:
            started_wall, started = time.time(), time.perf_counter()
            proc = subprocess.run(reviews_cmd() + ["enqueue", str(path), "--wait"], env=env, capture_output=True,
                                  text=True)
            command_s = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(f"reviews enqueue failed:\n{proc.stderr[-2000:]}")
            job_id = int(proc.stdout.strip().splitlines()[0])
            with sessions() as s:
                job = s.get(Job, job_id)
                if job.status != "done":
                    raise SystemExit(f"job {job_id} ended {job.status}; see {tmp / 'worker.log'}")
                finished = job.finished_at.timestamp()
            return finished - started_wall, command_s

        enqueue(warm_file)  # starts the workers' models and connections (give it a message per worker)
        # Each job right after an in-process pass of the engine over the same reviews: the ratio of the
        # two is what the path costs, where the engine rows, minutes away, drift with the host.
        # engine_out["both"], where given, runs that pass (bench/gpu_bench.py compares with its grid instead).
        times, paired = [], []
        for _ in range(rounds):
            if "both" in engine_out:
                started = time.perf_counter()
                for _ in range(repeat):
                    engine_out["both"]()
                engine_s = time.perf_counter() - started
            times.append(enqueue(main_file))
            if "both" in engine_out:
                paired.append(engine_s / times[-1][0])
        done_s = statistics.median(t for t, _ in times) / repeat  # per pass over the table's reviews
        command_s = statistics.median(c for _, c in times)
        result["paired"] = statistics.median(paired) if paired else None
        table.add("end to end, both tasks (enqueue -> job done)", done_s,
                  f"{workers} solo worker(s); a job of {len(job_rows)} reviews; `enqueue --wait` took {command_s:.1f} s"
                  + (f"; {result['paired']:.2f}x an engine pass just before each job" if paired else ""))
        result["worker_hwm_mib"] = vm_hwm_mib(worker.pid)
        with sessions() as s:
            by_ext = dict(s.execute(select(Review.external_id, Review.id)).all())
            labels = dict(s.execute(select(SentimentResult.review_id, SentimentResult.label)).all())
            result["rows"] = {
                "reviews": s.scalar(select(func.count()).select_from(Review)),
                "sentiment_results": s.scalar(select(func.count()).select_from(SentimentResult)),
                "ner_results": s.scalar(select(func.count()).select_from(NerResult)),
                "entities": s.scalar(select(func.count()).select_from(EntityRow)),
            }
            same = sum(labels.get(by_ext[r["id"]]) == e.label for r, e in zip(rows, engine_out["sentiment"]))
            result["db_vs_engine_labels"] = same / len(rows)
        result["write"] = write_statements(sessions, [by_ext[r["id"]] for r in rows[:batch_size]],
                                           engine_out["sentiment"][:batch_size], engine_out["ner"][:batch_size])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        redis.Redis.from_url(BROKER_URL).flushdb()
        admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    return result


def startup(runs: int = 3) -> dict:
    """`reviews run samples/reviews.jsonl` as a user first runs it: the bundled models, SQLite, a fresh
    REVIEWS_HOME and no other REVIEWS_ setting. The first start measures the precision (cold cache);
    the later ones read it (warm). Each run gets a new database, so migrations are part of it."""
    import re

    home = Path(tempfile.mkdtemp(prefix="reviews-bench-home-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWS_")}
    env["REVIEWS_HOME"] = str(home)
    ready, wall = [], []
    try:
        for _ in range(runs):
            for db in home.rglob("reviews.db"):
                db.unlink()
            started = time.perf_counter()
            proc = subprocess.run(reviews_cmd() + ["run", str(ROOT / "samples" / "reviews.jsonl")], env=env,
                                  capture_output=True, text=True)
            wall.append(time.perf_counter() - started)
            found = re.search(r"ready in ([\d.]+) s", proc.stderr)
            if proc.returncode != 0 or not found:
                raise SystemExit(f"reviews run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            ready.append(float(found.group(1)))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"ready_s": ready, "wall_s": wall}


def write_statements(sessions, ids, sentiments, entities) -> dict:
    """Write one batch's results the way a worker does, counting the SQL statements it sends."""
    from sqlalchemy import event, select

    from datetime import date

    from worker import results
    from worker.rollups import ReviewFacts
    from worker.schema import ModelVersion

    statements: list[str] = []
    with sessions() as s:
        versions = {mv.task: mv.id for mv in s.scalars(select(ModelVersion).where(ModelVersion.status == "active"))}
        engine = s.get_bind()

        def count(conn, cursor, statement, parameters, context, executemany):
            statements.append(statement.split(None, 3)[:3])

        event.listen(engine, "before_cursor_execute", count)
        insert_entities = results.insert_entities

        def counted_insert(session, rows):  # COPY goes through the driver's cursor, past SQLAlchemy's events
            if session.get_bind().dialect.name == "postgresql":
                statements.append(["COPY", "entities", "FROM STDIN"])
            insert_entities(session, rows)

        results.insert_entities = counted_insert
        try:
            started = time.perf_counter()
            facts = [ReviewFacts(i, date(2025, 1, 1), "") for i in ids]  # the rollups' day and product
            results.write(s, facts, sentiments, entities, versions["sentiment"], versions["ner"])
            s.commit()
            seconds = time.perf_counter() - started
        finally:
            event.remove(engine, "before_cursor_execute", count)
            results.insert_entities = insert_entities
    return {"reviews": len(ids), "entities": sum(len(e) for e in entities), "statements": len(statements),
            "kinds": [" ".join(x) for x in statements], "ms": 1000 * seconds}


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=256)
    ap.add_argument("--model-size", choices=["base", "small", "bundled"], default="base",
                    help="base: random DistilBERT-base (66M); small: random 22.7M; bundled: worker/models")
    ap.add_argument("--batch-size", type=int, default=64, help="reviews per queue message / predict call")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each timing, report the median")
    ap.add_argument("--no-e2e", action="store_true", help="skip the Redis/Celery/PostgreSQL part")
    ap.add_argument("--e2e-repeat", type=int, default=1, help="end to end: a job of the reviews this many times over "
                    "(a bulk job; the job's fixed costs spread thinner)")
    ap.add_argument("--no-ner-pipeline", action="store_true", help="skip the NER pipeline baseline")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--baselines", action="store_true",
                    help="also compare ONNX Runtime and OpenVINO with the engine (bench/baselines.py)")
    ap.add_argument("--baselines-only", action="store_true", help="only that comparison")
    ap.add_argument("--baseline-task", choices=["sentiment", "ner"], default="sentiment")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from bench.baselines import baselines_report

    if args.baselines_only:
        print(baselines_report(args.model_size, args.baseline_task, args.reviews, args.batch_size, args.rounds))
        return

    import torch
    from transformers import AutoTokenizer

    dirs = model_dirs(args.model_size)
    rows = real_reviews(args.reviews)
    warm_rows = [dict(r, id=f"warm-{r['id']}") for r in real_reviews(16, skip=args.reviews)]
    texts, warm = [r["text"] for r in rows], [r["text"] for r in warm_rows]
    tok = AutoTokenizer.from_pretrained(dirs["sentiment"])
    n_tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"])
    table = Table(len(texts), n_tokens)
    started = time.time()
    print(f"benchmarking {len(texts)} reviews, {n_tokens} tokens; models {dirs}", file=sys.stderr)

    pipeline_runs(dirs, texts, warm, args.rounds, table, not args.no_ner_pipeline)
    engine_out = engine_runs(dirs, texts, warm, args.batch_size, args.rounds, table)
    e2e = {} if args.no_e2e else end_to_end(dirs, rows, warm_rows, args.batch_size, args.rounds, table, engine_out,
                                            repeat=args.e2e_repeat)
    reference = reference_runs(dirs, texts, args.batch_size)
    start = startup()

    best_pipeline = max(("pipeline text-classification, batch_size=1", "pipeline text-classification, batch_size=16"),
                        key=table.rate)
    if not args.no_ner_pipeline:  # both tasks through pipelines: the best sentiment setting, then NER
        both_s = sum(len(texts) / table.rate(n) for n in (best_pipeline, "pipeline token-classification, batch_size=1"))
        table.rows.insert(3, ("pipelines, both tasks (sum of the two above)", both_s, "best sentiment setting + NER"))
    baselines = {"engine sentiment": best_pipeline,
                 "end to end, both tasks (enqueue -> job done)": "engine both tasks",
                 "pipeline text-classification, batch_size=16": "pipeline text-classification, batch_size=1"}
    if not args.no_ner_pipeline:  # without the NER pipeline there is no both-task pipeline row to compare with
        baselines["engine NER"] = "pipeline token-classification, batch_size=1"
        baselines["engine both tasks"] = "pipelines, both tasks (sum of the two above)"
    label_agree = label_agreement(engine_out["sentiment"], reference["sentiment"])
    recall, precision = entity_agreement(engine_out["ner"], reference["ner"])
    n_ref = sum(len(e) for e in reference["ner"])

    lines = [
        f"reviews: {len(texts)} real IMDb reviews (the first of unsup.jsonl.gz), {n_tokens} tokens, "
        f"mean {n_tokens / len(texts):.0f} tokens, {sum(len(tok(t, add_special_tokens=False)['input_ids']) > 510 for t in texts)} longer than 510",
        f"models: {args.model_size}: sentiment {count_params(dirs['sentiment']) / 1e6:.1f}M parameters, "
        f"NER {count_params(dirs['ner']) / 1e6:.1f}M ({dirs['sentiment']}, {dirs['ner']})",
        f"machine: {machine()}",
        f"engine: {engine_out['device']}, precision {engine_out['precision']}; date {now()}; "
        f"run took {(time.time() - started) / 60:.1f} min; median of {args.rounds} round(s)",
        "",
        table.render(baselines),
        "",
        "ratio: engine rows against the best pipeline setting for the task (" + best_pipeline.split(', ')[1]
        + " for sentiment); end to end against the engine's own both-task throughput (and, in its note, against "
        "an engine pass just before each job).",
        f"agreement with float32 (transformers' forward): sentiment labels {100 * label_agree:.2f}% "
        f"({len(texts)} reviews); entity spans exact: {100 * recall:.2f}% of the {n_ref} float32 entities found, "
        f"{100 * precision:.2f}% of the engine's {sum(len(e) for e in engine_out['ner'])} entities in float32",
        peak_line(engine_out, table),
        f"tokenizing and windowing all reviews: {1000 * engine_out['tokenize_s']:.0f} ms, "
        f"{100 * engine_out['tokenize_s'] * table.rate('engine sentiment') / len(texts):.1f}% of the engine's sentiment time",
        "start-up of `reviews run samples/reviews.jsonl` (bundled models, a new SQLite database each time, a fresh "
        f"REVIEWS_HOME): ready in {start['ready_s'][0]:.1f} s cold (precision measured), then "
        + ", ".join(f"{s:.1f}" for s in start["ready_s"][1:]) + " s warm; whole command "
        + ", ".join(f"{s:.1f}" for s in start["wall_s"]) + " s",
    ]
    if e2e:
        w = e2e["write"]
        lines += [
            f"worker peak memory (VmHWM): {e2e['worker_hwm_mib']:.0f} MiB",
            f"database after the run: {e2e['rows']}; stored labels equal to the engine's: "
            f"{100 * e2e['db_vs_engine_labels']:.2f}%",
            f"writing one batch ({w['reviews']} reviews, {w['entities']} entities): {w['statements']} SQL statements "
            f"in {w['ms']:.0f} ms: {'; '.join(w['kinds'])}",
        ]
    print("\n".join(lines))
    if args.baselines:
        print()
        print(baselines_report(args.model_size, args.baseline_task, args.reviews, args.batch_size, args.rounds))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rows": [{"what": n, "seconds": s, "reviews_per_s": len(texts) / s, "tokens_per_s": n_tokens / s,
                      "note": note} for n, s, note in table.rows],
            "label_agreement": label_agree, "entity_recall": recall, "entity_precision": precision,
            "e2e": e2e, "machine": machine(), "date": now(), "torch_threads": torch.get_num_threads(),
        }, indent=2, default=str))


if __name__ == "__main__":
    main()
