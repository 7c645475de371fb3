"""Case markers: let a model with an uncased vocabulary see capitals, a main cue for names.

The uncased tokenizer reads "Apple" and "apple" as the same pieces. A model built with case markers
tells a word that starts with a capital (`title`) or is written in capitals (`upper`, two letters or
more) by the embedding row of a token the vocabulary already reserves (`[unused1]`, `[unused2]`),
so the architecture and the file format stay DistilBERT's. Two styles:

- "added" (the default since the case-marked models cost NER speed): the marker's row is added to
  the embedding of every piece of a cased word, like BERT's token-type embeddings. The text keeps
  its length, so the model reads exactly as many tokens as an uncased one. In the token lists that
  windows and batches carry, a cased piece's id is `id + case * vocab_size` (case 1 title, 2 upper);
  `embed` turns such ids into input embeddings, and only the forward pass ever sees them.
- "inserted": a marker token before each cased word (about 10% more tokens on reviews). Models
  built before "added" existed use it, and it still serves them.

The model's config.json names the markers and the style under `case_markers`; the engine, the
default build, `reviews retrain` and `reviews distill` all read it from there, so training and
serving always mark text alike.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

import torch

CONFIG_KEY = "case_markers"
STYLES = ("added", "inserted")
DEFAULT_MARKERS = {"title": "[unused1]", "upper": "[unused2]", "style": "added"}
_CASE = {None: 0, "title": 1, "upper": 2}
# Every character that may be an uppercase letter: all but lowercase ASCII letters, digits, whitespace
# and ASCII punctuation. A word with a case holds one (its first letter), so only words around these
# need reading.
_MAYBE_UPPER = re.compile(r"[^a-z0-9\s!-/:-@\[-`{-~]")


def word_case(word: str) -> str | None:
    """"title" (Paris, McDonald, I), "upper" (NATO, U.S. reads as separate words U and S) or None."""
    letters = [c for c in word if c.isalpha()]
    if not letters or not letters[0].isupper():
        return None
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return "upper"
    return "title"


@dataclass(frozen=True)
class CaseMarking:
    title_id: int
    upper_id: int
    style: str = "inserted"
    vocab_size: int = 0  # "added": the offset of case in a token id (the tokenizer's size)

    @property
    def ids(self) -> frozenset[int]:
        """The marker tokens that stand in the text, which are no words: none in the "added" style."""
        return frozenset((self.title_id, self.upper_id)) if self.style == "inserted" else frozenset()

    def mark(self, text: str, ids: list[int], offsets: list[tuple[int, int]], word_start: list[bool]
             ) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
        """(ids, offsets, is_marker) with the case of each word marked. A word is a first piece and
        the '##' pieces after it; its case is read from the original text. "inserted": a marker
        before the word's first piece, with the empty span at the word's start, so every span still
        points into `text`. "added": every piece of the word gets its case in its id, nothing moves."""
        out_ids: list[int] = []
        out_offsets: list[tuple[int, int]] = []
        is_marker: list[bool] = []
        n = len(ids)
        case = 0
        for i in range(n):
            if word_start[i]:
                j = i + 1
                while j < n and not word_start[j]:
                    j += 1
                kind = word_case(text[offsets[i][0] : offsets[j - 1][1]])
                case = _CASE[kind]
                if kind is not None and self.style == "inserted":
                    out_ids.append(self.title_id if kind == "title" else self.upper_id)
                    out_offsets.append((offsets[i][0], offsets[i][0]))
                    is_marker.append(True)
            out_ids.append(ids[i] + case * self.vocab_size if self.style == "added" else ids[i])
            out_offsets.append(offsets[i])
            is_marker.append(False)
        return out_ids, out_offsets, is_marker

    def mark_added(self, text: str, ids: list[int], offsets: list[tuple[int, int]], continues: list[bool]
                   ) -> list[int]:
        """The ids `mark` gives in the "added" style (word_start = not continues[id]), reading only
        the words around characters that may be capitals: on reviews, `mark` spent most of the
        tagger's time outside the model in its loop over every token (bench/host_overhead.py)."""
        out, starts, n = ids, None, len(ids)
        handled = 0  # tokens before this index belong to words already read
        for match in _MAYBE_UPPER.finditer(text):
            if starts is None:
                starts = [s for s, _ in offsets]
            p = match.start()
            k = bisect_right(starts, p) - 1
            if k < handled or p >= offsets[k][1]:  # a word already read, or no token's character
                continue
            i = k
            while i > 0 and continues[ids[i]]:
                i -= 1
            j = k + 1
            while j < n and continues[ids[j]]:
                j += 1
            handled = j
            if continues[ids[i]]:  # pieces before the first word's start: `mark` gives them no case
                continue
            case = _CASE[word_case(text[offsets[i][0] : offsets[j - 1][1]])]
            if case:
                if out is ids:
                    out = list(ids)
                for t in range(i, j):
                    out[t] += case * self.vocab_size
        return out

    def embed(self, word_embeddings: torch.nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ids marked in the "added" style: each piece's own row plus its case's
        marker row (none for case 0). Gradients reach the marker rows, so training learns them."""
        case = torch.div(input_ids, self.vocab_size, rounding_mode="floor")
        weight = word_embeddings.weight
        rows = torch.stack([torch.zeros_like(weight[0]), weight[self.title_id], weight[self.upper_id]])
        return word_embeddings(input_ids - case * self.vocab_size) + rows[case]


def model_inputs(model, input_ids: torch.Tensor, marking: CaseMarking | None) -> dict:
    """The keyword arguments for a transformers model's forward: `inputs_embeds` where the ids
    carry case in the "added" style, else the ids themselves."""
    if marking is not None and marking.style == "added":
        return {"inputs_embeds": marking.embed(model.get_input_embeddings(), input_ids)}
    return {"input_ids": input_ids}


def for_model(config, tokenizer) -> CaseMarking | None:
    """The marking a model was trained with (its config's `case_markers`), or None for none."""
    markers = getattr(config, CONFIG_KEY, None)
    if not markers:
        return None
    try:
        title, upper = tokenizer.convert_tokens_to_ids([markers["title"], markers["upper"]])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"config.json {CONFIG_KEY} must name a 'title' and an 'upper' token, got {markers!r}") from exc
    unk = tokenizer.unk_token_id
    if unk in (title, upper) or title == upper:
        raise ValueError(f"config.json {CONFIG_KEY}: {markers!r} are not two distinct tokens of the vocabulary")
    style = markers.get("style", "inserted")  # models built before the "added" style have no key
    if style not in STYLES:
        raise ValueError(f"config.json {CONFIG_KEY}: style {style!r} is not one of {', '.join(STYLES)}")
    # Every id the tokenizer gives is below len(tokenizer), so case rides above it.
    return CaseMarking(title, upper, style, len(tokenizer))


def enable(config, tokenizer, style: str = "added") -> CaseMarking:
    """Mark a model (before training) as trained with the default markers, in `style`."""
    setattr(config, CONFIG_KEY, {**DEFAULT_MARKERS, "style": style})
    marking = for_model(config, tokenizer)
    assert marking is not None
    return marking
