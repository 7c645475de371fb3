"""Readers for the labeled data sets, yielding plain dataclasses.

Evaluation data is never trained on: SST-2 dev, CoNLL-2003 valid, and the last IMDB_HELDOUT records of
IMDb train (the file is shuffled, so its tail is a fair sample).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..nlp.types import SENTIMENT_LABELS

IMDB_HELDOUT = 2000


@dataclass(frozen=True)
class SentimentExample:
    text: str
    label: int  # 0 negative, 1 positive


@dataclass(frozen=True)
class NerSentence:
    tokens: list[str]
    tags: list[str]  # BIO tags, one per token


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def _label(value, where: str) -> int:
    if isinstance(value, str) and value.strip().lower() in SENTIMENT_LABELS:
        return SENTIMENT_LABELS.index(value.strip().lower())
    if str(value).strip() in ("0", "1"):
        return int(str(value).strip())
    raise ValueError(f"{where}: label must be negative/positive or 0/1, got {value!r:.30}")


def read_glue_tsv(path: Path) -> list[SentimentExample]:
    """GLUE-style `label<TAB>sentence` (a `label sentence` header line is skipped); 1 = positive."""
    out = []
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or (n == 1 and line.lower().startswith("label")):
                continue
            label, sep, text = line.partition("\t")
            if not sep:
                raise ValueError(f"{path}:{n}: expected label<TAB>sentence")
            out.append(SentimentExample(text, _label(label, f"{path}:{n}")))
    return out


def read_sentiment_jsonl(path: Path) -> list[SentimentExample]:
    """JSONL with `text` and `label` (negative/positive or 0/1), as IMDb train and DESIGN.md have it."""
    out = []
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out.append(SentimentExample(obj["text"], _label(obj.get("label", obj.get("sentiment")), f"{path}:{n}")))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: expected a JSON object with text and label ({exc})") from None
    return out


def read_sentiment(path: Path) -> list[SentimentExample]:
    name = str(path).lower()
    return read_glue_tsv(path) if name.endswith((".tsv", ".tsv.gz")) else read_sentiment_jsonl(path)


def imdb_split(path: Path) -> tuple[list[SentimentExample], list[SentimentExample]]:
    """(train, held-out) from IMDb train: the last IMDB_HELDOUT records are held out. IMDb repeats
    a few reviews word for word (13 of the held-out texts also occur earlier in the file): those
    copies are dropped from train too, so nothing held out is ever trained on."""
    rows = read_sentiment_jsonl(path)
    heldout = rows[-IMDB_HELDOUT:]
    seen = {e.text for e in heldout}
    return [e for e in rows[:-IMDB_HELDOUT] if e.text not in seen], heldout


def read_conll(path: Path) -> list[NerSentence]:
    out: list[NerSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    with _open(path) as f:
        for line in f:
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if tokens:
                    out.append(NerSentence(tokens, tags))
                tokens, tags = [], []
                continue
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        out.append(NerSentence(tokens, tags))
    return out


def sentence_text(sentence: NerSentence) -> tuple[str, list[tuple[int, int]]]:
    """The sentence as text (tokens joined by spaces) and each token's character span."""
    spans, pos = [], 0
    for tok in sentence.tokens:
        spans.append((pos, pos + len(tok)))
        pos += len(tok) + 1
    return " ".join(sentence.tokens), spans


def iter_jsonl(path: Path) -> Iterator[dict]:
    with _open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
