"""Tiny randomly initialised DistilBERT models saved to disk, so tests run the real loading code."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertTokenizerFast,
)

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from worker.nlp.types import NER_TAGS, SENTIMENT_LABELS

WORDS = """the a an and or but of to in on for with is was it this that film movie great good bad awful
terrible boring love loved hate plot acting actor actress director story ending music scene scenes
paris london new york john smith mary warner bros disney oscar america american french british
""".split()


def _vocab() -> list[str]:
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces += list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()/<>&")
    pieces += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces += WORDS
    pieces += ["[unused1]", "[unused2]"]  # reserved, as in BERT's vocabulary: case markers (worker/nlp/casing.py)
    return list(dict.fromkeys(pieces))


def make_tokenizer(directory: Path) -> DistilBertTokenizerFast:
    """A real WordPiece tokenizer over a small vocabulary (BERT normalisation and pre-tokenisation)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(_vocab())}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return DistilBertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


SIZES = {
    "tiny": dict(dim=32, hidden_dim=64, n_layers=2, n_heads=2, max_position_embeddings=64),
    # Slow enough on a CPU that a test can kill a worker in the middle of a batch.
    "medium": dict(dim=256, hidden_dim=1024, n_layers=4, n_heads=4, max_position_embeddings=512),
}


def _config(tokenizer, labels, size: str = "tiny") -> DistilBertConfig:
    return DistilBertConfig(
        vocab_size=len(tokenizer),
        **SIZES[size],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)},
    )


def save_tiny(directory: Path, task: str, seed: int = 0, size: str = "tiny") -> Path:
    """Save a tiny sentiment or NER model with its tokenizer to `directory` and return it."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(directory)
    if task == "sentiment":
        model = DistilBertForSequenceClassification(_config(tokenizer, SENTIMENT_LABELS, size))
    else:
        model = DistilBertForTokenClassification(_config(tokenizer, NER_TAGS, size))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
