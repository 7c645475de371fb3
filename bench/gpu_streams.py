"""One engine process on a GPU, batches queued on the thread's own CUDA stream (device.thread_stream,
as threads-pool workers run them) against the default stream, interleaved rounds: what a worker that
takes one batch at a time pays for the streams that let several batches run at once.

    python bench/gpu_streams.py --reviews 1024 --rounds 3     # REVIEWS_DATA_DIR: the IMDb reviews
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import model_dirs, real_reviews  # noqa: E402
from worker.nlp import batching  # noqa: E402
from worker.nlp.ner import load_ner, predict_both  # noqa: E402
from worker.nlp.sentiment import load_sentiment  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=1024)
    ap.add_argument("--per-call", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-size", choices=["base", "small", "tiny", "bundled"], default="base")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dirs = model_dirs(args.model_size)
    texts = [r["text"] for r in real_reviews(args.reviews)]
    s = load_sentiment(dirs["sentiment"], device=args.device, precision="bf16")
    n = load_ner(dirs["ner"], device=args.device, precision="bf16")
    chunks = [texts[i:i + args.per_call] for i in range(0, len(texts), args.per_call)]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    streams = {"own stream": batching.thread_stream, "default stream": lambda device: contextlib.nullcontext()}
    for k in range(args.rounds):
        for name, context in streams.items():
            batching.thread_stream = context
            for c in chunks[:2]:
                predict_both(s, n, c)
            for what, fn in (("both", lambda c: predict_both(s, n, c)), ("ner", n.predict), ("sentiment", s.predict)):
                started = time.perf_counter()
                for c in chunks:
                    fn(c)
                sync()
                print(f"round {k} {name} {what}: {len(texts) / (time.perf_counter() - started):.0f} reviews/s",
                      flush=True)


if __name__ == "__main__":
    main()
