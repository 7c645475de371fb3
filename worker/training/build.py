"""Build a default model from the real data, one command per model:

    python -m worker.training.build sentiment --data-dir ../shared/data --out worker/models/sentiment
    python -m worker.training.build ner --data-dir ../shared/data --out worker/models/ner

It converts the pretrained base encoder to DistilBERT, fine-tunes it, evaluates it on data it never
trained on (SST-2 dev and the IMDb held-out slice; CoNLL-2003 valid), and saves it in half precision
(safetensors) with its tokenizer and a model card.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import DistilBertForSequenceClassification, DistilBertForTokenClassification

from ..nlp import casing
from ..nlp.types import NER_TAGS, SENTIMENT_LABELS
from . import checkpoint, data, evaluate, soft_targets, targets_file
from .cards import hardware, rebuild_command, write_card
from .convert import distilbert_config, load_base
from .saving import save_half
from .students import Student, train_student
from .train import TrainConfig, bio_to_spans, encode_ner, encode_sentiment, fit

ROOT = Path(__file__).resolve().parents[2]


def _with_base(head_cls, labels, seed: int = 0):
    base, tokenizer = load_base()
    config = distilbert_config(num_labels=len(labels), id2label=dict(enumerate(labels)),
                               label2id={l: i for i, l in enumerate(labels)})
    torch.manual_seed(seed)  # the new head's initial weights
    model = head_cls(config)
    model.distilbert.load_state_dict(base.state_dict())
    return model, tokenizer


def _head_seed(args) -> int:
    """0 for the default seed, so that the released models rebuild exactly as before."""
    return 0 if args.seed == 42 else args.seed


def build_sentiment(args) -> dict:
    d = args.data_dir
    sst2 = data.read_glue_tsv(d / "sst2" / "train.tsv")
    imdb_train, _ = data.imdb_split(d / "imdb" / "train.jsonl.gz")
    imdb_train = imdb_train[: args.imdb_train]
    # SST-2 sentences are short: seeing them several times costs little next to one pass over the
    # long IMDb reviews, so they can get more epochs than IMDb inside one schedule.
    examples = sst2 * args.sst2_repeat + imdb_train
    random.Random(0).shuffle(examples)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, max_length=args.max_length, head_tokens=args.head_tokens,
                         seed=args.seed,
                         batch_tokens=args.batch_tokens, max_batch_rows=args.max_batch_rows, log_every=100)
    model, tokenizer = _with_base(DistilBertForSequenceClassification, SENTIMENT_LABELS, _head_seed(args))
    print(f"training sentiment on {len(sst2)} SST-2 sentences x {args.sst2_repeat} + {len(imdb_train)} IMDb reviews",
          flush=True)
    say = lambda m: print(m, flush=True)  # noqa: E731
    soft = None
    if args.teacher_targets:
        config.alpha, config.temperature = args.alpha, args.temperature
        soft = targets_file.log_probs(args.teacher_targets, "sentiment", [e.text for e in examples], SENTIMENT_LABELS)
    stats = fit(model, encode_sentiment(tokenizer, examples, config, soft), config, tokenizer.pad_token_id, False,
                progress=say, **_checkpointing(args, "sentiment"))
    stats["data"] = {"sst2_train": len(sst2), "sst2_repeat": args.sst2_repeat, "imdb_train": len(imdb_train)}
    if args.teacher_targets:
        stats["data"]["teacher_targets"] = [{"file": Path(p).name, **targets_file.load(p, "sentiment")["about"]}
                                            for p in args.teacher_targets]
    return finish(args, model, tokenizer, stats, "sentiment")


def build_ner(args) -> dict:
    sentences = data.read_conll(args.data_dir / "conll2003" / "train.txt")
    config = TrainConfig(epochs=args.epochs, lr=args.lr, max_length=args.max_length, batch_tokens=args.batch_tokens,
                         seed=args.seed,
                         max_batch_rows=args.max_batch_rows, log_every=100)
    model, tokenizer = _with_base(DistilBertForTokenClassification, NER_TAGS, _head_seed(args))
    # Saved in config.json with the model: the engine marks text exactly as training did.
    marking = casing.enable(model.config, tokenizer, args.case_markers) if args.case_markers else None
    print(f"training NER on {len(sentences)} CoNLL-2003 train sentences"
          + (", case markers on" if marking else ""), flush=True)
    if args.teacher:
        answers = {}
        for sentence in sentences:
            text, token_spans = data.sentence_text(sentence)
            answers[text] = [{"start": a, "end": b, "label": k} for a, b, k in bio_to_spans(sentence.tags, token_spans)]
        stats = _distilled(args, "ner", Student(model, tokenizer, list(NER_TAGS), marking, "base"), answers, config)
    else:
        stats = fit(model, encode_ner(tokenizer, sentences, config, marking), config, tokenizer.pad_token_id, True,
                    progress=lambda m: print(m, flush=True), marking=marking, **_checkpointing(args, "ner"))
        stats["data"] = {}
    stats["data"].update({"conll2003_train_sentences": len(sentences), "case_markers": marking.style if marking else False})
    return finish(args, model, tokenizer, stats, "ner")


def _checkpointing(args, task: str) -> dict:
    """Where the training run saves itself every --checkpoint-minutes, under REVIEWS_HOME, keyed by the
    recipe and the data: the same command resumes a stopped build, a changed one starts afresh."""
    from ..config import home_dir

    return checkpoint.fit_options(home_dir() / "cache" / "build", task,
                                  f"{rebuild_command(args, task)}|{Path(args.data_dir).resolve()}",
                                  args.checkpoint_minutes, say=lambda m: print(m, flush=True))


def _distilled(args, task: str, student, answers: dict[str, object], config: TrainConfig) -> dict:
    """Train the student on the labels and on the soft targets of the --teacher ensemble
    (worker/training/students.py, as `reviews distill` does), over the labeled texts and, with
    --unlabeled, up to --unlabeled-limit more texts that only the teachers speak for."""
    from ..config import Settings
    from ..distill import DistillRequest, read_texts

    settings = Settings.from_env()
    say = lambda m: print(m, flush=True)  # noqa: E731
    texts = list(answers)
    unlabeled: list[str] = []
    if args.unlabeled:
        unlabeled = read_texts(DistillRequest(task, [], data=str(args.unlabeled), limit=args.unlabeled_limit),
                               settings, None, say)
        if task == "ner":  # training reads max_length tokens of each: the teacher need not read more
            unlabeled = [t[: args.max_length * 5] for t in unlabeled]
        texts += [t for t in unlabeled if t not in answers]
    targets = soft_targets.for_teachers(task, args.teacher, texts, settings.engine_options(), say)
    stats = train_student(student, task, texts, answers, targets, args.teacher, config, 0.0, say)
    stats["data"] = {"teachers": [Path(t).name for t in args.teacher], "unlabeled": len(texts) - len(answers),
                     "unlabeled_source": Path(args.unlabeled).name if args.unlabeled else None}
    return stats


def finish(args, model, tokenizer, stats: dict, task: str) -> dict:
    save_half(model, tokenizer, args.out)
    # Metrics come from the saved half-precision files through the service's own engine.
    metrics = {}
    if task == "sentiment":
        _, heldout = data.imdb_split(args.data_dir / "imdb" / "train.jsonl.gz")
        metrics["sst2_dev"] = evaluate.evaluate_sentiment(str(args.out), data.read_glue_tsv(
            args.data_dir / "sst2" / "dev.tsv"))
        metrics["imdb_heldout"] = evaluate.evaluate_sentiment(str(args.out), heldout)
    else:
        metrics["conll2003_valid"] = evaluate.evaluate_ner(str(args.out), data.read_conll(
            args.data_dir / "conll2003" / "valid.txt"))
    stats["metrics"] = metrics
    stats["hardware"] = hardware()
    stats["command"] = rebuild_command(args, task)
    (args.out / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_card(args.out, task, stats)
    print(json.dumps(metrics), flush=True)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description="Build a default model from the real data.")
    ap.add_argument("task", choices=["sentiment", "ner"])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--head-tokens", type=int, default=64)
    ap.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per step at most")
    ap.add_argument("--max-batch-rows", type=int, help="examples per step at most")
    ap.add_argument("--imdb-train", type=int, default=8000, help="IMDb train reviews to use (time on a CPU)")
    ap.add_argument("--sst2-repeat", type=int, default=1, help="passes over SST-2 train per epoch over IMDb")
    ap.add_argument("--case-markers", nargs="?", const="added", choices=casing.STYLES, default=None,
                    help="ner: let the model see capitals through reserved tokens' rows (worker/nlp/casing.py)")
    ap.add_argument("--teacher", action="append", default=[],
                    help="distil from this model as well as the labels (repeat: an ensemble); see `reviews distill`")
    ap.add_argument("--teacher-targets", action="append", default=[], type=Path, metavar="FILE",
                    help="sentiment: a teacher's probabilities over the training texts, written by"
                         " `python -m worker.training.teacher` (repeat: an ensemble, their mean)")
    ap.add_argument("--alpha", type=float, default=0.5, help="with --teacher-targets: weight of the label loss")
    ap.add_argument("--temperature", type=float, default=2.0, help="with --teacher-targets: softmax temperature")
    ap.add_argument("--unlabeled", type=Path, help="with --teacher: more texts, JSONL/CSV, that only the teachers label")
    ap.add_argument("--unlabeled-limit", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42, help="batch order and new head (an ensemble's members differ here)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--checkpoint-minutes", type=float, default=10,
                    help="save the training run this often under REVIEWS_HOME; the same command resumes it (0: never)")
    ap.add_argument("--card-only", action="store_true",
                    help="only rewrite OUT/README.md from OUT/training.json (after a change to the card's text)")
    args = ap.parse_args()
    defaults = {"sentiment": dict(epochs=1.0, lr=5e-5, max_length=256, max_batch_rows=64),
                "ner": dict(epochs=4.0, lr=1e-4, max_length=128, max_batch_rows=32)}
    for k, v in defaults[args.task].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.out = args.out or ROOT / "worker" / "models" / args.task
    if args.card_only:
        stats = json.loads((args.out / "training.json").read_text())
        write_card(args.out, args.task, stats)
        print(f"wrote {args.out / 'README.md'}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    try:
        (build_sentiment if args.task == "sentiment" else build_ner)(args)
    except (ValueError, OSError) as exc:  # bad data lines, a foreign targets file, a missing file: one line
        ap.exit(2, f"build {args.task}: {exc}\n")
    print(f"built {args.task} in {(time.monotonic() - started) / 60:.1f} min: {args.out}", flush=True)


if __name__ == "__main__":
    main()
