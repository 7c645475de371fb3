"""`reviews enqueue` (to the workers) and `reviews run` (in this process, no broker)."""

from __future__ import annotations

import sys
import time

import click

from .helpers import (EXIT_BY_STATUS, Context, clear_errors, describe_db, open_input, pass_ctx, print_progress,
                      report_rejections, wait_for_job, warn_about_drift)

input_file = click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
format_option = click.option(
    "--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True,
    help="Input format; auto: .csv and .csv.gz files are CSV, anything else JSONL. Gzip is read transparently.",
)
batch_option = click.option("--batch-size", type=click.IntRange(1, 10_000), help="Reviews per batch [64].")


def _no_reviews(file: str, report) -> click.ClickException:
    return click.ClickException(f"{file}: no reviews to analyse (job {report.job_id} failed, "
                                f"{report.rejected} lines rejected)")


@click.command()
@input_file
@format_option
@batch_option
@click.option("--wait", is_flag=True, help="Show a progress bar until the job ends; the exit code tells how it ended.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up waiting after this many seconds.")
@pass_ctx
def enqueue(ctx: Context, file: str, fmt: str, batch_size: int | None, wait: bool, timeout: float | None) -> None:
    """Store the reviews of FILE (JSONL, CSV with a header, '-' for stdin) and queue them for the workers.
    Prints the job id on stdout."""
    from worker import ingest
    from worker.app import batch_sender, check_broker

    with clear_errors():
        settings = ctx.settings.with_(batch_size=batch_size)
        sessions = ctx.sessions()
        app = ctx.app()
        check_broker(app)
        try:
            with open_input(file) as stream:
                report = ingest.ingest(sessions, stream, file, settings, batch_sender(app), fmt=fmt)
        except ingest.IngestStopped as stop:
            report_rejections(stop.report)
            raise click.ClickException(f"{stop}; lines after {stop.report.last_line} were not read. Once it is "
                                       f"fixed: `reviews resume {stop.report.job_id}` analyses what was stored") from stop
    report_rejections(report)
    if report.accepted == 0:
        raise _no_reviews(file, report)
    click.echo(report.job_id)
    click.echo(f"job {report.job_id}: {report.accepted} reviews queued in {report.batches} batches, "
               f"{report.rejected} lines rejected", err=True)
    if wait:
        with clear_errors():
            sys.exit(wait_for_job(ctx, report.job_id, timeout))


@click.command()
@input_file
@format_option
@batch_option
@pass_ctx
def run(ctx: Context, file: str, fmt: str, batch_size: int | None) -> None:
    """Analyse FILE in this process, without a broker: the embedded default (SQLite unless
    REVIEWS_DATABASE_URL says otherwise). Same guarantees as a worker: retries, isolation of a
    failing batch, failed reviews recorded. Exit code: 0 done, 3 partial, 4 failed."""
    from worker import batches, ingest, jobs
    from worker.db import check_schema

    with clear_errors():
        settings = ctx.settings.with_(batch_size=batch_size)
        started = time.monotonic()
        _ensure_schema(settings.database_url)
        check_schema(settings.database_url)
        warn_about_drift(ctx)
        from worker.resources import Resources

        resources = Resources(settings)
        resources.models()
        click.echo(f"ready in {time.monotonic() - started:.1f} s (schema, models)", err=True)
        started = time.monotonic()
        done = 0

        def analyse_now(job_id: int, ids: list[int]) -> None:
            nonlocal done
            outcome = batches.run_to_end(resources, job_id, ids)
            done += outcome.written + outcome.failed
            rate = done / max(time.monotonic() - started, 1e-9)
            click.echo(f"\ranalysed {done} reviews ({rate:.1f}/s)", err=True, nl=False)

        try:
            with open_input(file) as stream:
                report = ingest.ingest(resources.sessions, stream, file, settings, analyse_now, fmt=fmt)
        except ingest.IngestStopped as stop:
            click.echo("", err=True)
            report_rejections(stop.report)
            raise click.ClickException(f"{stop}. Once it is fixed: `reviews resume {stop.report.job_id} --local` "
                                       "analyses what was stored") from stop
        except KeyboardInterrupt:
            click.echo("\ninterrupted: what was stored is kept; `reviews resume JOB --local` finishes the job "
                       "(`reviews jobs` lists them)", err=True)
            sys.exit(130)
    click.echo("", err=True)
    report_rejections(report)
    if report.accepted == 0:
        raise _no_reviews(file, report)
    with resources.sessions() as s:
        p = jobs.progress(s, report.job_id)
    print_progress(p)
    click.echo(f"database: {describe_db(settings)}; results: reviews export --job {report.job_id}")
    if p.failed:
        click.echo(f"failed reviews, with the reason: reviews status {p.job_id} --failed", err=True)
    sys.exit(EXIT_BY_STATUS.get(p.status, 1))


def _ensure_schema(url: str) -> None:
    """The embedded default creates its SQLite schema on first use; other databases need `db upgrade`."""
    if url.startswith("sqlite"):
        from worker import migrate

        migrate.upgrade(url)
