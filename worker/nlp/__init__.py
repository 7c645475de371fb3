"""Model loading and inference for sentiment and NER. Knows nothing of Celery or SQL."""

from .ner import NerModel, load_ner
from .sentiment import EngineOptions, SentimentModel, load_sentiment
from .types import NER_TAGS, SENTIMENT_LABELS, Entity, ModelLoadError, Sentiment

__all__ = [
    "EngineOptions",
    "Entity",
    "ModelLoadError",
    "NER_TAGS",
    "NerModel",
    "SENTIMENT_LABELS",
    "Sentiment",
    "SentimentModel",
    "load_ner",
    "load_sentiment",
]
