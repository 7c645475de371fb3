"""Randomly initialised DistilBERT models of a chosen size, saved to disk for benchmarks.

Speed does not depend on the weights, so a random DistilBERT-base (DistilBertConfig(), 66M
parameters) measures what a real one would; its outputs are meaningless, but the agreement of a
fast path with fp32 on the same weights is still a fair check of the arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
)

from worker.config import BUNDLED_SENTIMENT

from worker.nlp.types import NER_TAGS, SENTIMENT_LABELS

SIZES = {
    "base": {},  # DistilBertConfig() defaults: dim 768, 6 layers, 66M parameters
    "small": dict(dim=384, hidden_dim=1536, n_heads=12),  # the bundled models' shape, 22.7M
    # One narrow layer: a model that costs almost nothing, standing in for an infinitely fast GPU so
    # that what the engine spends around the model shows (bench/host_overhead.py).
    "tiny": dict(dim=64, hidden_dim=256, n_heads=2, n_layers=1),
}
# The bias of the random tagger's "O" column, per size: with none it tags about 150 entities a review,
# and decoding and storing entities cost in proportion to their number; with these it finds about 11
# a review of IMDb, as the bundled NER model does (measured on the first 100-200 unlabeled reviews).
O_BIAS = {"base": 1.6, "small": 1.3}


def save_random(directory: Path, task: str, size: str = "base", seed: int = 0) -> Path:
    """Save a random `size` DistilBERT for `task` ("sentiment" or "ner") with a real tokenizer."""
    directory = Path(directory)
    marker = directory / "bench_model.json"
    want = {"task": task, "size": size, "seed": seed, "format": 4}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    labels = SENTIMENT_LABELS if task == "sentiment" else NER_TAGS
    config = DistilBertConfig(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        **SIZES[size],
    )
    head = DistilBertForSequenceClassification if task == "sentiment" else DistilBertForTokenClassification
    model = head(config)
    if task == "ner":
        with torch.no_grad():
            model.classifier.bias[labels.index("O")] = O_BIAS.get(size, 0.0)
    model.save_pretrained(directory, safe_serialization=True)
    # The bundled models' tokenizer: the distilbert-base-uncased vocabulary, 512 tokens at most
    # (pipelines need model_max_length to cut long reviews into strided windows).
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_SENTIMENT)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(directory)
    marker.write_text(json.dumps(want))
    return directory
