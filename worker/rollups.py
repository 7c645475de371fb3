"""Dashboard rollups (`sentiment_daily`, `entity_daily`; over all days `product_totals`, `entity_totals`;
over all products `sentiment_day_totals`), so that a dashboard reads a few rows per day instead of
scanning the results tables.

A batch changes the rollups by deltas: what its reviews contributed before under the same model
versions (a redelivered batch, a reprocess) is taken out, and what they contribute now is put in. A
redelivered batch therefore changes nothing, and a review analysed again by a new version counts once
per version. The days are UTC: the review's `created_at`, else the day it was ingested.

The deltas are computed in the transaction that writes the results and stored there as one row of
`rollup_deltas`; `fold` adds them into the rollup tables later, many batches at a time. Deltas add,
so the order of folding does not matter. Folds happen after a worker's batch at most every
REVIEWS_ROLLUP_FOLD_SECONDS, when a job completes, and before the dashboard reads: a finished job
and every dashboard page see exact rollups; a panel that reads the tables directly (Grafana) lags a
running job by at most that interval.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Sequence

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from .db import any_of, upsert
from .nlp.types import Entity, Sentiment
from .schema import (ENTITY_DAILY_SUMS, SENTIMENT_DAILY_SUMS, EntityDaily, EntityRow, EntityTotal, NerResult,
                     ProductTotal, RollupDelta, SentimentDaily, SentimentDayTotal, utcnow)


@dataclass(frozen=True)
class ReviewFacts:
    """What the rollups need of a review besides its results."""

    id: int
    day: date
    product_id: str  # '' when the review has none


def utc_day(created_at: datetime | None, ingested_at: datetime) -> date:
    moment = created_at or ingested_at
    if moment.tzinfo is not None:  # PostgreSQL returns aware times; SQLite stores UTC wall times
        moment = moment.astimezone(timezone.utc)
    return moment.date()


@lru_cache(maxsize=16384)  # names repeat across reviews; a write and its deltas both ask (0.2 ms a batch)
def entity_key(text: str) -> str:
    """What counts as the same entity: case, runs of whitespace and a possessive ('s, ’s) ignored."""
    key = " ".join(text.split()).lower()
    if key.endswith(("'s", "\u2019s")):
        key = key[:-2]
    return key.rstrip("'\u2019 ") or " ".join(text.split()).lower()


@dataclass(frozen=True)
class Before:
    """What a batch's reviews held before its write; results.write reads it in the write's own statements."""

    sentiment: Sequence[tuple]  # (review_id, model_version_id, label, score): every version's result
    ner_pairs: Sequence[tuple]  # (review_id, sentiment_version_id): NER results under the batch's NER version
    entities: Sequence[tuple]  # (review_id, label, entity_key, score): their entities
    # (review_id, ner_version_id, label, entity_key, score): entities of other NER versions paired with the
    # batch's sentiment version, which count with its result; read only where that result changed.
    paired_elsewhere: Sequence[tuple] = ()


def changed_sentiment(before: Sequence[tuple], ids: Sequence[int], sentiments: Sequence[Sentiment],
                      sentiment_version_id: int) -> list[int]:
    """Reviews whose result under this sentiment version is being replaced by a different one (a
    reprocess on a host that computes it at another precision, say). A review without one has no NER
    result paired with it either: both are written in the same transaction."""
    old = {rid: (label, score) for rid, version, label, score in before if version == sentiment_version_id}
    return [i for i, s in zip(ids, sentiments) if i in old and old[i] != (s.label, s.score)]


def read_paired_elsewhere(session: Session, review_ids: list[int], sentiment_version_id: int,
                          ner_version_id: int) -> list[tuple]:
    """Before.paired_elsewhere for `review_ids`."""
    if not review_ids:
        return []
    return [tuple(row) for row in session.execute(
        select(EntityRow.review_id, EntityRow.model_version_id, EntityRow.label, EntityRow.entity_key,
               EntityRow.score)
        .join(NerResult, (NerResult.review_id == EntityRow.review_id)
              & (NerResult.model_version_id == EntityRow.model_version_id))
        .where(any_of(session, EntityRow.review_id, review_ids), EntityRow.model_version_id != ner_version_id,
               NerResult.sentiment_version_id == sentiment_version_id))]


def deltas(reviews: Sequence[ReviewFacts], sentiments: Sequence[Sentiment], entities: Sequence[list[Entity]],
           sentiment_version_id: int, ner_version_id: int, before: Before) -> tuple[dict, dict]:
    """One batch's rollup deltas (sentiment, entities): what `before` counted is taken out, the new
    results are put in."""
    by_id = {r.id: r for r in reviews}
    sent: dict[tuple, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])  # reviews, positive, negative, score_sum
    ents: dict[tuple, list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0, 0.0])

    def add_sentiment(r: ReviewFacts, label: str, score: float, sign: int) -> None:
        row = sent[(r.day, r.product_id, sentiment_version_id)]
        row[0] += sign
        row[1] += sign * (label == "positive")
        row[2] += sign * (label == "negative")
        row[3] += sign * score

    def add_entities(r: ReviewFacts, found: list[tuple[str, str, float]], label: str, score: float,
                     ner_version: int, pair: int, sign: int) -> None:
        seen: set[tuple] = set()
        for kind, key, confidence in found:
            k = (r.day, kind, key, ner_version, pair)
            row = ents[k]
            row[0] += sign  # mentions
            row[5] += sign * confidence
            if k not in seen:  # a review mentioning an entity twice is one review
                seen.add(k)
                row[1] += sign
                row[2] += sign * (label == "positive")
                row[3] += sign * (label == "negative")
                row[4] += sign * score

    old_sentiment = {(rid, version): (label, score) for rid, version, label, score in before.sentiment}
    for rid, version, label, score in before.sentiment:
        if version == sentiment_version_id:
            add_sentiment(by_id[rid], label, score, -1)
    for r, s in zip(reviews, sentiments):
        add_sentiment(r, s.label, s.score, +1)

    old_found: dict[int, list] = defaultdict(list)
    for rid, kind, key, confidence in before.entities:
        old_found[rid].append((kind, key, confidence))
    for rid, pair in before.ner_pairs:
        # An entity counts with the sentiment its NER result was paired with, if that result still exists.
        if (rid, pair) in old_sentiment and old_found.get(rid):
            label, score = old_sentiment[(rid, pair)]
            add_entities(by_id[rid], old_found[rid], label, score, ner_version_id, pair, -1)
    for r, s, es in zip(reviews, sentiments, entities):
        found = [(e.label, entity_key(e.text), e.score) for e in es]
        add_entities(r, found, s.label, s.score, ner_version_id, sentiment_version_id, +1)

    elsewhere: dict[tuple, list] = defaultdict(list)
    for rid, version, kind, key, confidence in before.paired_elsewhere:
        elsewhere[(rid, version)].append((kind, key, confidence))
    new_sentiment = {r.id: s for r, s in zip(reviews, sentiments)}
    for (rid, version), found in elsewhere.items():  # they move from the old result to the new one
        label, score = old_sentiment[(rid, sentiment_version_id)]
        add_entities(by_id[rid], found, label, score, version, sentiment_version_id, -1)
        add_entities(by_id[rid], found, new_sentiment[rid].label, new_sentiment[rid].score, version,
                     sentiment_version_id, +1)
    return sent, ents


SENTIMENT_KEYS = ["day", "product_id", "model_version_id"]
SENTIMENT_SUMS = SENTIMENT_DAILY_SUMS
ENTITY_KEYS = ["day", "label", "entity_key", "model_version_id", "sentiment_version_id"]
ENTITY_SUMS = ENTITY_DAILY_SUMS
FOLD_BATCH = 500  # deltas per fold transaction


# The journal's JSON rows by the rollup_deltas column that holds them: their keys, then their sums.
JOURNAL = {"sentiment": (SENTIMENT_KEYS, SENTIMENT_SUMS), "entities": (ENTITY_KEYS, ENTITY_SUMS)}
# Each target of the fold: (table, journal rows it reads, key columns, sum columns). The totals leave
# the day (or the product) out of the keys; entity_totals and product_totals keep one sum.
TARGETS = [
    (SentimentDaily, "sentiment", SENTIMENT_KEYS, SENTIMENT_SUMS),
    (EntityDaily, "entities", ENTITY_KEYS, ENTITY_SUMS),
    (EntityTotal, "entities", ENTITY_KEYS[1:], ["mentions"]),
    (ProductTotal, "sentiment", SENTIMENT_KEYS[1:], ["reviews"]),
    (SentimentDayTotal, "sentiment", ["day", "model_version_id"], SENTIMENT_SUMS),
]


def record(session: Session, sent: dict[tuple, list], ents: dict[tuple, list]) -> None:
    """Append a batch's deltas as one row: a single insert in the writer's transaction, where upserting
    the rollups there took +81% of a batch's write time and had concurrent writers queue on the
    rollup rows of the same days (bench/RESULTS.md, "Rollups off the write path")."""
    s_rows = [[k[0].isoformat(), *k[1:], *v] for k, v in sent.items() if any(v)]  # in any order: the fold sorts
    e_rows = [[k[0].isoformat(), *k[1:], *v] for k, v in ents.items() if any(v)]
    if s_rows or e_rows:
        # Core, with the values as parameters: the ORM's insert().values() cost 0.15 ms more a batch.
        session.execute(RollupDelta.__table__.insert(), dict(created_at=utcnow(), sentiment=json.dumps(s_rows),
                                                              entities=json.dumps(e_rows)))


def fold(session: Session, limit: int = FOLD_BATCH) -> int:
    """Apply up to `limit` pending deltas, oldest first, to the rollups and delete them; returns how
    many. The caller commits. A delta is claimed by deleting it (DELETE ... RETURNING; on PostgreSQL
    rows another folder holds are skipped), so concurrent folders never apply one twice."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(FOLD_SQL, {"limit": limit}).scalar_one()
    pending = select(RollupDelta.id).order_by(RollupDelta.id).limit(limit)
    claimed = session.execute(delete(RollupDelta).where(RollupDelta.id.in_(pending.scalar_subquery()))
                              .returning(RollupDelta.sentiment, RollupDelta.entities)).all()
    if not claimed:
        return 0
    merged: dict[str, dict[tuple, list]] = {source: defaultdict(lambda n=len(sums): [0] * n)
                                            for source, (_, sums) in JOURNAL.items()}
    for delta in claimed:
        for source, (keys, _) in JOURNAL.items():
            n_keys = len(keys)
            for row in json.loads(getattr(delta, source)):
                key = (date.fromisoformat(row[0]), *row[1:n_keys])
                merged[source][key] = [a + b for a, b in zip(merged[source][key], row[n_keys:])]
    for table, source, keys, sums in TARGETS:
        all_keys, all_sums = JOURNAL[source]
        at_keys, at_sums = [all_keys.index(k) for k in keys], [all_sums.index(v) for v in sums]
        out: dict[tuple, list] = defaultdict(lambda: [0] * len(sums))
        for key, values in merged[source].items():
            row = out[tuple(key[i] for i in at_keys)]
            for n, j in enumerate(at_sums):
                row[n] += values[j]
        _apply(session, table, keys, sums, out)
    return len(claimed)


_CASTS = {"day": "date", "product_id": "text", "label": "text", "entity_key": "text",
          "score_sum": "double precision", "entity_score_sum": "double precision"}  # the rest: integer


def _fold_sql() -> str:
    """PostgreSQL's fold: one statement that claims the deltas, expands their JSON rows, sums them per
    key and upserts every rollup table (data-modifying CTEs). The same work in Python cost 2.5 ms a
    batch folded, more than the upserts themselves (bench/RESULTS.md, "The fold in one statement")."""
    ctes = ["claimed AS (DELETE FROM rollup_deltas WHERE id IN (SELECT id FROM rollup_deltas ORDER BY id "
            "LIMIT :limit FOR UPDATE SKIP LOCKED) RETURNING sentiment, entities)"]
    for column, (keys, sums) in JOURNAL.items():
        values = ", ".join(f"(r->>{i})::{_CASTS.get(f, 'integer')} AS {f}" for i, f in enumerate(keys + sums))
        ctes.append(f"{column}_rows AS (SELECT {values} FROM claimed, "
                    f"jsonb_array_elements(claimed.{column}::jsonb) AS r)")
    for k, (model, source, keys, sums) in enumerate(TARGETS):
        table, key = model.__tablename__, ", ".join(keys)
        # Grouped, so that no row is upserted twice; sorted, so that concurrent folders lock rollup rows
        # in the same order and cannot deadlock each other; all-zero sums change nothing and are left out.
        ctes.append(f"u{k} AS (INSERT INTO {table} ({key}, {', '.join(sums)}) "
                    f"SELECT {key}, {', '.join(f'sum({v})' for v in sums)} FROM {source}_rows GROUP BY {key} "
                    f"HAVING {' OR '.join(f'sum({v}) <> 0' for v in sums)} ORDER BY {key} "
                    f"ON CONFLICT ({key}) DO UPDATE SET "
                    f"{', '.join(f'{v} = {table}.{v} + EXCLUDED.{v}' for v in sums)})")
    return "WITH " + ",\n".join(ctes) + "\nSELECT count(*) FROM claimed"


FOLD_SQL = text(_fold_sql())


def fold_pending(session: Session) -> int:
    """Fold and commit until nothing is pending (what a reader that needs exact rollups calls, and
    whoever closes a job); returns how many deltas were applied."""
    total = 0
    while n := fold(session):
        session.commit()
        total += n
    session.commit()
    return total


class Folder:
    """A worker process folds after a batch at most every `every` seconds: while reviews arrive the
    rollups lag the results by about that much; a job's last batch folds at once (jobs.finish_if_complete)."""

    def __init__(self, every: float):
        self.every, self.last = every, float("-inf")

    def after_batch(self, sessions: sessionmaker[Session]) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            with sessions() as session:
                fold_pending(session)


def _apply(session: Session, table, keys: list[str], values: list[str], deltas: dict[tuple, list]) -> None:
    # Sorted: concurrent folders then lock rollup rows in the same order and cannot deadlock each other.
    rows = [dict(zip(keys, k)) | dict(zip(values, v)) for k, v in sorted(deltas.items()) if any(v)]
    if not rows:
        return
    columns = table.__table__.c
    upsert(session, table, rows, keys, lambda stmt: {v: columns[v] + stmt.excluded[v] for v in values})
