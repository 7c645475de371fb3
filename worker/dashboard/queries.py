"""SQL of the sentiment and entity pages, in SQLAlchemy Core, the same on PostgreSQL and SQLite (but
for the top entities of a short range, which PostgreSQL takes per label with LATERAL).

Aggregates read only the rollups (`sentiment_daily`, `entity_daily`, kept current by the write path),
filtered by model version first and then by day, which is what their (model_version_id, day) indexes
serve. The drill-down is the one query on a results table, and it reads `entities` through its
(label, entity_key, model_version_id) index. Ratios are computed in Python: integer division differs
between the two databases.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import and_, func, select, true
from sqlalchemy.orm import Session

from ..db import any_of
from ..nlp.types import NER_TYPES
from ..schema import (ENTITY_DAILY_SUMS, SENTIMENT_DAILY_SUMS, EntityDaily, EntityRow, EntityTotal, NerResult,
                      ProductTotal, Review, SentimentDaily, SentimentDayTotal, SentimentResult)
from .params import DayRange

SENTIMENT_SUMS = tuple(SENTIMENT_DAILY_SUMS)
ENTITY_SUMS = tuple(ENTITY_DAILY_SUMS)


def _sums(table, names):
    return [func.sum(getattr(table, n)).label(n) for n in names]


def _in_range(table, rng: DayRange):
    return and_(table.day >= rng.start, table.day <= rng.end)


def with_ratios(row: dict) -> dict:
    """Positive share, negative share and mean score of a row of sums (None where nothing counted)."""
    n = row["reviews"] or 0
    row["positive_share"] = row["positive"] / n if n else None
    row["negative_share"] = row["negative"] / n if n else None
    row["mean_score"] = row["score_sum"] / n if n else None
    if "mentions" in row:
        m = row["mentions"] or 0
        row["mean_confidence"] = row["entity_score_sum"] / m if m else None
    return row


def sentiment_bounds(session: Session, version_id: int) -> tuple[date | None, date | None]:
    """First and last day with results of a sentiment version: two index lookups."""
    q = select(func.min(SentimentDayTotal.day), func.max(SentimentDayTotal.day)).where(
        SentimentDayTotal.model_version_id == version_id, SentimentDayTotal.reviews > 0)
    lo, hi = session.execute(q).one()
    return lo, hi


def sentiment_by_day(session: Session, version_id: int, rng: DayRange) -> list[dict]:
    """Reviews, positive, negative and score sum per day of one sentiment version, all products: one
    row a day of sentiment_day_totals (summing sentiment_daily's products took 237 ms p95 for 730
    days at 10M reviews)."""
    q = (select(SentimentDayTotal.day, *[getattr(SentimentDayTotal, n) for n in SENTIMENT_SUMS])
         .where(SentimentDayTotal.model_version_id == version_id, _in_range(SentimentDayTotal, rng))
         .order_by(SentimentDayTotal.day))
    return [with_ratios(dict(r._mapping)) for r in session.execute(q) if r.reviews]


def totals(days: list[dict]) -> dict:
    """The sums over a series of days (what the overview's figures show)."""
    out = {n: sum(d[n] for d in days) for n in SENTIMENT_SUMS}
    return with_ratios(out)


def products(session: Session, version_id: int, rng: DayRange, limit: int, offset: int = 0) -> list[dict]:
    """Products by number of reviews in the range (reviews without a product are product ''); exact,
    through product_totals where that spares summing every product (see bounded_top)."""
    totals = [ProductTotal.model_version_id == version_id]
    rows = bounded_top(
        offset + limit, "reviews",
        lambda n: session.scalars(select(ProductTotal.product_id).where(*totals)
                                  .order_by(ProductTotal.reviews.desc()).limit(n)).all(),
        lambda t, n: session.scalars(select(ProductTotal.product_id).where(*totals, ProductTotal.reviews >= t)
                                     .limit(n)).all(),
        lambda keys: products_scan(session, version_id, rng, None, 0, keys))
    return rows[offset:] if rows is not None else products_scan(session, version_id, rng, limit, offset)


def products_scan(session: Session, version_id: int, rng: DayRange, limit: int | None, offset: int = 0,
                  only: list[str] | None = None) -> list[dict]:
    """products by summing every product of the range (or those in `only`)."""
    reviews = func.sum(SentimentDaily.reviews)
    q = (select(SentimentDaily.product_id, *_sums(SentimentDaily, SENTIMENT_SUMS))
         .where(SentimentDaily.model_version_id == version_id, _in_range(SentimentDaily, rng))
         .group_by(SentimentDaily.product_id)
         .having(reviews > 0)
         .order_by(reviews.desc(), SentimentDaily.product_id)
         .limit(limit).offset(offset))
    if only is not None:
        q = q.where(any_of(session, SentimentDaily.product_id, only))
    return [with_ratios(dict(r._mapping)) for r in session.execute(q)]


def product_trend(session: Session, version_id: int, rng: DayRange, product_ids: list[str]) -> dict[str, list[dict]]:
    """Per product asked for: its days in the range, with sums and ratios."""
    if not product_ids:
        return {}
    q = (select(SentimentDaily.product_id, SentimentDaily.day, *_sums(SentimentDaily, SENTIMENT_SUMS))
         .where(SentimentDaily.model_version_id == version_id, _in_range(SentimentDaily, rng),
                SentimentDaily.product_id.in_(product_ids))
         .group_by(SentimentDaily.product_id, SentimentDaily.day)
         .order_by(SentimentDaily.product_id, SentimentDaily.day))
    out: dict[str, list[dict]] = {p: [] for p in product_ids}
    for r in session.execute(q):
        if r.reviews:
            row = dict(r._mapping)
            out[row.pop("product_id")].append(with_ratios(row))
    return out


# Keys summed over the range by bounded_top. Measured on bench/dashboard_scale.py's 1M reviews: 65-75
# entities of a label in 30 days (about 12 ms a label, against 50-80 ms for all labels by the full
# sum), but 250-290 in 7 days, where the full sum (17-28 ms) was quicker.
MAX_CANDIDATES = 200


def bounded_top(n: int, measure: str, seeds, at_least, range_sums) -> list[dict] | None:
    """The n rows with the most `measure` in a date range, exactly, without summing every key of a
    long range; None where that would not pay (the caller sums them all).

    A key's total over all days (`seeds(n)`: the n keys with the largest; `at_least(t, limit)`: keys
    with a total of at least t) bounds its sum in any range. The n-th best range sum of the seeds is a
    threshold T; a key whose total is under T cannot reach T in the range, so only keys with at least
    T are summed (`range_sums(keys)`: their rows, ranked as the answer is). Where those are many (a
    short range, where T is low) the caller's full sum is as quick."""
    keys = seeds(n)
    if not keys:
        return []
    ranked = range_sums(keys)
    threshold = ranked[n - 1][measure] if len(ranked) >= n else 1
    candidates = at_least(threshold, MAX_CANDIDATES + 1)
    if len(candidates) > MAX_CANDIDATES:
        return None
    if set(candidates) <= set(keys):  # already summed and ranked (a range of all days, say)
        return ranked[:n]
    return range_sums(candidates)[:n]


def top_entities(session: Session, ner_id: int, sentiment_id: int, rng: DayRange, label: str | None,
                 per_label: int, min_confidence: float = 0.0) -> list[dict]:
    """The entities with the most mentions in the range, `per_label` of each label (or of `label`),
    with the sentiment of the reviews that mention them. `min_confidence` is a display filter on
    the mean NER confidence of an entity's mentions (the write path already dropped mentions under
    REVIEWS_MIN_ENTITY_SCORE). Exact; through entity_totals (bounded_top) where that pays."""
    out: list[dict] = []
    for one in [label] if label else sorted(NER_TYPES):  # the order top_entities_scan gives
        totals = [EntityTotal.model_version_id == ner_id, EntityTotal.sentiment_version_id == sentiment_id,
                  EntityTotal.label == one]
        rows = bounded_top(
            per_label, "mentions",
            lambda n: session.scalars(select(EntityTotal.entity_key).where(*totals)
                                      .order_by(EntityTotal.mentions.desc()).limit(n)).all(),
            lambda t, n: session.scalars(select(EntityTotal.entity_key).where(*totals, EntityTotal.mentions >= t)
                                         .limit(n)).all(),
            lambda keys: _range_sums(session, ner_id, sentiment_id, rng, one, keys, min_confidence))
        if rows is None:  # a short range: one full sum for every label is quicker than one per label
            return top_entities_scan(session, ner_id, sentiment_id, rng, label, per_label, min_confidence)
        out += rows
    return out


def _range_sums(session: Session, ner_id: int, sentiment_id: int, rng: DayRange, label: str, keys: list[str],
                min_confidence: float) -> list[dict]:
    """The range's sums of these entities of one label, ranked by mentions (then key), as top_entities gives them."""
    q = (entity_sums(ner_id, sentiment_id, rng, label, min_confidence)
         .where(any_of(session, EntityDaily.entity_key, keys))
         .order_by(func.sum(EntityDaily.mentions).desc(), EntityDaily.entity_key))
    return [with_ratios(dict(r._mapping) | {"rank": k}) for k, r in enumerate(session.execute(q), 1)]


def top_entities_scan(session: Session, ner_id: int, sentiment_id: int, rng: DayRange, label: str | None,
                      per_label: int, min_confidence: float = 0.0) -> list[dict]:
    """top_entities by summing every entity of the range: the short ranges' way, and the reference
    that tests hold the bounded way to."""
    summed = entity_sums(ner_id, sentiment_id, rng, label, min_confidence)
    if session.get_bind().dialect.name == "postgresql":
        return _top_per_label(session, summed.cte("summed"), per_label)
    return _top_by_window(session, summed, per_label)


def entity_sums(ner_id: int, sentiment_id: int, rng: DayRange, label: str | None, min_confidence: float):
    """Every entity's sums over the range (of one label, or of all), as a SELECT."""
    mentions = func.sum(EntityDaily.mentions)
    where = [EntityDaily.model_version_id == ner_id, EntityDaily.sentiment_version_id == sentiment_id,
             _in_range(EntityDaily, rng)]
    if label:
        where.append(EntityDaily.label == label)
    summed = (select(EntityDaily.label, EntityDaily.entity_key, *_sums(EntityDaily, ENTITY_SUMS))
              .where(*where).group_by(EntityDaily.label, EntityDaily.entity_key).having(mentions > 0))
    if min_confidence > 0:
        summed = summed.having(func.sum(EntityDaily.entity_score_sum) >= min_confidence * mentions)
    return summed


def _top_by_window(session: Session, summed, per_label: int) -> list[dict]:
    """The `per_label` entities with the most mentions of each label, ranked by a window."""
    rank = func.row_number().over(partition_by=EntityDaily.label,
                                  order_by=(func.sum(EntityDaily.mentions).desc(), EntityDaily.entity_key))
    sub = summed.add_columns(rank.label("rank")).subquery()
    q = select(sub).where(sub.c.rank <= per_label).order_by(sub.c.label, sub.c.rank)
    return [with_ratios(dict(r._mapping)) for r in session.execute(q)]


def _top_per_label(session: Session, summed, per_label: int) -> list[dict]:
    """_top_by_window on PostgreSQL: each label's `per_label` entities taken with LIMIT (a heap of
    per_label rows), where the window sorted every entity of the range: 13.1 against 8.1 ms for 7 days
    at 1M reviews (bench/RESULTS.md, "Top entities of a short range"). SQLite has no LATERAL."""
    labels = select(summed.c.label).distinct().subquery("labels")
    top = (select(summed).where(summed.c.label == labels.c.label)
           .order_by(summed.c.mentions.desc(), summed.c.entity_key).limit(per_label).lateral("top"))
    q = (select(top).select_from(labels).join(top, true())
         .order_by(top.c.label, top.c.mentions.desc(), top.c.entity_key))
    out, rank, last = [], 0, None
    for r in session.execute(q):
        rank = rank + 1 if r.label == last else 1
        last = r.label
        out.append(with_ratios(dict(r._mapping) | {"rank": rank}))
    return out


def entity_reviews(session: Session, ner_id: int, label: str, key: str, limit: int,
                   before: int | None = None) -> list[dict]:
    """The latest reviews (by id, newest first) in which NER version `ner_id` found the entity, each
    with every mention of it (start, end, text, confidence). `before`: a review id, for the next page."""
    match = [EntityRow.label == label, EntityRow.entity_key == key, EntityRow.model_version_id == ner_id]
    ids_q = select(EntityRow.review_id).where(*match)
    if before is not None:
        ids_q = ids_q.where(EntityRow.review_id < before)
    ids = list(session.scalars(ids_q.distinct().order_by(EntityRow.review_id.desc()).limit(limit)))
    if not ids:
        return []
    spans: dict[int, list[dict]] = {i: [] for i in ids}
    for e in session.execute(select(EntityRow.review_id, EntityRow.start_char, EntityRow.end_char, EntityRow.text,
                                    EntityRow.score).where(*match, EntityRow.review_id.in_(ids))
                             .order_by(EntityRow.review_id, EntityRow.start_char)):
        spans[e.review_id].append({"start": e.start_char, "end": e.end_char, "text": e.text, "score": e.score})
    rows = session.execute(select(Review.id, Review.external_id, Review.product_id, Review.created_at,
                                  Review.ingested_at, Review.text).where(Review.id.in_(ids)))
    by_id = {r.id: dict(r._mapping) for r in rows}
    # The sentiment of the same analysis (the version the NER result was paired with), as the rollups count it.
    paired = (select(SentimentResult.review_id, SentimentResult.label, SentimentResult.score)
              .join(NerResult, (NerResult.review_id == SentimentResult.review_id)
                    & (NerResult.sentiment_version_id == SentimentResult.model_version_id))
              .where(NerResult.model_version_id == ner_id, NerResult.review_id.in_(ids)))
    sentiment = {r.review_id: (r.label, r.score) for r in session.execute(paired)}
    return [by_id[i] | {"mentions": spans[i], "sentiment": sentiment.get(i, (None, None))[0],
                        "score": sentiment.get(i, (None, None))[1]} for i in ids if i in by_id]
