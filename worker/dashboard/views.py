"""One function per page: read the query string, run the page's queries, and return the template's
name and context (figures, table rows, chart series). No HTML here, no SQL."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from sqlalchemy.orm import Session

from . import operations, params, queries
from .highlight import highlight

PAGE_ROWS = 50
TREND_PRODUCTS = 5
DRILL_REVIEWS = 20
LINES = 200  # rejected lines and failed reviews shown per page of a job


class NotFound(LookupError):
    pass


def _sentiment_context(session: Session, query) -> dict[str, Any]:
    versions = operations.model_versions(session)
    sv = params.choose_version(versions["sentiment"], "sentiment", query.get("sentiment"))
    bounds = queries.sentiment_bounds(session, sv.id) if sv else (None, None)
    rng = params.day_range(query, bounds) if sv else None
    return {"versions": versions, "sentiment": sv, "range": rng, "bounds": bounds}


def _days(rows: list[dict], fill: dict) -> list[dict]:
    """Every day from the first to the last row, the missing ones as `fill`: a category axis shows
    a gap as a gap, not as two neighbouring days."""
    if not rows:
        return []
    by_day = {r["day"]: r for r in rows}
    out, day = [], rows[0]["day"]
    while day <= rows[-1]["day"]:
        out.append(by_day.get(day) or dict(fill, day=day))
        day += timedelta(days=1)
    return out


def _markers(versions: dict, days: list[dict]) -> list[dict]:
    """Promotions inside the charted days: a vertical line on the first charted day at or after it."""
    if not days:
        return []
    first, last = days[0]["day"], days[-1]["day"]
    by_day: dict[str, list[str]] = {}
    for task, rows in versions.items():
        for v in sorted(rows, key=lambda v: v.version):
            if v.promoted_at is not None and first <= v.promoted_at.date() <= last:
                by_day.setdefault(v.promoted_at.date().isoformat(), []).append(f"{task} v{v.version}")
    # One line a day: two promotions on one day would otherwise print their labels over each other.
    return [{"at": day, "text": ", ".join(names) + " promoted"} for day, names in sorted(by_day.items())]


def overview(session: Session, query) -> tuple[str, dict]:
    ctx = _sentiment_context(session, query)
    days = queries.sentiment_by_day(session, ctx["sentiment"].id, ctx["range"]) if ctx["range"] else []
    filled = _days(days, {"reviews": 0, "positive": 0, "negative": 0, "score_sum": 0.0, "positive_share": None,
                          "negative_share": None, "mean_score": None})
    ctx.update(days=days, totals=queries.totals(days), jobs=operations.status_counts(session),
               markers=_markers(ctx["versions"], filled))
    ctx["charts"] = [{
        "canvas": "trend", "labels": [d["day"].isoformat() for d in filled], "markers": ctx["markers"],
        "series": [
            {"label": "reviews analysed", "type": "bar", "axis": "count", "data": [d["reviews"] for d in filled]},
            {"label": "positive share", "type": "line", "axis": "share", "data": [d["positive_share"] for d in filled]},
        ],
    }]
    return "overview.html", ctx


def products(session: Session, query) -> tuple[str, dict]:
    ctx = _sentiment_context(session, query)
    page = params.page(query)
    rows = (queries.products(session, ctx["sentiment"].id, ctx["range"], PAGE_ROWS + 1, (page - 1) * PAGE_ROWS)
            if ctx["range"] else [])
    chosen = [p for p in query.getlist("product") if len(p) <= 255][:10] or [r["product_id"] for r in
                                                                             rows[:TREND_PRODUCTS]]
    trend = queries.product_trend(session, ctx["sentiment"].id, ctx["range"], chosen) if ctx["range"] else {}
    all_days = sorted({d["day"] for series in trend.values() for d in series})
    labels = [d.isoformat() for d in _span(all_days)]
    series = []
    for product, points in trend.items():
        by_day = {d["day"].isoformat(): d["positive_share"] for d in points}
        series.append({"label": product or "(no product)", "type": "line", "axis": "share",
                       "data": [by_day.get(day) for day in labels]})
    ctx.update(rows=rows[:PAGE_ROWS], page=page, has_next=len(rows) > PAGE_ROWS, chosen=chosen, trend=trend,
               charts=[{"canvas": "product-trend", "labels": labels, "series": series, "markers": []}])
    return "products.html", ctx


def _span(days: list[date]) -> list[date]:
    if not days:
        return []
    return [days[0] + timedelta(days=n) for n in range((days[-1] - days[0]).days + 1)]


def _entity_versions(session: Session, query) -> dict[str, Any]:
    versions = operations.model_versions(session)
    return {"versions": versions,
            "ner": params.choose_version(versions["ner"], "ner", query.get("ner")),
            "sentiment": params.choose_version(versions["sentiment"], "sentiment", query.get("sentiment"))}


def entities(session: Session, query) -> tuple[str, dict]:
    ctx = _entity_versions(session, query)
    label = params.label(query)
    min_confidence = params.fraction(query, "min_confidence")
    rng, rows = None, []
    if ctx["ner"] and ctx["sentiment"]:
        # The sentiment version's days: an entity row has the day of a review that version analysed.
        # (A first/last day of entity_daily for a version pair has no index to read it from.)
        bounds = queries.sentiment_bounds(session, ctx["sentiment"].id)
        rng = params.day_range(query, bounds, params.ENTITY_DAYS)
        ctx["bounds"] = bounds
        if bounds[1]:
            ctx["spans"] = {n: (max(bounds[0], bounds[1] - timedelta(days=n - 1)), bounds[1]) for n in (7, 30, 90)}
    if rng:
        rows = queries.top_entities(session, ctx["ner"].id, ctx["sentiment"].id, rng, label,
                                    25 if label else 10, min_confidence)
    top = sorted(rows, key=lambda r: (-r["mentions"], r["label"], r["entity_key"]))[:15]
    ctx.update(range=rng, label=label, labels=params.LABELS, min_confidence=min_confidence, rows=rows,
               by_label={lab: [r for r in rows if r["label"] == lab] for lab in params.LABELS},
               charts=[{"canvas": "entity-chart", "horizontal": True, "markers": [],
                        "labels": [f"{r['entity_key']} ({r['label']})" for r in top],
                        "series": [{"label": "mentions", "type": "bar", "axis": "count",
                                    "data": [r["mentions"] for r in top]},
                                   {"label": "mean sentiment", "type": "bar", "axis": "score",
                                    "data": [r["mean_score"] for r in top]}]}])
    return "entities.html", ctx


def entity(session: Session, query) -> tuple[str, dict]:
    ctx = _entity_versions(session, query)
    label = params.label(query)
    key = params.text(query, "key", required=True)
    if label is None:
        raise params.BadRequest("label is required")
    before = query.get("before")
    before_id = int(before) if before and before.isdigit() else None
    rows = queries.entity_reviews(session, ctx["ner"].id, label, key, DRILL_REVIEWS, before_id) if ctx["ner"] else []
    for r in rows:
        r["html"] = highlight(r["text"], [(m["start"], m["end"]) for m in r["mentions"]])
    ctx.update(label=label, key=key, rows=rows,
               next_before=rows[-1]["id"] if len(rows) == DRILL_REVIEWS else None)
    return "entity.html", ctx


def jobs(session: Session, query) -> tuple[str, dict]:
    page = params.page(query)
    rows = operations.jobs_page(session, PAGE_ROWS + 1, (page - 1) * PAGE_ROWS)
    return "jobs.html", {"rows": rows[:PAGE_ROWS], "page": page, "has_next": len(rows) > PAGE_ROWS,
                         "counts": operations.status_counts(session)}


def job(session: Session, query, job_id: int) -> tuple[str, dict]:
    found = operations.job(session, job_id)
    if found is None:
        raise NotFound(f"no job {job_id}")
    page = params.page(query)
    offset = (page - 1) * LINES
    rejected = operations.rejected_lines(session, job_id, LINES + 1, offset)
    failed = operations.failed_reviews(session, job_id, LINES + 1, offset)
    return "job.html", {"job": found, "page": page, "rejected": rejected[:LINES], "failed": failed[:LINES],
                        "has_next": len(rejected) > LINES or len(failed) > LINES}


def models(session: Session, query) -> tuple[str, dict]:
    return "models.html", {"rows": operations.model_rows(session)}
