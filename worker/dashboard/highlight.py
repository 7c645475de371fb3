"""A review's text as HTML with an entity's mentions in <mark>: every piece of the text is escaped
(reviews are user input), and only the <mark> tags around them are ours. A long review is cut to
windows around its mentions, so that a page of drill-down stays readable."""

from __future__ import annotations

from markupsafe import Markup, escape

CONTEXT = 240  # characters kept either side of a mention in a long review
WHOLE = 1200  # a review this long or shorter is shown whole


def highlight(text: str, spans: list[tuple[int, int]], context: int = CONTEXT, whole: int = WHOLE) -> Markup:
    marks = _merge([(max(0, s), min(len(text), e)) for s, e in spans if 0 <= s < e])
    if len(text) <= whole or not marks:
        windows = [(0, len(text) if len(text) <= whole else whole)]
    else:
        windows = _merge([(max(0, s - context), min(len(text), e + context)) for s, e in marks])
    parts: list[str] = []
    for n, (lo, hi) in enumerate(windows):
        if lo > 0 or n:
            parts.append("… ")
        parts.append(_marked(text, lo, hi, marks))
    if windows[-1][1] < len(text):
        parts.append(" …")
    return Markup("".join(parts))


def _marked(text: str, lo: int, hi: int, marks: list[tuple[int, int]]) -> str:
    out, at = [], lo
    for s, e in marks:
        if e <= lo or s >= hi:
            continue
        s, e = max(s, lo), min(e, hi)
        out.append(str(escape(text[at:s])))
        out.append(f"<mark>{escape(text[s:e])}</mark>")
        at = e
    out.append(str(escape(text[at:hi])))
    return "".join(out)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out
