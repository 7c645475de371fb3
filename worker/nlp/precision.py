"""REVIEWS_PRECISION=auto on CPU: the precision a loaded model runs at, chosen by measuring it.

Which precision is fastest depends on the CPU more than its flags tell: int8 per token (int8.py) ran
1.3-1.6x bf16 on an AVX-512 EPYC with VNNI, but 1.8x *slower* than bf16 on a Xeon with AMX, whose
tile units run bf16 products faster than torch._int_mm runs int8. So `choose` times the engine's own
forward (batching.Forward, as serving runs it) on the loaded model, on synthetic token ids at the
shapes the engine batches (one batch of 1024 padded tokens of 128-token windows, one of 512-token
windows, after a one-window warm-up), for every candidate: fp32 always (also the reference), bf16
where the CPU has fast bf16 products (cpu.cpu_has_fast_bf16), int8 where its kernels build here.

A candidate is kept only if it agrees with fp32 on those inputs: the sentiment head's argmax on
every window whose fp32 margin is not a near-tie; NER's entity spans, exact, on >= 98% both ways
(those fp32 finds, and those the candidate finds), over more synthetic batches than are timed. Of the
kept ones, the fastest wins if it beats the flags' own choice (bf16 where it is fast, else fp32) by
more than 5%; within that, the flags' choice stays. Timings taken while other processes keep over a
quarter of the CPUs busy say little: then the flags' choice is used for this run, and not cached.

A candidate that runs over 3x fp32's time is dropped at once: on an AVX2-only EPYC (no VNNI),
torch._int_mm ran 30x slower than fp32, and timing it to the end took 11.5 s of the worker's start.
Before any batch, int8 is also dropped when one feed-forward product at the model's shapes shows it
(int8.product_ratio): its first batch of DistilBERT-base had taken 38 s there.

The choice is cached (precision_cache.py), keyed by the CPU model name, torch version, torch
threads, task and the model's shape, so later starts of the same model shape on the same kind of
machine pay nothing.

On CUDA there is nothing to measure: bf16 where the GPU supports it, else fp16 (device.pick_precision).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch

from . import batching, int8
from .bio import bio_spans
from .cpu import cpu_float_precision, cpu_has_fast_bf16, others_busy
from .precision_cache import cache_key, cache_path, feed_forward_sizes, locked, read_cache, write_cache

log = logging.getLogger(__name__)

LENGTHS = (128, 512)  # window lengths timed: a typical review, and the longest window
# Padded tokens in each timed batch: half the CPU token budget (2048); per token, 1024-token batches
# ran within noise of 2048-token ones (bench/RESULTS.md), at half the cost of measuring.
TOKENS_PER_BATCH = 1024
# The agreement check (`agreement`). Sentiment: fp32's top two probabilities closer than NEAR_TIE are
# a tie that does not count; of the rest, a candidate must agree on every window. NER: entity spans,
# the measure users read (bench/precision_agreement.py), both ways, counting only spans whose every
# token fp32 decides (top two probabilities NEAR_TIE apart). Random ids make the tagger far less sure
# than text does, so spans move more: on the bundled NER model over 16 batches, int8 agreed on 94-96%
# of spans and bf16 on 99.5-99.8% where 1,024 real reviews gave 98.0% and 99.7%; 98% here sits
# between them, as 99% does on real text. The near-tie rule keeps 98% of the bundled model's spans
# (bf16 99.6%, int8 95.9%), while a random DistilBERT-base tagger, whose every reduced precision had
# moved 2.5% of its spans, all of them near ties, is no longer held at fp32 (bench/RESULTS.md). A
# check of the tokens tagged as entities on the two timed batches alone (about 100) had int8 at
# 98.99% against a bar of 99%, a verdict one token flipped.
NEAR_TIE = {"sentiment": 0.1, "ner": 0.02}
MIN_AGREEMENT = {"sentiment": 1.0, "ner": 0.98}
# NER's check also runs the batches of this many more seeds, untimed: about 270 spans on the bundled
# model, so that one span is 0.4% of the verdict (each seed about 0.35 s at fp32, 2 cores).
NER_EXTRA_SEEDS = 3
PREFER_WITHIN = 0.05  # another candidate must beat the default by this much to be picked (timing noise)
# Each batch is timed this many times per candidate, the fastest kept: a hiccup of the host only adds
# time, and one had made int8 look 2x slower than it was in one measurement of three (RESULTS.md),
# a choice the cache would have kept.
TIMINGS_PER_BATCH = 2
DROP_SLOWER_THAN_FP32 = 3.0  # slower than this on the batches so far: dropped (int8 on CPUs without VNNI)
PROBE_ROWS = 128  # tokens in the int8 product probe (int8.product_ratio)
MAX_OTHERS_BUSY = 0.25  # share of the machine other processes may use while timing, for the result to be cached


@dataclass
class Trial:
    precision: str
    seconds: float  # the timed batches, summed
    agreement: float  # with fp32 on the same inputs (1.0 for fp32 itself)
    passed: bool
    note: str = ""  # why it was dropped before the end, if it was


def candidates(task: str | None) -> list[str]:
    """The precisions `auto` may pick on CPU for `task`. Training (task None) never gets int8."""
    out = ["fp32"]
    if cpu_has_fast_bf16():
        out.append("bf16")
    if task is not None and int8.available():
        out.append("int8")
    return out


def _usable(precision: str) -> bool:
    """A cached pick that this process can still run (a CPU flag masked by a new VM, no compiler)."""
    checks = {"fp32": lambda: True, "bf16": cpu_has_fast_bf16, "int8": int8.available}
    return precision in checks and checks[precision]()


# -- choosing ---------------------------------------------------------------------------------------


def choose(model, tokenizer, device: torch.device, task: str) -> str:
    """The precision `auto` gives this loaded model for `task` on `device`: cached, or measured now."""
    if device.type != "cpu":
        from .device import pick_precision

        return pick_precision("auto", device, task)
    path, key = cache_path(), cache_key(model, task)
    with locked(path):
        cached = read_cache(path).get(key)
        if cached is not None and _usable(cached["precision"]):
            log.info("precision for %s: %s (measured %s, cached in %s)", task, cached["precision"],
                     cached.get("date", "earlier"), path)
            return cached["precision"]
        tried = candidates(task)  # builds or loads the int8 kernels on first use: not timed
        started = time.perf_counter()
        with others_busy() as busy:
            trials = measure(model, tokenizer, device, task, tried)
        cost = time.perf_counter() - started
        quiet = busy.share is None or busy.share <= MAX_OTHERS_BUSY
        pick = fastest(trials, default=cpu_float_precision(), timings_usable=quiet)
        log.info("precision for %s: %s, measured in %.1f s: %s", task, pick, cost, "; ".join(
            f"{t.precision} {1000 * t.seconds:.0f} ms, agreement {100 * t.agreement:.1f}%"
            + ("" if t.passed else f" (rejected{': ' + t.note if t.note else ''})") for t in trials))
        if not quiet:
            log.warning("precision for %s: other processes used %.0f%% of the CPUs while it was measured, so "
                        "the timings say little: %s for this run (the flags' choice where it passed), not "
                        "cached; the next start measures again", task, 100 * busy.share, pick)
            return pick
        write_cache(path, key, {
            "precision": pick, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "measure_s": round(cost, 2), "others_busy": None if busy.share is None else round(busy.share, 3),
            "trials": [asdict(t) for t in trials],
        })
    return pick


def fastest(trials: list[Trial], default: str | None = None, timings_usable: bool = True) -> str:
    """The pick among the candidates that passed the agreement check: `default` (the float precision
    of the CPU's flags, cpu_float_precision) unless another is faster by more than PREFER_WITHIN,
    a lead that timing noise on a shared machine does not produce. Without usable timings (the
    machine was busy), the default if it passed. Nothing passed (fp32 always does): fp32."""
    passed = {t.precision: t for t in trials if t.passed}
    if not passed:
        return "fp32"
    best = min(passed.values(), key=lambda t: t.seconds)
    if default not in passed:
        return best.precision
    if not timings_usable or passed[default].seconds <= best.seconds * (1 + PREFER_WITHIN):
        return default
    return best.precision


def synthetic_batches(tokenizer, vocab_size: int, max_positions: int, token_budget: int,
                      lengths: tuple[int, ...] = LENGTHS, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch per window length, shaped as token_budget_batches shapes real ones: as many rows as
    the budget allows, [CLS] ids [SEP], the last rows a little shorter (so the padding mask is on, as
    in a length-sorted batch of real windows). Ids are drawn from the vocabulary, specials excluded."""
    gen = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in special])
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
    out = []
    for length in sorted({min(n, max_positions) for n in lengths}):
        rows = max(1, token_budget // length)
        ids = torch.full((rows, length), pad_id, dtype=torch.long)
        mask = torch.zeros((rows, length), dtype=torch.long)
        for r in range(rows):
            n = max(3, length - (r * 3 if r >= rows // 2 else 0))  # half full, half a few tokens shorter
            body = ordinary[torch.randint(len(ordinary), (n - 2,), generator=gen)]
            ids[r, 0], ids[r, 1:n - 1], ids[r, n - 1] = cls_id, body, sep_id
            mask[r, :n] = 1
        out.append((ids, mask))
    return out


def agreement(task: str, got: list[torch.Tensor], ref: list[torch.Tensor], masks: list[torch.Tensor],
              labels: dict[int, str] | None = None) -> float:
    """How well a candidate's logits agree with fp32's on the same batches. Sentiment: the share of the
    windows where both pick the same class, counting only those that fp32 decides (its top two
    probabilities at least NEAR_TIE apart: random ids put far more windows in that band than text
    does, and there any rounding flips the class; where fp32 decides nothing, all count). NER: of
    the entity spans (BIO tags of `labels`, each row's unmasked tokens) on tokens that fp32 decides
    (likewise; where it decides no span, all count), the smaller of the share of fp32's that the
    candidate finds exactly and the share of the candidate's that fp32 has."""
    if task == "ner":
        return span_agreement(got, ref, masks, labels or {})
    g, r = torch.cat(got), torch.cat(ref)
    if r.numel() == 0:
        return 1.0
    counted = torch.ones(len(r), dtype=torch.bool)
    if r.shape[-1] > 1:
        top2 = r.float().softmax(-1).topk(2, dim=-1).values
        decided = top2[:, 0] - top2[:, 1] >= NEAR_TIE[task]
        if bool(decided.any()):
            counted = decided
    return float((g.argmax(-1) == r.argmax(-1))[counted].float().mean())


def span_agreement(got: list[torch.Tensor], ref: list[torch.Tensor], masks: list[torch.Tensor],
                   labels: dict[int, str]) -> float:
    def spans(outputs: list[torch.Tensor], decided: list[torch.Tensor]) -> set[tuple]:
        found = set()
        for b, (logits, mask) in enumerate(zip(outputs, masks)):
            tags = logits.argmax(-1)
            for r in range(tags.shape[0]):
                keep = mask[r].bool()
                row = [labels.get(int(t), f"I-{int(t)}") for t in tags[r][keep]]
                sure = decided[b][r][keep]
                found.update((b, r, *span) for span in bio_spans(row) if bool(sure[span[0]:span[1]].all()))
        return found

    every = [torch.ones(m.shape, dtype=torch.bool) for m in masks]
    decided = list(every)  # one tag: nothing to tie with
    for b, logits in enumerate(ref):
        if logits.shape[-1] > 1:
            top2 = logits.float().softmax(-1).topk(2, dim=-1).values
            decided[b] = top2[..., 0] - top2[..., 1] >= NEAR_TIE["ner"]
    theirs = spans(ref, decided)
    if not theirs:  # fp32 decides no span: count them all
        decided = every
        theirs = spans(ref, decided)
    mine = spans(got, decided)
    both = len(mine & theirs)
    return min(both / len(theirs) if theirs else 1.0, both / len(mine) if mine else 1.0)


def measure(model, tokenizer, device: torch.device, task: str, precisions: list[str],
            token_budget: int = 0) -> list[Trial]:
    """Time each precision's engine forward on the same synthetic batches, interleaved (every batch
    runs through every precision before the next batch, in a rotating order, so that a noisy,
    shared machine slows all alike), TIMINGS_PER_BATCH times each, the fastest kept, after one
    short warm-up each; and check each against fp32.
    `model` (float32) is left as it was: bf16 and int8 run on copies."""
    per_token = task == "ner"
    budget = token_budget or min(TOKENS_PER_BATCH, batching.default_token_budget(device))
    batches = synthetic_batches(tokenizer, model.config.vocab_size, model.config.max_position_embeddings, budget)
    if "fp32" not in precisions:
        precisions = ["fp32", *precisions]
    dropped: dict[str, str] = {}
    if "int8" in precisions and device.type == "cpu":
        ratio = int8.product_ratio(*feed_forward_sizes(model), PROBE_ROWS)
        if ratio > DROP_SLOWER_THAN_FP32:
            dropped["int8"] = f"its product ran {ratio:.0f}x fp32's at the model's shapes, before any batch"
    forwards = {p: batching.Forward(model if p == "fp32" else copy.deepcopy(model), device, p, per_token)
                for p in precisions if p not in dropped}
    seconds = dict.fromkeys(precisions, 0.0)
    outputs: dict[str, list[torch.Tensor]] = {p: [] for p in precisions}
    with torch.inference_mode():
        warm_ids, warm_mask = batches[0][0][:1], batches[0][1][:1]
        for p, fwd in forwards.items():
            with fwd.context():
                fwd(warm_ids.to(device), warm_mask.to(device))
        active = [p for p in precisions if p not in dropped]
        for k, (ids, mask) in enumerate(batches):
            best = dict.fromkeys(active, float("inf"))
            for r in range(TIMINGS_PER_BATCH):
                shift = (k + r) % len(active)
                for p in active[shift:] + active[:shift]:
                    fwd = forwards[p]
                    with fwd.context():
                        started = time.perf_counter()
                        logits = fwd(ids.to(device), mask.to(device)).float().cpu()
                        best[p] = min(best[p], time.perf_counter() - started)
                    if r == 0:
                        outputs[p].append(logits)
            for p in active:
                seconds[p] += best[p]
            for p in active[1:]:  # active[0] is fp32
                if seconds[p] > DROP_SLOWER_THAN_FP32 * seconds["fp32"]:
                    dropped[p] = f"dropped after batch {k + 1}: {seconds[p] / seconds['fp32']:.1f}x fp32's time"
            active = [p for p in active if p not in dropped]
        if per_token:  # more batches for the span check, untimed
            extra = [b for seed in range(1, NER_EXTRA_SEEDS + 1)
                     for b in synthetic_batches(tokenizer, model.config.vocab_size,
                                                model.config.max_position_embeddings, budget, seed=seed)]
            for p in active:
                with forwards[p].context():
                    outputs[p] += [forwards[p](ids.to(device), mask.to(device)).float().cpu() for ids, mask in extra]
            batches = batches + extra
    del forwards
    masks = [m for _, m in batches]
    labels = {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    trials = []
    for p in precisions:
        n = len(outputs[p])
        if n == 0:  # dropped before any batch
            value = 0.0
        else:
            value = 1.0 if p == "fp32" else agreement(task, outputs[p], outputs["fp32"][:n], masks[:n], labels)
        trials.append(Trial(p, seconds[p], value, value >= MIN_AGREEMENT[task] and p not in dropped,
                            dropped.get(p, "")))
    return trials
