"""Dashboard queries at scale: builds a PostgreSQL database of N reviews with results, entities, jobs
and rollups, times every query of `reviews dashboard` (and of the Grafana panels), then the write
path with and without rollup maintenance, and prints the tables.

    python bench/dashboard_scale.py --sizes 1000000,10000000     # a database `dashboard_scale`, dropped at the end

Data: reviews spread over --days days (UTC) ending today, products and entities drawn from Zipf
laws (a few popular, a long tail), 0-4 entity mentions a review, 1% without a date; sentiment v1
analysed the reviews before a promotion two thirds of the way through, v2 the rest; one NER version.
Loaded with COPY (indexes built after the load, foreign keys not checked during it), rollups computed
in SQL from the base tables with the write path's definition, then VACUUM ANALYZE.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker import migrate  # noqa: E402

CHUNK = 100_000
LABELS = [("PER", 30_000), ("ORG", 10_000), ("LOC", 5_000), ("MISC", 10_000)]
NULL = "\\N"  # COPY's NULL
BIG = ["reviews", "sentiment_results", "ner_results", "entities", "job_reviews"]


@contextmanager
def timed(label: str):
    started = time.perf_counter()
    yield
    print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)


def zipf(rng, n: int, size: int, s: float = 1.1) -> np.ndarray:
    """Ranks 0..n-1 with P(k) ~ 1/(k+1)^s."""
    p = 1.0 / np.arange(1, n + 1) ** s
    return rng.choice(n, size=size, p=p / p.sum())


def drop_indexes(conn) -> list[str]:
    """Secondary indexes and unique constraints of the big tables, dropped for the load; returns the DDL
    that puts them back."""
    back = []
    for table in BIG:
        for name, ddl in conn.execute(text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
                "AND contype = 'u'"), {"t": table}):
            back.append(f"ALTER TABLE {table} ADD CONSTRAINT {name} {ddl}")
            conn.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {name}"))
        for name, ddl in conn.execute(text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t AND indexname NOT IN "
                "(SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass))"), {"t": table}):
            back.append(ddl)
            conn.execute(text(f"DROP INDEX {name}"))
    return back


def generate(raw, n: int, days: int, seed: int) -> dict:
    """COPY n reviews and everything about them into the migrated database; returns the facts the
    timings need (versions, days)."""
    rng = np.random.default_rng(seed)
    today = datetime.now(timezone.utc).date()
    first = today - timedelta(days=days - 1)
    promotion = first + timedelta(days=days * 2 // 3)
    epoch = datetime.combine(first, datetime.min.time(), timezone.utc)
    cur = raw.cursor()
    versions = {}
    for task, version, status, promoted in (("sentiment", 1, "retired", first), ("sentiment", 2, "active", promotion),
                                            ("ner", 1, "active", first)):
        cur.execute("INSERT INTO model_versions (task, version, source, status, train_counts, metrics, note, "
                    "created_at, promoted_at) VALUES (%s, %s, 'bench', %s, '{}', %s, 'bench', %s, %s) RETURNING id",
                    (task, version, status, '{"candidate": {"accuracy": 0.91}, "active": {"accuracy": 0.9}, '
                     '"gate_metric": "accuracy"}' if version == 2 else "{}", epoch, datetime.combine(
                         promoted, datetime.min.time(), timezone.utc)))
        versions[(task, version)] = cur.fetchone()[0]
    ner_id = versions[("ner", 1)]
    n_jobs = max(1, n // CHUNK)
    for j in range(n_jobs):  # one job per CHUNK reviews; every tenth partial, with rejected lines
        cur.execute("INSERT INTO jobs (id, kind, source, status, total, rejected, created_at, finished_at) "
                    "VALUES (%s, 'analyze', %s, %s, %s, 10, %s, %s)",
                    (j + 1, f"import-{j + 1}.jsonl", "partial" if j % 10 == 9 else "done", CHUNK,
                     epoch + timedelta(days=j * days / n_jobs), epoch + timedelta(days=j * days / n_jobs, hours=1)))
        with cur.copy("COPY rejected_lines (job_id, source, line_no, reason, raw, created_at) FROM STDIN") as cp:
            for k in range(10):
                cp.write_row((j + 1, f"import-{j + 1}.jsonl", k * 997 + 3, "'text' must be a string", "{}", epoch))
    entity_id = 0
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        ids = np.arange(start + 1, start + size + 1)
        seconds = rng.integers(0, days * 86400, size)
        dated = rng.random(size) > 0.01
        product = zipf(rng, 2000, size)
        scores = np.clip(rng.normal(0.25, 0.6, size), -0.999, 0.999)
        n_ents = rng.choice(5, size=size, p=[0.25, 0.3, 0.25, 0.15, 0.05])
        failed = (ids % 1000 == 7) & ((ids - 1) // CHUNK % 10 == 9)
        kinds = rng.integers(0, 4, n_ents.sum())
        ranks = {lab: iter(zipf(rng, vocab, int((kinds == k).sum()))) for k, (lab, vocab) in enumerate(LABELS)}
        kinds = iter(kinds)
        confidence = iter(rng.uniform(0.4, 1.0, n_ents.sum()))
        rev, sen, ner, ent, jr = (io.StringIO() for _ in range(5))
        for i in range(size):
            rid = int(ids[i])
            when = epoch + timedelta(seconds=int(seconds[i]))
            stamp = when.isoformat()
            parts, spans, at = [f"Review {rid}:"], [], len(f"Review {rid}:")
            for _ in range(n_ents[i]):
                label, vocab = LABELS[next(kinds)]
                surface = f"{label.title()} {int(next(ranks[label]))}"
                spans.append((label, surface, at + 1, at + 1 + len(surface)))
                parts.append(surface + " was fine,")
                at += len(surface) + 11
            body = " ".join(parts) + " the end."
            job = (rid - 1) // CHUNK + 1
            rev.write(f"{rid}\tr{rid}\t{body}\t{hashlib.sha256(body.encode()).hexdigest()}\tp{int(product[i])}\t"
                      f"{1 + rid % 5}\t{stamp if dated[i] else NULL}\t{{}}\t{stamp}\n")
            jr.write(f"{job}\t{rid}\t{'failed' if failed[i] else 'done'}\t\\N\t{stamp}\n")
            if failed[i]:
                continue
            sv = versions[("sentiment", 2 if when.date() >= promotion else 1)]
            sc = float(scores[i])
            sen.write(f"{rid}\t{sv}\t{'positive' if sc > 0 else 'negative'}\t{(1 + abs(sc)) / 2}\t{sc}\t{stamp}\n")
            ner.write(f"{rid}\t{ner_id}\t{len(spans)}\t{sv}\t{stamp}\n")
            for label, surface, s, e in spans:
                entity_id += 1
                ent.write(f"{entity_id}\t{rid}\t{ner_id}\t{label}\t{surface}\t{surface.lower()}\t{s}\t{e}\t"
                          f"{next(confidence):.4f}\n")
        for table, cols, buf in (
                ("reviews", "id, external_id, text, text_sha256, product_id, rating, created_at, metadata, "
                            "ingested_at", rev),
                ("job_reviews", "job_id, review_id, status, error, updated_at", jr),
                ("sentiment_results", "review_id, model_version_id, label, probability, score, created_at", sen),
                ("ner_results", "review_id, model_version_id, entity_count, sentiment_version_id, created_at", ner),
                ("entities", "id, review_id, model_version_id, label, text, entity_key, start_char, end_char, "
                             "score", ent)):
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as cp:
                cp.write(buf.getvalue())
        raw.commit()
        print(f"  {start + size:,} reviews", flush=True)
    return {"versions": versions, "first": first, "today": today, "promotion": promotion}


DAY = "(COALESCE(r.created_at, r.ingested_at) AT TIME ZONE 'UTC')::date"
ROLLUPS = [
    f"""INSERT INTO sentiment_daily (day, product_id, model_version_id, reviews, positive, negative, score_sum)
        SELECT {DAY}, COALESCE(r.product_id, ''), s.model_version_id, COUNT(*),
               SUM((s.label = 'positive')::int), SUM((s.label = 'negative')::int), SUM(s.score)
        FROM sentiment_results s JOIN reviews r ON r.id = s.review_id GROUP BY 1, 2, 3 ORDER BY 1""",
    # Per review first (a review mentioning an entity twice is one review), then per day and entity.
    f"""INSERT INTO entity_daily (day, label, entity_key, model_version_id, sentiment_version_id, mentions, reviews,
                                  positive, negative, score_sum, entity_score_sum)
        SELECT day, label, entity_key, nv, sv, SUM(m), COUNT(*), SUM(pos), SUM(neg), SUM(score), SUM(conf)
        FROM (SELECT {DAY} AS day, e.label, e.entity_key, e.model_version_id AS nv, n.sentiment_version_id AS sv,
                     e.review_id, COUNT(*) AS m, SUM(e.score) AS conf, MAX((s.label = 'positive')::int) AS pos,
                     MAX((s.label = 'negative')::int) AS neg, MAX(s.score) AS score
              FROM entities e
              JOIN ner_results n ON n.review_id = e.review_id AND n.model_version_id = e.model_version_id
              JOIN sentiment_results s ON s.review_id = e.review_id AND s.model_version_id = n.sentiment_version_id
              JOIN reviews r ON r.id = e.review_id
              GROUP BY 1, 2, 3, 4, 5, 6) x
        GROUP BY 1, 2, 3, 4, 5 ORDER BY 1""",
    """INSERT INTO entity_totals (label, entity_key, model_version_id, sentiment_version_id, mentions)
        SELECT label, entity_key, model_version_id, sentiment_version_id, SUM(mentions) FROM entity_daily
        GROUP BY 1, 2, 3, 4""",
    """INSERT INTO product_totals (product_id, model_version_id, reviews)
        SELECT product_id, model_version_id, SUM(reviews) FROM sentiment_daily GROUP BY 1, 2""",
    """INSERT INTO sentiment_day_totals (day, model_version_id, reviews, positive, negative, score_sum)
        SELECT day, model_version_id, SUM(reviews), SUM(positive), SUM(negative), SUM(score_sum)
        FROM sentiment_daily GROUP BY 1, 2""",
]


def build(url: str, n: int, days: int) -> dict:
    migrate.upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        back = drop_indexes(conn)
    raw = engine.raw_connection().driver_connection
    raw.execute("SET session_replication_role = replica")  # no FK triggers row by row: the data is consistent
    with timed(f"COPY {n:,} reviews"):
        facts = generate(raw, n, days, seed=n)
    raw.execute("SET session_replication_role = DEFAULT")
    raw.commit()
    with engine.begin() as conn:
        conn.execute(text("SET maintenance_work_mem = '1GB'"))
        with timed("indexes"):
            for ddl in back:
                conn.execute(text(ddl))
        conn.execute(text("SET work_mem = '512MB'"))
        with timed("rollups"):
            for sql in ROLLUPS:
                conn.execute(text(sql))
        for table in ("jobs", "reviews", "entities", "rejected_lines", "sentiment_results", "ner_results"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                              f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn, timed("VACUUM ANALYZE"):
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return facts


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def measure(fn, runs: int) -> tuple[int, float, float]:
    """(rows, p50 ms, p95 ms) of `fn()` after three warm-up calls."""
    for _ in range(3):
        out = fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - t))
    p50, p95 = quantiles(samples)
    return (len(out) if hasattr(out, "__len__") else 1), p50, p95


def grafana_sql(sql: str, start: date, end: date) -> str:
    import re

    a, b = f"'{start}T00:00:00Z'", f"'{end}T23:59:59Z'"
    return re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} BETWEEN {a} AND {b}", sql)


def report(url: str, n: int, facts: dict, runs: int) -> None:
    import json

    from worker.dashboard import operations as ops
    from worker.dashboard import queries as q
    from worker.dashboard.params import DayRange
    from worker.db import session_factory

    sv, nv = facts["versions"][("sentiment", 2)], facts["versions"][("ner", 1)]
    end = facts["today"]
    d7, d30, d90 = (DayRange(end - timedelta(days=k - 1), end) for k in (7, 30, 90))
    d_all = DayRange(facts["first"], end)
    s = session_factory(url)()
    # Drill-downs: the three most mentioned entities of each label (how a page is opened), whose plans differ.
    top = s.execute(text("SELECT label, entity_key FROM (SELECT label, entity_key, ROW_NUMBER() OVER (PARTITION BY "
                         "label ORDER BY SUM(mentions) DESC) AS k FROM entity_daily WHERE model_version_id = :n "
                         "GROUP BY 1, 2) x WHERE k <= 3 ORDER BY k, label"), {"n": nv}).all()
    label, key = top[0]
    drill = iter(top * (runs + 3))
    first_page = q.entity_reviews(s, nv, label, key, 20)
    top5 = [r["product_id"] for r in q.products(s, sv, d90, 5)]
    job = s.scalar(text("SELECT MAX(id) FROM jobs WHERE status = 'partial'")) or 1  # one with failed reviews
    cases = [
        ("overview: first and last day", lambda: q.sentiment_bounds(s, sv)),
        ("overview: per day, 90 days", lambda: q.sentiment_by_day(s, sv, d90)),
        ("overview: per day, all 730 days", lambda: q.sentiment_by_day(s, sv, d_all)),
        ("overview: jobs by status", lambda: ops.status_counts(s)),
        ("every page: model versions", lambda: ops.model_versions(s)),
        ("products: top 50, 90 days", lambda: q.products(s, sv, d90, 51)),
        ("products: top 50, all days", lambda: q.products(s, sv, d_all, 51)),
        ("products: top 50, all days, every product summed (before)", lambda: q.products_scan(s, sv, d_all, 51)),
        ("products: trend of the top 5, 90 days", lambda: q.product_trend(s, sv, d90, top5)),
        ("entities: top 10 per label, 7 days", lambda: q.top_entities(s, nv, sv, d7, None, 10)),
        ("entities: top 10 per label, 30 days", lambda: q.top_entities(s, nv, sv, d30, None, 10)),
        ("entities: top 10 per label, 90 days", lambda: q.top_entities(s, nv, sv, d90, None, 10)),
        ("entities: top 25 PER, 90 days", lambda: q.top_entities(s, nv, sv, d90, "PER", 25)),
        ("entities: top 10 per label, all days", lambda: q.top_entities(s, nv, sv, d_all, None, 10)),
        ("entities: top 10 per label, 30 days, every entity summed (before)",
         lambda: q.top_entities_scan(s, nv, sv, d30, None, 10)),
        ("entities: top 10 per label, 90 days, every entity summed (before)",
         lambda: q.top_entities_scan(s, nv, sv, d90, None, 10)),
        (f"drill-down: 20 reviews of the top entity ({key})", lambda: q.entity_reviews(s, nv, label, key, 20)),
        ("drill-down: 20 reviews, top 3 entities of each label in turn",
         lambda: q.entity_reviews(s, nv, *next(drill), 20)),
        ("drill-down: its next page", lambda: q.entity_reviews(s, nv, label, key, 20, first_page[-1]["id"])),
        ("jobs: latest 50 with progress", lambda: ops.jobs_page(s, 51)),
        ("job: rejected lines and failed reviews",
         lambda: ops.rejected_lines(s, job, 201) + ops.failed_reviews(s, job, 201)),
        ("models: versions with gate metrics", lambda: ops.model_rows(s)),
    ]
    grafana = json.loads((Path(__file__).resolve().parents[1] / "grafana/dashboards/reviews.json").read_text())
    for panel in grafana["panels"]:  # over the dashboard's 90 days, or the panel's own time override
        span = {"7d": d7}.get(panel.get("timeFrom"), d90)
        sql = grafana_sql(panel["targets"][0]["rawSql"], span.start, span.end)
        cases.append((f"Grafana: {panel['title']}, {span.days} days", lambda sql=sql: s.execute(text(sql)).all()))
    print(f"\n### {n:,} reviews: dashboard queries ({runs} runs each)\n")
    print("| query | rows | p50 ms | p95 ms |\n| --- | ---: | ---: | ---: |")
    for name, fn in cases:
        rows, p50, p95 = measure(fn, runs)
        s.rollback()
        print(f"| {name} | {rows:,} | {p50:.1f} | {p95:.1f} |", flush=True)
    # The drill-down reads entities by (label, entity_key, model_version_id) and must sort the entity's
    # review ids; with review_id as a fourth column the index hands them over in order.
    s.execute(text("CREATE INDEX ix_bench_entities_key_review ON entities (label, entity_key, model_version_id, "
                   "review_id)"))
    s.execute(text("ANALYZE entities"))
    drill = iter(top * (runs + 3))
    for name, fn in cases:
        if name.startswith("drill-down"):
            rows, p50, p95 = measure(fn, runs)
            print(f"| {name}, index with review_id | {rows:,} | {p50:.1f} | {p95:.1f} |", flush=True)
    s.rollback()
    sizes = s.execute(text("SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relname IN "
                           "('reviews', 'entities', 'sentiment_daily', 'entity_daily') ORDER BY 1")).all()
    counts = {t: s.scalar(text(f"SELECT COUNT(*) FROM {t}")) for t in ("entities", "sentiment_daily", "entity_daily")}
    print("\n" + ", ".join(f"{t}: {c:,} rows" for t, c in counts.items()) + "; sizes: "
          + ", ".join(f"{t} {b / 2**30:.2f} GiB" for t, b in sizes))
    s.close()
    pages(url, label, key, job, runs=max(5, runs // 3))
    writes(url, facts)


def pages(url: str, label: str, key: str, job: int, runs: int) -> None:
    """Whole pages through the ASGI app (queries, templates, response), default filters."""
    from urllib.parse import urlencode

    from starlette.testclient import TestClient

    from worker.config import Settings
    from worker.dashboard.app import create_app

    client = TestClient(create_app(Settings(database_url=url)))
    print("\n| page (whole response) | p50 ms | p95 ms |\n| --- | ---: | ---: |")
    for path in ("/", "/products", "/entities", "/entity?" + urlencode({"label": label, "key": key}), "/jobs",
                 f"/jobs/{job}", "/models"):
        assert client.get(path).status_code == 200, path
        _, p50, p95 = measure(lambda: client.get(path), runs)
        print(f"| `{path}` | {p50:.1f} | {p95:.1f} |", flush=True)


def writes(url: str, facts: dict, batches: int = 60, size: int = 64) -> None:
    """worker.results.write, batches of `size` new reviews, with the rollups kept (as shipped) and with
    the results alone (results.write with_rollups=False), interleaved; then every batch written again (a redelivery)."""
    from bench.common import timed_write
    from worker.db import session_factory
    from worker.nlp.types import Entity, Sentiment
    from worker.rollups import ReviewFacts, utc_day

    sessions = session_factory(url)
    rng = np.random.default_rng(7)
    with sessions() as s:
        new = s.execute(text(
            "INSERT INTO reviews (external_id, text, text_sha256, product_id, created_at, metadata, ingested_at) "
            "SELECT 'w' || g, 'Review w' || g || ': Person ' || (g % 500) || ' was fine.', md5(g::text), "
            "'p' || (g % 2000), now() - (g % 700) * interval '1 day', '{}', now() "
            "FROM generate_series(1, :k) g RETURNING id, created_at, ingested_at, product_id"),
            {"k": batches * size}).all()
        s.commit()
    sv, nv = facts["versions"][("sentiment", 2)], facts["versions"][("ner", 1)]
    timings: dict[str, list[float]] = {"with rollups": [], "without rollups": [], "redelivered, with rollups": []}
    plan = [(k, "with rollups" if k % 2 == 0 else "without rollups") for k in range(batches)]
    plan += [(k, "redelivered, with rollups") for k in range(0, batches, 2)]
    for k, mode in plan:
        rows = new[k * size:(k + 1) * size]
        facts_ = [ReviewFacts(r.id, utc_day(r.created_at, r.ingested_at), r.product_id) for r in rows]
        scores = rng.uniform(-1, 1, size)
        sent = [Sentiment("positive" if x > 0 else "negative", (1 + abs(x)) / 2, float(x)) for x in scores]
        ents = [[Entity("PER", f"Person {int(r.id) % 500}", len(f"Review w{r.id}:") + 1,
                        len(f"Review w{r.id}:") + 1 + len(f"Person {int(r.id) % 500}"), 0.9)] for r in rows]
        timings[mode].append(timed_write(sessions, facts_, sent, ents, sv, nv, rollups_on="with rollups" in mode))
    print(f"\n| results.write, batches of {size} | batches | p50 ms | p95 ms | reviews/s |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for mode, samples in timings.items():
        p50, p95 = quantiles(samples)
        print(f"| {mode} | {len(samples)} | {p50:.1f} | {p95:.1f} | {size * len(samples) / sum(samples) * 1000:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--database", default="dashboard_scale")
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--days", type=int, default=730)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the database (default: dropped at the end)")
    args = ap.parse_args()
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    url = make_url(args.admin_url).set(database=args.database).render_as_string(hide_password=False)
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    print(f"host: {cpu}, {os.cpu_count()} cores; {platform.python_version()}", flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)"))
            conn.execute(text(f"CREATE DATABASE {args.database}"))
        try:
            started = time.perf_counter()
            facts = build(url, n, args.days)
            print(f"built {n:,} reviews in {time.perf_counter() - started:.0f} s", flush=True)
            report(url, n, facts, args.runs)
        finally:
            if not args.keep:
                from worker.db import get_engine

                get_engine(url).dispose()
                with admin.connect() as conn:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)"))


if __name__ == "__main__":
    main()
