"""The dashboard in a real browser: `reviews dashboard` as a subprocess on a free port, over a database
filled by `reviews run` (the bundled models, so the entities are real ones), driven by Debian's
Chromium through Playwright. Each page must show the numbers SQL gives, draw its charts, log no
console error, and fetch nothing from anywhere but 127.0.0.1 (the assets ship in the package)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode, urlparse

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import main
from conftest import ROOT, write_jsonl
from worker.config import BUNDLED_NER, BUNDLED_SENTIMENT, Settings

CHROMIUM = os.environ.get("REVIEWS_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Until cli/main.py registers the command, the same group with it added.
LAUNCH = ("import sys; from cli.main import main; from cli.dashboard import dashboard; "
          "main.commands.setdefault('dashboard', dashboard); sys.exit(main())")


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; never `playwright install`)"
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium, or set REVIEWS_TEST_CHROMIUM)"
    return None


pytestmark = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


def browser_reviews(today) -> list[dict]:
    orgs, places = ["Sony", "Apple", "IKEA", "Samsung"], ["Tokyo", "Paris", "London", "Berlin", "Seattle"]
    people = ["Tom Hanks", "Meryl Streep", "Christopher Nolan"]
    moods = ["wonderful", "terrible", "excellent", "disappointing", "great", "awful"]
    rows = []
    for i in range(36):
        moment = datetime.combine(today - timedelta(days=i % 6), time(9 + i % 12, 15), timezone.utc)
        rows.append({"id": f"b{i:02d}", "product_id": f"{orgs[i % 4].lower()}-speaker",
                     "created_at": moment.isoformat(),
                     "text": f"I bought this {orgs[i % 4]} speaker in {places[i % 5]} after {people[i % 3]} "
                             f"praised it. Honestly it was {moods[i % 6]}."})
    rows.append({"id": "xss", "product_id": "sony-speaker", "created_at": moment.isoformat(),
                 "text": "<script>alert('x')</script> <img src=x onerror=alert(2)> Sony in Tokyo was great."})
    return rows


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request, tmp_path, tiny_models):
    url = (f"sqlite:///{tmp_path / 'browser.db'}" if request.param == "sqlite"
           else request.getfixturevalue("migrated_pg"))
    bundled = (BUNDLED_SENTIMENT / "model.safetensors").exists() and (BUNDLED_NER / "model.safetensors").exists()
    models = {} if bundled else {"REVIEWS_SENTIMENT_MODEL": str(tiny_models["sentiment"]),
                                 "REVIEWS_NER_MODEL": str(tiny_models["ner"]), "REVIEWS_MAX_LENGTH": "64",
                                 "REVIEWS_WINDOW_STRIDE": "16"}
    env = {"REVIEWS_DATABASE_URL": url, "REVIEWS_HOME": str(tmp_path / "home"), "REVIEWS_PRECISION": "fp32"} | models
    rows = browser_reviews(datetime.now(timezone.utc).date())
    path = write_jsonl(tmp_path / "reviews.jsonl", rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "bad", "text": ""}\n')
    result = CliRunner().invoke(main, ["run", str(path)], env=env)
    assert result.exit_code == 0, result.output
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "dashboard", "--port", "0"], cwd=ROOT,
                            env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        base = None
        while base is None:
            line = lines.get(timeout=60)
            found = re.search(r"dashboard on (http://127\.0\.0\.1:\d+)/", line)
            base = found.group(1) if found else None
        yield {"base": base, "url": url, "settings": Settings.from_env(env), "shots": tmp_path / "screenshots"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_pages_in_chromium_show_sql_numbers_offline(served):
    from playwright.sync_api import sync_playwright

    from worker.db import get_engine

    base, shots = served["base"], served["shots"]
    shots.mkdir()
    errors, outside, dialogs = [], [], []
    with sync_playwright() as pw, get_engine(served["url"]).connect() as conn:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: None if urlparse(r.url).scheme == "data" or urlparse(r.url).hostname == "127.0.0.1"
                else outside.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

        def visit(path: str, name: str) -> None:
            response = page.goto(base + path)
            assert response.status == 200, path
            page.wait_for_selector("html[data-ready='1']")
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

        # Overview: the figures against SQL over the results, and the chart drawn by Chart.js.
        visit("/", "overview")
        n, pos, neg = conn.execute(text(
            "SELECT COUNT(*), SUM(CASE WHEN label = 'positive' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN label = 'negative' THEN 1 ELSE 0 END) FROM sentiment_results")).one()
        figure = lambda k: page.locator(f"#totals [data-k='{k}']").inner_text().strip()  # noqa: E731
        assert (figure("reviews"), figure("positive"), figure("negative")) == (f"{n:,}", f"{pos:,}", f"{neg:,}")
        assert figure("positive_share") == f"{100 * pos / n:.1f}%"
        assert page.evaluate("() => !!Chart.getChart(document.getElementById('trend'))")

        # Products: each row's review count.
        visit("/products", "products")
        per_product = dict(conn.execute(text("SELECT r.product_id, COUNT(*) FROM sentiment_results s "
                                             "JOIN reviews r ON r.id = s.review_id GROUP BY r.product_id")).all())
        for product, count in per_product.items():
            cell = page.locator(f"#products tr[data-row='{product}'] [data-k='reviews']")
            assert cell.inner_text().strip() == f"{count:,}", product
        assert page.evaluate("() => !!Chart.getChart(document.getElementById('product-trend'))")

        # Entities: the top one's mentions, then a click through to its reviews, mentions marked.
        visit("/entities", "entities")
        label, key, mentions = conn.execute(text(
            "SELECT label, entity_key, COUNT(*) FROM entities GROUP BY label, entity_key "
            "ORDER BY COUNT(*) DESC, label, entity_key LIMIT 1")).one()
        row = page.locator(f"tr[data-row='{label}:{key}']")
        assert row.locator("[data-k='mentions']").inner_text().strip() == f"{mentions:,}"
        row.locator("a.drill").click()
        page.wait_for_selector("html[data-ready='1']")
        assert page.url.startswith(base + "/entity?")
        page.screenshot(path=str(shots / "entity.png"), full_page=True)
        expected = [t for (t,) in conn.execute(text(
            "SELECT text FROM entities WHERE label = :l AND entity_key = :k ORDER BY review_id DESC, start_char "
            "LIMIT 20"), {"l": label, "k": key})]
        marks = [m.strip() for m in page.locator("#entity-reviews mark").all_inner_texts()]
        assert marks == expected[:len(marks)] and marks

        # The review with markup in it shows as text, and nothing in it ran.
        visit("/entity?" + urlencode({"label": "ORG", "key": "sony"}), "entity-sony")
        quoted = page.locator("li[data-review='xss'] blockquote")
        if quoted.count():
            assert "<script>alert('x')</script>" in quoted.inner_text()
            assert quoted.locator("mark").first.inner_text() == "Sony"

        # Jobs and a job's rejected line; models.
        visit("/jobs", "jobs")
        status, total = conn.execute(text("SELECT status, total FROM jobs WHERE id = 1")).one()
        assert page.locator("#jobs tr[data-row='1'] [data-k='status']").inner_text().strip() == status
        assert page.locator("#jobs tr[data-row='1'] [data-k='total']").inner_text().strip() == f"{total:,}"
        page.click("#jobs tr[data-row='1'] a")
        page.wait_for_selector("html[data-ready='1']")
        page.screenshot(path=str(shots / "job.png"), full_page=True)
        line_no, reason = conn.execute(text("SELECT line_no, reason FROM rejected_lines WHERE job_id = 1")).one()
        assert reason in page.locator(f"#rejected tr[data-row='{line_no}']").inner_text()
        visit("/models", "models")
        assert page.locator("#models tr[data-row='sentiment:1'] [data-k='status']").inner_text().strip() == "active"
        browser.close()
    assert errors == [] and outside == [] and dialogs == []
    assert sorted(p.name for p in shots.iterdir()) == sorted(
        f"{n}.png" for n in ("overview", "products", "entities", "entity", "entity-sony", "jobs", "job", "models"))
    print(f"screenshots: {shots}")
