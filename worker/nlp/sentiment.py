"""Sentiment of whole reviews: every window of a long review is read, and their logits averaged."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import batching, loading
from .types import SENTIMENT_LABELS, Sentiment


@dataclass
class EngineOptions:
    token_budget: int = 8192
    max_length: int = 512
    stride: int = 128
    max_chars: int = 100_000


class SentimentModel:
    def __init__(self, model, tokenizer, device, precision: str, options: EngineOptions | None = None):
        self.model, self.tokenizer, self.device, self.precision = model, tokenizer, device, precision
        self.options = options or EngineOptions()
        self.options.max_length = min(self.options.max_length, model.config.max_position_embeddings)
        self.labels = [model.config.id2label[i].lower() for i in range(model.config.num_labels)]
        if len(self.labels) == 2 and not {"negative", "positive"} & set(self.labels):
            self.labels = list(SENTIMENT_LABELS)  # generic LABEL_0/LABEL_1 heads: index 1 is positive
        self.pos = self._index("positive", fallback=model.config.num_labels - 1)
        self.neg = self._index("negative", fallback=0)

    def _index(self, name: str, fallback: int) -> int:
        return self.labels.index(name) if name in self.labels else fallback

    def predict(self, texts: list[str]) -> list[Sentiment]:
        if not texts:
            return []
        opts = self.options
        encoded = batching.encode(self.tokenizer, [t[: opts.max_chars] for t in texts])
        windows = batching.make_windows(encoded, opts.max_length, opts.stride)
        logits = batching.run_model(
            self.model, self.tokenizer, windows, opts.token_budget, self.device, self.precision, per_token=False
        )
        sums = torch.zeros(len(texts), self.model.config.num_labels)
        counts = torch.zeros(len(texts), 1)
        for w, row in zip(windows, logits):
            sums[w.text_index] += row
            counts[w.text_index] += 1
        probs = torch.softmax(sums / counts, dim=-1)
        out = []
        for p in probs.tolist():
            best = max(range(len(p)), key=p.__getitem__)
            out.append(Sentiment(label=self.labels[best], probability=p[best], score=p[self.pos] - p[self.neg]))
        return out


def load_sentiment(source: str, device: str = "auto", precision: str = "auto", **options) -> SentimentModel:
    model, tokenizer, dev, prec = loading.load(source, "sentiment", device, precision)
    return SentimentModel(model, tokenizer, dev, prec, EngineOptions(**options))
