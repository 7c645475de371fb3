"""The GPU path's figures, in one run (bench/gpu.sh runs it with the CUDA tests before it):

- the card's measured matrix-product peak, bf16 and fp16: an 8192^3 product and the model's own linear
  shapes at 16,384 rows (the engine's default CUDA token budget), timed with CUDA events;
- the engine (worker.nlp, as a worker runs it) on a random DistilBERT-base (66M): reviews/s for
  sentiment, NER and both, at bf16 and fp16, over token budgets and reviews per call; the fraction of
  the bf16 peak it reaches (model FLOPs, bench/flops.py); the GPU memory each budget needs (the budget
  that fits); the CPU time of tokenizing (which the GPU waits for);
- agreement with the same models in float32 through transformers' forward on the same GPU;
- end to end: enqueue -> Redis -> a real `reviews worker` on CUDA -> PostgreSQL, against the engine's
  both-task rate at the same reviews per message (bench/bench_inference.end_to_end; --no-e2e skips it).

    python bench/gpu_bench.py --reviews 2048 --json gpu.json
    python bench/gpu_bench.py --device cpu --reviews 64 --budgets 2048 --no-e2e   # the same code on a CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    chunks,
    entity_agreement,
    label_agreement,
    machine,
    model_dirs,
    now,
    real_reviews,
)
from bench.bench_inference import median_time  # noqa: E402
from bench.flops import engine_flops  # noqa: E402


def product_seconds(fn, device: torch.device, rounds: int = 20) -> float:
    """Median seconds of fn(), after warm-ups; CUDA events on a GPU."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def card_peak(config, device: torch.device, rows: int) -> dict[str, dict[str, float]]:
    """FLOP/s per dtype: a square 8192 product (the card's ceiling through torch) and the fastest of the
    model's linear shapes at `rows` rows (what the engine's products can reach)."""
    d, ffn = config.dim, config.hidden_dim
    out: dict[str, dict[str, float]] = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        n = 8192 if device.type == "cuda" else 1024
        pair = (torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype))
        square = 2 * n**3 / product_seconds(lambda: pair[0] @ pair[1], device)
        best = 0.0
        for d_in, d_out in ((d, d), (d, ffn), (ffn, d)):
            x = torch.randn(rows, d_in, device=device, dtype=dtype)
            w = torch.randn(d_out, d_in, device=device, dtype=dtype)
            seconds = product_seconds(lambda: torch.nn.functional.linear(x, w), device)
            best = max(best, 2 * rows * d_in * d_out / seconds)
        out[name] = {"square": square, "model_shapes": best}
    return out


def engine_grid(dirs, texts, warm, device, settings: list[tuple[str, int, int]], rounds) -> list[dict]:
    """The engine at each (precision, token budget, reviews per call)."""
    from worker.nlp import batching
    from worker.nlp.ner import load_ner, predict_both
    from worker.nlp.sentiment import load_sentiment

    rows = []
    for precision, budget, per_call in settings:
        try:
            s = load_sentiment(dirs["sentiment"], device=device.type, precision=precision, token_budget=budget)
            n = load_ner(dirs["ner"], device=device.type, precision=precision, token_budget=budget)
            s.predict(warm), n.predict(warm)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            out: dict = {"precision": precision, "budget": budget, "per_call": per_call}
            # The first pass meets batch shapes the process has not seen (a worker meets new ones all
            # the time); the rounds after it repeat them.
            out["first_s"] = median_time(lambda: [predict_both(s, n, c) for c in chunks(texts, per_call)], 1)
            # predict() returns CPU values, so it has waited for the GPU: wall time needs no sync.
            out["sentiment_s"] = median_time(lambda: [s.predict(c) for c in chunks(texts, per_call)], rounds)
            out["ner_s"] = median_time(lambda: [n.predict(c) for c in chunks(texts, per_call)], rounds)

            def both():  # as a worker runs them (one tokenization, both models queued before either is read)
                out["sentiment"], out["ner"] = [], []
                for c in chunks(texts, per_call):
                    sentiments, entities = predict_both(s, n, c)
                    out["sentiment"] += sentiments
                    out["ner"] += entities

            out["both_s"] = median_time(both, rounds)
            out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
            out["flops"] = engine_flops(s, texts)
            out["tokenize_s"] = median_time(lambda: [batching.make_windows(batching.encode(s.tokenizer, c),
                                                                           s.options.max_length, s.options.stride)
                                                     for c in chunks(texts, per_call)], rounds)
            rows.append(out)
        except torch.OutOfMemoryError as exc:  # the budget does not fit: say so and go on
            rows.append({"precision": precision, "budget": budget, "per_call": per_call, "error": str(exc)[:200]})
        finally:
            s = n = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"  {rows[-1].get('precision')} budget {budget} x{per_call}: "
              + (f"both {len(texts) / rows[-1]['both_s']:.0f} reviews/s" if "both_s" in rows[-1]
                 else rows[-1]["error"]), file=sys.stderr, flush=True)
    return rows


def _engine_child(rank: int, procs: int, dirs, texts, device_type, precision, budget, per_call, barrier, queue,
                  threads: int = 1):
    """One of `procs` processes sharing the device: its share of the reviews, both tasks, in `threads`
    threads at once over the process's one copy of the models (as a threads-pool worker runs them)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    share = max(1, (os.cpu_count() or 1) // procs)
    torch.set_num_threads(share)
    os.environ["RAYON_NUM_THREADS"] = str(share)  # the tokenizer's pool, as a worker sets it (resources.py)
    from worker.nlp.ner import load_ner, predict_both
    from worker.nlp.sentiment import load_sentiment

    s = load_sentiment(dirs["sentiment"], device=device_type, precision=precision, token_budget=budget)
    n = load_ner(dirs["ner"], device=device_type, precision=precision, token_budget=budget)
    mine = texts[rank::procs]
    with ThreadPoolExecutor(threads) as pool:
        # an untimed pass first: without it one process ran at 0.69x the grid's rate
        list(pool.map(lambda c: predict_both(s, n, c), chunks(mine, per_call)))
        barrier.wait()
        started = time.perf_counter()
        list(pool.map(lambda c: predict_both(s, n, c), chunks(mine, per_call)))
    queue.put(time.perf_counter() - started)


def engine_processes(dirs, texts, device, precision, budget, per_call, procs: int, threads: int = 1) -> float:
    """Seconds for all reviews, both tasks, split over `procs` engine processes started together, each
    running `threads` calls at once: how far more CPU feeding one GPU takes it."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    children = [ctx.Process(target=_engine_child, args=(k, procs, dirs, texts, device.type, precision, budget,
                                                        per_call, barrier, queue, threads)) for k in range(procs)]
    for c in children:
        c.start()
    times = [queue.get(timeout=600) for _ in children]
    for c in children:
        c.join()
    return max(times)


def reference(dirs, texts, device, per_call) -> dict:
    """float32 through transformers' own forward on the same device: the accuracy reference."""
    from worker.nlp import batching, loading
    from worker.nlp.ner import load_ner
    from worker.nlp.sentiment import load_sentiment

    torch.backends.cuda.matmul.allow_tf32 = False  # true float32, not TF32
    out = {}
    for task, loader in (("sentiment", load_sentiment), ("ner", load_ner)):
        engine = loader(dirs[task], device=device.type, precision="fp32")
        model, _, dev, _ = loading.load(dirs[task], task, device.type, "fp32", use_transformers=True)
        engine.forward, engine.model = batching.Forward(model, dev, "fp32", task == "ner", use_fast=False), model
        out[task] = [r for c in chunks(texts, per_call) for r in engine.predict(c)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=2048)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-size", choices=["base", "small", "tiny", "bundled"], default="base")
    ap.add_argument("--grid", default="bf16:16384:64,bf16:16384:512,bf16:65536:512,fp16:16384:512,fp16:65536:512",
                    help="precision:token budget:reviews per call (per queue message), comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--procs", default="1,4,8", help="engine processes sharing the device, at the best setting; "
                    "PxT: P processes each running T calls at once in threads")
    ap.add_argument("--e2e-batch", type=int, default=64,
                    help="reviews per queue message end to end (REVIEWS_BATCH_SIZE)")
    ap.add_argument("--e2e-workers", default="1,4,8", help="worker processes sharing the device, end to end; "
                    "WxC: W workers each on the threads pool with concurrency C (solo without x)")
    ap.add_argument("--e2e-repeat", type=int, default=1,
                    help="each job holds the reviews this many times (new ids): a bulk job's steady rate")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    started = time.time()
    dirs = model_dirs(args.model_size)
    rows = real_reviews(args.reviews)
    warm_rows = [dict(r, id=f"warm-{r['id']}") for r in real_reviews(64, skip=args.reviews)]
    texts, warm = [r["text"] for r in rows], [r["text"] for r in warm_rows]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(dirs["sentiment"])
    settings = [(p, int(b), int(c)) for p, b, c in (item.split(":") for item in args.grid.split(","))]
    peak = card_peak(config, device, rows=16384 if device.type == "cuda" else 2048)
    print(f"peak: {json.dumps(peak)}", file=sys.stderr, flush=True)
    grid = engine_grid(dirs, texts, warm, device, settings, args.rounds)
    ok = [g for g in grid if "both_s" in g]
    best = max(ok, key=lambda g: -g["both_s"])
    ref = reference(dirs, texts, device, best["per_call"])

    multi = {}
    for spec in [p for p in args.procs.split(",") if p]:
        procs, _, threads = spec.partition("x")
        multi[spec] = engine_processes(dirs, texts, device, best["precision"], best["budget"],
                                       best["per_call"], int(procs), int(threads or 1))
        print(f"  {spec} engine process(es): {len(texts) / multi[spec]:.0f} reviews/s", file=sys.stderr, flush=True)

    e2e: dict = {}
    engine_at_e2e = None
    if not args.no_e2e:
        from bench.bench_inference import Table, end_to_end

        # The workers run the engine's defaults (auto precision, the device's default budget): compare
        # with the grid's row nearest to that, at the message size.
        from worker.nlp.batching import default_token_budget
        from worker.nlp.device import pick_precision

        default = (pick_precision("auto", device), default_token_budget(device))
        same = [g for g in ok if (g["precision"], g["budget"]) == default] or ok
        engine_at_e2e = min(same, key=lambda g: abs(g["per_call"] - args.e2e_batch))
        for spec in [w for w in args.e2e_workers.split(",") if w]:
            workers, concurrency = (int(x) if x else 0 for x in spec.partition("x")[::2])
            pool = ["--pool", "threads", "-c", str(concurrency)] if concurrency else []
            table = Table(len(texts) * args.e2e_repeat, 1)
            # One warm-up message per batch in flight: each worker loads its models before the timed job.
            warm_e2e = [dict(r, id=f"warm{spec}-{r['id']}")
                        for r in real_reviews(max(16, workers * max(1, concurrency) * args.e2e_batch),
                                              skip=args.reviews)]
            out = end_to_end(dirs, rows, warm_e2e, args.e2e_batch, 1, table,
                             {"sentiment": best["sentiment"], "ner": best["ner"]}, workers=workers,
                             repeat=args.e2e_repeat, worker_args=pool)
            out["seconds"] = table.rows[0][1] / args.e2e_repeat  # per pass over the reviews
            e2e[spec] = out
            print(f"  end to end, {spec} worker(s): {len(texts) / out['seconds']:.0f} reviews/s", file=sys.stderr,
                  flush=True)

    lines = [f"machine: {machine()}", f"date {now()}; {len(texts)} real IMDb reviews; models {args.model_size} "
             f"(random DistilBERT-base: 66M, dim {config.dim}); median of {args.rounds} rounds; "
             f"run took {(time.time() - started) / 60:.1f} min", ""]
    for name, p in peak.items():
        lines.append(f"card peak {name}: {p['square'] / 1e12:.0f} TFLOP/s (8192^3), "
                     f"{p['model_shapes'] / 1e12:.0f} TFLOP/s (model's linear shapes at 16384 rows)")
    lines += ["", "| precision | token budget | reviews per call | sentiment rev/s | NER rev/s | both rev/s "
              "| both rev/s, first pass | sentiment % of bf16 peak | GPU memory MiB | tokenizing % of sentiment time |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for g in grid:
        if "error" in g:
            lines.append(f"| {g['precision']} | {g['budget']} | {g['per_call']} | out of memory | | | | | | |")
            continue
        frac = g["flops"] / g["sentiment_s"] / peak["bf16"]["square"]
        lines.append(f"| {g['precision']} | {g['budget']} | {g['per_call']} | {len(texts) / g['sentiment_s']:.0f} "
                     f"| {len(texts) / g['ner_s']:.0f} | {len(texts) / g['both_s']:.0f} | {len(texts) / g['first_s']:.0f} "
                     f"| {frac:.1%} "
                     f"| {g['peak_mib']:.0f} | {g['tokenize_s'] / g['sentiment_s']:.0%} |")
    agree = label_agreement(best["sentiment"], ref["sentiment"])
    recall, prec = entity_agreement(best["ner"], ref["ner"])
    lines += ["", f"best both-task setting: {best['precision']}, budget {best['budget']}, {best['per_call']} per call: "
              f"{len(texts) / best['both_s']:.0f} reviews/s",
              f"agreement of that setting with float32 (transformers' forward, same GPU, TF32 off): sentiment labels "
              f"{agree:.2%}; entity spans: {recall:.2%} of float32's found, {prec:.2%} of the engine's in float32"]
    for procs, seconds in multi.items():
        frac = best["flops"] * 2 / seconds / peak["bf16"]["square"]  # both models: the same shapes and windows
        lines.append(f"engine, both tasks, {procs} process(es) (PxT: T threads each) sharing the device at that setting: "
                     f"{len(texts) / seconds:.0f} reviews/s, {frac:.1%} of the bf16 peak")
    for spec, out in e2e.items():
        rate = len(texts) / out["seconds"]
        ratio = rate / (len(texts) / engine_at_e2e["both_s"])
        messages = -(-len(texts) * args.e2e_repeat // args.e2e_batch)
        workers, _, concurrency = spec.partition("x")
        pool = f" on the threads pool, {concurrency} batches at once each" if concurrency else ""
        # Few messages per worker make this the latency of one job, not a fleet's steady rate.
        lines.append(f"end to end (enqueue -> Redis -> {workers} worker process(es){pool} on {args.device} -> "
                     f"PostgreSQL), {args.e2e_batch} reviews per message, a job of {len(texts) * args.e2e_repeat} "
                     f"({messages / int(workers):.1f} messages per worker): "
                     f"{rate:.0f} reviews/s = {ratio:.2f}x one engine process's "
                     f"both-task rate at {engine_at_e2e['per_call']} per call; database {out['rows']}; stored labels "
                     f"equal to the engine's {out['db_vs_engine_labels']:.2%}; first worker's VmHWM "
                     f"{out['worker_hwm_mib']:.0f} MiB")
    print("\n".join(lines))
    if args.json:
        for g in grid:
            g.pop("sentiment", None), g.pop("ner", None)
        for out in e2e.values():
            out.pop("write", None)
        Path(args.json).write_text(json.dumps({"machine": machine(), "date": now(), "peak": peak, "grid": grid,
                                               "agreement": {"labels": agree, "recall": recall, "precision": prec},
                                               "processes": multi, "e2e": e2e}, indent=2, default=str))


if __name__ == "__main__":
    main()
