"""The language guard: the models were trained on English reviews, and on other languages they give
confident nonsense (a Spanish "Me encantó" came out negative at 0.978). Each review's language is
detected offline with py3langid (its model ships inside the package), stored,
and only the languages in REVIEWS_LANGUAGES are analysed; the others are recorded as skipped, with
the reason. `REVIEWS_LANGUAGES=all` turns the guard off.

py3langid reads each text's bytes in a Python loop, about 300 µs a review: on a GPU worker that was
a large share of its CPU besides the models. Its automaton and sum run in C++ here (langid.cpp,
built once per host like the engine's kernels); the scores are normalized as py3langid does, and
the results equal its own. Where no compiler is at hand, py3langid's loop serves, with a warning.

Short or ambiguous texts ("Great!", a product name) are not judged: below CONFIDENCE the language is
left unknown (NULL) and the review is analysed, since wrongly skipping English costs more than
reading a short foreign line.
"""

from __future__ import annotations

import ctypes
import logging
import math
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import cbuild

log = logging.getLogger(__name__)

CONFIDENCE = 0.9  # py3langid's normalized probability needed to name a language
# The start of a review tells its language, and the detector's cost grows with every byte it reads:
# on 3,000 IMDb reviews, 600 characters named the same language as 2,000 for all of them, at 450
# instead of 830 µs a review (bench/RESULTS.md, "Worker CPU per batch").
READ_CHARS = 600


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect(texts: list[str]) -> list[str | None]:
    """ISO 639-1 code of each text, or None where the detector is not sure."""
    if not texts:
        return []
    if _scorer() is None:
        out = []
        for text in texts:
            code, probability = _identifier().classify(text[:READ_CHARS])
            out.append(code if probability >= CONFIDENCE else None)
        return out
    ident = _identifier()
    probabilities = _probabilities([_encode(text[:READ_CHARS]) for text in texts])
    best = probabilities.argmax(axis=1)
    return [ident.nb_classes[k] if probabilities[i, k] >= CONFIDENCE else None for i, k in enumerate(best)]


def _encode(text: str) -> bytes:
    """The bytes py3langid reads for `text` (its LanguageIdentifier._encode, for str)."""
    if text.isupper():
        text = text.lower()
    return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")


def _probabilities(encoded: list[bytes]) -> np.ndarray:
    """Each text's probability per language column (texts x columns), as py3langid's norm_probs gives."""
    ident = _identifier()
    lib, nextmove, rowbase, output = _scorer()
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    data = np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8)
    columns = ident.nb_ptc.shape[1]
    scores = np.empty((len(encoded), columns), dtype=np.float32)
    lib.reviews_langid_scores(data.ctypes.data, offsets.ctypes.data, len(encoded), nextmove.ctypes.data,
                              rowbase.ctypes.data, output.ctypes.data, len(output), ident.nb_ptc.ctypes.data,
                              ident.nb_pc.ctypes.data, columns, scores.ctypes.data)
    # py3langid's normalization: a temperature of sqrt(bytes) keeps the softmax calibrated across
    # lengths; a text with no features scores all zeros, which stays uniform (and below CONFIDENCE).
    scores *= np.array([1.0 / math.sqrt(len(b) or 1) for b in encoded], dtype=np.float32)[:, None]
    np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    for first, dupe in ident._alias_pairs:  # a label with two columns (a script alias): one score
        scores[:, first] += scores[:, dupe]
        scores[:, dupe] = 0.0
    return scores


@lru_cache(maxsize=1)
def _scorer():
    """(library, nextmove, rowbase, output) of the C++ scorer over py3langid's model, or None where
    it cannot be built here (then py3langid's own loop serves)."""
    ident = _identifier()
    if ident.nb_ptc.dtype != np.float16 or not ident.nb_ptc.flags.c_contiguous or ident.tk_nextmove.itemsize != 4:
        log.warning("py3langid's model is not laid out as the C++ language detector reads it: py3langid serves")
        return None
    try:
        lib = cbuild.load(SOURCE, FLAGS, "language detector")
        fn = lib.reviews_langid_scores
    except (cbuild.BuildError, OSError, AttributeError) as exc:
        log.warning("the C++ language detector is unavailable (%s: %s): py3langid's Python loop serves, "
                    "about 300 µs a review", type(exc).__name__, exc)
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p] * 2 + [ctypes.c_int64] + [ctypes.c_void_p] * 3 + [
        ctypes.c_int64] + [ctypes.c_void_p] * 2 + [ctypes.c_int64, ctypes.c_void_p], None
    nextmove = np.frombuffer(ident.tk_nextmove, dtype=np.uint32)  # the model's own array, not a copy
    rowbase = np.asarray(ident.tk_row, dtype=np.int64) << 8
    output = np.asarray(ident.tk_output, dtype=np.int32)
    return lib, nextmove, rowbase, output


SOURCE = Path(__file__).with_name("langid.cpp")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC", "-std=c++17")


def allowed(setting: str) -> frozenset[str] | None:
    """The languages REVIEWS_LANGUAGES lets through; None for all."""
    if setting.strip().lower() == "all":
        return None
    return frozenset(code.strip().lower() for code in setting.split(",") if code.strip())


def skip_reason(language: str | None, languages: frozenset[str] | None) -> str | None:
    if languages is None or language is None or language in languages:
        return None
    return (f"language {language!r} is not one the models were trained on "
            f"(REVIEWS_LANGUAGES={','.join(sorted(languages))})")
