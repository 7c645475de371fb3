"""Labeling tools' exports read as the label objects of worker/labels.py: Label Studio, doccano, Argilla.

Each adapter turns one task or record into a `Draft` (text, our review id if the user named where it
lies, sentiment values, entity span sets), or raises `Reject` with the reason. `convert` then applies
--map and builds the objects that `parse_label` validates like a line of our own JSONL, so spans are
checked against the text by the same rules (bounds, overlaps, known types).

Which review a label belongs to: by our id at --id-field (a dotted path such as data.review_id), else
by text. A tool's own "id" (Label Studio task id, doccano example id, Argilla record id) is never read
as ours unless --id-field says so: Label Studio task 1 is not review 1.

Only human answers count: Label Studio `predictions` and Argilla `suggestions` are model output, and a
model trained on its own output learns nothing.

Formats, as documented (the tests cite the pages):
- Label Studio JSON export: a JSON array of tasks {"id", "data": {...}, "annotations": [{"result": [...],
  "was_cancelled", "created_at", "updated_at"}]}; results of type "choices" (value.choices) and "labels"
  (value.start/end/text/labels, character offsets into the text).
- doccano JSONL: {"id", "text", "label": ["positive"]} or {"label": [[start, end, "TYPE"]]}; relation
  projects: {"entities": [{"start_offset", "end_offset", "label"}]}.
- Argilla v2 `records.to_json` / `to_list()`: {"id", "fields": {"text"}, "responses": {question: [{"value",
  "user_id"}]}, "suggestions", "metadata", "status"}; `to_list(flatten=True)`: {"text", "<q>.responses": [...],
  "<q>.responses.status": [...]}. Argilla v1 records: {"text"|"inputs", "annotation": "positive" | ["positive"]
  | [["PER", start, end]], "status"}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .inputs import InputError
from .nlp.types import NER_TYPES, SENTIMENT_LABELS

FORMATS = ("auto", "jsonl", "label-studio", "doccano", "argilla")
SKIP = "skip"
_NOT_ANSWERS = ("discarded", "draft")  # Argilla response statuses that are not a submitted answer


class Reject(Exception):
    """This task or record cannot be used; args[0] is the one-line reason."""


@dataclass(frozen=True)
class ToolOptions:
    id_field: str | None = None  # dotted path to our review id; None: match by text
    text_field: str | None = None  # dotted path to the text; None: where the tool puts it
    mapping: dict[str, str] = field(default_factory=dict)  # tool value -> our value, or "skip"
    controls: frozenset[str] | None = None  # Label Studio from_name / Argilla question names to read

    @property
    def given(self) -> bool:
        return bool(self.id_field or self.text_field or self.mapping or self.controls)


@dataclass
class Draft:
    text: Any
    ref: Any  # our review id, from --id-field
    sentiments: list = field(default_factory=list)  # every value given (several annotators, choices)
    span_sets: list = field(default_factory=list)  # [[(start, end, label)], ...]: one set per annotator


def parse_mapping(specs: list[str]) -> dict[str, str]:
    """'neutral=skip,PERSON=PER' (commas or repeated --map) as a dict; ValueError names a bad pair."""
    out: dict[str, str] = {}
    for pair in (p.strip() for spec in specs for p in spec.split(",")):
        key, sep, target = (s.strip() for s in pair.partition("="))
        if not pair:
            continue
        if not sep or not key or not target:
            raise ValueError(f"{pair!r}: expected VALUE=TARGET")
        if target.lower() in (SKIP,) + SENTIMENT_LABELS:
            target = target.lower()
        elif target.upper() in NER_TYPES:
            target = target.upper()
        else:
            raise ValueError(f"{pair!r}: the target must be skip, one of {', '.join(SENTIMENT_LABELS + NER_TYPES)}")
        out[key] = target
    return out


def detect(obj: dict[str, Any]) -> str | None:
    """The tool that wrote `obj`, from the keys only it uses; None when it looks like none of them."""
    if isinstance(obj.get("annotations"), list) or isinstance(obj.get("data"), dict):
        return "label-studio"
    if any(isinstance(obj.get(k), dict) for k in ("fields", "responses", "suggestions")) or \
            "annotation" in obj or "inputs" in obj or any(k.endswith(".responses") for k in obj):
        return "argilla"
    entities = obj.get("entities")
    first = entities[0] if isinstance(entities, list) and entities else None
    if isinstance(obj.get("label"), list) or isinstance(obj.get("labels"), list) or \
            (isinstance(first, dict) and "start_offset" in first):
        return "doccano"
    return "jsonl" if "sentiment" in obj or "entities" in obj else None


def resolve(fmt: str, obj: dict[str, Any], unit: str, source: str, options: ToolOptions) -> str:
    """The format to read `source` as, from --format and its first object; InputError when it cannot be read."""
    found = detect(obj) if fmt == "auto" else fmt
    if unit == "task" and found is None:
        raise InputError(f"{source} is one JSON array, but its first task is not a Label Studio, doccano or Argilla "
                         "export I recognise: name the format with --format")
    if unit == "task" and found == "jsonl":
        raise InputError(f"{source} is one JSON array: our own label format is JSON Lines, one object a line "
                         "(for a labeling tool's export, use --format auto or the tool's name)")
    found = found or "jsonl"
    if found == "jsonl" and options.given:
        raise InputError(f"{source} is our own JSONL label format: --id-field, --text-field, --map and --control "
                         "are for labeling tool exports (use 'id' and our values in the file)")
    return found


def convert(fmt: str, obj: dict[str, Any], options: ToolOptions) -> tuple[list[dict], int]:
    """The label objects of one task or record (our JSONL shape) and how many values --map skipped."""
    draft = ADAPTERS[fmt](obj, options)
    base = {} if draft.ref is None else {"id": draft.ref}
    if draft.text is not None:
        base["text"] = draft.text
    out, skipped = [], 0
    chosen: list[str] = []
    for value in draft.sentiments:
        target = _map(value, "sentiment", SENTIMENT_LABELS, options.mapping)
        skipped += target is None
        if target is not None and target not in chosen:
            chosen.append(target)
    if len(chosen) > 1:
        raise Reject(f"the sentiment is ambiguous ({', '.join(chosen)}): several choices, or annotators disagree")
    if chosen:
        out.append({**base, "sentiment": chosen[0]})
    sets = []
    for spans in draft.span_sets:
        entities = []
        for start, end, label in spans:
            target = _map(label, "entity label", NER_TYPES, options.mapping)
            skipped += target is None
            if target is not None:
                entities.append({"start": start, "end": end, "label": target})
        canonical = sorted(entities, key=lambda e: json.dumps(e, sort_keys=True))
        if entities and canonical not in sets:
            sets.append(canonical)
    if len(sets) > 1:
        raise Reject("annotators disagree on the entities")
    if sets:  # every span skipped: no NER label, not "this text has no entities"
        out.append({**base, "entities": sets[0]})
    return out, skipped


def _map(value: Any, what: str, known: tuple[str, ...], mapping: dict[str, str]) -> str | None:
    """Our value for a tool's `value`, None to skip it; Reject for one the models do not know."""
    if not isinstance(value, str):
        raise Reject(f"{what} must be a string, got {json.dumps(value)[:40]}")
    target = mapping.get(value) or next((t for k, t in mapping.items() if k.casefold() == value.casefold()), value)
    if target == SKIP:
        return None
    for k in known:  # case does not matter: Label Studio choices are often "Positive"
        if k.casefold() == target.casefold():
            return k
    shown = f"{value!r:.40}" + (f" (mapped to {target!r:.20})" if target != value else "")
    raise Reject(f"{what} {shown} is not one the models know ({', '.join(known)}); map it: --map {value[:40]}=...")


def _path(obj: Any, path: str) -> Any:
    """The value at a dotted path ('data.review_id'); a key that itself holds dots is found too. KeyError if absent."""
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    head, dot, rest = path.partition(".")
    if not dot or not isinstance(obj, dict) or head not in obj:
        raise KeyError(path)
    return _path(obj[head], rest)


def _start(obj: dict[str, Any], options: ToolOptions, text: Any) -> Draft:
    """A draft with the text (--text-field overrides the tool's place) and our id (--id-field)."""
    if options.text_field:
        try:
            text = _path(obj, options.text_field)
        except KeyError:
            raise Reject(f"no {options.text_field!r} (--text-field) here") from None
    ref = None
    if options.id_field:
        try:
            ref = _path(obj, options.id_field)
        except KeyError:
            raise Reject(f"no {options.id_field!r} (--id-field) here") from None
        if isinstance(ref, bool) or not isinstance(ref, (str, int)):
            raise Reject(f"{options.id_field!r} (--id-field) must be a string or an integer, "
                         f"got {json.dumps(ref)[:40]}")
    if text is None and ref is None:
        raise Reject("no text here" + ("" if options.text_field else "; name where it lies with --text-field"))
    return Draft(text, ref)


def label_studio(task: dict[str, Any], options: ToolOptions) -> Draft:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    strings = [v for v in data.values() if isinstance(v, str)]
    draft = _start(task, options, data.get("text", strings[0] if len(strings) == 1 else None))
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise Reject("'annotations' must be a list of objects")
    # Several annotations of one task (a correction, a second annotator): the latest one that was
    # not cancelled (skipped) counts, by updated_at, else created_at, else its place in the list.
    usable = [(_when(a), k, a) for k, a in enumerate(annotations) if not a.get("was_cancelled")]
    if not usable:
        return draft
    results = max(usable, key=lambda u: u[:2])[2].get("result")
    if not isinstance(results, list):
        raise Reject("the annotation's 'result' must be a list")
    spans = []
    for k, r in enumerate(results):
        value = r.get("value") if isinstance(r, dict) else None
        if not isinstance(value, dict):
            raise Reject(f"result {k}: needs a 'value' object")
        if options.controls is not None and r.get("from_name") not in options.controls:
            continue
        if r.get("type") == "choices":
            choices = value.get("choices")
            draft.sentiments.extend(choices if isinstance(choices, list) else [choices])
        elif r.get("type") == "labels":  # other region types (relations, text areas) are not our labels
            labels, start, end = value.get("labels"), value.get("start"), value.get("end")
            if not isinstance(labels, list) or len(labels) != 1:
                raise Reject(f"result {k}: a span needs exactly one label, got {json.dumps(labels)[:40]}")
            seen = draft.text[start:end] if isinstance(draft.text, str) and _ints(start, end) else None
            if "text" in value and seen is not None and seen != value["text"]:
                raise Reject(f"result {k}: characters {start}-{end} of the text are {seen!r:.40}, but the span says "
                             f"{value['text']!r:.40}: its offsets do not fit this text")
            spans.append((start, end, labels[0]))
    if spans:
        draft.span_sets.append(spans)
    return draft


def doccano(example: dict[str, Any], options: ToolOptions) -> Draft:
    text = example.get("text", example.get("data"))
    draft = _start(example, options, text)
    labels = example.get("label", example.get("labels"))
    entities = example.get("entities")
    if labels is None and isinstance(entities, list):  # an entity-and-relation project
        if not all(isinstance(e, dict) for e in entities):
            raise Reject("'entities' must be a list of {start_offset, end_offset, label}")
        labels = [[e.get("start_offset"), e.get("end_offset"), e.get("label")] for e in entities]
    if not isinstance(labels, list):
        raise Reject("needs a 'label' list (doccano JSONL export)")
    if all(isinstance(x, str) for x in labels):
        draft.sentiments.extend(labels)
    elif all(isinstance(x, list) and len(x) == 3 for x in labels):
        if labels:
            draft.span_sets.append([tuple(x) for x in labels])
    else:
        raise Reject("'label' must be a list of categories or of [start, end, label]")
    return draft


def argilla(record: dict[str, Any], options: ToolOptions) -> Draft:
    fields = record.get("fields") if isinstance(record.get("fields"), dict) else {}
    inputs = record.get("inputs") if isinstance(record.get("inputs"), dict) else {}
    draft = _start(record, options, fields.get("text", record.get("text", inputs.get("text"))))
    answers: list[tuple[str, Any]] = []  # (question, value) of every submitted response
    responses = record.get("responses")
    if isinstance(responses, dict):  # v2, nested
        for question, given in responses.items():
            for r in given if isinstance(given, list) else []:
                if isinstance(r, dict) and str(r.get("status", "submitted")).lower() not in _NOT_ANSWERS:
                    answers.append((question, r.get("value")))
    for key, values in record.items():  # v2, to_list(flatten=True)
        if key.endswith(".responses") and isinstance(values, list):
            statuses = record.get(key + ".status")
            statuses = statuses if isinstance(statuses, list) and len(statuses) == len(values) else [None] * len(values)
            answers += [(key[:-len(".responses")], v) for v, s in zip(values, statuses)
                        if str(s).lower() not in _NOT_ANSWERS]
    if record.get("annotation") is not None and str(record.get("status")).lower() != "discarded":  # v1
        answers.append(("annotation", record["annotation"]))
    for question, value in answers:
        if options.controls is not None and question not in options.controls:
            continue
        if isinstance(value, str):
            draft.sentiments.append(value)
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            draft.sentiments.extend(value)  # a multi-label question
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # v2 span question
            draft.span_sets.append([(v.get("start"), v.get("end"), v.get("label")) for v in value])
        elif isinstance(value, list) and value and all(isinstance(v, list) and len(v) >= 3 for v in value):
            draft.span_sets.append([(v[1], v[2], v[0]) for v in value])  # v1 tokens: (label, start, end)
        # Ratings, rankings and empty answers are not labels these models learn from.
    return draft


ADAPTERS = {"label-studio": label_studio, "doccano": doccano, "argilla": argilla}


def _ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _when(annotation: dict[str, Any]) -> datetime:
    for key in ("updated_at", "created_at"):
        try:
            moment = datetime.fromisoformat(str(annotation.get(key)).replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return datetime.min.replace(tzinfo=timezone.utc)
