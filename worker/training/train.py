"""The fine-tuning loop for sentiment and NER, with an optional teacher (soft-target distillation).

loss = a * CE(labels) + (1 - a) * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
the soft-target term DistilBERT was trained with: a retrain keeps what the active version knew.
The teacher either runs beside the student (retrain: same tokenizer, same inputs) or its outputs
come precomputed on each example (`Encoded.soft`, `reviews distill`: any teacher); a row with soft
targets and no label learns from the teacher alone. With a `hidden_teacher` of the student's width
and vocabulary, DistilBERT's third term is added: the cosine between last hidden states.

Batches are length-bucketed under a token budget (little padding), bf16 autocast on CPUs and GPUs
that have it, AdamW with linear warmup and decay, fixed seeds.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..nlp.batching import group_by_budget
from ..nlp.bio import bio_spans
from ..nlp.casing import CaseMarking, model_inputs
from ..nlp.device import autocast, pick_device, pick_precision
from ..nlp.types import NER_TAGS
from . import checkpoint as saved
from .data import NerSentence, SentimentExample, sentence_text
from .losses import MeanWordTargets, WordTargets, distillation_loss, hidden_cosine_loss, soft_target_loss


@dataclass
class TrainConfig:
    epochs: float = 1.0
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    batch_tokens: int = 4096  # padded tokens per step (rows x longest row)
    max_batch_rows: int = 64
    max_length: int = 256  # tokens per example, specials included
    head_tokens: int = 64  # head + tail truncation keeps this many from the start, the rest from the end
    alpha: float = 0.5  # weight of the label loss when a teacher is given
    temperature: float = 2.0
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    log_every: int = 50


@dataclass
class Encoded:
    ids: list[int]
    labels: int | list[int]  # a class for sentiment, one tag (or -100) per token for NER; -100: none
    soft: torch.Tensor | None = None  # teacher log-probabilities: [classes], or [tokens, classes] (NaN rows: none)


def head_tail(ids: list[int], keep: int, head: int) -> list[int]:
    """Sun et al. (2019): the start and the end of a long review carry most of its sentiment."""
    if len(ids) <= keep:
        return ids
    return ids[:head] + ids[len(ids) - (keep - head):]


def encode_sentiment(tokenizer, examples: Sequence[SentimentExample], config: TrainConfig,
                     soft: Sequence[torch.Tensor | None] | None = None) -> list[Encoded]:
    """soft: per example, a teacher's log-probabilities in the model's class order (label -100: none)."""
    keep = config.max_length - 2
    enc = tokenizer([e.text for e in examples], add_special_tokens=False, verbose=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    soft = soft if soft is not None else [None] * len(examples)
    return [Encoded([cls, *head_tail(ids, keep, config.head_tokens), sep], e.label, t)
            for ids, e, t in zip(enc, examples, soft)]


def bio_to_spans(tags: Sequence[str], token_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """Character spans (start, end, type) of BIO-tagged tokens, read by bio.bio_spans."""
    if len(tags) != len(token_spans):
        raise ValueError(f"{len(tags)} tags for {len(token_spans)} tokens")
    return [(token_spans[a][0], token_spans[b - 1][1], kind) for a, b, kind in bio_spans(tags)]


def word_labels(offsets, word_start: Sequence[bool], spans: Sequence[tuple[int, int, str]],
                tag_id: dict[str, int] | None = None) -> list[int]:
    """A tag id for the first piece of each word, -100 elsewhere. A word is what the engine reads
    (worker/nlp/ner.py): a token that does not continue the previous one with '##'. A word that
    starts inside an entity but not at its start (the '.' of 'U.S.') continues it with I-.
    tag_id: the model's own tag order (its config's label2id); NER_TAGS order by default."""
    tag_id = tag_id or {t: i for i, t in enumerate(NER_TAGS)}
    labels = []
    for (s, _e), first in zip(offsets, word_start):
        if not first:
            labels.append(-100)
            continue
        tag = "O"
        for start, end, kind in spans:
            if start <= s < end:
                tag = ("B-" if s == start else "I-") + kind
                break
        labels.append(tag_id[tag])
    return labels


def encode_ner_spans(tokenizer, items: Sequence[tuple[str, Sequence[tuple[int, int, str]] | None]],
                     config: TrainConfig, tag_id: dict[str, int] | None = None,
                     marking: CaseMarking | None = None,
                     soft: Sequence[WordTargets | MeanWordTargets | None] | None = None) -> list[Encoded]:
    """(text, entity char spans) pairs to training examples; long texts are cut to max_length.
    Spans None: an unlabeled text (every label -100). marking: the model's case markers
    (casing.for_model), inserted exactly as the engine inserts them. soft: per text, a teacher's
    word spans and log-probabilities in the model's tag order, read at each word's first piece."""
    enc = tokenizer([t for t, _ in items], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = []
    for k, (ids, offsets, (text, spans)) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], items)):
        starts = [not vocab[i].startswith("##") for i in ids]
        if marking is not None:
            ids, offsets, is_marker = marking.mark(text, ids, offsets, starts)
            # A marker carries no tag (-100): the word's tag sits on its first piece, as the engine reads it.
            starts = [not m and not vocab[i % len(vocab)].startswith("##") for i, m in zip(ids, is_marker)]
        ids, offsets, starts = (x[: config.max_length - 2] for x in (ids, offsets, starts))
        labels = word_labels(offsets, starts, spans, tag_id) if spans is not None else [-100] * len(ids)
        targets = None
        if soft is not None and soft[k] is not None:
            rows = soft[k].rows(offsets, starts)
            nan = torch.full((1, rows.shape[1]), float("nan"))
            targets = torch.cat([nan, rows, nan])
        out.append(Encoded([cls, *ids, sep], [-100, *labels, -100], targets))
    return out


def encode_ner(tokenizer, sentences: Sequence[NerSentence], config: TrainConfig,
               marking: CaseMarking | None = None) -> list[Encoded]:
    items = []
    for s in sentences:
        text, token_spans = sentence_text(s)
        items.append((text, bio_to_spans(s.tags, token_spans)))
    return encode_ner_spans(tokenizer, items, config, marking=marking)


def make_batches(examples: list[Encoded], config: TrainConfig, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort by length inside pools of many batches: little padding, still random."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    pool = 100 * config.max_batch_rows
    lengths = [len(e.ids) for e in examples]
    batches: list[list[int]] = []
    for k in range(0, len(order), pool):
        chunk = sorted(order[k : k + pool], key=lengths.__getitem__)
        batches += group_by_budget(chunk, lengths, config.batch_tokens, config.max_batch_rows)
    rng.shuffle(batches)
    return batches


def collate_soft(examples: list[Encoded], batch: list[int], width: int, per_token: bool) -> torch.Tensor | None:
    """The batch's teacher log-probabilities, NaN where a row has none; None where no example has any."""
    known = [examples[i].soft for i in batch if examples[i].soft is not None]
    if not known:
        return None
    classes = known[0].shape[-1]
    out = torch.full((len(batch), width, classes) if per_token else (len(batch), classes), float("nan"))
    for row, i in enumerate(batch):
        if examples[i].soft is not None:
            out[row, : len(examples[i].soft)] = examples[i].soft
    return out


def collate(examples: list[Encoded], batch: list[int], pad_id: int, per_token: bool):
    width = max(len(examples[i].ids) for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long) if per_token else torch.zeros(len(batch), dtype=torch.long)
    for row, i in enumerate(batch):
        ex = examples[i]
        ids[row, : len(ex.ids)] = torch.tensor(ex.ids)
        mask[row, : len(ex.ids)] = 1
        if per_token:
            labels[row, : len(ex.ids)] = torch.tensor(ex.labels)
        else:
            labels[row] = ex.labels
    return ids, mask, labels


def fit(model, examples: list[Encoded], config: TrainConfig, pad_id: int, per_token: bool, teacher=None,
        progress: Callable[[str], None] = print, hidden_teacher=None, cosine_weight: float = 1.0,
        marking: CaseMarking | None = None, checkpoint: Path | None = None, checkpoint_every_s: float = 600) -> dict:
    """Train `model` in place; return statistics (steps, seconds, examples/s, final loss).
    marking: the case marking of `model` (and of `teacher`, a copy of it), whose "added" style
    the ids of `examples` carry (casing.py).
    checkpoint: a file to save the run to every `checkpoint_every_s` seconds and to resume from
    when it exists (checkpoint.py); deleted when the run ends."""
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    device = pick_device(config.device)
    precision = pick_precision(config.precision, device)
    if precision == "int8":  # an inference setting: train in the float precision "auto" picks
        precision = pick_precision("auto", device)
    if precision == "fp16" and device.type == "cpu":
        precision = "bf16"
    model.to(device).train()
    for t in (teacher, hidden_teacher):
        if t is not None:
            t.to(device).eval()
    at = saved.Progress(make_batches(examples, config, rng))
    total_steps = max(1, math.ceil(len(at.batches) * config.epochs))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": config.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    warmup = int(total_steps * config.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup
        else max(0.0, (total_steps - step) / max(1, total_steps - warmup)))
    recent: deque[float] = deque(maxlen=50)  # the loss reported is the mean of the last 50 steps
    resumed = saved.resume(checkpoint, model, optimizer, scheduler, rng)
    if resumed:
        at, losses = resumed
        recent.extend(losses)
        progress(f"resumed from {checkpoint} at step {at.step}/{total_steps}")
    last_save = time.monotonic()
    started = last_save - at.seconds
    while at.step < total_steps:
        while at.pos < len(at.batches) and at.step < total_steps:
            batch = at.batches[at.pos]
            ids, mask, labels = (t.to(device) for t in collate(examples, batch, pad_id, per_token))
            soft = collate_soft(examples, batch, ids.shape[1], per_token)
            with autocast(device, precision):
                out = model(**model_inputs(model, ids, marking), attention_mask=mask,
                            output_hidden_states=hidden_teacher is not None)
                logits = out.logits
                with torch.no_grad():
                    if teacher is not None:
                        teacher_logits = teacher(**model_inputs(teacher, ids, marking), attention_mask=mask).logits
                    if hidden_teacher is not None:
                        teacher_hidden = hidden_teacher(**model_inputs(hidden_teacher, ids, marking), attention_mask=mask,
                                                        output_hidden_states=True).hidden_states[-1]
            if soft is not None:
                loss = soft_target_loss(logits, soft.to(device), labels, config.alpha, config.temperature)
            elif teacher is not None:
                loss = distillation_loss(logits, teacher_logits, labels, config.alpha, config.temperature)
            else:
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                       ignore_index=-100)
            if hidden_teacher is not None:
                loss = loss + cosine_weight * hidden_cosine_loss(out.hidden_states[-1], teacher_hidden, mask)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            at.pos += 1
            at.step += 1
            at.seen += len(batch)
            at.tokens += int(mask.sum())
            recent.append(loss.item())
            running = sum(recent) / len(recent)
            now = time.monotonic()
            if checkpoint is not None and now - last_save >= checkpoint_every_s and at.step < total_steps:
                at.seconds, last_save = now - started, now
                saved.save(checkpoint, model, optimizer, scheduler, rng, at, list(recent))
            if at.step % config.log_every == 0 or at.step == total_steps:
                elapsed = now - started
                eta = elapsed / at.step * (total_steps - at.step)
                progress(f"step {at.step}/{total_steps} loss {running:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                         f"{at.seen / elapsed:.1f} examples/s {at.tokens / elapsed:.0f} tokens/s "
                         f"elapsed {elapsed / 60:.1f} min eta {eta / 60:.1f} min")
        if at.pos >= len(at.batches):
            at.batches, at.pos = make_batches(examples, config, rng), 0
    model.eval()
    saved.remove(checkpoint)
    elapsed = time.monotonic() - started
    return {"steps": at.step, "examples": at.seen, "seconds": round(elapsed, 1),
            "examples_per_s": round(at.seen / elapsed, 1),
            "final_loss": round(sum(recent) / max(1, len(recent)), 4), "precision": precision, "device": str(device),
            "config": asdict(config)}


def train_sentiment(model, tokenizer, examples: Sequence[SentimentExample], config: TrainConfig, teacher=None,
                    progress: Callable[[str], None] = print) -> dict:
    return fit(model, encode_sentiment(tokenizer, examples, config), config, tokenizer.pad_token_id, False,
               teacher, progress)


def train_ner(model, tokenizer, items: list[Encoded], config: TrainConfig, teacher=None,
              progress: Callable[[str], None] = print, marking: CaseMarking | None = None) -> dict:
    """`items` come from encode_ner (CoNLL sentences) or encode_ner_spans (texts with char spans),
    marked with `marking`, the model's case marking."""
    return fit(model, items, config, tokenizer.pad_token_id, True, teacher, progress, marking=marking)
