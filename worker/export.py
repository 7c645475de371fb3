"""Results as plain dicts, for people who don't use SQL: the latest sentiment of each review and the
entities of its latest NER analysis."""

from __future__ import annotations

from typing import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from .schema import EntityRow, JobReview, ModelVersion, NerResult, Review, SentimentResult

PAGE = 1000
COLUMNS = ["id", "product_id", "rating", "sentiment", "probability", "score", "sentiment_model_version",
           "entities", "ner_model_version", "text"]


def iter_results(session: Session, job_id: int | None = None) -> Iterator[dict]:
    """One dict per analysed review, in review order, read a page at a time."""
    last_id = 0
    while True:
        q = select(Review).where(Review.id > last_id).order_by(Review.id).limit(PAGE)
        if job_id is not None:
            q = q.join(JobReview, JobReview.review_id == Review.id).where(JobReview.job_id == job_id)
        reviews = session.scalars(q).all()
        if not reviews:
            return
        last_id = reviews[-1].id
        ids = [r.id for r in reviews]
        sentiment = _latest(session, SentimentResult, ids)
        ner = _latest(session, NerResult, ids)
        entities: dict[int, list[dict]] = {}
        ner_pairs = {(n.review_id, n.model_version_id) for n, _ in ner.values()}
        for e in session.scalars(select(EntityRow).where(EntityRow.review_id.in_(ids)).order_by(EntityRow.start_char)):
            if (e.review_id, e.model_version_id) in ner_pairs:
                entities.setdefault(e.review_id, []).append(
                    {"label": e.label, "text": e.text, "start": e.start_char, "end": e.end_char,
                     "score": round(e.score, 4)}
                )
        for r in reviews:
            if r.id not in sentiment and r.id not in ner:
                continue  # not analysed yet
            s, s_version = sentiment.get(r.id, (None, None))
            n, n_version = ner.get(r.id, (None, None))
            yield {
                "id": r.external_id,
                "product_id": r.product_id,
                "rating": r.rating,
                "sentiment": s.label if s else None,
                "probability": round(s.probability, 4) if s else None,
                "score": round(s.score, 4) if s else None,
                "sentiment_model_version": s_version,
                "entities": entities.get(r.id, []) if n else None,
                "ner_model_version": n_version,
                "text": r.text,
            }


def _latest(session: Session, model, ids: list[int]) -> dict[int, tuple]:
    """The most recently written row of `model` per review, with its model version number."""
    out: dict[int, tuple] = {}
    rows = session.execute(
        select(model, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == model.model_version_id)
        .where(model.review_id.in_(ids))
        .order_by(model.id)
    )
    for row, version in rows:
        out[row.review_id] = (row, version)  # later rows overwrite earlier ones
    return out
