"""The Grafana dashboard (grafana/): its files are what Grafana's provisioning reads, and every panel's
SQL, with the time macros expanded as Grafana's PostgreSQL data source expands them, runs on a
migrated PostgreSQL filled by the pipeline and returns the numbers SQL over the base tables gives,
in a session whose time zone is not UTC."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, time, timedelta, timezone

import pytest
from sqlalchemy import text

from conftest import ROOT
from test_dashboard import fill, truth_entities, truth_sentiment, version_id

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the provisioning files")
GRAFANA = ROOT / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "reviews.json").read_text())


def provisioned_datasource() -> dict:
    (ds,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "postgres.yml").read_text())["datasources"]
    return ds


def queries() -> dict[str, str]:
    """Panel title (or 'annotation: name') -> rawSql."""
    out = {p["title"]: t["rawSql"] for p in DASHBOARD["panels"] for t in p["targets"]}
    out |= {f"annotation: {a['name']}": a["target"]["rawSql"] for a in DASHBOARD["annotations"]["list"]}
    return out


def expand(sql: str, start: datetime, end: datetime) -> str:
    """Grafana's PostgreSQL macros, as the data source writes them: times in UTC, RFC 3339, quoted."""
    a, b = (f"'{t.astimezone(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}'" for t in (start, end))
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} BETWEEN {a} AND {b}", sql)
    sql = sql.replace("$__timeFrom()", a).replace("$__timeTo()", b)
    assert "$" not in sql, f"a macro or variable the test does not expand: {sql}"
    return sql


def test_the_files_are_what_grafana_provisioning_reads():
    ds = provisioned_datasource()
    assert ds["type"] == "grafana-postgresql-datasource" and ds["uid"] == "reviews-postgres"
    assert {"url", "user"} <= set(ds) and "password" in ds["secureJsonData"] and "database" in ds["jsonData"]
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "provider.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARD["uid"] and DASHBOARD["timezone"] == "utc"
    titles = [p["title"] for p in DASHBOARD["panels"]]
    assert len(titles) == len(set(titles)) == 4
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"] and panel["targets"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == ds["uid"] and t["rawQuery"] and t["editorMode"] == "code"
            # Panels read the rollups (and the small jobs and model_versions tables), never the results.
            assert not re.search(r"\b(sentiment_results|ner_results|entities|reviews r)\b", t["rawSql"])
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def rows(conn, sql: str, start: datetime, end: datetime) -> tuple[list[str], list[tuple]]:
    result = conn.execute(text(expand(sql, start, end)))
    return list(result.keys()), [tuple(r) for r in result]


def close(a, b) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.postgres
def test_every_panel_returns_the_base_table_numbers(pg_url, tmp_path, tiny_models, monkeypatch):
    url = pg_url + "?options=-c%20TimeZone%3DAmerica/Los_Angeles"
    fill(url, tiny_models, tmp_path, monkeypatch)
    today = datetime.now(timezone.utc).date()
    # A range that starts and ends mid-day: Grafana's times cast to dates keep whole UTC days.
    start = datetime.combine(today - timedelta(days=2), time(5), timezone.utc)
    end = datetime.combine(today, time(23), timezone.utc)
    days = {(today - timedelta(days=n)).isoformat() for n in range(3)}
    from worker.db import get_engine

    with get_engine(url).connect() as conn:
        assert conn.execute(text("SHOW TimeZone")).scalar() == "America/Los_Angeles"
        sql = queries()

        columns, got = rows(conn, sql["Positive share per day, by sentiment version"], start, end)
        assert columns == ["time", "metric", "value"]
        expected = {}
        for version in (1, 2):
            for day, (n, pos, _, _) in truth_sentiment(conn, url, version).items():
                if day in days:
                    expected[(day, f"sentiment v{version}")] = pos / n
        assert {(t.astimezone(timezone.utc).date().isoformat(), m) for t, m, _ in got} == set(expected)
        for t, metric, value in got:
            assert t.astimezone(timezone.utc).time() == time(0)  # the UTC day's midnight, whatever the session zone
            assert close(value, expected[(t.astimezone(timezone.utc).date().isoformat(), metric)])

        columns, got = rows(conn, sql["Reviews analysed per day (active sentiment version)"], start, end)
        assert columns == ["time", "positive", "negative", "reviews"]
        active = {d: v for d, v in truth_sentiment(conn, url, 2).items() if d in days}
        assert {t.astimezone(timezone.utc).date().isoformat(): (r, p, n) for t, p, n, r in got} == \
            {d: (v[0], v[1], v[2]) for d, v in active.items()}

        columns, got = rows(conn, sql["Top entities, last 7 days (active NER and sentiment versions)"], start, end)
        assert columns == ["label", "entity", "mentions", "reviews", "positive_share", "mean_sentiment",
                           "mean_confidence"]
        truth = truth_entities(conn, url, 1, 2, today - timedelta(days=2), today)
        ranked = sorted(truth.items(), key=lambda kv: (-kv[1][0], kv[0][0], kv[0][1]))[:25]
        assert [(lab, key) for lab, key, *_ in got] == [k for k, _ in ranked] and got
        for (lab, key, m, rv, share, mean, conf), (_, (tm, trv, tpos, _, tscore, tconf)) in zip(got, ranked):
            assert (m, rv) == (tm, trv)
            assert close(share, tpos / trv) and close(mean, tscore / trv) and close(conf, tconf / tm)

        columns, got = rows(conn, sql["Jobs (latest 50)"], start, end)
        assert columns[:7] == ["job", "kind", "status", "done", "failed", "pending", "total"]
        counts = {(j, s): n for j, s, n in conn.execute(text(
            "SELECT job_id, status, COUNT(*) FROM job_reviews GROUP BY job_id, status"))}
        jobs = {j: (st, rj) for j, st, rj in conn.execute(text("SELECT id, status, rejected FROM jobs"))}
        assert [r[0] for r in got] == sorted(jobs, reverse=True)
        for job, _, status, done, failed, pending, total, rejected, *_ in got:
            expected = tuple(counts.get((job, s), 0) for s in ("done", "failed", "pending"))
            assert (status, (done, failed, pending), total, rejected) == (jobs[job][0], expected, sum(expected),
                                                                          jobs[job][1])
        assert got[-1][2] == "partial" and got[-1][4] == 1

        columns, got = rows(conn, sql["annotation: Promotions"], start - timedelta(days=1), end + timedelta(days=1))
        assert columns == ["time", "text", "tags"]
        assert ("sentiment v2 promoted", "sentiment") in {(t, tag) for _, t, tag in got}
        assert version_id(conn, "sentiment", 2)
