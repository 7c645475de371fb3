"""What each engine change is worth: engine variants on the same real reviews, in one process,
interleaved chunk by chunk (in a rotating order) so that a noisy machine hits every variant alike.

    python bench/bench_variants.py --reviews 128 --rounds 3            # sentiment, random DistilBERT-base
    python bench/bench_variants.py --task ner --reviews 128
    python bench/bench_variants.py --model-size bundled

Every variant runs `predict` over the reviews in chunks of --batch-size (what a worker does with one
queue message) and reports the median over the rounds, its ratio to the first variant (the engine as
it was first: transformers' forward under bf16 autocast, token budget 8192), and its agreement with
float32 (labels, or entity spans exact).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import chunks, entity_agreement, label_agreement, machine, model_dirs, now, real_reviews  # noqa: E402
from worker.nlp import batching, fast  # noqa: E402
from worker.nlp import int8 as int8_product  # noqa: E402
from worker.nlp.ner import load_ner  # noqa: E402
from worker.nlp.sentiment import load_sentiment  # noqa: E402


def variant(task: str, path: str, precision: str = "bf16", use_fast: bool = True, cls_only: bool = True,
            budget: int = 8192, int8: bool = False, compile_: bool = False, attn: str | None = None,
            pad_to: int = 1, packed_weights: bool = True, int8_kernel: str | None = None, fused: bool = True):
    """A loaded engine set up one way. packed_weights=False: bf16 through plain Linear layers, as
    before packed.py. int8_kernel: the int8 product to use instead of the one int8.product_kernel
    measures as the faster here. fused=False: torch ops between the products, as before
    kernels.cpp's fused passes."""
    loader = load_sentiment if task == "sentiment" else load_ner
    chosen = int8_product.product_kernel
    if int8_kernel:
        int8_product.product_kernel = lambda *shape: int8_kernel
    try:
        engine = loader(path, device="cpu", precision="fp32" if int8 or not packed_weights else precision,
                        token_budget=budget)
    finally:
        int8_product.product_kernel = chosen
    model = engine.model
    if not packed_weights and not int8:  # the fp32 model again, at `precision` without packing
        engine.forward = batching.Forward(model, engine.device, precision, per_token=task == "ner", pack_weights=False)
        engine.precision = precision
    if not use_fast:  # transformers' forward on a freshly loaded copy
        engine.forward = _hf_forward(task, path, precision)
        engine.model = model = engine.forward.model
    if attn:
        for m in model.modules():
            if hasattr(m, "config"):
                m.config._attn_implementation = attn
    if int8:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        engine.forward._forward = fast.DistilBertForward(model, per_token=task == "ner")
    if not cls_only:
        engine.forward._forward.cls_only = False
    if not fused:
        engine.forward._forward.fused = False
    if compile_:
        engine.forward._forward = torch.compile(engine.forward._forward, dynamic=True)
    if pad_to > 1:
        engine.forward._forward = _padded(engine.forward._forward, pad_to)
    return engine


def _hf_forward(task: str, path: str, precision: str) -> batching.Forward:
    from worker.nlp import loading

    model, _, dev, prec = loading.load(path, task, "cpu", precision, use_transformers=True)
    return batching.Forward(model, dev, prec, per_token=task == "ner", use_fast=False)


def _padded(forward, multiple: int):
    def run(ids, mask):
        width = ids.shape[1]
        extra = -width % multiple
        if extra:
            ids = torch.nn.functional.pad(ids, (0, extra))
            mask = torch.nn.functional.pad(mask, (0, extra))
        out = forward(ids, mask)
        return out[:, :width] if out.dim() == 3 else out

    return run


def hf_bf16_weights(task: str, path: str):
    """transformers' forward with every weight in bf16, no autocast."""
    loader = load_sentiment if task == "sentiment" else load_ner
    engine = loader(path, device="cpu", precision="fp32")
    fwd = _hf_forward(task, path, "fp32")
    fwd.model.to(torch.bfloat16)
    engine.forward, engine.model = fwd, fwd.model
    return engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=128)
    ap.add_argument("--task", choices=["sentiment", "ner"], default="sentiment")
    ap.add_argument("--model-size", choices=["base", "small", "bundled"], default="base")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="reviews per predict call (a queue message)")
    ap.add_argument("--only", help="comma-separated variant numbers to run (1 is always run)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--best", action="store_true", help="report the best round instead of the median "
                    "(the better estimate where other jobs share the machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = model_dirs(args.model_size)[args.task]
    texts = [r["text"] for r in real_reviews(args.reviews)]
    task = args.task
    specs: list[tuple[str, str, object]] = [
        ("HF forward, bf16 autocast, budget 8192 (the first engine)", "1.00", lambda: variant(task, path, use_fast=False)),
        ("HF forward, fp32", "~0.45", lambda: variant(task, path, precision="fp32", use_fast=False)),
        ("HF forward, bf16 weights, no autocast", "1.00-1.05", lambda: hf_bf16_weights(task, path)),
        ("HF forward, bf16 autocast, eager attention", "0.90-1.0", lambda: variant(task, path, use_fast=False, attn="eager")),
        ("fast forward, fp32", "~0.45", lambda: variant(task, path, precision="fp32")),
        ("fast forward, bf16 Linears, all positions", "1.00-1.05", lambda: variant(task, path, cls_only=False)),
        ("fast forward, bf16, CLS-only last layer, budget 8192", "1.15 (sentiment)", lambda: variant(task, path)),
        ("  ... token budget 1024", "1.2-1.3", lambda: variant(task, path, budget=1024)),
        ("  ... token budget 2048 [the CPU default]", "1.2-1.3", lambda: variant(task, path, budget=2048)),
        ("  ... token budget 4096", "1.1-1.2", lambda: variant(task, path, budget=4096)),
        ("  ... token budget 16384", "0.95-1.05", lambda: variant(task, path, budget=16384)),
        ("  ... widths padded to a multiple of 16", "1.00-1.05", lambda: variant(task, path, pad_to=16)),
        ("  ... int8 dynamic quantization (torch.ao, per batch)", "0.8-1.2", lambda: variant(task, path, int8=True)),
        ("  ... torch.compile (inductor, dynamic shapes)", "1.05-1.3", lambda: variant(task, path, compile_=True)),
        ("  ... token budget 2048 + int8 dynamic quantization", "1.2-1.4", lambda: variant(task, path, budget=2048, int8=True)),
        ("  ... budget 2048 + int8 per token (int8.py) [sentiment]", "1.9-2.1",
         lambda: variant(task, path, precision="int8", budget=2048)),
        ("  ... budget 1024 + int8 per token", "~2", lambda: variant(task, path, precision="int8", budget=1024)),
        ("  ... budget 4096 + int8 per token", "~2", lambda: variant(task, path, precision="int8", budget=4096)),
        ("  ... budget 2048, plain bf16 Linear layers (before packed.py)", "1.2-1.3",
         lambda: variant(task, path, budget=2048, packed_weights=False)),
        ("  ... budget 2048 + int8 per token, torch._int_mm product", "AMX: ~0.6",
         lambda: variant(task, path, precision="int8", budget=2048, int8_kernel="int_mm")),
        ("  ... budget 2048 + int8 per token, oneDNN product", "AMX: ~1.5",
         lambda: variant(task, path, precision="int8", budget=2048, int8_kernel="onednn")),
        ("  ... budget 2048, bf16, torch ops between products (unfused)", "~0.9",
         lambda: variant(task, path, budget=2048, fused=False)),
        ("  ... budget 2048 + int8 per token, torch ops between products", "~0.75",
         lambda: variant(task, path, precision="int8", budget=2048, fused=False)),
    ]
    if args.only:
        keep = {1} | {int(x) for x in args.only.split(",")}
        specs = [s for k, s in enumerate(specs, 1) if k in keep]

    print(f"# engine variants, {task}, {args.model_size} model, {len(texts)} real IMDb reviews, "
          f"predict in chunks of {args.batch_size}, "
          f"{'best' if args.best else 'median'} of {args.rounds} rounds")
    print(f"# {machine()}; {now()}")
    reference = variant(task, path, precision="fp32", use_fast=False)
    ref_out = [o for c in chunks(texts, args.batch_size) for o in reference.predict(c)]
    del reference

    engines, setup = [], []
    for name, _, build in specs:
        started = time.perf_counter()
        engine = build()
        engine.predict(texts[:16])  # warm-up (and compilation)
        setup.append(time.perf_counter() - started)
        print(f"  ready: {name} ({setup[-1]:.1f} s)", file=sys.stderr, flush=True)
        engines.append(engine)
    # Interleaved chunk by chunk, in an order that rotates: this machine's speed drifts by up to 2x
    # over minutes (other tenants of the host), and every variant must see the same drift.
    times: list[list[float]] = [[] for _ in specs]
    outputs: list[list] = [[] for _ in specs]
    for r in range(args.rounds):
        spent, outs = [0.0] * len(engines), [[] for _ in engines]
        for c, chunk in enumerate(chunks(texts, args.batch_size)):
            order = list(range(len(engines)))
            shift = (r + c) % len(order)
            for k in order[shift:] + order[:shift]:
                started = time.perf_counter()
                outs[k].extend(engines[k].predict(chunk))
                spent[k] += time.perf_counter() - started
        for k in range(len(engines)):
            times[k].append(spent[k])
            outputs[k] = outs[k]
            print(f"  round {r + 1}: {specs[k][0]}: {len(texts) / spent[k]:.2f} reviews/s", file=sys.stderr, flush=True)
    pick = min if args.best else statistics.median
    base = pick(times[0])
    print(f"{'variant':58} {'predicted':>16} {'reviews/s':>9} {'ratio':>6} {'agree':>7} {'setup s':>7}")
    for k, (name, predicted, _) in enumerate(specs):
        t = pick(times[k])
        if task == "sentiment":
            agree = f"{100 * label_agreement(outputs[k], ref_out):.1f}%"
        else:
            recall, precision = entity_agreement(outputs[k], ref_out)
            agree = f"{100 * min(recall, precision):.1f}%"
        print(f"{name:58} {predicted:>16} {len(texts) / t:9.2f} {base / t:6.2f} {agree:>7} {setup[k]:7.1f}")


if __name__ == "__main__":
    main()
