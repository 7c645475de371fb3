"""What case markers cost at serving: the NER engine on the same real reviews with a model without
markers and one or more with them (worker/nlp/casing.py, either style), in alternating rounds so that
all see the same machine load. Prints tokens per review and reviews/s for each, and each one's speed
against the plain model.

    python bench/case_markers.py --plain OLD_NER_DIR --marked worker/models/ner --reviews 512 --rounds 5
    python bench/case_markers.py --plain A --marked B --marked C --precision bf16

Reviews: the unlabeled IMDb reviews of ../shared/data (REVIEWS_DATA_DIR), never the labeled splits.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plain", required=True, help="NER model without case markers")
    ap.add_argument("--marked", required=True, action="append", help="NER model with case markers (repeatable)")
    ap.add_argument("--reviews", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64, help="reviews per predict call, as one queue message")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()

    import torch

    from worker.nlp import batching
    from worker.nlp.ner import load_ner

    data = Path(os.environ.get("REVIEWS_DATA_DIR", ROOT.parent / "shared" / "data"))
    with gzip.open(data / "imdb" / "unsup.jsonl.gz", "rt", encoding="utf-8") as f:
        reviews = [json.loads(line)["text"] for _, line in zip(range(args.reviews + 64), f)]
    warm, texts = reviews[:64], reviews[64:]
    engines = {"plain": load_ner(args.plain, precision=args.precision)}
    for k, source in enumerate(args.marked):
        engines[f"marked{k + 1 if len(args.marked) > 1 else ''}"] = load_ner(source, precision=args.precision)
    tokens = {}
    for name, engine in engines.items():
        engine.predict(warm)
        encoded = batching.encode(engine.tokenizer, texts)
        if engine.casing is not None:
            encoded = [engine._mark(t, e) for t, e in zip(texts, encoded)]
        tokens[name] = sum(len(e.ids) for e in encoded)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            started = time.perf_counter()
            for k in range(0, len(texts), args.batch_size):
                engine.predict(texts[k : k + args.batch_size])
            times[name].append(time.perf_counter() - started)
    print(f"host: {cpu_name()}, {torch.get_num_threads()} torch threads; {len(texts)} IMDb unsup reviews, "
          f"batches of {args.batch_size}, median of {args.rounds} alternating rounds")
    sources = [args.plain, *args.marked]
    for (name, engine), source in zip(engines.items(), sources):
        t = statistics.median(times[name])
        style = engine.casing.style if engine.casing else "none"
        print(f"{name:8} {source}: case {style:8} precision {engine.precision:5} "
              f"{tokens[name] / len(texts):6.1f} tokens/review {len(texts) / t:7.1f} reviews/s  "
              f"(rounds: {', '.join(f'{x:.2f}' for x in times[name])} s)")
    for name in list(engines)[1:]:
        ratio = statistics.median(times["plain"]) / statistics.median(times[name])
        best = min(times["plain"]) / min(times[name])  # the fastest rounds: least disturbed by neighbours
        print(f"{name}/plain speed: {ratio:.3f} by medians, {best:.3f} by fastest rounds "
              f"(tokens: {tokens[name] / tokens['plain'] - 1:+.1%})")


if __name__ == "__main__":
    main()
