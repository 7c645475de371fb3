"""The dashboard shows what the database holds: every figure of every page equals SQL over the base
tables (reviews, results, entities, jobs), not over the rollups the pages read, which proves the
rollups right as well. The database is filled through the real pipeline (`reviews run` with tiny
models, a failing review, bad lines, a promotion and a second run), on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import re
from datetime import date, datetime, time, timedelta, timezone
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import main
from conftest import make_settings, poison_ner, settings_env, write_jsonl
from worker.dashboard.highlight import highlight

NAMES = ["John Smith", "Mary", "Paris", "London", "New York", "Warner Bros", "Disney", "America", "Oscar"]


# -- filling a database through the pipeline -------------------------------------------------------------


def review_rows(today: date) -> list[dict]:
    """Reviews over the last four days, some at 00:30 and 23:30 UTC (another day in Los Angeles), some
    without a date (their day is the ingestion's), some without a product, one with HTML in it."""
    rows = []
    for i in range(64):
        day = today - timedelta(days=i % 4)
        moment = datetime.combine(day, time([0, 2, 12, 23][i % 4], 30), timezone.utc)
        row = {"id": f"r{i:02d}", "text": f"{NAMES[i % 9]} and {NAMES[(i * 4) % 9]} : the film was "
                                          f"{['great', 'awful', 'boring', 'good', 'fine'][i % 5]} , the story {i}"}
        if i % 10:
            row["created_at"] = moment.isoformat()
        if i % 7:
            row["product_id"] = f"p{i % 5}" if i % 11 else '<b>"p&5"</b>'
        rows.append(row)
    rows.append({"id": "html", "text": "<script>alert(1)</script> John Smith loved Paris & London", "product_id": "p1",
                 "created_at": moment.isoformat()})
    return rows


BAD_LINES = ['{"id": "bad1", "text": 5}\n', '<img src=x onerror=alert(1)> not json\n']


def run_cli(settings, args, extra_env=None):
    env = settings_env(settings) | {"REVIEWS_RETRY_DELAY": "0.01", "REVIEWS_TASK_MAX_RETRIES": "0"} | (extra_env or {})
    return CliRunner().invoke(main, args, env=env)


def fill(url: str, tiny_models, tmp_path, monkeypatch) -> dict:
    """Job 1: every review, one of which the NER engine fails on, and two bad lines (partial). Then a
    sentiment v2 is promoted and job 2 analyses a third of the reviews again; a rejected v3 carries
    gate metrics."""
    from worker import migrate, registry
    from worker.db import session_factory

    poison_ner(monkeypatch)
    # A random tiny sentiment model calls everything positive; negative words flip the result (its
    # probabilities kept) so that every page has both labels to count.
    from worker.nlp.sentiment import SentimentModel
    from worker.nlp.types import Sentiment

    real_sentiment = SentimentModel.finish  # predict and predict_both both end here

    def judge(self, started):
        out = real_sentiment(self, started)
        return [Sentiment("negative", s.probability, -abs(s.score)) if re.search(r"awful|boring", t) else s
                for t, s in zip(started.texts, out)]

    monkeypatch.setattr(SentimentModel, "finish", judge)
    migrate.upgrade(url)
    settings = make_settings(url, tiny_models, model_dir=str(tmp_path / "versions"))
    rows = review_rows(datetime.now(timezone.utc).date())
    path = tmp_path / "reviews.jsonl"
    write_jsonl(path, rows + [{"id": "poison", "text": "a POISON review", "product_id": "p1"}])
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(BAD_LINES)
    first = run_cli(settings, ["run", str(path)])
    assert first.exit_code == 3, first.output  # partial: the poisoned review failed
    with session_factory(url)() as s:
        registry.register(s, "sentiment", str(tiny_models["sentiment"]), "candidate")
        registry.promote(s, "sentiment", 2, note="test promotion")
        registry.register(s, "sentiment", str(tiny_models["sentiment"]), "rejected", note="worse",
                          metrics={"candidate": {"accuracy": 0.61}, "active": {"accuracy": 0.64},
                                   "gate_metric": "accuracy"})
        s.commit()
    second = run_cli(settings, ["run", str(write_jsonl(tmp_path / "again.jsonl", rows[::3]))])
    assert second.exit_code == 0, second.output
    return {"settings": settings, "rows": rows}


# -- the truth: SQL over the base tables ---------------------------------------------------------------


def day_sql(url: str) -> str:
    """The UTC day of a review, as the rollups define it, in each database's own SQL."""
    if url.startswith("postgresql"):
        return "(COALESCE(r.created_at, r.ingested_at) AT TIME ZONE 'UTC')::date"
    return "date(COALESCE(r.created_at, r.ingested_at))"


def version_id(conn, task: str, version: int) -> int:
    return conn.execute(text("SELECT id FROM model_versions WHERE task = :t AND version = :v"),
                        {"t": task, "v": version}).scalar_one()


def truth_sentiment(conn, url: str, sentiment: int, group: str = "day", start: date | None = None,
                    end: date | None = None) -> dict:
    """{day or product: (reviews, positive, negative, score_sum)} of one sentiment version."""
    day = day_sql(url)
    key = day if group == "day" else "COALESCE(r.product_id, '')"
    between = f" AND {day} BETWEEN :a AND :b" if start else ""
    q = f"""SELECT {key} AS k, COUNT(*), SUM(CASE WHEN s.label = 'positive' THEN 1 ELSE 0 END),
                   SUM(CASE WHEN s.label = 'negative' THEN 1 ELSE 0 END), SUM(s.score)
            FROM sentiment_results s JOIN reviews r ON r.id = s.review_id
            WHERE s.model_version_id = :v{between} GROUP BY {key}"""
    args = {"v": version_id(conn, "sentiment", sentiment), "a": start, "b": end}
    return {str(k): (n, p, neg, sc) for k, n, p, neg, sc in conn.execute(text(q), args)}


def truth_entities(conn, url: str, ner: int, sentiment: int, start: date | None = None, end: date | None = None):
    """{(label, key): (mentions, reviews, positive, negative, score_sum, confidence_sum)}: entities of
    an NER version whose analysis was paired with the sentiment version (ner_results says which)."""
    day = day_sql(url)
    where = "e.model_version_id = :n AND n.sentiment_version_id = :s"
    if start:
        where += f" AND {day} BETWEEN :a AND :b"
    base = f"""FROM entities e JOIN reviews r ON r.id = e.review_id
               JOIN ner_results n ON n.review_id = e.review_id AND n.model_version_id = e.model_version_id
               JOIN sentiment_results sr ON sr.review_id = e.review_id AND sr.model_version_id = n.sentiment_version_id
               WHERE {where}"""
    args = {"n": version_id(conn, "ner", ner), "s": version_id(conn, "sentiment", sentiment), "a": start, "b": end}
    mentions = {(lab, k): (m, rv, c) for lab, k, m, rv, c in conn.execute(text(
        f"SELECT e.label, e.entity_key, COUNT(*), COUNT(DISTINCT e.review_id), SUM(e.score) {base} "
        "GROUP BY e.label, e.entity_key"), args)}
    per_review = {(lab, k): (p, neg, sc) for lab, k, p, neg, sc in conn.execute(text(
        f"""SELECT label, entity_key, SUM(CASE WHEN sl = 'positive' THEN 1 ELSE 0 END),
                   SUM(CASE WHEN sl = 'negative' THEN 1 ELSE 0 END), SUM(ss)
            FROM (SELECT DISTINCT e.review_id, e.label, e.entity_key, sr.label AS sl, sr.score AS ss {base}) x
            GROUP BY label, entity_key"""), args)}
    return {k: (m, rv, *per_review[k], c) for k, (m, rv, c) in mentions.items()}


# -- reading a page ------------------------------------------------------------------------------------


class Page(HTMLParser):
    """The figures of a page: `figures` {data-k: data-v} outside tables, `rows` {table id or label:
    {data-row: {data-k: data-v}}}, <mark> texts per review of the drill-down, and the chart JSON."""

    def __init__(self, html: str):
        super().__init__()
        self.figures: dict[str, str] = {}
        self.rows: dict[str, dict[str, dict[str, str]]] = {}
        self.marks: dict[str, list[str]] = {}
        self.table = self.row = self.review = None
        self.in_mark = False
        self.feed(html)
        found = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html, re.S)
        import json

        self.charts = json.loads(found.group(1)) if found else []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id") or a.get("data-label")
            self.rows.setdefault(self.table, {})
        elif tag == "tr" and "data-row" in a:
            self.row = a["data-row"]
            self.rows[self.table][self.row] = {}
        elif tag == "li" and "data-review" in a:
            self.review = a["data-review"]
            self.marks[self.review] = []
        elif tag == "mark":
            self.in_mark = True
            self.marks[self.review].append("")
        if "data-k" in a:
            target = self.rows[self.table][self.row] if self.row is not None else self.figures
            target[a["data-k"]] = a.get("data-v")

    def handle_endtag(self, tag):
        if tag == "tr":
            self.row = None
        elif tag == "table":
            self.table = None
        elif tag == "mark":
            self.in_mark = False

    def handle_data(self, data):
        if self.in_mark:
            self.marks[self.review][-1] += data


def get(client, path: str) -> Page:
    response = client.get(path)
    assert response.status_code == 200, response.text[-2000:]
    return Page(response.text)


def close(a, b) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def check_sums(shown: dict, expected: tuple) -> None:
    n, pos, neg, score = expected
    assert (int(shown["reviews"]), int(shown["positive"]), int(shown["negative"])) == (n, pos, neg)
    assert close(shown["positive_share"], pos / n) and close(shown["mean_score"], score / n)


# -- the tests ----------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def filled(request, tmp_path, tiny_models, monkeypatch):
    url = f"sqlite:///{tmp_path / 'dash.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    return fill(url, tiny_models, tmp_path, monkeypatch) | {"url": url}


def client_for(settings):
    from starlette.testclient import TestClient

    from worker.dashboard.app import create_app

    return TestClient(create_app(settings))


def top(truth: dict, label: str, n: int) -> dict:
    ranked = sorted(((k, v) for k, v in truth.items() if k[0] == label), key=lambda kv: (-kv[1][0], kv[0][1]))
    return dict(ranked[:n])


def check_entities(page: Page, truth: dict, per_label: int, labels=("PER", "ORG", "LOC", "MISC")) -> int:
    shown = 0
    for label in labels:
        expected = top(truth, label, per_label)
        rows = page.rows.get(label, {})
        assert set(rows) == {f"{lab}:{key}" for lab, key in expected}, label
        for (lab, key), (m, rv, pos, neg, score, conf) in expected.items():
            row = rows[f"{lab}:{key}"]
            assert (int(row["mentions"]), int(row["reviews"])) == (m, rv)
            assert close(row["positive_share"], pos / rv) and close(row["mean_score"], score / rv)
            assert close(row["mean_confidence"], conf / m)
        shown += len(rows)
    return shown


def test_every_page_equals_sql_over_the_base_tables(filled):
    from worker.db import get_engine

    url, client = filled["url"], client_for(filled["settings"])
    today = datetime.now(timezone.utc).date()
    with get_engine(url).connect() as conn:
        # Overview: the active sentiment version (v2, a third of the reviews) by default; v1 on request.
        for query, version in (("/", 2), ("/?sentiment=1", 1), ("/?sentiment=2", 2)):
            page, by_day = get(client, query), truth_sentiment(conn, url, version)
            assert set(page.rows["days"]) == set(by_day)
            for day, expected in by_day.items():
                check_sums(page.rows["days"][day], expected)
            check_sums(page.figures, tuple(sum(v[i] for v in by_day.values()) for i in range(4)))
            chart = page.charts[0]
            counts = dict(zip(chart["labels"], chart["series"][0]["data"]))
            assert {d: n for d, n in counts.items() if n} == {d: v[0] for d, v in by_day.items()}
            assert any("sentiment v2" in m["text"] for m in chart["markers"])
        jobs = dict(conn.execute(text("SELECT status, COUNT(*) FROM jobs GROUP BY status")).all())
        assert {k[5:]: int(v) for k, v in page.figures.items() if k.startswith("jobs_")} == jobs

        # Products, whole range and the last two days.
        for query, version, start in (("/products", 2, None), ("/products?sentiment=1", 1, None),
                                      (f"/products?sentiment=1&from={today - timedelta(days=1)}&to={today}", 1,
                                       today - timedelta(days=1))):
            page = get(client, query)
            expected = truth_sentiment(conn, url, version, "product", start, today if start else None)
            assert set(page.rows["products"]) == set(expected)
            for product, sums in expected.items():
                check_sums(page.rows["products"][product], sums)

        # Entities: the active pair (NER v1 with sentiment v2), then NER v1 with sentiment v1.
        truth = truth_entities(conn, url, 1, 2)
        assert truth, "the tiny NER model found no entities: the test needs some"
        assert check_entities(get(client, "/entities"), truth, 10) > 0
        check_entities(get(client, "/entities?sentiment=1"), truth_entities(conn, url, 1, 1), 10)
        label = max(truth, key=lambda k: truth[k][0])[0]
        check_entities(get(client, f"/entities?label={label}"), truth, 25, labels=(label,))
        start = today - timedelta(days=1)
        check_entities(get(client, f"/entities?from={start}&to={today}"),
                       truth_entities(conn, url, 1, 2, start, today), 10)
        confident = {k: v for k, v in truth.items() if v[5] / v[0] >= 0.5}
        check_entities(get(client, "/entities?min_confidence=0.5"), confident, 10)

        # Drill-down: the reviews that mention the top entity, newest first, each mention marked.
        (lab, key), _ = max(truth.items(), key=lambda kv: (kv[1][0], kv[0]))
        page = get(client, "/entity?" + __import__("urllib.parse").parse.urlencode({"label": lab, "key": key}))
        mentions: dict[str, list[str]] = {}
        for ext, mention in conn.execute(text(
                """SELECT r.external_id, e.text FROM entities e JOIN reviews r ON r.id = e.review_id
                   WHERE e.label = :l AND e.entity_key = :k AND e.model_version_id = :n
                   ORDER BY e.review_id DESC, e.start_char"""), {"l": lab, "k": key, "n": version_id(conn, "ner", 1)}):
            mentions.setdefault(ext, []).append(mention)
        assert page.marks == dict(list(mentions.items())[:20])

        # Jobs: progress by status, rejected lines and failed reviews.
        page = get(client, "/jobs")
        counts = {(j, s): n for j, s, n in conn.execute(text(
            "SELECT job_id, status, COUNT(*) FROM job_reviews GROUP BY job_id, status"))}
        for job_id, status, rejected in conn.execute(text("SELECT id, status, rejected FROM jobs")):
            row = page.rows["jobs"][str(job_id)]
            done, failed, pending = (counts.get((job_id, s), 0) for s in ("done", "failed", "pending"))
            assert (row["status"], int(row["done"]), int(row["failed"]), int(row["pending"]), int(row["rejected"]),
                    int(row["total"])) == (status, done, failed, pending, rejected, done + failed + pending)
        assert page.rows["jobs"]["1"]["status"] == "partial" and page.rows["jobs"]["1"]["failed"] == "1"
        page = get(client, "/jobs/1")
        assert list(page.rows["failed"]) == ["poison"]
        lines = [str(n) for (n,) in conn.execute(text("SELECT line_no FROM rejected_lines WHERE job_id = 1 "
                                                       "ORDER BY line_no"))]
        assert list(page.rows["rejected"]) == lines and len(lines) == 2

        # Models: every version with its status and the gate's figures.
        page = get(client, "/models")
        versions = {f"{t}:{v}": s for t, v, s in conn.execute(text("SELECT task, version, status FROM model_versions"))}
        assert {k: r["status"] for k, r in page.rows["models"].items()} == versions
        assert versions["sentiment:3"] == "rejected"
        assert close(page.rows["models"]["sentiment:3"]["gate_candidate"], 0.61)
        assert close(page.rows["models"]["sentiment:3"]["gate_active"], 0.64)


def test_user_text_is_escaped_everywhere(filled):
    client = client_for(filled["settings"])
    pages = ["/", "/products", "/products?sentiment=1", "/entities", "/jobs", "/jobs/1", "/models",
             "/entity?label=PER&key=%3Cscript%3E", "/products?product=%3Cscript%3Ealert(2)%3C/script%3E"]
    for path in pages:
        html = client.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html and '<b>"p&5"</b>' not in html, path
    products = get(client, "/products?sentiment=1").rows["products"]
    assert '<b>"p&5"</b>' in products  # the product id, escaped in the page, unescaped by the parser
    job = client.get("/jobs/1").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in job


def test_bad_parameters_are_one_clear_message(filled):
    client = client_for(filled["settings"])
    for path, words in (("/?from=yesterday", "from=yesterday"), ("/?sentiment=9", "no sentiment model version 9"),
                        ("/entities?label=FOO", "label=FOO"), ("/?from=2025-02-01&to=2025-01-01", "is after"),
                        ("/jobs?page=0", "page=0"), ("/entity?label=PER", "key is required"),
                        ("/entities?min_confidence=2", "min_confidence=2")):
        response = client.get(path)
        assert response.status_code == 400 and words in response.text, path
    assert client.get("/jobs/999").status_code == 404
    headers = client.get("/").headers
    assert "default-src 'self'" in headers["content-security-policy"]


def test_highlight_escapes_and_cuts_long_reviews():
    html = str(highlight("<b>Tom</b> & Tom's", [(3, 6), (13, 16)]))
    assert html == "&lt;b&gt;<mark>Tom</mark>&lt;/b&gt; &amp; <mark>Tom</mark>&#39;s"
    long = "x" * 5000 + " Paris " + "y" * 5000
    html = str(highlight(long, [(5001, 5006)]))
    assert "<mark>Paris</mark>" in html and html.startswith("… ") and html.endswith(" …") and len(html) < 700
    assert str(highlight("Paris", [(0, 5), (2, 4)])) == "<mark>Paris</mark>"  # overlapping spans merge


@pytest.mark.postgres
def test_days_are_utc_whatever_the_session_time_zone(pg_url, tmp_path, tiny_models, monkeypatch):
    """The pipeline and the dashboard on connections whose time zone is Los Angeles: reviews at 00:30
    and 02:30 UTC still count on their UTC day."""
    from worker.db import get_engine

    url = pg_url + "?options=-c%20TimeZone%3DAmerica/Los_Angeles"
    data = fill(url, tiny_models, tmp_path, monkeypatch)
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SHOW TimeZone")).scalar() == "America/Los_Angeles"
        ingested = conn.execute(text("SELECT MIN(ingested_at) FROM reviews")).scalar().astimezone(timezone.utc)
        page = get(client_for(data["settings"]), "/?sentiment=1")
        expected: dict[str, int] = {}
        for row in data["rows"]:
            moment = datetime.fromisoformat(row["created_at"]) if "created_at" in row else ingested
            day = moment.astimezone(timezone.utc).date().isoformat()
            expected[day] = expected.get(day, 0) + 1
        assert {d: int(r["reviews"]) for d, r in page.rows["days"].items()} == expected
        assert {d: v[0] for d, v in truth_sentiment(conn, url, 1).items()} == expected


@pytest.mark.postgres
def test_sqlite_and_postgres_show_the_same(pg_url, tmp_path, tiny_models, monkeypatch):
    shown = []
    for url in (f"sqlite:///{tmp_path / 'same.db'}", pg_url):
        where = tmp_path / url.split(":")[0]
        where.mkdir()
        client = client_for(fill(url, tiny_models, where, monkeypatch)["settings"])
        shown.append([(p.figures, p.rows) for p in (get(client, q) for q in
                      ("/", "/?sentiment=1", "/products", "/products?sentiment=1", "/entities", "/jobs"))])
    sqlite, postgres = shown
    assert len(sqlite) == len(postgres)
    for (f1, r1), (f2, r2) in zip(sqlite, postgres):
        assert f1.keys() == f2.keys() and r1.keys() == r2.keys()
        for k in f1:
            assert f1[k] == f2[k] or close(f1[k], f2[k])
        for table in r1:
            assert r1[table].keys() == r2[table].keys()
            for row in r1[table]:
                for k, v in r1[table][row].items():
                    assert v == r2[table][row][k] or close(v, r2[table][row][k]), (table, row, k)


def test_dashboard_command_says_what_is_wrong_in_one_line(tmp_path):
    import socket

    from cli.dashboard import dashboard

    group = reviews_group()
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = CliRunner().invoke(group, ["--database-url", empty, "dashboard", "--port", "0"])
    assert result.exit_code == 1 and "no schema yet" in result.output and "Traceback" not in result.output
    from worker import migrate

    migrate.upgrade(empty)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = CliRunner().invoke(group, ["--database-url", empty, "dashboard", "--port", str(port)])
    assert result.exit_code == 1 and "in use" in result.output.lower(), result.output
    assert dashboard.name == "dashboard"


def reviews_group():
    """`reviews` with the dashboard command, whether or not cli/main.py registers it yet."""
    import click

    from cli.dashboard import dashboard

    if "dashboard" in main.commands:
        return main
    return click.Group("reviews", callback=main.callback, params=main.params,
                       commands={**main.commands, "dashboard": dashboard})
