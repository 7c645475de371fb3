"""Sentiment of whole reviews: every window of a long review is read, and their logits averaged."""

from __future__ import annotations

from dataclasses import replace

import torch

from . import batching, labels, loading
from .options import EngineOptions
from .types import Sentiment


class SentimentModel:
    def __init__(self, model, tokenizer, device, precision: str, options: EngineOptions | None = None):
        self.model, self.tokenizer, self.device, self.precision = model, tokenizer, device, precision
        self.options = fit_options(options or EngineOptions(), model, device)
        # Our names (labels.py: NEGATIVE, neg, LABEL_0/LABEL_1 of a two-class head...; an imported
        # version's config already holds them); classes skipped or merged by the mapping are folded
        # in the forward, so that every logit column is negative or positive.
        self.labels, self.forward = labels.for_engine(
            "sentiment", model, batching.Forward(model, device, precision, per_token=False))
        self.tokenizer_key = batching.tokenizer_key(tokenizer)
        self.pos = self._index("positive", fallback=len(self.labels) - 1)
        self.neg = self._index("negative", fallback=0)

    def _index(self, name: str, fallback: int) -> int:
        return self.labels.index(name) if name in self.labels else fallback

    def predict(self, texts: list[str], encoded: list[batching.Encoded] | None = None) -> list[Sentiment]:
        """encoded: the texts (cut at options.max_chars) as this model's tokenizer encodes them, if at hand."""
        return self.finish(self.start(texts, encoded))

    def start(self, texts: list[str], encoded: list[batching.Encoded] | None = None) -> batching.Started:
        """predict's first half: the texts' windows queued on the device (batching.launch)."""
        opts = self.options
        if not texts:
            return batching.Started([], [], [], [])
        if encoded is None:
            encoded = batching.encode(self.tokenizer, [t[: opts.max_chars] for t in texts], offsets=False)
        windows = batching.make_windows(encoded, opts.max_length, opts.stride)
        queued = batching.launch(self.forward, self.tokenizer, windows, opts.token_budget)
        return batching.Started(texts, encoded, windows, queued)

    def finish(self, started: batching.Started) -> list[Sentiment]:
        """predict's second half: a label for each text once the device is done."""
        out = []
        for p in self._probabilities(started).tolist():
            best = max(range(len(p)), key=p.__getitem__)
            out.append(Sentiment(label=self.labels[best], probability=p[best], score=p[self.pos] - p[self.neg]))
        return out

    def probabilities(self, texts: list[str], encoded: list[batching.Encoded] | None = None) -> torch.Tensor:
        """[len(texts), classes] probabilities, columns in self.labels' order; a teacher's soft targets."""
        return self._probabilities(self.start(texts, encoded))

    def _probabilities(self, started: batching.Started) -> torch.Tensor:
        encoded, windows = started.encoded, started.windows
        if not encoded:
            return torch.zeros(0, len(self.labels))
        logits = batching.collect(started.queued, windows, per_token=False)
        per_text: list[list[tuple[batching.Window, torch.Tensor]]] = [[] for _ in encoded]
        for w, row in zip(windows, logits):
            per_text[w.text_index].append((w, row))
        combined = [combine_windows(parts, len(enc.ids), self.options.window_rule)
                    for parts, enc in zip(per_text, encoded)]
        return torch.softmax(torch.stack(combined).float(), dim=-1)


def fit_options(options: EngineOptions, model, device) -> EngineOptions:
    """Options as a model and device allow: windows no longer than the model's positions, and a
    token budget for the device when none was set."""
    return replace(options, max_length=min(options.max_length, model.config.max_position_embeddings),
                   token_budget=options.token_budget or batching.default_token_budget(device))


def combine_windows(parts: list[tuple[batching.Window, torch.Tensor]], n_tokens: int, rule: str = "mean"):
    """One row of logits for a review from its windows' logits.

    mean:  the plain mean of the windows' logits.
    owned: each window weighted by the number of tokens it owns (batching.owners: a token belongs to
           the window where it is most central), so text that two windows share counts once and a
           last window that mostly repeats its neighbour weighs little.
    """
    if len(parts) == 1:
        return parts[0][1]
    rows = torch.stack([row for _, row in parts])
    if rule == "mean":
        return rows.mean(dim=0)
    if rule != "owned":
        raise ValueError(f"unknown window rule {rule!r}: use 'mean' or 'owned'")
    owner = batching.owners(n_tokens, [(w.start, len(w.ids)) for w, _ in parts])
    weights = torch.bincount(owner, minlength=len(parts)).float()
    return (weights[:, None] * rows).sum(dim=0) / weights.sum()


def load_sentiment(source: str, options: EngineOptions | None = None, **changes) -> SentimentModel:
    """The sentiment engine for a directory or hub id; `changes` override single options
    (`load_sentiment(path, precision="fp32")`)."""
    opts = replace(options or EngineOptions(), **changes)
    model, tokenizer, dev, prec = loading.load(source, "sentiment", opts.device, opts.precision)
    return SentimentModel(model, tokenizer, dev, prec, opts)
