"""Metrics, computed through the service's own inference engine so that they describe what users get.

Sentiment: accuracy, and F1 of the positive class. NER: entity-level exact match (the seqeval
convention: an entity counts only when its type, start and end all match), overall and per type.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

from ..nlp import bio
from ..nlp.ner import load_ner
from ..nlp.sentiment import load_sentiment
from ..nlp.types import NER_TYPES, SENTIMENT_LABELS
from .data import NerSentence, SentimentExample, sentence_text


def sentiment_metrics(gold: Sequence[int], predicted: Sequence[int]) -> dict:
    n = len(gold)
    tp = sum(1 for g, p in zip(gold, predicted) if g == p == 1)
    fp = sum(1 for g, p in zip(gold, predicted) if p == 1 and g == 0)
    fn = sum(1 for g, p in zip(gold, predicted) if p == 0 and g == 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": sum(g == p for g, p in zip(gold, predicted)) / n if n else 0.0, "f1": f1, "n": n}


def bio_spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """(first token, last token, type) of each entity, both ends inclusive as seqeval gives them,
    read by worker.nlp.bio (an I- tag that does not continue an entity of its type starts one)."""
    return {(a, b - 1, kind) for a, b, kind in bio.bio_spans(tags)}


def ner_metrics(gold: Sequence[set], predicted: Sequence[set]) -> dict:
    """Micro precision/recall/F1 over entity spans, overall and per type."""
    counts = {k: Counter() for k in ("tp", "gold", "pred")}
    for g, p in zip(gold, predicted):
        for s in g & p:
            counts["tp"][s[2]] += 1
        for s in g:
            counts["gold"][s[2]] += 1
        for s in p:
            counts["pred"][s[2]] += 1

    def prf(tp: int, n_gold: int, n_pred: int) -> dict:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}

    total = prf(sum(counts["tp"].values()), sum(counts["gold"].values()), sum(counts["pred"].values()))
    kinds = sorted(set(counts["gold"]) | set(counts["pred"]),
                   key=lambda k: (NER_TYPES.index(k) if k in NER_TYPES else len(NER_TYPES), k))
    per_type = {k: {**prf(counts["tp"][k], counts["gold"][k], counts["pred"][k]), "support": counts["gold"][k]}
                for k in kinds}
    return {**total, "n": len(gold), "entities": sum(counts["gold"].values()), "per_type": per_type}


def char_to_token_spans(entities, token_spans: Sequence[tuple[int, int]]) -> set[tuple[int, int, str]]:
    """Predicted character spans to token index spans: the tokens the entity overlaps."""
    out = set()
    for e in entities:
        covered = [i for i, (s, t) in enumerate(token_spans) if s < e.end and e.start < t]
        if covered:
            out.add((covered[0], covered[-1], e.label))
    return out


def predict_in_chunks(model, texts: list[str], batch_size: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> list:
    """model.predict over `texts`, `batch_size` texts per call (all at once when None), reporting
    (done, total) after each call."""
    step = batch_size or max(1, len(texts))
    out: list = []
    for k in range(0, len(texts), step):
        out.extend(model.predict(texts[k : k + step]))
        if progress is not None:
            progress(len(out), len(texts))
    return out


def evaluate_sentiment(model, examples: Sequence[SentimentExample], batch_size: int | None = None,
                       progress: Callable[[int, int], None] | None = None, **engine_options) -> dict:
    """`model` is a loaded SentimentModel or a directory / model id to load."""
    if isinstance(model, str):
        model = load_sentiment(model, **engine_options)
    predictions = predict_in_chunks(model, [e.text for e in examples], batch_size, progress)
    predicted = [SENTIMENT_LABELS.index(p.label) if p.label in SENTIMENT_LABELS else -1 for p in predictions]
    return sentiment_metrics([e.label for e in examples], predicted)


def evaluate_ner(model, sentences: Sequence[NerSentence], batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None, **engine_options) -> dict:
    """`model` is a loaded NerModel or a directory / model id to load. Each sentence is its tokens
    joined by single spaces; predicted character spans are mapped back to token index spans."""
    if isinstance(model, str):
        model = load_ner(model, **engine_options)
    texts, spans = zip(*(sentence_text(s) for s in sentences)) if sentences else ((), ())
    predictions = predict_in_chunks(model, list(texts), batch_size, progress)
    gold = [bio_spans(s.tags) for s in sentences]
    predicted = [char_to_token_spans(p, ts) for p, ts in zip(predictions, spans)]
    return ner_metrics(gold, predicted)
