"""Where the engine's GPU time goes: both models (predict_both, as a worker runs them) over real reviews
under torch.profiler, with the busy time of the GPU against the wall time and the kernels that take
the most of it.

    python bench/gpu_kernels.py --reviews 512 --budget 65536 --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import machine, model_dirs, now, real_reviews  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=512)
    ap.add_argument("--budget", type=int, default=65536)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--model-size", choices=["base", "small", "tiny", "bundled"], default="base")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--device", default="cuda", help="cpu: the same code without a GPU (kernels then read 0)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from worker.nlp.ner import load_ner, predict_both
    from worker.nlp.sentiment import load_sentiment

    dirs = model_dirs(args.model_size)
    texts = [r["text"] for r in real_reviews(args.reviews)]
    s = load_sentiment(dirs["sentiment"], device=args.device, precision=args.precision, token_budget=args.budget)
    n = load_ner(dirs["ner"], device=args.device, precision=args.precision, token_budget=args.budget)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    predict_both(s, n, texts)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        predict_both(s, n, texts)
        sync()
        wall = time.perf_counter() - started
    events = prof.key_averages()
    # The device's own rows (kernels, copies, memsets): an operator's row repeats its kernels' time.
    device_us = sum(e.self_device_time_total for e in events if e.device_type != DeviceType.CPU)
    print(f"# {machine()}; {now()}")
    print(f"# {len(texts)} IMDb reviews, {args.precision}, token budget {args.budget}, models {args.model_size}")
    print(f"wall {wall * 1e3:.1f} ms; GPU kernels {device_us / 1e3:.1f} ms ({device_us / 1e6 / wall:.0%} of the wall)")
    print(events.table(sort_by="self_device_time_total", row_limit=args.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
