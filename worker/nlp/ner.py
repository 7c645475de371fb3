"""Named entities with character offsets into the original review, long reviews read in windows."""

from __future__ import annotations

from dataclasses import replace

import torch

from . import batching, casing, labels, loading
from .bio import bio_spans
from .options import EngineOptions
from .sentiment import fit_options
from .types import Entity, ModelLoadError


class NerModel:
    def __init__(self, model, tokenizer, device, precision: str, options: EngineOptions | None = None):
        self.model, self.tokenizer, self.device, self.precision = model, tokenizer, device, precision
        self.options = fit_options(options or EngineOptions(), model, device)
        try:
            self.casing = casing.for_model(model.config, tokenizer)
        except ValueError as exc:
            raise ModelLoadError(f"ner model: {exc}") from None
        self.markers = self.casing.ids if self.casing else frozenset()
        self.tokenizer_key = batching.tokenizer_key(tokenizer)
        # Our BIO tags (labels.py: B-PERSON, LOCATION, BIOES prefixes...; an imported version's config
        # already holds them); tags merged or skipped to O by the mapping are folded in the forward.
        self.tags, self.forward = labels.for_engine(
            "ner", model, batching.Forward(model, device, precision, per_token=True, marking=self.casing))
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # WordPiece marks word-internal pieces with "##"; the tag of a word is read at its first piece.
        self.continues_word = [t is not None and t.startswith("##") for t in vocab]

    def predict(self, texts: list[str], encoded: list[batching.Encoded] | None = None) -> list[list[Entity]]:
        """encoded: the texts (cut at options.max_chars) as this model's tokenizer encodes them, with
        offsets, if at hand (predict_both)."""
        out = []
        for text, (words, probs) in zip(texts, self._word_probabilities(texts, encoded)):
            if not words:
                out.append([])
                continue
            score, tag_ids = probs[[first for first, _, _ in words]].max(dim=-1)
            out.append(decode_bio(text, words, [self.tags[i] for i in tag_ids.tolist()], score.tolist()))
        return out

    def word_probabilities(self, texts: list[str]) -> list[tuple[list[tuple[int, int]], torch.Tensor]]:
        """For each text, the character span of each word and its tag probabilities ([words, tags],
        columns in self.tags' order): a teacher's soft targets, aligned to any student by characters."""
        out = []
        for words, probs in self._word_probabilities(texts):
            firsts = [first for first, _, _ in words]
            out.append(([(s, e) for _, s, e in words], probs[firsts] if firsts else probs[:0]))
        return out

    def _word_probabilities(self, texts: list[str], encoded: list[batching.Encoded] | None = None):
        """Per text: its words (first token index, char start, char end) and every token's tag probabilities."""
        if not texts:
            return []
        opts = self.options
        texts = [t[: opts.max_chars] for t in texts]
        if encoded is None:
            encoded = batching.encode(self.tokenizer, texts)
        if self.casing is not None:
            encoded = [self._mark(text, enc) for text, enc in zip(texts, encoded)]
        windows = batching.make_windows(encoded, opts.max_length, opts.stride)
        logits = batching.run_model(
            self.forward, self.tokenizer, windows, opts.token_budget, per_token=True
        )
        per_text: list[list[tuple[int, torch.Tensor]]] = [[] for _ in texts]
        for w, rows in zip(windows, logits):
            per_text[w.text_index].append((w.start, rows))
        out = []
        for enc, parts in zip(encoded, per_text):
            if not enc.ids:
                out.append(([], torch.zeros(0, len(self.tags))))
            else:
                out.append((word_spans(enc, self.continues_word, self.markers),
                            stitch(len(enc.ids), parts).float().softmax(dim=-1)))
        return out

    def _mark(self, text: str, enc: batching.Encoded) -> batching.Encoded:
        ids, offsets, _ = self.casing.mark(text, enc.ids, enc.offsets,
                                           [not self.continues_word[t] for t in enc.ids])
        return batching.Encoded(ids, offsets)


def stitch(n_tokens: int, parts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """One row of logits per token: where windows overlap, the window in which the token sits
    furthest from an edge wins, since it saw the most context on both sides. Exactly one window
    speaks for each token, so an entity in an overlap is decoded once."""
    if len(parts) == 1:  # most reviews fit one window: it speaks for every token
        return parts[0][1]
    owner = batching.owners(n_tokens, [(start, rows.shape[0]) for start, rows in parts])
    out = torch.zeros(n_tokens, parts[0][1].shape[-1])
    for k, (start, rows) in enumerate(parts):
        pos = (owner == k).nonzero().squeeze(1)
        out[pos] = rows[pos - start]
    return out


def word_spans(enc: batching.Encoded, continues_word: list[bool], markers: frozenset[int] = frozenset()
               ) -> list[tuple[int, int, int]]:
    """(first token index, char start, char end) of each word; case markers are no words. An id
    may carry its piece's case (casing.py, "added"): the piece is the id modulo the vocabulary.
    (A loop: numpy's version took 1.6x as long on reviews of a few hundred tokens.)"""
    words: list[tuple[int, int, int]] = []
    for i, (tok, (s, e)) in enumerate(zip(enc.ids, enc.offsets)):
        if tok in markers:
            continue
        if words and continues_word[tok % len(continues_word)]:
            first, ws, _ = words[-1]
            words[-1] = (first, ws, e)
        else:
            words.append((i, s, e))
    return words


def decode_bio(text: str, words, tags: list[str], scores: list[float]) -> list[Entity]:
    """Entities from one tag and score per word (its first token's), read by bio.bio_spans; each
    keeps its words' character span, trimmed, and their mean score."""
    entities: list[Entity] = []
    for a, b, kind in bio_spans(tags):
        start, end = trim_span(text, words[a][1], words[b - 1][2])
        if start < end:  # nothing but punctuation left: not a name
            sc = scores[a:b]
            entities.append(Entity(kind, text[start:end], start, end, sum(sc) / len(sc)))
    return entities


# Characters a name can end with ("U.S.", "Warner Bros.", "Sony)") stay; these never end one.
_TRAILING = set("-\u2013\u2014,;:/(")


def trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without what a tagger sometimes sweeps in at the edges of a name on messy web text
    (a full stop before it, a hyphen after it); empty (start == end) when no letter or digit is left."""
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in _TRAILING):
        end -= 1
    return start, end


def load_ner(source: str, options: EngineOptions | None = None, **changes) -> NerModel:
    """The NER engine for a directory or hub id; `changes` override single options."""
    opts = replace(options or EngineOptions(), **changes)
    model, tokenizer, dev, prec = loading.load(source, "ner", opts.device, opts.precision)
    return NerModel(model, tokenizer, dev, prec, opts)


def predict_both(sentiment, ner: NerModel, texts: list[str]):
    """(sentiments, entities) of the same texts. When both models tokenize alike (the bundled ones
    share one vocabulary), the texts are tokenized once: on a GPU, tokenizing was 10-40% of the
    sentiment model's time (bench/RESULTS.md, "GPU")."""
    if sentiment.tokenizer_key == ner.tokenizer_key and sentiment.options.max_chars == ner.options.max_chars:
        encoded = batching.encode(ner.tokenizer, [t[: ner.options.max_chars] for t in texts])
        return sentiment.predict(texts, encoded), ner.predict(texts, encoded)
    return sentiment.predict(texts), ner.predict(texts)

