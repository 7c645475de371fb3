"""Healthcheck of the beat container (docker-compose.yml):

    python /usr/local/lib/reviews/healthcheck.py beat --schedule /home/reviews/data/celerybeat-schedule

Healthy when all three hold:
  1. the beat process (PID 1 in the container, `--pid` to name another) is alive, runs `beat`, and is
     not a zombie or stopped;
  2. its schedule file was written since that process started: beat writes it once its scheduler is
     set up, so a beat stuck before that, or a file left on the volume by an earlier container, fails;
  3. the broker (REVIEWS_BROKER_URL) accepts a connection: beat can send what falls due.

Why not "the schedule file was modified in the last N minutes": beat writes the file only at start and
when an entry falls due (nightly, by default), never as a heartbeat, so such a check would fail on a
healthy beat.

Exit status 0 when healthy, 1 otherwise, with one line saying why (shown by `docker inspect`).
Standard library and kombu only: it runs every interval, and must be quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The files a shelve (Celery's PersistentScheduler) may create for one schedule path, by dbm backend:
# gdbm uses the path itself, ndbm adds .db, the pure-Python dbm.dumb writes .dat/.dir/.bak.
SCHEDULE_SUFFIXES = ("", ".db", ".dat", ".dir")


class Unhealthy(Exception):
    pass


def process_start_time(pid: int, proc: Path = Path("/proc")) -> float:
    """When process `pid` started, in seconds since the epoch (from /proc; Linux only)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except FileNotFoundError:
        raise Unhealthy(f"no process {pid}") from None
    # Fields after the command name, which is in parentheses and may hold spaces: state is field 3,
    # starttime (clock ticks after boot) field 22.
    after = stat[stat.rindex(")") + 2:].split()
    state, start_ticks = after[0], int(after[19])
    if state in ("Z", "X", "T", "t"):
        raise Unhealthy(f"process {pid} is {'a zombie' if state in 'ZX' else 'stopped'} (state {state})")
    boot = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + start_ticks / os.sysconf("SC_CLK_TCK")


def check_process(pid: int, proc: Path = Path("/proc")) -> float:
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        raise Unhealthy(f"no process {pid}") from None
    if b"beat" not in argv:
        raise Unhealthy(f"process {pid} is not beat: {b' '.join(argv).decode(errors='replace').strip()}")
    return process_start_time(pid, proc)


def check_schedule(schedule: Path, started: float) -> None:
    written = [p.stat().st_mtime for p in (Path(f"{schedule}{s}") for s in SCHEDULE_SUFFIXES) if p.exists()]
    if not written:
        raise Unhealthy(f"no schedule file at {schedule}: beat has not set up its scheduler")
    # /proc gives the start time to a clock tick and the boot time to a second, rounded down: the start
    # computed is at most a second early, so a file written after the start is never taken as older.
    if max(written) < started:
        raise Unhealthy(f"{schedule} was not written since beat started: its scheduler is not set up")


def check_broker(url: str, timeout: float = 10.0) -> None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure to connect: unhealthy, with the reason
        from urllib.parse import urlsplit

        where = urlsplit(url)
        raise Unhealthy(f"broker {where.scheme}://{where.hostname}:{where.port} unreachable: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def check_beat(schedule: Path, pid: int, broker_url: str, proc: Path = Path("/proc")) -> str:
    started = check_process(pid, proc)
    check_schedule(schedule, started)
    check_broker(broker_url)
    return f"beat (pid {pid}) has its schedule at {schedule}, broker reachable"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    beat = sub.add_parser("beat", help="the beat scheduler")
    beat.add_argument("--schedule", required=True, type=Path, help="the path given to `reviews beat --schedule`")
    beat.add_argument("--pid", type=int, default=1, help="the beat process [default: 1, the container's]")
    args = parser.parse_args(argv)
    broker_url = os.environ.get("REVIEWS_BROKER_URL") or "redis://localhost:6379/0"  # as worker/config.py
    try:
        print(check_beat(args.schedule, args.pid, broker_url))
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
