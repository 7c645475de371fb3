"""Readers for the labeled data sets, yielding plain dataclasses.

Evaluation data is never trained on: SST-2 dev, CoNLL-2003 valid, and the last IMDB_HELDOUT records of
IMDb train (the file is shuffled, so its tail is a fair sample).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..nlp.bio import is_bio_tag
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


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending) of each line, `.gz` decompressed. Lines are read
    as bytes and decoded one at a time, so that a decoding error can name its line and byte; any
    trouble in the content is a ValueError `PATH:LINE: reason`."""
    n = 0
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        while True:
            try:
                raw = f.readline()
            except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, corrupt
                raise ValueError(f"{path}:{n + 1}: cannot decompress: {_one_line(exc)}") from None
            if not raw:
                return
            n += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{n}: invalid UTF-8: byte 0x{raw[exc.start]:02x} at byte "
                                 f"{exc.start + 1} of the line") from None
            if n == 1 and line.startswith("\ufeff"):  # a BOM, as some editors on Windows write one
                line = line[1:]
            yield n, line[:-2] if line.endswith("\r\n") else line.rstrip("\n")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _label(value, where: str) -> int:
    if isinstance(value, str) and value.strip().lower() in SENTIMENT_LABELS:
        return SENTIMENT_LABELS.index(value.strip().lower())
    if str(value).strip() in ("0", "1"):
        return int(str(value).strip())
    raise ValueError(f"{where}: label must be negative/positive or 0/1, got {value!r:.30}")


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: text must be a non-empty string, got {value!r:.30}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON escape such as "\ud800"
        raise ValueError(f"{where}: text holds a lone surrogate {value[exc.start]!r} at character "
                         f"{exc.start + 1}, which no UTF-8 text can") from None
    return value


def read_glue_tsv(path: Path) -> list[SentimentExample]:
    """GLUE-style `label<TAB>sentence` (a `label sentence` header line is skipped); 1 = positive."""
    out = []
    for n, line in _lines(path):
        if not line or (n == 1 and line.lower().startswith("label")):
            continue
        label, sep, text = line.partition("\t")
        if not sep:
            raise ValueError(f"{path}:{n}: expected label<TAB>sentence")
        out.append(SentimentExample(_text(text, f"{path}:{n}"), _label(label, f"{path}:{n}")))
    return out


def read_sentiment_jsonl(path: Path) -> list[SentimentExample]:
    """JSONL with `text` and `label` (negative/positive or 0/1), as IMDb train and DESIGN.md have it."""
    out = []
    for n, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:  # its own "line 1" would only confuse: the line is n
            raise ValueError(f"{where}: invalid JSON at column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise ValueError(f"{where}: invalid JSON (nested too deeply)") from None
        except ValueError as exc:  # an integer literal too long to convert
            raise ValueError(f"{where}: invalid JSON ({_one_line(exc)})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object with text and label, got {type(obj).__name__}")
        if "text" not in obj:
            raise ValueError(f"{where}: missing \"text\"")
        if "label" not in obj and "sentiment" not in obj:  # other IMDb dumps call it "sentiment"
            raise ValueError(f"{where}: missing \"label\"")
        label = obj["label"] if "label" in obj else obj["sentiment"]
        out.append(SentimentExample(_text(obj["text"], where), _label(label, where)))
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
    """CoNLL-2003: a token and its BIO tag (the last column) per line, a blank line between
    sentences, -DOCSTART- lines ignored. The tags are checked here, so that no metric or training
    label ever sees an entity without a type."""
    out: list[NerSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    for n, line in _lines(path):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                out.append(NerSentence(tokens, tags))
            tokens, tags = [], []
            continue
        if len(parts) < 2:
            raise ValueError(f"{path}:{n}: expected a token and a BIO tag, got {line.strip()!r:.40}")
        if not is_bio_tag(parts[-1]):
            raise ValueError(f"{path}:{n}: {parts[-1]!r:.30} is not a BIO tag (O, B-TYPE or I-TYPE)")
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
