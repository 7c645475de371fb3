"""BIO tags to entity spans: the one decoder behind inference (worker/nlp/ner.py), training labels
(worker/training/train.py) and evaluation (worker/training/evaluate.py). One rule in one place, so
that what the model is trained on, what users get and what the metrics count cannot drift apart.

The rule is seqeval's default (non-strict) mode on IOB2 tags:
- O ends an entity;
- B-X begins an entity of type X;
- I-X continues an entity of type X that is open just before it; after O, at the start, or after an
  entity of another type it begins a new one (what IOB1 data such as raw CoNLL-2003 relies on).
Beyond seqeval, for tag sets the model may carry:
- a tag without a prefix ("PER") reads as I-PER (seqeval would read it as tag "P" of type "ER");
- any other prefix ("E-", "S-", "X-") begins an entity, as B- does (seqeval would read E-/S- as
  IOBES); the data readers reject such tags, so they only reach this from a model's own labels.

Pure Python: the CLI and the data readers import it without loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence

Span = tuple[int, int, str]  # (first index, last index exclusive, type)


def split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) of a tag: ("O", "") for O, ("I", tag) for a tag without a prefix."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    return (prefix, kind) if sep else ("I", tag)


def is_bio_tag(tag: str) -> bool:
    """Whether `tag` is O, B-TYPE or I-TYPE with a non-empty type: what a labelled file may hold."""
    prefix, kind = split_tag(tag)
    return tag == "O" or (prefix in ("B", "I") and "-" in tag and kind != "" and not any(c.isspace() for c in kind))


def bio_spans(tags: Sequence[str]) -> list[Span]:
    """Entities of a BIO tag sequence, in order, as (first index, last index exclusive, type)."""
    spans: list[Span] = []
    start, kind = -1, ""  # the open entity; start -1 when none is open

    for i, tag in enumerate(tags):
        if tag == "O":  # most words: close what is open, without parsing the tag
            if start >= 0:
                spans.append((start, i, kind))
                start = -1
            continue
        prefix, k = split_tag(tag)
        if prefix == "I" and start >= 0 and k == kind:
            continue  # the open entity goes on
        if start >= 0:
            spans.append((start, i, kind))
        # "O-X" is outside too, as seqeval reads it (its tag letter is O).
        start, kind = (-1, "") if prefix == "O" else (i, k)
    if start >= 0:
        spans.append((start, len(tags), kind))
    return spans
