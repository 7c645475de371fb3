"""docker-compose.yml cannot run here (no Docker engine): check that it parses, has the services
the deployment needs, and that every command it runs is a real `reviews` command."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse docker-compose.yml")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_roles(compose):
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "worker", "trainer", "beat"} <= set(services)
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert "replicas" not in services["worker"].get("deploy", {})  # scaled with --scale worker=N
    worker_queues = services["worker"]["command"][services["worker"]["command"].index("--queues") + 1]
    trainer_queues = services["trainer"]["command"][services["trainer"]["command"].index("--queues") + 1]
    assert (worker_queues, trainer_queues) == ("inference", "training")
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    for name in ("worker", "trainer", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["environment"]["REVIEWS_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_every_command_exists_in_the_cli(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["reviews"]' in dockerfile
    runner = CliRunner()
    for name, service in compose["services"].items():
        if "build" not in service and service.get("image", "").split(":")[0] != "reviews":
            continue
        args = service["command"]
        # --help after the command's own arguments makes click resolve every subcommand and option
        # name without running anything: an unknown one fails with a usage error.
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, f"service {name}: `reviews {' '.join(args)}` is not valid: {result.output}"
