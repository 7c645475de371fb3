"""Reviews as Label Studio tasks with the models' latest results as predictions, so that reviewers
correct labels rather than start from nothing (https://labelstud.io/guide/predictions.html).

Each task is {"data": {"text", "review_id"}, "predictions": [{"model_version", "score", "result"}]}: a
"choices" result for the sentiment and a "labels" result per entity, with character offsets into the
text. `data.review_id` is our id: `reviews label FILE --id-field data.review_id` brings the labels back
to the same reviews, whatever ids Label Studio gives its tasks. LABEL_CONFIG is the labeling interface
these results are made for (the from_name/to_name they name).
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable, Iterator
from typing import IO

from sqlalchemy.orm import Session

from .nlp.types import NER_TYPES, SENTIMENT_LABELS
from .results import iter_export

LABEL_CONFIG = "\n".join([
    "<View>",
    '  <Labels name="label" toName="text">',
    *(f'    <Label value="{t}"/>' for t in NER_TYPES),
    "  </Labels>",
    '  <Text name="text" value="$text"/>',
    '  <Choices name="sentiment" toName="text" choice="single">',
    *(f'    <Choice value="{s}"/>' for s in SENTIMENT_LABELS),
    "  </Choices>",
    "</View>",
])


def label_studio_tasks(session: Session, job_id: int | None = None, uncertain: int | None = None) -> Iterator[dict]:
    """One task per analysed review, in review order; with `uncertain`, only the N reviews whose latest
    sentiment is least sure (probability closest to 0.5), least sure first."""
    rows: Iterable[dict] = iter_export(session, job_id)
    if uncertain is not None:
        # The probability is that of the label given, in [0.5, 1]: the smallest is the least sure.
        # nsmallest keeps N rows whatever the number of reviews, and is stable: ties stay in review order.
        rows = heapq.nsmallest(uncertain, (r for r in rows if r["probability"] is not None),
                               key=lambda r: r["probability"])
    ids = itertools.count(1)  # result ids unique in the file, as Label Studio asks of predictions
    for row in rows:
        yield _task(row, ids)


def _task(row: dict, ids: Iterator[int]) -> dict:
    result = []
    if row["sentiment"] is not None:
        result.append({"id": f"r{next(ids)}", "from_name": "sentiment", "to_name": "text", "type": "choices",
                       "value": {"choices": [row["sentiment"]]}})
    for e in row["entities"] or []:
        result.append({"id": f"r{next(ids)}", "from_name": "label", "to_name": "text", "type": "labels",
                       "value": {"start": e["start"], "end": e["end"], "text": e["text"], "labels": [e["label"]],
                                 "score": e["score"]}})
    versions = [f"{task} v{row[key]}" for task, key in (("sentiment", "sentiment_model_version"),
                                                       ("ner", "ner_model_version")) if row[key] is not None]
    prediction = {"model_version": " / ".join(versions), "result": result}
    if row["probability"] is not None:
        prediction["score"] = row["probability"]  # Label Studio sorts and filters tasks by it
    return {"data": {"text": row["text"], "review_id": row["id"]}, "predictions": [prediction]}


def write_json_array(out: IO[str], items: Iterable[dict]) -> int:
    """`items` as one JSON array, an element a line, written as they come; returns how many."""
    n = 0
    out.write("[")
    for item in items:
        out.write(("," if n else "") + "\n" + json.dumps(item, ensure_ascii=False, allow_nan=False))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n
