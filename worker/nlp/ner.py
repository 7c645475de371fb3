"""Named entities with character offsets into the original review, long reviews read in windows."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

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
        self._continues = torch.tensor(self.continues_word, dtype=torch.bool)
        self._marker_ids = torch.tensor(sorted(self.markers), dtype=torch.long)
        self._o_index = self.tags.index("O") if "O" in self.tags else -1

    def predict(self, texts: list[str], encoded: list[batching.Encoded] | None = None) -> list[list[Entity]]:
        """encoded: the texts (cut at options.max_chars) as this model's tokenizer encodes them, with
        offsets, if at hand (predict_both)."""
        return self.finish(self.start(texts, encoded))

    def start(self, texts: list[str], encoded: list[batching.Encoded] | None = None) -> batching.Started:
        """predict's first half: the texts' windows queued on the device (batching.launch)."""
        opts = self.options
        texts = [t[: opts.max_chars] for t in texts]
        if not texts:
            return batching.Started([], [], [], [])
        if encoded is None:
            encoded = batching.encode(self.tokenizer, texts)
        if self.casing is not None:
            encoded = [self._mark(text, enc) for text, enc in zip(texts, encoded)]
        windows = batching.make_windows(encoded, opts.max_length, opts.stride)
        queued = batching.launch(self.forward, self.tokenizer, windows, opts.token_budget)
        return batching.Started(texts, encoded, windows, queued)

    def finish(self, started: batching.Started) -> list[list[Entity]]:
        """predict's second half: the entities of each text once the device is done."""
        return self._entities(started.texts, started.encoded, self._token_logits(started))

    def word_probabilities(self, texts: list[str]) -> list[tuple[list[tuple[int, int]], torch.Tensor]]:
        """For each text, the character span of each word and its tag probabilities ([words, tags],
        columns in self.tags' order): a teacher's soft targets, aligned to any student by characters."""
        started = self.start(texts)
        out = []
        for enc, rows in zip(started.encoded, self._token_logits(started)):
            words = word_spans(enc, self.continues_word, self.markers)
            probs = rows.float().softmax(dim=-1)
            firsts = [first for first, _, _ in words]
            out.append(([(s, e) for _, s, e in words], probs[firsts] if firsts else probs[:0]))
        return out

    def _token_logits(self, started: batching.Started) -> list[torch.Tensor]:
        """Per text, one row of tag logits per token (case-marked tokens: started.encoded)."""
        logits = batching.collect(started.queued, started.windows, per_token=True)
        per_text: list[list[tuple[int, torch.Tensor]]] = [[] for _ in started.encoded]
        for w, rows in zip(started.windows, logits):
            per_text[w.text_index].append((w.start, rows))
        return [stitch(len(enc.ids), parts) if enc.ids else torch.zeros(0, len(self.tags))
                for enc, parts in zip(started.encoded, per_text)]

    def _entities(self, texts: list[str], encoded: list[batching.Encoded], logits: list[torch.Tensor]
                  ) -> list[list[Entity]]:
        """Entities of every text, as word_spans and decode_bio read them, computed for all texts at
        once: tags and words come from tensor operations over every token of the call, and Python
        only visits the words tagged other than O (a dozen a review, of a few hundred tokens; the
        loop over every token took more time than the model on a GPU, bench/host_overhead.py)."""
        out: list[list[Entity]] = [[] for _ in texts]
        lengths = torch.tensor([len(enc.ids) for enc in encoded])
        total = int(lengths.sum())
        if total == 0:
            return out
        ids = torch.tensor([t for enc in encoded for t in enc.ids])
        score, tag = torch.cat(logits).float().softmax(dim=-1).max(dim=-1)
        keep = ~torch.isin(ids, self._marker_ids)  # inserted markers are no words
        starts = keep & ~self._continues[ids % len(self.continues_word)]
        # A text's first word starts at its first kept token, even a "##" piece (word_spans).
        text_of = torch.repeat_interleave(torch.arange(len(texts)), lengths)
        kept = keep.nonzero().squeeze(1)
        first_kept = torch.ones(len(kept), dtype=torch.bool)
        first_kept[1:] = text_of[kept[1:]] != text_of[kept[:-1]]
        starts[kept[first_kept]] = True
        word_first = starts.nonzero().squeeze(1)  # every word of the call, in order
        # A word ends at the last kept token before the next word's start. Every text with a kept
        # token opens with a word, so that is never in another text.
        following = torch.cat([word_first[1:], torch.tensor([total])])
        last_kept = torch.cummax(torch.where(keep, torch.arange(total), -1), dim=0).values
        word_last = last_kept[following - 1]
        named = tag[word_first] != self._o_index if self._o_index >= 0 else torch.ones_like(word_first, dtype=torch.bool)
        which = named.nonzero().squeeze(1)
        base = (torch.cumsum(lengths, 0) - lengths).tolist()
        firsts = word_first[which]
        named_words = map(_Word, which.tolist(), text_of[firsts].tolist(), firsts.tolist(),
                          word_last[which].tolist(), tag[firsts].tolist(), score[firsts].tolist())
        run: list[_Word] = []  # consecutive named words of one text: O on both sides of the run
        for word in named_words:
            if run and (word.text != run[-1].text or word.number != run[-1].number + 1):
                out[run[0].text] += self._decode_run(texts, encoded, base, run)
                run = []
            run.append(word)
        if run:
            out[run[0].text] += self._decode_run(texts, encoded, base, run)
        return out

    def _decode_run(self, texts, encoded, base: list[int], run: list[_Word]) -> list[Entity]:
        t = run[0].text
        offsets = encoded[t].offsets
        words = [(w.first - base[t], offsets[w.first - base[t]][0], offsets[w.last - base[t]][1]) for w in run]
        return decode_bio(texts[t], words, [self.tags[w.tag] for w in run], [w.score for w in run])

    def _mark(self, text: str, enc: batching.Encoded) -> batching.Encoded:
        if self.casing.style == "added":  # nothing moves: only the ids of cased words change
            return batching.Encoded(self.casing.mark_added(text, enc.ids, enc.offsets, self.continues_word),
                                    enc.offsets)
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
    sentiment model's time (bench/RESULTS.md, "GPU"). Both models' work is queued before either is
    read back, so on a GPU the tagger's preparation runs while the sentiment model computes."""
    encoded = None
    if sentiment.tokenizer_key == ner.tokenizer_key and sentiment.options.max_chars == ner.options.max_chars:
        encoded = batching.encode(ner.tokenizer, [t[: ner.options.max_chars] for t in texts]) if texts else []
    started = sentiment.start(texts, encoded), ner.start(texts, encoded)
    return sentiment.finish(started[0]), ner.finish(started[1])


class _Word(NamedTuple):
    """A word of a call tagged other than O (NerModel._entities); token positions count over the call."""
    number: int  # the word's place among all the call's words: consecutive numbers are neighbours
    text: int
    first: int  # its first token
    last: int  # its last token (a case marker is no part of it)
    tag: int
    score: float
