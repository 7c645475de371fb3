"""docker-compose.yml cannot run here (no Docker engine): check it statically, with the Dockerfile and
the GPU override docker-compose.gpu.yml. It parses; it has the services the deployment needs; every
command it runs is a real `reviews` command (or a Celery command line on `worker.entry` that parses);
the long-running services restart and have healthchecks, and a worker's healthcheck pings the worker's
own node name; no service reserves a GPU unless the override is given; every volume is declared and
mounts on a directory the image creates, owned by the user the image runs as; beat's schedule lies on a
volume. The beat healthcheck script (docker/healthcheck.py) is run against real processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner

from cli.main import main

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse docker-compose.yml")
ROOT = Path(__file__).resolve().parents[1]
LONG_RUNNING = ("redis", "postgres", "worker", "trainer", "beat")
WORKERS = ("worker", "trainer")
CONTAINER_HOST = "3f2a9c0d81be"  # what Docker sets as a container's hostname and $HOSTNAME


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def gpu_override() -> dict:
    path = ROOT / "docker-compose.gpu.yml"
    assert path.exists(), "docker-compose.gpu.yml (the opt-in GPU override) is missing"
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def image() -> Dockerfile:
    return Dockerfile((ROOT / "Dockerfile").read_text())


def built_here(service: dict) -> bool:
    """A service running the image built from this repository's Dockerfile."""
    return "build" in service or service.get("image", "").split(":")[0] == "reviews"


def option(argv: list[str], *names: str) -> str | None:
    """The value of the first of `names` in argv (`--name value` or `--name=value`)."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def seconds(duration: str | float) -> float:
    """A compose duration (`1m30s`, `90s`, `10m`) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def compose_shell(test: list[str]) -> str:
    """The command line a CMD-SHELL healthcheck gives /bin/sh, after compose's interpolation ($$ is a $)."""
    assert test[0] == "CMD-SHELL", test
    return test[1].replace("$$", "$")


def gpu_devices(service: dict) -> list[dict]:
    reservations = ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    return [d for d in reservations.get("devices") or []
            if d.get("driver") == "nvidia" or "gpu" in d.get("capabilities", [])]


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume of a service, short or long syntax."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        out.append((source, target))
    return out


def named(source: str) -> bool:
    return bool(source) and not source.startswith(("/", ".", "~", "$"))


class Dockerfile:
    """The instructions that make the default target (the last stage, and the stages it is built FROM),
    with what they create: directories made (mkdir), their owner (chown, COPY --chown) and the user in
    force when they ran, the ENV values, the final USER."""

    def __init__(self, text: str):
        self.text = text
        lines = re.sub(r"\\\n", " ", text).splitlines()
        stages: list[tuple[str | None, str, list[tuple[str, str]]]] = []  # (name, base, instructions)
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            keyword = keyword.upper()
            if keyword == "FROM":
                words = rest.split()
                name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
                stages.append((name, words[0], []))
            else:
                stages[-1][2].append((keyword, rest.strip()))
        self.stages = {name: (base, instructions) for name, base, instructions in stages if name}
        chain = []  # the default target and the named stages under it, base first
        base, instructions = stages[-1][1], stages[-1][2]
        chain.insert(0, instructions)
        while base in self.stages:
            base, instructions = self.stages[base]
            chain.insert(0, instructions)
        self.instructions = [i for stage in chain for i in stage]
        self.env: dict[str, str] = {}
        self.user = "root"
        self.made: dict[str, str] = {}  # directory -> user who ran mkdir
        self.owned: dict[str, tuple[str, bool]] = {}  # path -> (owner, recursive)
        self.users: set[str] = set()
        for keyword, rest in self.instructions:
            if keyword == "ENV":
                self.env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
            elif keyword == "USER":
                self.user = rest.split(":")[0]
            elif keyword == "RUN":
                for command in re.split(r"&&|;|\|\|", rest):
                    self._run(shlex.split(command))
            elif keyword in ("COPY", "ADD"):
                words = shlex.split(rest)
                chown = next((w.split("=", 1)[1] for w in words if w.startswith("--chown=")), None)
                if chown:
                    self.owned[words[-1].rstrip("/")] = (chown.split(":")[0], True)

    def _run(self, argv: list[str]) -> None:
        if not argv:
            return
        flags = [a for a in argv[1:] if a.startswith("-")]
        args = [a for a in argv[1:] if not a.startswith("-")]
        if argv[0] == "useradd":
            self.users.add(args[-1])
        elif argv[0] == "mkdir":
            for path in args:
                self.made[path.rstrip("/")] = self.user
                if "-p" in flags or "--parents" in flags:
                    for parent in PurePosixPath(path).parents:
                        self.made.setdefault(str(parent), self.user)
        elif argv[0] == "chown":
            recursive = "-R" in flags or "--recursive" in flags
            for path in args[1:]:
                self.owned[path.rstrip("/")] = (args[0].split(":")[0], recursive)

    def owner(self, path: str) -> str | None:
        """Who owns `path` once built: a chown of the path itself, or a recursive one of a parent."""
        if path in self.owned:
            return self.owned[path][0]
        for parent in PurePosixPath(path).parents:
            owner, recursive = self.owned.get(str(parent), (None, False))
            if recursive:
                return owner
        return None


def test_services_and_roles(compose):
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "worker", "trainer", "beat"} <= set(services)
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert "replicas" not in services["worker"].get("deploy", {})  # scaled with --scale worker=N
    assert "container_name" not in services["worker"]  # a fixed name would forbid --scale worker=N
    worker_queues = option(services["worker"]["command"], "--queues", "-Q")
    trainer_queues = option(services["trainer"]["command"], "--queues", "-Q")
    assert (worker_queues, trainer_queues) == ("inference", "training")
    assert seconds(services["worker"]["stop_grace_period"]) >= 60  # a batch in hand finishes
    assert seconds(services["trainer"]["stop_grace_period"]) >= 300
    for name in ("worker", "trainer", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["REVIEWS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_restart_policies(compose):
    services = compose["services"]
    # Quoted in YAML: an unquoted no is the boolean false, which compose rejects.
    assert services["migrate"]["restart"] == "no", "the one-shot migration must not be restarted"
    for name in (*LONG_RUNNING, *(n for n, s in services.items() if "monitoring" in s.get("profiles", []))):
        assert services[name].get("restart") == "unless-stopped", f"service {name}: restart policy"


def test_no_gpu_without_the_override(compose):
    """The base file starts on any host: a GPU reservation makes compose refuse to start a service
    where the NVIDIA Container Toolkit is missing."""
    for name, service in compose["services"].items():
        assert not gpu_devices(service), f"service {name} reserves a GPU in docker-compose.yml"
        assert "gpus" not in service and service.get("runtime") != "nvidia", name
        assert "NVIDIA_VISIBLE_DEVICES" not in (service.get("environment") or {}), name


def test_gpu_override(compose, gpu_override, image):
    override = gpu_override["services"]
    assert set(override) <= set(compose["services"]), "the override names a service the base file lacks"
    for name in WORKERS:
        devices = gpu_devices(override.get(name, {}))
        assert devices, f"docker-compose.gpu.yml gives {name} no GPU"
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert devices[0].get("count", 0) >= 1 or devices[0].get("device_ids"), devices[0]
    for name, service in override.items():
        if name not in WORKERS:
            assert not gpu_devices(service), f"{name} needs no GPU"
        assert "replicas" not in (service.get("deploy") or {}), "the override must not change any scaling"
    # One image, reviews:latest, for every service that builds it: the override must give all of them
    # the CUDA wheel index, or builds with different arguments would race for the one tag.
    assert re.search(r"^ARG TORCH_INDEX=", image.text, re.MULTILINE), "the Dockerfile takes no TORCH_INDEX build arg"
    builders = [n for n, s in compose["services"].items()
                if "build" in s and s.get("image") == "reviews:latest"]
    assert {"migrate", "worker", "trainer", "beat"} <= set(builders)
    for name in builders:
        args = ((override.get(name) or {}).get("build") or {}).get("args") or {}
        assert "download.pytorch.org/whl/cu" in args.get("TORCH_INDEX", ""), f"{name}: no CUDA torch wheels"


def test_healthchecks(compose):
    services = compose["services"]
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"service {name} has no healthcheck"
    for name in (*WORKERS, "beat"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL")
        assert seconds(check["timeout"]) >= 10 and seconds(check["interval"]) >= 10
        assert check.get("retries", 3) >= 2
    # Loading and (CPU) compiling the models, or a first download from the Hub, takes minutes.
    assert seconds(services["worker"]["healthcheck"]["start_period"]) >= 300
    assert seconds(services["trainer"]["healthcheck"]["start_period"]) >= 120
    assert seconds(services["beat"]["healthcheck"]["start_period"]) >= 30


@pytest.mark.parametrize("name", WORKERS)
def test_worker_healthcheck_pings_its_own_node(compose, name):
    from celery.utils.nodenames import host_format

    service = compose["services"][name]
    hostname = option(service["command"], "--hostname", "-n")
    assert hostname, f"{name}: no --hostname, so the healthcheck cannot name the node"
    node = host_format(hostname, host=CONTAINER_HOST)  # what Celery makes of %h in this container
    assert CONTAINER_HOST in node, f"{name}: node name {hostname!r} is not per container: --scale would clash"
    line = compose_shell(service["healthcheck"]["test"])
    argv = shlex.split(line)
    assert argv[:5] == ["celery", "-A", "worker.entry", "inspect", "ping"], line
    destination = option(argv, "-d", "--destination")
    assert destination and os.path.expandvars(destination.replace("$HOSTNAME", CONTAINER_HOST)) == node, \
        f"{name}: healthcheck pings {destination!r}, the worker is {hostname!r}"
    timeout = float(option(argv, "-t", "--timeout") or 1.0)
    assert timeout + 5 <= seconds(service["healthcheck"]["timeout"]), "docker kills the ping before its reply"
    if option(service["command"], "--pool") in (None, "solo"):
        # A solo worker answers only between tasks: the wait must cover a batch in hand.
        assert timeout >= 30, f"{name}: a ping timeout of {timeout}s fails while a batch runs"
    if name == "trainer":
        # A retrain runs for minutes to hours: only a pool that runs it outside the main thread answers.
        assert option(service["command"], "--pool") == "threads", "a solo trainer is unhealthy while training"
        assert option(service["command"], "--concurrency", "-c") == "1", "one retrain at a time"


def entry_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "REVIEWS_DATABASE_URL": f"sqlite:///{tmp_path / 'reviews.db'}",
            "REVIEWS_BROKER_URL": "redis://127.0.0.1:1/0", "REVIEWS_HOME": str(tmp_path), "HOSTNAME": CONTAINER_HOST}


def test_worker_entry_builds_the_reviews_app(tmp_path):
    """`celery -A worker.entry` (the workers' healthchecks, flower) finds an app with the reviews tasks."""
    code = ("import json, celery, worker.entry as e; "
            "print(json.dumps({'celery': isinstance(e.app, celery.Celery), 'main': e.app.main, "
            "'tasks': sorted(t for t in e.app.tasks if not t.startswith('celery.'))}))")
    done = subprocess.run([sys.executable, "-c", code], env=entry_env(tmp_path), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["celery"] and found["main"] == "reviews"
    assert {"reviews.analyze", "reviews.retrain", "reviews.scheduled_retrain"} <= set(found["tasks"])
    listed = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.entry", "inspect", "--list"],
                            env=entry_env(tmp_path), capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            check=False)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^\s+ping\s", listed.stdout, re.MULTILINE), listed.stdout


@pytest.mark.parametrize("name", WORKERS)
def test_worker_healthcheck_command_line_parses(compose, tmp_path, name):
    """The healthcheck's own argv with --help: Celery loads the app and parses every option (an unknown one
    exits 2) without sending anything."""
    argv = shlex.split(os.path.expandvars(compose_shell(compose["services"][name]["healthcheck"]["test"])
                                          .replace("$HOSTNAME", CONTAINER_HOST)))
    assert argv[0] == "celery"
    done = subprocess.run([sys.executable, "-m", "celery", *argv[1:], "--help"], env=entry_env(tmp_path),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 0, f"{name}: `{' '.join(argv)}` does not parse: {done.stderr}"
    broken = [*argv[1:], "--no-such-option", "--help"]
    assert subprocess.run([sys.executable, "-m", "celery", *broken], env=entry_env(tmp_path), capture_output=True,
                          timeout=120, cwd=tmp_path, check=False).returncode == 2  # the check above can fail


def test_every_command_exists_in_the_cli(compose, image):
    assert image.instructions.count(("ENTRYPOINT", '["reviews"]')) == 1 and image.user == "reviews"
    runner = CliRunner()
    for name, service in compose["services"].items():
        if not built_here(service):
            continue
        if "entrypoint" in service:  # Celery's own command line on the same app: flower
            assert service["entrypoint"][:3] == ["celery", "-A", "worker.entry"], name
            continue
        args = service["command"]
        # --help after the command's own arguments makes click resolve every subcommand and option
        # name without running anything: an unknown one fails with a usage error.
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, f"service {name}: `reviews {' '.join(args)}` is not valid: {result.output}"


def test_flower_is_opt_in(compose, image):
    flower = compose["services"].get("flower")
    if flower is None:
        return
    assert flower["profiles"] == ["monitoring"], "flower starts only with --profile monitoring"
    assert flower["entrypoint"] == ["celery", "-A", "worker.entry", "flower"]
    target = flower["build"]["target"]
    assert target in image.stages and any(k == "RUN" and "flower" in r for k, r in image.stages[target][1])
    assert not any("flower" in rest for _, rest in image.instructions), "flower leaks into the services' image"
    assert all(str(p).startswith("127.0.0.1:") for p in flower.get("ports", [])), "no auth: loopback only"


def test_volumes_are_declared_and_writable(compose, image):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for source, target in mounts(service):
            if not named(source):
                continue
            used.add(source)
            assert source in declared, f"service {name}: volume {source} is not declared under volumes:"
            if not built_here(service):
                continue
            # Docker creates a mount point the image lacks, as root; a named volume takes the
            # ownership of the image's directory when first mounted.
            assert target in image.made, f"service {name}: the Dockerfile never creates {target} (mkdir)"
            assert image.made[target] == "root", f"{target} is made after USER: it would not be chowned"
            assert image.owner(target) == image.user, \
                f"service {name}: {target} is not owned by {image.user} in the image (chown)"
    assert used == declared, f"declared but unused volumes: {declared - used}"
    assert image.user in image.users, f"USER {image.user} is never created"


def test_models_and_hub_cache_are_shared(compose, image):
    services = compose["services"]
    hf_home = image.env.get("HF_HOME")
    assert hf_home, "the image sets no HF_HOME: the cache would be wherever the library picks"
    for key, target in (("models", services["worker"]["environment"]["REVIEWS_MODEL_DIR"]), ("hf", hf_home)):
        sources = set()
        for name in WORKERS:
            found = [s for s, t in mounts(services[name]) if t == target and named(s)]
            assert found, f"service {name}: no named volume at {target} ({key})"
            sources.update(found)
        assert len(sources) == 1, f"worker and trainer must share one {key} volume, not {sources}"


def test_beat_schedule_is_on_a_volume(compose, image):
    beat = compose["services"]["beat"]
    schedule = option(beat["command"], "--schedule", "-s") or f"{image.env['REVIEWS_HOME']}/celerybeat-schedule"
    on = [t for s, t in mounts(beat) if named(s) and PurePosixPath(t) in PurePosixPath(schedule).parents]
    assert on, f"beat keeps its schedule at {schedule}, on no volume: lost at each restart, or not writable"
    workdir = next((rest for k, rest in reversed(image.instructions) if k == "WORKDIR"), "/")
    assert not schedule.startswith(workdir.rstrip("/") + "/"), "the working directory is root's"
    check = beat["healthcheck"]["test"]
    assert check[0] == "CMD" and option(check, "--schedule") == schedule, "the healthcheck checks another file"
    script = next(a for a in check if a.endswith(".py"))
    assert ("COPY", f"docker/healthcheck.py {script}") in image.instructions, f"{script} is not in the image"


# The beat healthcheck script, against real processes: docker/healthcheck.py beat --pid P --schedule S.

HEALTHCHECK = ROOT / "docker" / "healthcheck.py"


def beat_health(schedule: Path, pid: int, broker_url: str = "memory://") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK), "beat", "--schedule", str(schedule), "--pid", str(pid)],
                          env={**os.environ, "REVIEWS_BROKER_URL": broker_url}, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def sleeper():
    """A process whose argv has `beat`, as a stand-in for `reviews beat`, and one without."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", arg]) for arg in ("beat", "x")]
    time.sleep(0.2)
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_beat_healthcheck_script(tmp_path, sleeper):
    beat, other = sleeper
    schedule = tmp_path / "celerybeat-schedule"
    result = beat_health(schedule, beat.pid)
    assert result.returncode == 1 and "no schedule file" in result.stdout
    (tmp_path / "celerybeat-schedule.dat").write_bytes(b"")  # dbm.dumb's name for it
    os.utime(tmp_path / "celerybeat-schedule.dat", (time.time() - 3600,) * 2)  # left by an earlier beat
    result = beat_health(schedule, beat.pid)
    assert result.returncode == 1 and "not written since" in result.stdout
    schedule.write_bytes(b"")  # gdbm's name for it, written now
    assert beat_health(schedule, beat.pid).returncode == 0
    result = beat_health(schedule, beat.pid, broker_url="redis://127.0.0.1:1/0")
    assert result.returncode == 1 and "broker" in result.stdout
    assert beat_health(schedule, other.pid).returncode == 1  # not beat
    beat.kill()
    beat.wait()
    result = beat_health(schedule, beat.pid)
    assert result.returncode == 1 and "no process" in result.stdout


@pytest.mark.redis
def test_beat_healthcheck_against_reviews_beat(tmp_path, redis_url):
    """A real `reviews beat`, started as the compose file starts it: healthy once it has set up its
    schedule, unhealthy once it has stopped."""
    schedule = tmp_path / "beat" / "celerybeat-schedule"
    env = {**os.environ, "REVIEWS_BROKER_URL": redis_url, "REVIEWS_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
           "REVIEWS_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "beat", "--schedule", str(schedule)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (result := beat_health(schedule, proc.pid, redis_url)).returncode != 0:
            assert proc.poll() is None, f"beat exited: {proc.stderr.read()}"
            assert time.monotonic() < deadline, result.stdout
            time.sleep(0.5)
        assert "broker reachable" in result.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert beat_health(schedule, proc.pid, redis_url).returncode == 1
