"""Retraining: versions, the promotion gate, the schedule, the lock, and the Celery path."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from celery.schedules import crontab
from click.testing import CliRunner

from cli.main import main
from conftest import make_settings, running_worker, settings_env
from worker import registry, retrain
from worker.app import create_app
from worker.db import session_factory
from worker.labels import label_key
from worker.schema import Label, utcnow

pytestmark = pytest.mark.redis

POS = ["great", "good", "loved", "love"]
NEG = ["awful", "terrible", "boring", "bad"]
NOUNS = ["film", "movie", "plot", "acting", "story", "music", "ending", "scene"]
FAST = dict(alpha=1.0, epochs=25, lr=3e-3)  # tiny models learn the toy task in seconds


def toy_labels():
    out = []
    for adj in POS + NEG:
        for noun in NOUNS:
            for extra in ("", " and the director"):
                out.append((f"the {noun} was {adj}{extra}", "positive" if adj in POS else "negative"))
    return out


def add_labels(url, pairs, source="test"):
    with session_factory(url)() as s:
        for text, sentiment in pairs:
            s.add(Label(task="sentiment", key=label_key("sentiment", text, sentiment + source), text=text,
                        sentiment=sentiment, source=source, created_at=utcnow()))
        s.commit()


@pytest.fixture
def setup(migrated_sqlite, redis_url, tiny_models, tmp_path):
    settings = make_settings(migrated_sqlite, tiny_models, model_dir=str(tmp_path / "versions"))
    return settings, session_factory(migrated_sqlite)


def test_gate_promotes_a_good_candidate_and_rejects_a_bad_one(setup):
    settings, sessions = setup
    labels = toy_labels()
    assert 0 < sum(retrain.is_heldout(t) for t, _ in labels) < len(labels)
    add_labels(settings.database_url, labels)
    good = retrain.retrain(settings, sessions, "sentiment", progress=lambda m: None, **FAST)
    assert good.status == "promoted", good
    assert good.metrics["candidate"]["accuracy"] > good.metrics["active"]["accuracy"]
    with sessions() as s:
        v2 = registry.get(s, "sentiment", 2)
        assert v2.status == "active" and v2.parent_id == registry.get(s, "sentiment", 1).id
        assert registry.get(s, "sentiment", 1).status == "retired"
        assert v2.train_counts["train"] + v2.train_counts["heldout"] == len(labels)
    assert (Path(settings.model_dir) / "sentiment" / "2" / "model.safetensors").is_file()

    # Labels flipped on the training side only: the candidate learns the opposite and must lose.
    flipped = [(t, "negative" if y == "positive" else "positive") for t, y in labels if not retrain.is_heldout(t)]
    add_labels(settings.database_url, flipped, source="flipped")
    bad = retrain.retrain(settings, sessions, "sentiment", progress=lambda m: None, **FAST)
    assert bad.status == "rejected" and "worse than active" in bad.reason
    with sessions() as s:
        assert registry.get(s, "sentiment", 3).status == "rejected"
        assert registry.get(s, "sentiment", 3).metrics["candidate"]["accuracy"] < 0.5
        assert registry.active_versions(s, settings)["sentiment"].version == 2


def test_schedule_exists_and_skips_with_too_few_labels(setup):
    settings, sessions = setup
    settings = settings.with_(retrain_min_labels=50, retrain_schedule="30 2 * * *")
    app = create_app(settings)
    entry = app.conf.beat_schedule["retrain"]
    assert entry["task"] == "reviews.scheduled_retrain" and entry["options"]["queue"] == "training"
    assert entry["schedule"] == crontab(minute="30", hour="2")
    assert "reviews.scheduled_retrain" in app.tasks
    add_labels(settings.database_url, toy_labels()[:10])
    outcomes = app.tasks["reviews.scheduled_retrain"].run()
    assert [o["status"] for o in outcomes] == ["skipped", "skipped"]
    assert "10 sentiment labels no version has trained on; 50 needed" in outcomes[0]["reason"]
    with sessions() as s:
        assert [mv.version for mv in registry.versions(s, "sentiment")] == [1]


DATABASES = pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])


def _database(request, database: str) -> str:
    return request.getfixturevalue("migrated_sqlite" if database == "sqlite" else "migrated_pg")


@DATABASES
def test_two_concurrent_retrains_of_one_task_do_not_overlap(database, request, tiny_models, tmp_path):
    """The lock lives in the database (no Redis needed): an flock next to the SQLite file, a
    PostgreSQL advisory lock on a connection of each retrain's own."""
    url = _database(request, database)
    settings = make_settings(url, tiny_models, model_dir=str(tmp_path / "versions"))
    sessions = session_factory(url)
    add_labels(settings.database_url, toy_labels())
    barrier = threading.Barrier(2)
    outcomes = []

    def run():
        barrier.wait()
        outcomes.append(retrain.retrain(settings, sessions, "sentiment", progress=lambda m: None, **FAST))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(o.status for o in outcomes)
    assert statuses == ["promoted", "skipped"], outcomes
    assert "already running" in next(o.reason for o in outcomes if o.status == "skipped")
    with sessions() as s:
        assert [mv.version for mv in registry.versions(s, "sentiment")] == [1, 2]


HOLD_LOCK = """
import sys, time
from worker.config import Settings
from worker.retrain import retrain_lock
with retrain_lock(Settings(database_url=sys.argv[1]), "sentiment"):
    print("held", flush=True)
    time.sleep(600)
"""


@DATABASES
def test_the_retrain_lock_holds_across_processes_and_dies_with_its_holder(database, request, tiny_models):
    """Another process's retrain of the task is refused while it runs, another task's is not, and a
    trainer killed outright (no cleanup runs) leaves no lock behind: no time-to-live to wait out."""
    url = _database(request, database)
    settings = make_settings(url, tiny_models)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(retrain.RetrainBusy, match="a sentiment retrain is already running"):
            with retrain.retrain_lock(settings, "sentiment"):
                pass
        with retrain.retrain_lock(settings, "ner"):
            pass
    finally:
        holder.kill()
        holder.wait(10)
    deadline = time.monotonic() + 10  # PostgreSQL ends the session once it reads the closed socket
    while True:
        try:
            with retrain.retrain_lock(settings, "sentiment"):
                break
        except retrain.RetrainBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.postgres
def test_retrain_through_a_trainer_worker(migrated_pg, redis_url, tiny_models, tmp_path):

    settings = make_settings(migrated_pg, tiny_models, model_dir=str(tmp_path / "versions"))
    add_labels(migrated_pg, toy_labels())
    env = settings_env(settings)
    args = ["retrain", "--task", "sentiment", "--wait", "--alpha", "1", "--epochs", "25", "--lr", "0.003"]
    with running_worker(settings, queues=("training",), shutdown_timeout=60):
        result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "promoted" and outcome["version"] == 2
    listing = CliRunner().invoke(main, ["models", "list", "--task", "sentiment"], env=env).output
    assert "v2   active" in listing


def test_labels_count_as_new_until_a_version_trains_on_them(setup):
    """Labels imported before any worker ran are new to version 1; after a retrain, only later ones are."""
    settings, sessions = setup
    with sessions() as s:
        assert retrain.untrained_labels(s, "sentiment") == 0
    empty = retrain.retrain(settings, sessions, "sentiment", progress=lambda m: None, **FAST)
    assert empty.status == "skipped" and "no sentiment labels" in empty.reason
    add_labels(settings.database_url, toy_labels())
    with sessions() as s:
        assert retrain.untrained_labels(s, "sentiment") == len(toy_labels())
    first = retrain.retrain(settings, sessions, "sentiment", progress=lambda m: None, **FAST)
    assert first.status == "promoted", first
    with sessions() as s:
        assert retrain.untrained_labels(s, "sentiment") == 0
    add_labels(settings.database_url, [("a brand new text that was great", "positive")])
    with sessions() as s:
        assert retrain.untrained_labels(s, "sentiment") == 1
    # The schedule waits for enough of them; an explicit retrain trains whenever there are labels.
    scheduled = retrain.retrain(settings, sessions, "sentiment", 50, progress=lambda m: None, **FAST)
    assert scheduled.status == "skipped" and "1 sentiment labels no version has trained on; 50 needed" in scheduled.reason
    explicit = retrain.retrain(settings, sessions, "sentiment", progress=lambda m: None, **FAST)
    assert explicit.status in ("promoted", "rejected") and explicit.version == 3

