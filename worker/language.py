"""The language guard: the models were trained on English reviews, and on other languages they give
confident nonsense (a Spanish "Me encantó" came out negative at 0.978). Each review's language is
detected offline with py3langid (its model ships inside the package), stored,
and only the languages in REVIEWS_LANGUAGES are analysed; the others are recorded as skipped, with
the reason. `REVIEWS_LANGUAGES=all` turns the guard off.

Short or ambiguous texts ("Great!", a product name) are not judged: below CONFIDENCE the language is
left unknown (NULL) and the review is analysed, since wrongly skipping English costs more than
reading a short foreign line.
"""

from __future__ import annotations

from functools import lru_cache

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
    out = []
    for text in texts:
        code, probability = _identifier().classify(text[:READ_CHARS])
        out.append(code if probability >= CONFIDENCE else None)
    return out


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
