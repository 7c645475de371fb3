"""Model versions: defaults become version 1; promote and rollback; running workers switch versions."""


import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from conftest import make_settings, settings_env, write_jsonl
from test_worker import wait_for_job
from tiny_models import save_tiny
from worker import registry
from worker.db import session_factory
from worker.schema import SentimentResult


def test_promote_and_rollback(migrated_sqlite, tiny_models, tmp_path):
    settings = make_settings(migrated_sqlite, tiny_models)
    sessions = session_factory(migrated_sqlite)
    with sessions() as s:
        active = registry.active_versions(s, settings)
        assert active["sentiment"].version == 1 and active["sentiment"].source == str(tiny_models["sentiment"])
        registry.register(s, "sentiment", str(tiny_models["sentiment"]), "candidate")
        s.commit()
    env = settings_env(settings)
    runner = CliRunner()
    listing = runner.invoke(main, ["models", "list", "--task", "sentiment"], env=env).output
    assert "v1   active" in listing and "v2   candidate" in listing
    assert "sentiment version 2 is active" in runner.invoke(main, ["models", "promote", "sentiment", "2"], env=env).output
    with sessions() as s:
        assert [(m.version, m.status) for m in registry.versions(s, "sentiment")] == [(1, "retired"), (2, "active")]
    assert "version 1 is active again" in runner.invoke(main, ["models", "rollback", "sentiment"], env=env).output
    with sessions() as s:
        assert [(m.version, m.status) for m in registry.versions(s, "sentiment")] == [(1, "active"), (2, "retired")]
    again = runner.invoke(main, ["models", "rollback", "sentiment"], env=env)
    assert again.exit_code == 1 and "nothing to roll back to" in again.output
    shown = runner.invoke(main, ["models", "show", "sentiment", "2"], env=env).output
    assert '"status": "retired"' in shown and "rolled back to version 1" in shown
    missing = runner.invoke(main, ["models", "show", "ner", "7"], env=env)
    assert missing.exit_code == 1 and "no ner model version 7" in missing.output


@pytest.mark.postgres
@pytest.mark.redis
def test_running_worker_picks_up_promotion_and_rollback(app_worker, tmp_path):
    settings = app_worker
    env = settings_env(settings)
    runner = CliRunner()
    first = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": f"film {i} in Paris"} for i in range(5)])
    job1 = int(runner.invoke(main, ["enqueue", str(first)], env=env).stdout.split()[0])
    wait_for_job(settings.database_url, job1)
    # A second sentiment model (other weights) registered and promoted while the worker runs.
    other = save_tiny(tmp_path / "other", "sentiment", seed=1)
    sessions = session_factory(settings.database_url)
    with sessions() as s:
        v1 = registry.active_versions(s, settings)["sentiment"]
        v2 = registry.register(s, "sentiment", str(other), "candidate")
        registry.promote(s, "sentiment", v2.version)
        s.commit()
    second = write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": f"film {i} in London"} for i in range(5)])
    job2 = int(runner.invoke(main, ["enqueue", str(second)], env=env).stdout.split()[0])
    wait_for_job(settings.database_url, job2)
    runner.invoke(main, ["models", "rollback", "sentiment"], env=env)
    third = write_jsonl(tmp_path / "c.jsonl", [{"id": f"c{i}", "text": f"film {i} in Rome"} for i in range(5)])
    job3 = int(runner.invoke(main, ["enqueue", str(third)], env=env).stdout.split()[0])
    wait_for_job(settings.database_url, job3)
    with sessions() as s:
        from worker.schema import Review

        by_prefix = {}
        for ext, version_id in s.execute(select(Review.external_id, SentimentResult.model_version_id)
                                         .join(SentimentResult, SentimentResult.review_id == Review.id)):
            by_prefix.setdefault(ext[0], set()).add(version_id)
    assert by_prefix == {"a": {v1.id}, "b": {v2.id}, "c": {v1.id}}


def _in_thread(fn):
    """Run fn in a thread; returns (thread, box) where box gets 'result' or 'error'."""
    import threading

    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except Exception as exc:  # the test asserts on it
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, box


@pytest.mark.postgres
def test_concurrent_seeding_registers_version_1_once(migrated_pg, tiny_models):
    import threading

    settings = make_settings(migrated_pg, tiny_models)
    sessions = session_factory(migrated_pg)
    barrier = threading.Barrier(8)

    def seed():
        barrier.wait()
        with sessions() as s:
            return {task: (mv.version, mv.status) for task, mv in registry.active_versions(s, settings).items()}

    runs = [_in_thread(seed) for _ in range(8)]
    for t, _ in runs:
        t.join()
    assert [box for _, box in runs] == [{"result": {"sentiment": (1, "active"), "ner": (1, "active")}}] * 8


@pytest.mark.postgres
def test_a_claimed_version_number_is_not_given_twice(migrated_pg, tiny_models):
    import time

    sessions = session_factory(migrated_pg)
    with sessions() as s:
        registry.active_versions(s, make_settings(migrated_pg, tiny_models))
        s.commit()
    first = sessions()
    mine = registry.claim(first, "sentiment", source="a", status="candidate")
    assert mine.version == 2

    def other():
        with sessions() as s:
            mv = registry.claim(s, "sentiment", source="b", status="candidate")
            s.commit()
            return mv.version

    t, box = _in_thread(other)
    time.sleep(0.5)
    assert t.is_alive()  # its INSERT of version 2 waits for the first transaction
    first.commit()
    first.close()
    t.join()
    assert box == {"result": 3}


@pytest.mark.postgres
def test_concurrent_promotions_leave_one_active_version(migrated_pg, tiny_models):
    import time

    sessions = session_factory(migrated_pg)
    with sessions() as s:
        registry.active_versions(s, make_settings(migrated_pg, tiny_models))
        for _ in range(2):
            registry.register(s, "sentiment", str(tiny_models["sentiment"]), "candidate")
        s.commit()
    first = sessions()
    registry.promote(first, "sentiment", 2)

    def other():
        with sessions() as s:
            registry.promote(s, "sentiment", 3)
            s.commit()

    t, box = _in_thread(other)
    time.sleep(0.5)
    assert t.is_alive()  # waits for the first promotion instead of reading version 1 as active
    first.commit()
    first.close()
    t.join()
    assert "error" not in box
    with sessions() as s:
        assert [(m.version, m.status) for m in registry.versions(s, "sentiment")] == [
            (1, "retired"), (2, "retired"), (3, "active")]
