"""Import human labels, validated line by line like review files, stored idempotently.

Sentiment: {"id": "r-1", "sentiment": "negative"} (a stored review) or {"text": "...", "sentiment": "positive"}.
NER: {"text": "...", "entities": [{"start": 0, "end": 8, "label": "PER"}]} (or with "id" instead of text).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from .db import insert
from .inputs import InputError, Rejected, open_input, read_json_objects, text_problem
from .nlp.types import NER_TYPES, SENTIMENT_LABELS
from .schema import Label, RejectedLine, Review, utcnow

CHUNK = 500


@dataclass
class LabelReport:
    added: int = 0
    already_known: int = 0
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True)
class ParsedLabel:
    line_no: int
    task: str
    review_ext_id: str | None
    text: str | None
    sentiment: str | None
    entities: list[dict] | None


def parse_label(line_no: int, obj: dict[str, Any]) -> ParsedLabel | str:
    """A label, or the reason the line is not one."""
    ext_id = obj.get("id")
    text = obj.get("text")
    if ext_id is None and text is None:
        return "needs an 'id' of a stored review or a 'text'"
    if ext_id is not None and (isinstance(ext_id, bool) or not isinstance(ext_id, (str, int))):
        return "'id' must be a string or an integer"
    if text is not None and text_problem(text):
        return text_problem(text)  # type: ignore[return-value]
    has_s, has_e = "sentiment" in obj, "entities" in obj
    if has_s == has_e:
        return "needs exactly one of 'sentiment' or 'entities'"
    ext = None if ext_id is None else str(ext_id)
    if has_s:
        value = obj["sentiment"]
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            value = SENTIMENT_LABELS[value]
        if not isinstance(value, str) or value.lower() not in SENTIMENT_LABELS:
            return f"'sentiment' must be one of {', '.join(SENTIMENT_LABELS)}, got {value!r:.40}"
        return ParsedLabel(line_no, "sentiment", ext, text, value.lower(), None)
    entities = obj["entities"]
    if not isinstance(entities, list):
        return "'entities' must be a list of {start, end, label}"
    clean = []
    for k, e in enumerate(entities):
        if not isinstance(e, dict) or not {"start", "end", "label"} <= set(e):
            return f"entity {k}: needs start, end and label"
        start, end, label = e["start"], e["end"], e["label"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) or not 0 <= start < end:
            return f"entity {k}: start and end must be integers with 0 <= start < end"
        if text is not None and end > len(text):
            return f"entity {k}: end {end} is past the end of the text ({len(text)} characters)"
        if label not in NER_TYPES:
            return f"entity {k}: label must be one of {', '.join(NER_TYPES)}, got {label!r:.20}"
        clean.append({"start": start, "end": end, "label": label})
    clean.sort(key=lambda e: e["start"])
    for a, b in zip(clean, clean[1:]):
        if b["start"] < a["end"]:
            return f"entities overlap at characters {b['start']}-{a['end']}"
    return ParsedLabel(line_no, "ner", ext, text, None, clean)


def label_key(task: str, text: str, value: Any) -> str:
    payload = json.dumps([task, text, value], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def import_labels(sessions: sessionmaker[Session], stream: IO[bytes], source: str, max_line_bytes: int) -> LabelReport:
    """Raises InputError for a file that is one JSON array (what labeling tools export) rather than
    JSON Lines, instead of rejecting its every line as invalid JSON."""
    stream = open_input(stream)
    head = stream.peek(256)[:256].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        raise InputError(f"{source} is one JSON array (a Label Studio or other labeling tool export?), not JSON "
                         "Lines: `reviews label` reads one JSON object a line")
    report = LabelReport()
    chunk: list[ParsedLabel] = []

    def flush() -> None:
        with sessions() as session:
            _store(session, chunk, source, report)
            session.commit()
        chunk.clear()

    for item in read_json_objects(stream, max_line_bytes):
        if isinstance(item, Rejected):
            report.rejected.append(item)
            continue
        line_no, obj, raw = item
        parsed = parse_label(line_no, obj)
        if isinstance(parsed, str):
            report.rejected.append(Rejected(line_no, parsed, raw))
            continue
        chunk.append(parsed)
        if len(chunk) >= CHUNK:
            flush()
    flush()
    if report.rejected:
        with sessions() as session:
            session.execute(insert(session, RejectedLine).values([
                dict(job_id=None, source=source, line_no=r.line_no, reason=r.reason, raw=r.raw[:2000],
                     created_at=utcnow()) for r in report.rejected
            ]))
            session.commit()
    return report


def _store(session: Session, chunk: list[ParsedLabel], source: str, report: LabelReport) -> None:
    ext_ids = {p.review_ext_id for p in chunk if p.review_ext_id is not None}
    reviews = {
        ext: (rid, text)
        for rid, ext, text in session.execute(
            select(Review.id, Review.external_id, Review.text).where(Review.external_id.in_(ext_ids))
        )
    } if ext_ids else {}
    rows = []
    for p in chunk:
        review_id, text = None, p.text
        if p.review_ext_id is not None:
            if p.review_ext_id not in reviews:
                report.rejected.append(Rejected(p.line_no, f"no stored review with id {p.review_ext_id!r}", ""))
                continue
            review_id, stored_text = reviews[p.review_ext_id]
            if text is not None and text != stored_text:
                report.rejected.append(Rejected(p.line_no, f"text differs from stored review {p.review_ext_id!r}", ""))
                continue
            text = stored_text
        if p.entities is not None and any(e["end"] > len(text) for e in p.entities):
            report.rejected.append(Rejected(p.line_no, "an entity ends past the end of the review text", ""))
            continue
        value = p.sentiment if p.task == "sentiment" else p.entities
        rows.append(dict(task=p.task, key=label_key(p.task, text, value), review_id=review_id, text=text,
                         sentiment=p.sentiment, entities=p.entities, source=source, created_at=utcnow()))
    if not rows:
        return
    by_key = {r["key"]: r for r in rows}  # the same label twice in one chunk is one label
    known = set(session.scalars(select(Label.key).where(Label.key.in_(list(by_key)))))
    fresh = [r for k, r in by_key.items() if k not in known]
    # A known label that is no longer the latest of its text (positive, then negative, then positive
    # again) becomes the latest once more: the latest label wins, whatever came before.
    revived = [k for k in known if latest_key(session, by_key[k]["task"], by_key[k]["text"]) != k]
    if revived:
        session.execute(update(Label).where(Label.key.in_(revived)).values(created_at=utcnow(), source=source))
    report.already_known += len(known) - len(revived)
    report.added += len(fresh) + len(revived)
    if fresh:
        session.execute(insert(session, Label).values(fresh).on_conflict_do_nothing(index_elements=["key"]))


def latest_key(session: Session, task: str, text: str) -> str | None:
    """The key of the label that counts for this text: the most recent one."""
    return session.scalar(select(Label.key).where(Label.task == task, Label.text == text)
                          .order_by(Label.created_at.desc(), Label.id.desc()).limit(1))
