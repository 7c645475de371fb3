"""Tokenize once, cut long texts into overlapping windows, pack windows into length-sorted batches
under a token budget, and run the model on them.

A batch of fixed count pads every review to the longest one; sorting by length and capping the
padded size (rows x longest row) keeps the padding small and the memory bounded for any input.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from . import attention as attention_choice
from . import casing, fast, int8, packed
from .device import DTYPES, autocast, cpu_float_precision, thread_stream


@dataclass(frozen=True)
class Window:
    text_index: int  # which input text
    start: int  # first content token of the window in that text's token list
    ids: list[int]  # content token ids, without [CLS]/[SEP]


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in the original text


def encode(tokenizer, texts: list[str], offsets: bool = True) -> list[Encoded]:
    """Tokenize whole texts, without truncation: windows decide what the model sees.

    offsets=False leaves Encoded.offsets empty: turning the tokenizer's offsets into Python tuples
    cost as much as tokenizing itself (0.38 against 0.37 s for 2,048 IMDb reviews, cProfile), and
    sentiment never reads them."""
    batch = tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=offsets, return_attention_mask=False, verbose=False
    )
    if not offsets:
        return [Encoded(ids, []) for ids in batch["input_ids"]]
    return [Encoded(ids, [tuple(o) for o in offs]) for ids, offs in zip(batch["input_ids"], batch["offset_mapping"])]


def tokenizer_key(tokenizer) -> int:
    """A fingerprint of what a tokenizer does (its whole tokenizer.json), so two models can tell
    whether one tokenization serves both."""
    for name in ("backend_tokenizer", "backend"):  # transformers' fast tokenizers; distilbert.Tokenizer
        to_str = getattr(getattr(tokenizer, name, None), "to_str", None)
        if to_str is not None:
            return hash(to_str())
    return id(tokenizer)  # unknown: shared only with itself


def window_spans(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) of the windows that cover n_tokens: as few windows of at most `size` tokens
    as will do, consecutive ones sharing at least `overlap` tokens, all of about the same length.

    Equal lengths rather than full windows plus a short remainder: a 600-token review is read as two
    windows of 364 tokens instead of two of 510, 29% fewer tokens and less attention work for the same
    text and context on both sides of every cut.
    """
    if n_tokens <= size:
        return [(0, n_tokens)]
    overlap = min(overlap, size - 1)
    count = math.ceil((n_tokens - overlap) / (size - overlap))
    length = math.ceil((n_tokens + (count - 1) * overlap) / count)  # <= size, by the choice of count
    step = length - overlap
    spans = [(k * step, length) for k in range(count - 1)]
    spans.append((n_tokens - length, length))  # the last window ends exactly at the end of the text
    return spans


def make_windows(encoded: list[Encoded], max_length: int, stride: int) -> list[Window]:
    size = max_length - 2  # room for [CLS] and [SEP]
    out = []
    for i, enc in enumerate(encoded):
        for start, length in window_spans(len(enc.ids), size, stride):
            out.append(Window(i, start, enc.ids[start : start + length]))
    return out


def owners(n_tokens: int, spans: list[tuple[int, int]]) -> torch.Tensor:
    """For every token, the index of the window (start, length) in which it sits furthest from an
    edge, i.e. with the most context on both sides; the earlier window on a tie. Every token has
    exactly one owner, so text that two windows share is counted once."""
    best = torch.full((n_tokens,), -1, dtype=torch.long)
    owner = torch.zeros(n_tokens, dtype=torch.long)
    for k, (start, length) in enumerate(spans):
        pos = torch.arange(start, start + length)
        centrality = torch.minimum(pos - start, start + length - 1 - pos)
        take = centrality > best[pos]
        owner[pos[take]] = k
        best[pos[take]] = centrality[take]
    return owner


def default_token_budget(device: torch.device) -> int:
    """Padded tokens per forward pass. On CPU, small batches are as fast per token as large ones and
    waste less on padding: with a DistilBERT-base on 2 cores, 2048 ran 1.2x as fast as 8192
    (bench/bench_variants.py, bench/RESULTS.md). A GPU needs large batches to fill its cores."""
    return 16384 if device.type == "cuda" else 2048


def token_budget_batches(windows: list[Window], token_budget: int) -> list[list[int]]:
    """Indices of windows grouped so that rows x (longest row + 2) <= token_budget, longest first."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids), reverse=True)
    return group_by_budget(order, [len(w.ids) + 2 for w in windows], token_budget)


def group_by_budget(order: list[int], lengths: list[int], token_budget: int, max_rows: int = 0) -> list[list[int]]:
    """Cut `order` (indices into `lengths`, sorted by length) into consecutive groups whose padded
    size, rows x longest row, stays within token_budget (and at most max_rows rows, if set).
    A single row longer than the budget still gets a group of its own."""
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = lengths[i]
        if current and ((len(current) + 1) * max(longest, n) > token_budget or len(current) == max_rows):
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        groups.append(current)
    return groups


class Forward:
    """How a loaded model is run: logits = forward(input_ids, attention_mask) inside context().

    DistilBERT classifiers get the fast forward of fast.py, with their Linear weights stored in the
    compute dtype (bf16/fp16) once; any other model runs transformers' forward, under autocast on CPU
    (fp32 weights) or with all weights cast on CUDA. "int8" (CPU only) replaces every Linear but the
    classification head by an int8 one (int8.py: weights per channel, activations per token), around
    bf16 (or fp32) for everything else.
    """

    def __init__(self, model, device: torch.device, precision: str, per_token: bool, use_fast: bool = True,
                 marking=None, pack_weights: bool = True):
        """marking: the model's casing.CaseMarking, whose "added" style the forward must read from the ids.
        pack_weights: on CPU at bf16, pack the Linear weights for oneDNN once (packed.py)."""
        self.model, self.device, self.precision = model, device, precision
        self.fast = use_fast and fast.supports(model)
        if precision == "int8" and device.type != "cpu":
            raise ValueError("precision int8 runs on CPU only; use bf16 or fp16 on CUDA")
        # The dtype of the activations between the matrix products; int8 keeps the bf16 around its products.
        float_precision = cpu_float_precision() if precision == "int8" else precision
        if self.fast and float_precision != "fp32":
            fast.cast_linears(model, DTYPES[float_precision])
        if precision == "int8":
            int8.quantize_linears(model)
        elif self.fast and pack_weights and device.type == "cpu" and precision == "bf16" and packed.available():
            packed.pack_linears(model)
        if self.fast:
            # Attention on CPU is measured (attention.cpu_attention): torch's in fp32 or bf16, or the native
            # kernel (on AMX's tiles or AVX-512's), depending on the CPU; it is the largest cost after
            # the products.
            attention = None
            if device.type == "cpu" and float_precision == "bf16":
                config = model.config
                attention = attention_choice.cpu_attention(config.n_heads, config.dim // config.n_heads)
            self._forward = fast.DistilBertForward(
                model, per_token, marking=marking, native_attention=attention in ("native", "tiles"),
                attention_tiles=attention == "tiles",
                attention_dtype=DTYPES[attention] if attention in DTYPES else None)
        else:
            if device.type == "cuda" and precision in DTYPES and precision != "fp32":
                model.to(dtype=DTYPES[precision])
            self._forward = lambda ids, mask: model(**casing.model_inputs(model, ids, marking),
                                                    attention_mask=mask).logits
        model.to(device).eval()

    def context(self):
        if self.fast or self.device.type == "cuda" or self.precision in ("fp32", "int8"):
            return contextlib.nullcontext()
        return autocast(self.device, self.precision)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 full: bool | None = None) -> torch.Tensor:
        """full: whether every row fills the width (no padding), if the caller knows it without asking
        the device."""
        if isinstance(self._forward, fast.DistilBertForward):  # the benchmarks may swap in other forwards
            return self._forward(input_ids, attention_mask, full=full)
        return self._forward(input_ids, attention_mask)


def pack(windows: list[Window], batch: list[int], cls_id: int, sep_id: int, pad_id: int):
    """input_ids and attention_mask of one batch: [CLS] window [SEP], padded to the longest row.
    One tensor built from Python lists: a tensor per row cost more than the GPU's forward."""
    lengths = [len(windows[i].ids) + 2 for i in batch]
    width = max(lengths)
    input_ids = torch.tensor([[cls_id, *windows[i].ids, sep_id] + [pad_id] * (width - n)
                              for i, n in zip(batch, lengths)], dtype=torch.long)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return input_ids, mask.long()


def run_model(
    forward: Forward, tokenizer, windows: list[Window], token_budget: int, per_token: bool
) -> list[torch.Tensor]:
    """Logits for every window, in the windows' order, as float32 CPU tensors.

    Sequence heads give one row per window; token heads give one row per content token (the
    [CLS]/[SEP] positions are dropped, so row j is the window's j-th token).
    """
    return collect(launch(forward, tokenizer, windows, token_budget), windows, per_token)


Queued = list[tuple[list[int], torch.Tensor]]  # (window indices, their logits, maybe still being computed)


@dataclass(frozen=True)
class Started:
    """A model's predict between its two halves: what `start` prepared and queued, for `finish`."""
    texts: list[str]
    encoded: list[Encoded]  # as the model reads them (the tagger's case-marked)
    windows: list[Window]
    queued: Queued


def launch(forward: Forward, tokenizer, windows: list[Window], token_budget: int) -> Queued:
    """Every batch of the windows, queued on the device; on a GPU this returns before the work is
    done, so the caller can prepare other work (predict_both: the other task) while it runs."""
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
    cuda = forward.device.type == "cuda"
    queued: Queued = []
    with torch.inference_mode(), forward.context(), thread_stream(forward.device):
        for batch in token_budget_batches(windows, token_budget):
            input_ids, mask = pack(windows, batch, cls_id, sep_id, pad_id)
            full = bool(mask.all())  # read on the CPU: on a GPU it would wait for the work queued so far
            if cuda:  # queue the batch and go on packing the next while the GPU runs it
                input_ids, mask = (t.pin_memory().to(forward.device, non_blocking=True) for t in (input_ids, mask))
            queued.append((batch, forward(input_ids, mask, full=full)))
    return queued


def collect(queued: Queued, windows: list[Window], per_token: bool) -> list[torch.Tensor]:
    """run_model's result from launch's: one wait for the device, after everything is queued."""
    results: list[torch.Tensor | None] = [None] * len(windows)
    with torch.inference_mode(), thread_stream(queued[0][1].device if queued else torch.device("cpu")):
        for batch, logits in queued:
            logits = logits.float().cpu()
            for row, i in enumerate(batch):
                n = len(windows[i].ids)
                results[i] = logits[row, 1 : n + 1] if per_token else logits[row]
    return results  # type: ignore[return-value]
