"""Tokenize once, cut long texts into overlapping windows, pack windows into length-sorted batches
under a token budget, and run the model on them.

A batch of fixed count pads every review to the longest one; sorting by length and capping the
padded size (rows x longest row) keeps the padding small and the memory bounded for any input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .device import autocast


@dataclass(frozen=True)
class Window:
    text_index: int  # which input text
    start: int  # first content token of the window in that text's token list
    ids: list[int]  # content token ids, without [CLS]/[SEP]


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in the original text


def encode(tokenizer, texts: list[str]) -> list[Encoded]:
    """Tokenize whole texts, without truncation: windows decide what the model sees."""
    batch = tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False, verbose=False
    )
    return [Encoded(ids, [tuple(o) for o in offs]) for ids, offs in zip(batch["input_ids"], batch["offset_mapping"])]


def window_starts(n_tokens: int, size: int, stride: int) -> list[int]:
    """Starts of windows of `size` tokens that cover n_tokens, consecutive windows sharing `stride` tokens."""
    if n_tokens <= size:
        return [0]
    step = max(1, size - stride)
    starts = list(range(0, n_tokens - size, step))
    starts.append(n_tokens - size)  # the last window ends exactly at the end of the text
    return starts


def make_windows(encoded: list[Encoded], max_length: int, stride: int) -> list[Window]:
    size = max_length - 2  # room for [CLS] and [SEP]
    out = []
    for i, enc in enumerate(encoded):
        for s in window_starts(len(enc.ids), size, stride):
            out.append(Window(i, s, enc.ids[s : s + size]))
    return out


def token_budget_batches(windows: list[Window], token_budget: int) -> list[list[int]]:
    """Indices of windows grouped so that rows x (longest row + 2) <= token_budget, longest first."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids), reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = len(windows[i].ids) + 2
        if current and (len(current) + 1) * max(longest, length) > token_budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


def run_model(
    model, tokenizer, windows: list[Window], token_budget: int, device, precision: str, per_token: bool
) -> list[torch.Tensor]:
    """Logits for every window, in the windows' order, as float32 CPU tensors.

    Sequence heads give one row per window; token heads give one row per content token (the
    [CLS]/[SEP] positions are dropped, so row j is the window's j-th token).
    """
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
    results: list[torch.Tensor | None] = [None] * len(windows)
    with torch.inference_mode(), autocast(device, precision):
        for batch in token_budget_batches(windows, token_budget):
            width = max(len(windows[i].ids) for i in batch) + 2
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = [cls_id, *windows[i].ids, sep_id]
                input_ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            for row, i in enumerate(batch):
                n = len(windows[i].ids)
                results[i] = logits[row, 1 : n + 1] if per_token else logits[row]
    return results  # type: ignore[return-value]
