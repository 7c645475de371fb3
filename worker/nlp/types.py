"""What the models return: plain values, no tensors, safe to store or send as JSON."""

from __future__ import annotations

from dataclasses import dataclass

SENTIMENT_LABELS = ("negative", "positive")
NER_TYPES = ("PER", "ORG", "LOC", "MISC")
NER_TAGS = ("O",) + tuple(f"{p}-{t}" for t in NER_TYPES for p in ("B", "I"))


@dataclass(frozen=True)
class Sentiment:
    label: str  # "negative" or "positive"
    probability: float  # probability of `label`, in [0.5, 1]
    score: float  # P(positive) - P(negative), in [-1, 1]


@dataclass(frozen=True)
class Entity:
    label: str  # PER, ORG, LOC or MISC
    text: str  # the surface form, exactly text[start:end] of the review
    start: int  # character offsets into the original review text
    end: int
    score: float  # mean probability of the entity's tags


class ModelLoadError(RuntimeError):
    """A model directory or id that cannot be loaded; the message says which and why."""
