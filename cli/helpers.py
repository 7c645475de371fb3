"""What every command shares: the context (settings, database, the Celery app), one-line errors,
progress printing and waiting, and safe file output. No SQL here, and no command."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager

import click

from worker.config import Settings, SettingsError, redact_url
from worker.db import DatabaseError, check_schema, session_factory

# Exit codes of the commands that wait for a job (documented in the README).
EXIT_DONE, EXIT_ERROR, EXIT_PARTIAL, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 3, 4, 5
EXIT_BY_STATUS = {"done": EXIT_DONE, "partial": EXIT_PARTIAL, "failed": EXIT_FAILED}


class Context:
    """Settings (environment plus global flags), and lazily the database and the Celery app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._app = None

    def sessions(self, check: bool = True):
        if check:
            check_schema(self.settings.database_url)
        return session_factory(self.settings.database_url)

    def app(self):
        """The Celery app for these settings, built once per command (producers need no torch)."""
        if self._app is None:
            from worker.app import create_app

            self._app = create_app(self.settings)
        return self._app


pass_ctx = click.make_pass_decorator(Context)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"")
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def clear_errors():
    """Every failure becomes one line on stderr and exit code 1, never a traceback (REVIEWS_DEBUG=1
    lets unexpected ones through, for bug reports)."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.inputs import InputError
    from worker.jobs import JobBusy
    from worker.nlp.types import ModelLoadError

    try:
        yield
    except click.ClickException:
        raise
    except (DatabaseError, ModelLoadError, InputError, LookupError, SettingsError, JobBusy) as exc:
        raise click.ClickException(_one_line(exc)) from exc
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        raise click.ClickException(f"{where}{exc.strerror or _one_line(exc)}") from exc
    except SQLAlchemyError as exc:
        raise click.ClickException(f"database error: {_one_line(getattr(exc, 'orig', None) or exc)}") from exc
    except Exception as exc:
        if os.environ.get("REVIEWS_DEBUG") == "1":
            raise
        raise click.ClickException(f"unexpected {type(exc).__name__}: {_one_line(exc)} "
                                   "(REVIEWS_DEBUG=1 shows the traceback)") from exc


def open_input(path: str):
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def report_rejections(report) -> None:
    for r in report.first_rejections:
        click.echo(f"line {r.line_no}: {r.reason}", err=True)
    more = report.rejected - len(report.first_rejections)
    if more > 0:
        click.echo(f"... and {more} more rejected lines", err=True)
    if report.rejected:
        click.echo(f"rejected lines are kept: reviews status {report.job_id} --rejected", err=True)


def print_progress(p, as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(p.as_dict()))
        return
    skipped = f", {p.skipped} skipped" if p.skipped else ""
    line = (f"job {p.job_id} [{p.status}] {p.source}: {p.done}/{p.total} done, {p.failed} failed{skipped}, "
            f"{p.pending} pending, {p.rejected} lines rejected")
    click.echo(line + (f" ({p.error})" if p.error else ""))


def wait_for_job(ctx: Context, job_id: int, timeout: float | None) -> int:
    """Follow a job with a progress bar until it ends or `timeout` seconds pass; warn when no worker
    consumes the queue. Returns the exit code for the outcome."""
    from worker import jobs
    from worker.app import consumers

    sessions = ctx.sessions(check=False)
    with sessions() as s:
        p = jobs.progress(s, job_id)
    if not p.finished and consumers(ctx.app()) == 0:
        # A solo worker busy with a batch answers only between batches: say both causes.
        click.echo("warning: no worker answered on queue 'inference' within 2 s: none runs, or each is busy with "
                   "a batch; if none runs, start one with `reviews worker`", err=True)
    started = time.monotonic()
    with click.progressbar(length=max(p.total, 1), label=f"job {job_id}", file=sys.stderr, show_pos=True) as bar:
        seen = 0
        while True:
            with sessions() as s:
                p = jobs.progress(s, job_id)
            bar.update(p.done + p.failed - seen)
            seen = p.done + p.failed
            if p.finished:
                break
            if timeout is not None and time.monotonic() - started > timeout:
                break
            time.sleep(0.5)
    print_progress(p)
    if not p.finished:
        click.echo(f"timed out after {timeout:g} s; the job goes on: reviews status {job_id}", err=True)
        return EXIT_TIMEOUT
    return EXIT_BY_STATUS[p.status]


@contextmanager
def atomic_output(path: str, encoding: str = "utf-8"):
    """A text file written in full or not at all: to a temporary file beside it, renamed at the end.
    '-' is stdout."""
    if path == "-":
        with click.open_file("-", "w", encoding=encoding) as out:
            yield out
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise click.ClickException(f"{path}: the directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".reviews-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def warn_about_drift(ctx: Context) -> None:
    """Say loudly when REVIEWS_*_MODEL names a model that the database does not serve."""
    from worker import registry

    with clear_errors(), ctx.sessions()() as s:
        for warning in registry.configured_drift(s, ctx.settings):
            click.secho(f"warning: {warning}", err=True, fg="yellow")


def describe_db(settings: Settings) -> str:
    return redact_url(settings.database_url)
