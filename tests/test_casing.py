"""Case markers (worker/nlp/casing.py): the fast "added" marking gives exactly what the plain loop gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.config import BUNDLED_NER
from worker.nlp import batching, casing
from worker.nlp.distilbert import Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(BUNDLED_NER)


def both_ways(tokenizer, text: str):
    enc = batching.encode(tokenizer, [text])[0]
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    continues = [False] * len(tokenizer)
    for piece, i in vocab.items():
        continues[i] = piece.startswith("##")
    marking = casing.CaseMarking(title_id=1, upper_id=2, style="added", vocab_size=len(tokenizer))
    plain, _, _ = marking.mark(text, enc.ids, enc.offsets, [not continues[t] for t in enc.ids])
    return plain, marking.mark_added(text, enc.ids, enc.offsets, continues), enc.ids


def test_added_marking_reads_the_case_of_whole_words(tokenizer):
    text = "McDonald's NATO in the U.S., 3D iPhone ÉCOLE élan Zürich, ok?"
    plain, fast, ids = both_ways(tokenizer, text)
    assert fast == plain
    vocab = len(tokenizer)
    cased = [(tokenizer.backend.id_to_token(i % vocab), i // vocab) for i in fast if i >= vocab]
    assert ("nato", 2) in cased and ("ecole", 2) in cased  # upper
    assert ("mcdonald", 1) in cased and ("zurich", 1) in cased and ("3d", 1) in cased  # title
    assert all(tokenizer.backend.id_to_token(i) not in ("iphone", "elan", "ok") for i in fast if i >= vocab)
    assert [i % vocab for i in fast] == ids  # the pieces themselves are untouched


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from("Aa Bb.'-##ÉéßİI\u0130\u01c5 \t\n")), max_size=80))
def test_added_marking_equals_the_plain_loop_on_any_text(tokenizer, text):
    # Lone surrogates never reach the engine: the readers reject them (tests/test_inputs_properties.py).

    plain, fast, _ = both_ways(tokenizer, text)
    assert fast == plain


# -- the tagger's decoding over a whole call against word_spans + decode_bio text by text ---------------------


@pytest.fixture(scope="module")
def tagger():
    from worker.nlp.ner import load_ner

    return load_ner(str(BUNDLED_NER), device="cpu", precision="fp32")


def reference_entities(engine, texts, encoded, logits):
    from worker.nlp.ner import decode_bio, word_spans

    out = []
    for text, enc, rows in zip(texts, encoded, logits):
        words = word_spans(enc, engine.continues_word, engine.markers)
        if not words:
            out.append([])
            continue
        score, tag = rows.float().softmax(dim=-1)[[w[0] for w in words]].max(dim=-1)
        out.append(decode_bio(text, words, [engine.tags[i] for i in tag.tolist()], score.tolist()))
    return out


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.one_of(st.characters(exclude_categories=("Cs",)),
                                                 st.sampled_from("Ann Bo MAY in Paris, U.S. ##x")), max_size=60),
                      min_size=1, max_size=4),
       style=st.sampled_from(["added", "inserted"]), o_bias=st.sampled_from([-1.0, 1.0, 3.0]),
       no_o=st.booleans(), seed=st.integers(0, 2**16))
def test_entities_of_a_whole_call_equal_the_word_by_word_decoding(tagger, texts, style, o_bias, no_o, seed):
    import copy

    import torch

    engine = copy.copy(tagger)
    encoded = batching.encode(engine.tokenizer, texts)
    if style == "inserted":  # marker tokens stand in the text: they are no words
        marking = casing.CaseMarking(title_id=1, upper_id=2, style="inserted", vocab_size=len(engine.tokenizer))
        marked = []
        for text, enc in zip(texts, encoded):
            ids, offsets, _ = marking.mark(text, enc.ids, enc.offsets, [not engine.continues_word[t] for t in enc.ids])
            marked.append(batching.Encoded(ids, offsets))
        encoded = marked
        engine.markers = marking.ids
        engine._marker_ids = torch.tensor(sorted(marking.ids))
    if no_o:  # a tag set without O: every word is read
        engine._o_index = -1
    generator = torch.Generator().manual_seed(seed)
    logits = []
    for enc in encoded:
        rows = torch.randn(len(enc.ids), len(engine.tags), generator=generator)
        rows[:, engine.tags.index("O")] += o_bias
        logits.append(rows)
    assert engine._entities(texts, encoded, logits) == reference_entities(engine, texts, encoded, logits)


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.lists(st.sampled_from(["word", "##piece", "marker"]), max_size=12), min_size=1, max_size=4),
       seed=st.integers(0, 2**16))
def test_entities_of_any_token_sequence_equal_the_word_by_word_decoding(tagger, pieces, seed):
    """Sequences no tokenizer gives (a text that opens with a "##" piece or a marker, markers inside a
    word) still decode as word_spans reads them."""
    import copy

    import torch

    engine = copy.copy(tagger)
    vocab = engine.tokenizer.backend.get_vocab()
    ids = {"word": vocab["paris"], "##piece": vocab["##s"], "marker": 1}
    engine.markers, engine._marker_ids = frozenset({1}), torch.tensor([1])
    texts, encoded, logits = [], [], []
    generator = torch.Generator().manual_seed(seed)
    for kinds in pieces:
        texts.append("Ab" * len(kinds))
        encoded.append(batching.Encoded([ids[k] for k in kinds], [(2 * i, 2 * i + 2) for i in range(len(kinds))]))
        logits.append(torch.randn(len(kinds), len(engine.tags), generator=generator))
    assert engine._entities(texts, encoded, logits) == reference_entities(engine, texts, encoded, logits)
