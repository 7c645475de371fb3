"""Case markers: let a model with an uncased vocabulary see capitals, a main cue for names.

The uncased tokenizer reads "Apple" and "apple" as the same pieces. A model built with case markers
has a marker token inserted before each word that starts with a capital (`title`) or is written in
capitals (`upper`, two letters or more). The markers are tokens the vocabulary already reserves
(`[unused1]`, `[unused2]`), so the architecture and the file format stay DistilBERT's; the model's
config.json names them under `case_markers`, and the engine, the default build, `reviews retrain`
and `reviews distill` all read them from there, so training and serving always mark text alike.
"""

from __future__ import annotations

from dataclasses import dataclass

CONFIG_KEY = "case_markers"
DEFAULT_MARKERS = {"title": "[unused1]", "upper": "[unused2]"}


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

    @property
    def ids(self) -> frozenset[int]:
        return frozenset((self.title_id, self.upper_id))

    def mark(self, text: str, ids: list[int], offsets: list[tuple[int, int]], word_start: list[bool]
             ) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
        """(ids, offsets, is_marker) with a marker before the first piece of each cased word. A word
        is a first piece and the '##' pieces after it; its case is read from the original text. A
        marker gets the empty span at its word's start, so every span still points into `text`."""
        out_ids: list[int] = []
        out_offsets: list[tuple[int, int]] = []
        is_marker: list[bool] = []
        n = len(ids)
        for i in range(n):
            if word_start[i]:
                j = i + 1
                while j < n and not word_start[j]:
                    j += 1
                kind = word_case(text[offsets[i][0] : offsets[j - 1][1]])
                if kind is not None:
                    out_ids.append(self.title_id if kind == "title" else self.upper_id)
                    out_offsets.append((offsets[i][0], offsets[i][0]))
                    is_marker.append(True)
            out_ids.append(ids[i])
            out_offsets.append(offsets[i])
            is_marker.append(False)
        return out_ids, out_offsets, is_marker


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
    return CaseMarking(title, upper)


def enable(config, tokenizer) -> CaseMarking:
    """Mark a model (before training) as trained with the default markers."""
    setattr(config, CONFIG_KEY, dict(DEFAULT_MARKERS))
    marking = for_model(config, tokenizer)
    assert marking is not None
    return marking
