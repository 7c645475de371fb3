"""Long reviews: is reading every window at least as accurate as reading the first 512 tokens?

    python bench/window_accuracy.py                      # bundled sentiment model, last 2,000 IMDb train records
    python bench/window_accuracy.py --model DIR --last 2000

The last records of imdb/train.jsonl.gz are held out from the bundled model's training. Every
review is tokenized once and cut into the engine's windows (max_length 512, stride 128); the
windows' logits are computed once, then combined in several ways:

  head       the first 510 tokens only: what truncation to 512 tokens gives
  tail       the last 510 tokens only
  mean       mean of the windows' logits (the engine's rule before this comparison)
  mean-prob  mean of the windows' probabilities
  owned      logits weighted by how many tokens each window "owns" (a token belongs to the window
             where it is most central, the rule the NER stitch uses), so text read twice in an overlap
             counts once
  head+tail  one 512-token input of the first 128 and the last 382 tokens (Sun et al., 2019)

  most confident  the window whose prediction has the highest probability

Accuracy is printed on all reviews and on the long ones (more than 510 tokens), where the rules
differ, for each window size asked for (--max-length 512,256: the bundled model was fine-tuned on
inputs of at most 256 tokens).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import BUNDLED, TRAIN, machine, now, read_jsonl_gz  # noqa: E402
from worker.nlp import batching  # noqa: E402
from worker.nlp.sentiment import load_sentiment  # noqa: E402
from worker.nlp.sentiment import combine_windows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(BUNDLED / "sentiment"))
    ap.add_argument("--last", type=int, default=2000, help="how many records from the end of train.jsonl.gz")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--max-length", type=lambda v: [int(x) for x in v.split(",")], default=[512, 256],
                    help="window sizes to compare, comma-separated (the engine's default is 512)")
    ap.add_argument("--stride", type=int, default=128, help="tokens shared by consecutive windows")
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"no model at {args.model}: the bundled sentiment model has not landed yet (use --model)")

    rows = read_jsonl_gz(TRAIN)[-args.last :]
    texts = [r["text"] for r in rows]
    gold = [r["label"] for r in rows]
    engine = load_sentiment(args.model, precision=args.precision)
    opts = engine.options
    encoded = batching.encode(engine.tokenizer, [t[: opts.max_chars] for t in texts])
    print(f"# window vs head-only: {args.model}, last {len(rows)} records of {TRAIN.name} (held out); "
          f"stride {args.stride}")
    print(f"# {machine()}; {now()}; precision {engine.precision}")
    long_512 = [i for i, enc in enumerate(encoded) if len(enc.ids) > 510]
    print(f"# {len(long_512)} reviews longer than 510 tokens: 'long' below means these, for every window size")
    print(f"{'window size':>11} {'rule':32} {'accuracy (all)':>14} {'accuracy (long)':>15} {'errors (long)':>13}")
    predictions = {}
    for max_length in args.max_length:
        size = max_length - 2
        windows = batching.make_windows(encoded, max_length, args.stride)
        logits = batching.run_model(engine.forward, engine.tokenizer, windows, opts.token_budget, per_token=False)
        per_text: list[list[tuple[batching.Window, torch.Tensor]]] = [[] for _ in texts]
        for w, row in zip(windows, logits):
            per_text[w.text_index].append((w, row))
        # Single-input readings of the long reviews (a short one is read whole, by every rule): the
        # first `size` tokens (truncation), the last, and head+tail.
        head_n = min(128, size // 4)
        long = [(i, enc.ids) for i, enc in enumerate(encoded) if len(enc.ids) > size]
        single = {
            "head": [batching.Window(i, 0, ids[:size]) for i, ids in long],
            "tail": [batching.Window(i, 0, ids[-size:]) for i, ids in long],
            "head+tail": [batching.Window(i, 0, ids[:head_n] + ids[len(ids) - (size - head_n):]) for i, ids in long],
        }
        read = {}
        for kind, ws in single.items():
            rows_ = batching.run_model(engine.forward, engine.tokenizer, ws, opts.token_budget, per_token=False)
            read[kind] = {w.text_index: row for w, row in zip(ws, rows_)}
        rules = {
            f"head (truncate to {max_length})": lambda i, parts: read["head"].get(i, parts[0][1]),
            f"tail (last {max_length})": lambda i, parts: read["tail"].get(i, parts[0][1]),
            "windows: mean of logits": lambda i, parts: combine_windows(parts, len(encoded[i].ids), "mean"),
            "windows: mean of probabilities": lambda i, parts: torch.stack([r.softmax(-1) for _, r in parts]).mean(0),
            "windows: owned-token weights": lambda i, parts: combine_windows(parts, len(encoded[i].ids), "owned"),
            "windows: most confident window": lambda i, parts: max((r for _, r in parts),
                                                                   key=lambda r: float(r.softmax(-1).max())),
            f"head+tail ({head_n} + {size - head_n})": lambda i, parts: read["head+tail"].get(i, parts[0][1]),
        }
        for name, rule in rules.items():
            pred = [engine.labels[int(rule(i, parts).argmax())] for i, parts in enumerate(per_text)]
            predictions[(max_length, name)] = pred
            right = [p == g for p, g in zip(pred, gold)]
            long_right = sum(right[i] for i in long_512)
            print(f"{max_length:11d} {name:32} {100 * sum(right) / len(rows):13.2f}% "
                  f"{100 * long_right / max(1, len(long_512)):14.2f}% {len(long_512) - long_right:13d}", flush=True)
    first = args.max_length[0]
    a, b = predictions[(first, "windows: mean of logits")], predictions[(first, f"head (truncate to {first})")]
    only_a = sum(a[i] == gold[i] != b[i] for i in long_512)
    only_b = sum(b[i] == gold[i] != a[i] for i in long_512)
    print(f"at {first}: long reviews right only with the mean of windows: {only_a}; right only with the head: {only_b}"
          f" (exact two-sided sign test p = {sign_test(only_a, only_b):.3f})")


def sign_test(a: int, b: int) -> float:
    """Two-sided exact binomial test of a vs b discordant pairs (McNemar's exact test)."""
    from math import comb

    n, k = a + b, min(a, b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, j) for j in range(k + 1)) / 2**n)


if __name__ == "__main__":
    main()
