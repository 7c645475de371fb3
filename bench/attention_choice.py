"""The engine with each CPU attention kernel the host has, in one process, interleaved rounds: what
attention.cpu_attention's choice is worth to whole forwards (its own probe times attention alone).

    python bench/attention_choice.py --reviews 128 --rounds 3 --precision int8    # REVIEWS_DATA_DIR: IMDb
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, model_dirs, now, real_reviews  # noqa: E402
from worker.nlp import native  # noqa: E402
from worker.nlp.cpu import DTYPES  # noqa: E402
from worker.nlp.ner import load_ner  # noqa: E402
from worker.nlp.sentiment import load_sentiment  # noqa: E402


def use(model, kernel: str) -> None:
    """Point the model's forward at one attention kernel, as batching.Forward would have."""
    fwd = model.forward._forward
    fwd.native_attention = kernel in ("native", "tiles")
    fwd.attention_tiles = kernel == "tiles"
    fwd.attention_dtype = DTYPES.get(kernel, torch.bfloat16)


def key(result):
    """What must not change with the kernel: a review's label, or its entities' spans and labels."""
    if isinstance(result, list):
        return sorted((e.start, e.end, e.label) for e in result)
    return result.label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=["int8", "bf16"], default="int8")
    ap.add_argument("--model-size", choices=["base", "small", "tiny", "bundled"], default="base")
    ap.add_argument("--kernels", default="bf16,fp32,native,tiles", help="those of them the host has")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    dirs = model_dirs(args.model_size)
    texts = [r["text"] for r in real_reviews(args.reviews)]
    have = ["bf16", "fp32"] + ["native"] * native.attention_available() + ["tiles"] * native.attention_tiles_available()
    kernels = ["bf16"] + [k for k in args.kernels.split(",") if k in have and k != "bf16"]  # bf16: the reference
    print(f"# {machine()}; {now()}; {len(texts)} IMDb reviews, {args.model_size} models at {args.precision}, "
          f"median of {args.rounds} interleaved rounds")
    for task, loader in (("sentiment", load_sentiment), ("ner", load_ner)):
        model = loader(dirs[task], device="cpu", precision=args.precision)
        times: dict[str, list[float]] = {k: [] for k in kernels}
        outputs = {}
        for _ in range(args.rounds):
            for kernel in kernels:
                use(model, kernel)
                model.predict(texts[:8])
                started = time.perf_counter()
                outputs[kernel] = model.predict(texts)
                times[kernel].append(time.perf_counter() - started)
        base = statistics.median(times["bf16"])
        for kernel in kernels:
            same = sum(key(a) == key(b) for a, b in zip(outputs[kernel], outputs["bf16"])) / len(texts)
            t = statistics.median(times[kernel])
            print(f"{task:9} attention {kernel:6}: {len(texts) / t:7.2f} reviews/s  {base / t:5.2f}x torch bf16  "
                  f"labels (spans) equal to torch bf16's: {same:.1%}")


if __name__ == "__main__":
    main()
