"""Import human labels, validated line by line like review files, stored idempotently. Our JSONL:
{"id": "r-1", "sentiment": "negative"}, {"text": "...", "sentiment": "positive"} or {"text": "...", "entities":
[{"start": 0, "end": 8, "label": "PER"}]}; labeling tools' exports become the same objects (label_formats.py).
A JSON array is streamed, its rejections numbered "task N". A label without our id goes to the one stored
review with its text, if any. The latest label of a text wins."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from . import label_formats as formats
from .db import insert
# The reader's own strict JSON rules (STRICT_JSON, MARKING_JSON, NUL_OR_SURROGATE_ESCAPE) and put-back of bytes (Prefixed).
from .inputs import (MARKING_JSON, NUL_OR_SURROGATE_ESCAPE, STRICT_JSON, GZIP_MAGIC, MAX_DEPTH, BadNumber, Rejected,
                     Prefixed, open_input, read_json_objects, sha256, text_problem, value_problem)
from .nlp.types import NER_TYPES, SENTIMENT_LABELS
from .schema import Label, RejectedLine, Review, utcnow

CHUNK = 500
_READ = 1 << 16  # characters read at a time from a JSON array


@dataclass
class LabelReport:
    added: int = 0
    already_known: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    unit: str = "line"  # what rejections count: "line" of JSONL, "task" of a JSON array
    format: str = "jsonl"
    skipped: int = 0  # values that --map sent to skip
    unlabelled: int = 0  # tasks or records without a (non-cancelled, submitted) answer


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


def import_labels(sessions: sessionmaker[Session], stream: IO[bytes], source: str, max_line_bytes: int,
                  fmt: str = "auto", options: formats.ToolOptions | None = None) -> LabelReport:
    """Store the labels of `stream`: our JSONL or a labeling tool's export (`fmt`, or found from the first
    object with fmt="auto"). Raises InputError when the file as a whole cannot be read as `fmt`."""
    options = options or formats.ToolOptions()
    unit, items = read_items(stream, max_line_bytes)
    report = LabelReport(unit=unit, format="jsonl" if fmt == "auto" else fmt)
    chunk: list[ParsedLabel] = []
    resolved = None

    def flush() -> None:
        with sessions() as session:
            _store(session, chunk, source, report)
            session.commit()
        chunk.clear()

    for item in items:
        if isinstance(item, Rejected):
            report.rejected.append(item)
            continue
        number, obj, raw = item
        if resolved is None:
            resolved = report.format = formats.resolve(fmt, obj, unit, source, options)
        if resolved == "jsonl":
            parsed = [parse_label(number, obj)]
        else:
            try:
                objs, skipped = formats.convert(resolved, obj, options)
            except formats.Reject as exc:
                report.rejected.append(Rejected(number, exc.args[0], raw))
                continue
            report.skipped += skipped
            report.unlabelled += not objs and not skipped
            parsed = [parse_label(number, o) for o in objs]
        problem = next((p for p in parsed if isinstance(p, str)), None)
        if problem:  # one task is one unit: its sentiment is not kept when its entities are wrong
            report.rejected.append(Rejected(number, problem, raw))
            continue
        chunk.extend(parsed)  # type: ignore[arg-type]
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


class _Stop(Exception):
    """The JSON array cannot be read further; args[0] says why."""


def read_items(stream: IO[bytes], max_bytes: int) -> tuple[str, Iterator[tuple[int, Any, str] | Rejected]]:
    """("task", the elements of a JSON array) or ("line", JSON Lines); the bytes looked at are put back."""
    head = b""
    while len(head) <= max_bytes and (more := getattr(stream, "read1", stream.read)(_READ)):
        head += more
        if len(head) >= 2 and _visible(head):
            break
    rest = io.BufferedReader(Prefixed(head, stream), buffer_size=_READ)
    if _visible(head).startswith(b"["):
        return "task", _array_items(open_input(rest), max_bytes)
    return "line", read_json_objects(rest, max_bytes)


def _visible(head: bytes) -> bytes:
    """The first bytes of the text after any byte-order mark and blanks, decompressed when gzip."""
    if head[:2] == GZIP_MAGIC:
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, _READ)
        except zlib.error:
            return b""  # the reader says what is wrong with it
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")


def _array_items(stream: IO[bytes], max_chars: int) -> Iterator[tuple[int, Any, str] | Rejected]:
    """One JSON array, streamed: raw_decode over a growing buffer holds one task, never the whole export.
    Values are held to the reader's rules (no NaN, NUL, lone surrogate; bounded depth and digits). A task
    that cannot be parsed ends the input with one rejection: without its end, the next cannot be found."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    errors = (EOFError, zlib.error, gzip.BadGzipFile) if isinstance(stream, gzip.GzipFile) else ()
    buf, pos, eof, n = "", 0, False, 0

    def more(size: int) -> None:
        nonlocal buf, pos, eof
        try:
            data = stream.read1(size)  # not read(): a gzip error would take the bytes read before it along
            buf, pos, eof = buf[pos:] + decoder.decode(data, final=not data), 0, not data
        except (UnicodeDecodeError, *errors) as exc:
            raise _Stop(f"not valid UTF-8 ({exc.reason})" if isinstance(exc, UnicodeDecodeError) else
                        f"gzip data is corrupt or truncated ({exc})") from None

    def skip_space() -> str | None:  # the next character, reading on as needed; None at the end
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(buf) or eof:
                return buf[pos] if pos < len(buf) else None
            more(_READ)

    try:
        skip_space()
        pos += 1  # the "[" that read_items saw
        while (c := skip_space()) != "]":
            n += 1
            if n > 1 and c is not None:
                if c != ",":
                    raise _Stop(f"invalid JSON: expected ',' or ']' after task {n - 1}")
                pos += 1
                c = skip_space()
            if c is None:
                raise _Stop("the file ends inside the JSON array, before its closing ']': it is cut short")
            while True:
                try:
                    try:
                        (obj, end), marked = STRICT_JSON.raw_decode(buf, pos), False
                    except BadNumber:
                        (obj, end), marked = MARKING_JSON.raw_decode(buf, pos), True
                    break
                except json.JSONDecodeError as exc:  # unless the task goes on past what was read so far
                    if eof or not (exc.pos >= len(buf) - 6 or exc.msg.startswith("Unterminated string")):
                        raise _Stop(f"invalid JSON: {exc.msg} at character {exc.pos - pos + 1} of the task") from None
                    if len(buf) - pos > max_chars:
                        raise _Stop(f"task is over {max_chars:,} characters (REVIEWS_MAX_LINE_BYTES), or its JSON "
                                    "is broken") from None
                    more(max(_READ, len(buf) - pos))  # doubling what is held: linear time overall
                except RecursionError:
                    raise _Stop("JSON is nested too deeply") from None
            raw, pos = buf[pos:end], end
            suspect = marked or ("\\u" in raw and NUL_OR_SURROGATE_ESCAPE.search(raw)) or \
                raw.count("[") + raw.count("{") > MAX_DEPTH  # the reader's test: a clean task skips the walk
            if len(raw) > max_chars:
                yield Rejected(n, f"task is {len(raw):,} characters, over {max_chars:,} (REVIEWS_MAX_LINE_BYTES)", "")
            elif not isinstance(obj, dict):
                yield Rejected(n, f"expected a JSON object (a task), got {type(obj).__name__}", raw)
            elif suspect and (problem := value_problem(obj)):
                yield Rejected(n, problem, raw)
            else:
                yield n, obj, raw
    except _Stop as exc:  # numbered as the task being read
        yield Rejected(max(n, 1), exc.args[0] + "; the rest of the file was not read", buf[pos:pos + 2000])


def _store(session: Session, chunk: list[ParsedLabel], source: str, report: LabelReport) -> None:
    ext_ids = {p.review_ext_id for p in chunk if p.review_ext_id is not None}
    reviews = {
        ext: (rid, text)
        for rid, ext, text in session.execute(
            select(Review.id, Review.external_id, Review.text).where(Review.external_id.in_(ext_ids))
        )
    } if ext_ids else {}
    by_text = _reviews_by_text(session, {p.text for p in chunk if p.review_ext_id is None})
    rows = []

    def reject(p: ParsedLabel, reason: str) -> None:
        if not report.rejected or (report.rejected[-1].line_no, report.rejected[-1].reason) != (p.line_no, reason):
            report.rejected.append(Rejected(p.line_no, reason, ""))  # a task's two labels fail once

    for p in chunk:
        review_id, text = None, p.text
        if p.review_ext_id is not None:
            if p.review_ext_id not in reviews:
                reject(p, f"no stored review with id {p.review_ext_id!r}")
                continue
            review_id, stored_text = reviews[p.review_ext_id]
            if text is not None and text != stored_text:
                reject(p, f"text differs from stored review {p.review_ext_id!r}")
                continue
            text = stored_text
        else:
            review_id = by_text.get(text)
        if p.entities is not None and any(e["end"] > len(text) for e in p.entities):
            reject(p, "an entity ends past the end of the review text")
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


def _reviews_by_text(session: Session, texts: set[str | None]) -> dict[str, int]:
    """The stored review of each text that exactly one review has (of two, which one is meant is unknown)."""
    hashes = {sha256(t): t for t in texts if t is not None}
    found: dict[str, list[int]] = {}
    for rid, digest, text in session.execute(select(Review.id, Review.text_sha256, Review.text)
                                             .where(Review.text_sha256.in_(list(hashes)))) if hashes else ():
        if hashes.get(digest) == text:
            found.setdefault(text, []).append(rid)
    return {text: ids[0] for text, ids in found.items() if len(ids) == 1}


def latest_key(session: Session, task: str, text: str) -> str | None:
    """The key of the label that counts for this text: the most recent one."""
    return session.scalar(select(Label.key).where(Label.task == task, Label.text == text)
                          .order_by(Label.created_at.desc(), Label.id.desc()).limit(1))
