"""Writing results, and the one rule for reading them back: a review's latest result is the one
analysed last (by `created_at`, which every upsert refreshes; the higher id on a tie). Export here
and the views of migration 0003 both follow it, so that after a rollback and a reprocess everyone
sees the version now active."""

from __future__ import annotations

from typing import Iterator, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from . import rollups
from .db import any_of, insert_new, upsert
from .nlp.types import Entity, Sentiment
from .rollups import ReviewFacts
from .schema import EntityRow, JobReview, ModelVersion, NerResult, Review, SentimentResult, utcnow

PAGE = 1000
COLUMNS = ["id", "product_id", "rating", "language", "sentiment", "probability", "score", "sentiment_model_version",
           "entities", "ner_model_version", "text"]


KEYS = ["review_id", "model_version_id"]


def write(session: Session, reviews: Sequence[ReviewFacts], sentiments: Sequence[Sentiment],
          entities: Sequence[list[Entity]], sentiment_version_id: int, ner_version_id: int,
          with_rollups: bool = True) -> None:
    """Every write is keyed on (review, model version): a redelivered batch changes nothing.

    Most batches hold reviews that have no result under these versions yet, so the results are first
    inserted where new (db.insert_new: one statement per table, ON CONFLICT DO NOTHING). Only the rows
    it refused are results being replaced: those are read (what the rollups take out), updated, and
    their entities deleted before the new ones go in. Reading a whole batch's old results in every
    write cost 1.3 ms of a 25 ms batch (bench/RESULTS.md, "Insert first").

    The batch's rollup deltas are recorded with the results, in the same transaction (rollups.py).
    with_rollups=False writes the results alone (the baseline of bench/write_path.py)."""
    now = utcnow()
    ids = [r.id for r in reviews]
    sentiment_rows = {i: dict(review_id=i, model_version_id=sentiment_version_id, label=s.label,
                              probability=s.probability, score=s.score, created_at=now)
                      for i, s in zip(ids, sentiments)}
    ner_rows = {i: dict(review_id=i, model_version_id=ner_version_id, entity_count=len(es),
                        sentiment_version_id=sentiment_version_id, created_at=now) for i, es in zip(ids, entities)}
    new_sentiment = insert_new(session, SentimentResult, list(sentiment_rows.values()), KEYS)
    new_ner = insert_new(session, NerResult, list(ner_rows.values()), KEYS)
    redo_sentiment = [i for i in sentiment_rows if (i, sentiment_version_id) not in new_sentiment]
    redo_ner = [i for i in ner_rows if (i, ner_version_id) not in new_ner]

    old_sentiment, old_pairs, old_entities = [], [], []
    if with_rollups and (redo_sentiment or redo_ner):
        # What the rollups take out, read before it is replaced. Every sentiment version: an old entity
        # counts with the sentiment result it was paired with. The rows this write has just inserted
        # were not there before.
        just_inserted = set(ids) - set(redo_sentiment)
        old_sentiment = [tuple(row) for row in session.execute(
            select(SentimentResult.review_id, SentimentResult.model_version_id, SentimentResult.label,
                   SentimentResult.score).where(any_of(session, SentimentResult.review_id,
                                                       sorted(set(redo_sentiment) | set(redo_ner)))))
            if not (row.model_version_id == sentiment_version_id and row.review_id in just_inserted)]
        if redo_ner:
            old_pairs = [tuple(row) for row in session.execute(
                select(NerResult.review_id, NerResult.sentiment_version_id).where(
                    any_of(session, NerResult.review_id, redo_ner), NerResult.model_version_id == ner_version_id))]
    upsert(session, SentimentResult, [sentiment_rows[i] for i in redo_sentiment], KEYS,
           lambda stmt: dict(label=stmt.excluded.label, probability=stmt.excluded.probability,
                             score=stmt.excluded.score, created_at=stmt.excluded.created_at))
    upsert(session, NerResult, [ner_rows[i] for i in redo_ner], KEYS,
           lambda stmt: dict(entity_count=stmt.excluded.entity_count,
                             sentiment_version_id=stmt.excluded.sentiment_version_id,
                             created_at=stmt.excluded.created_at))
    # The entities a replaced NER result wrote go before the new ones: delete, then insert. A new NER
    # result has none: entities are written only here, with their NER result.
    if redo_ner:
        stale = delete(EntityRow).where(any_of(session, EntityRow.review_id, redo_ner),
                                        EntityRow.model_version_id == ner_version_id)
        if with_rollups:
            old_entities = session.execute(stale.returning(EntityRow.review_id, EntityRow.label,
                                                           EntityRow.entity_key, EntityRow.score)).all()
        else:
            session.execute(stale)
    entity_rows = [
        dict(review_id=i, model_version_id=ner_version_id, label=e.label, text=e.text,
             entity_key=rollups.entity_key(e.text), start_char=e.start, end_char=e.end, score=e.score)
        for i, es in zip(ids, entities) for e in es
    ]
    if entity_rows:
        insert_entities(session, entity_rows)
    if with_rollups:
        changed = rollups.changed_sentiment(old_sentiment, ids, sentiments, sentiment_version_id)
        elsewhere = rollups.read_paired_elsewhere(session, changed, sentiment_version_id, ner_version_id)
        before = rollups.Before(old_sentiment, old_pairs, old_entities, elsewhere)
        rollups.record(session, *rollups.deltas(reviews, sentiments, entities, sentiment_version_id,
                                                 ner_version_id, before))


ENTITY_COLUMNS = ("review_id", "model_version_id", "label", "text", "entity_key", "start_char", "end_char", "score")


def insert_entities(session: Session, rows: list[dict]) -> None:
    """Plain inserts of entity rows. On PostgreSQL through psycopg: COPY, which streams the rows
    instead of building and parsing multi-row INSERT statements; a batch of 64 reviews can hold
    thousands of entities, and COPY wrote 9,280 of them 2.6x as fast (bench/RESULTS.md)."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql" or bind.dialect.driver != "psycopg":
        session.execute(EntityRow.__table__.insert(), rows)
        return
    # The session's own connection: the rows are part of the batch's transaction.
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(f"COPY entities ({', '.join(ENTITY_COLUMNS)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[c] for c in ENTITY_COLUMNS])


def latest(session: Session, model, ids: list[int]) -> dict[int, tuple]:
    """The latest row of `model` (SentimentResult or NerResult) per review, with its version number."""
    out: dict[int, tuple] = {}
    rows = session.execute(
        select(model, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == model.model_version_id)
        .where(model.review_id.in_(ids))
        .order_by(model.created_at, model.id)
    )
    for row, version in rows:
        out[row.review_id] = (row, version)  # later rows overwrite earlier ones
    return out


def iter_export(session: Session, job_id: int | None = None) -> Iterator[dict]:
    """One dict per analysed review (COLUMNS), in review order, read a page at a time."""
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
        sentiment = latest(session, SentimentResult, ids)
        ner = latest(session, NerResult, ids)
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
                "language": r.language,
                "sentiment": s.label if s else None,
                "probability": round(s.probability, 4) if s else None,
                "score": round(s.score, 4) if s else None,
                "sentiment_model_version": s_version,
                "entities": entities.get(r.id, []) if n else None,
                "ner_model_version": n_version,
                "text": r.text,
            }
