"""Running the service: `db upgrade|downgrade`, `worker`, `beat`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from worker.config import redact_url

from .helpers import Context, clear_errors, describe_db, pass_ctx, warn_about_drift


@click.group()
def db() -> None:
    """Create or change the database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_ctx
def db_upgrade(ctx: Context, revision: str) -> None:
    """Apply migrations up to REVISION (default: the latest), under a lock: several at once are safe."""
    from worker import migrate

    url = ctx.settings.database_url
    with clear_errors():
        migrate.upgrade(url, revision)
        click.echo(f"database {describe_db(ctx.settings)} at revision {migrate.current(url)}")


@db.command("downgrade")
@click.argument("revision")
@pass_ctx
def db_downgrade(ctx: Context, revision: str) -> None:
    """Undo migrations down to REVISION ('base' removes everything)."""
    from worker import migrate

    url = ctx.settings.database_url
    with clear_errors():
        migrate.downgrade(url, revision)
        click.echo(f"database {describe_db(ctx.settings)} at revision {migrate.current(url) or 'base'}")


GPU_BATCHES_IN_FLIGHT = 4  # an inference worker's default on a GPU (threads pool)


def choose_pool(pool: str | None, concurrency: int | None, inference: bool, gpu: bool) -> tuple[str, int]:
    """The worker's pool and concurrency where the options leave them out.

    On a GPU, one batch at a time leaves it idle while the worker detects languages and writes;
    batches in flight together overlap that (bench/RESULTS.md: 1.65x with 2, 1.88x with 4 on an
    H100). On a CPU one batch already uses every core. A retrain runs for minutes: on the solo pool it
    would block the connection's heartbeats (RabbitMQ then drops the connection and delivers the
    retrain again) and pings."""
    if pool is None:
        pool = "threads" if gpu or not inference else "solo"
        if gpu and concurrency is None:
            concurrency = GPU_BATCHES_IN_FLIGHT
    return pool, concurrency or 1


@click.command()
@click.option("--queues", "-Q", default="inference", show_default=True, help="Comma-separated queues to consume.")
@click.option("--pool", type=click.Choice(["solo", "threads", "prefork"]),
              help="solo: one batch at a time (the default for inference on CPU, where one batch uses every "
                   "core). threads: several batches at once over one copy of the models (the default for "
                   f"inference on a GPU, {GPU_BATCHES_IN_FLIGHT} at once, and for a trainer, which answers pings "
                   "and heartbeats while a long retrain runs). prefork forks children: CPU only.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 256),
              help=f"Batches (or children) at once [default: {GPU_BATCHES_IN_FLIGHT} for inference on a GPU, else 1].")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--hostname", "-n", help="Worker name [default: reviews@<host>].")
@click.option("--beat", "-B", is_flag=True, help="Also run the beat scheduler (one per deployment).")
@click.option("--metrics-port", type=int,
              help="Serve Prometheus metrics on this port; 0: off [default: REVIEWS_METRICS_PORT, else 0].")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="json: one object a line, with job and batch ids [default: REVIEWS_LOG_FORMAT, else text].")
@pass_ctx
def worker(ctx: Context, queues: str, pool: str, concurrency: int, loglevel: str, hostname: str | None,
           beat: bool, metrics_port: int | None, log_format: str | None) -> None:
    """Start a Celery worker that analyses batches (queue 'inference') or retrains ('training')."""
    from worker import logs, metrics  # neither imports prometheus_client until asked to
    from worker.db import check_schema
    from worker.nlp.device import pick_device

    with clear_errors():
        settings = ctx.settings.with_(metrics_port=metrics_port, log_format=log_format)
        check_schema(settings.database_url)
        inference = "inference" in queues.split(",")
        gpu = inference and pick_device(settings.device).type == "cuda"
        if pool == "prefork" and gpu:
            raise click.ClickException("CUDA cannot run in forked children: use --pool threads (or solo) and scale "
                                       "processes")
    pool, concurrency = choose_pool(pool, concurrency, inference, gpu)
    if pool == "prefork" and settings.threads == 0:
        # Each child gets its share of the cores; oversubscribed torch threads slow everyone down. The
        # share is part of the settings the app is built with, so every child sees it.
        settings = settings.with_(threads=max(1, (os.cpu_count() or 1) // concurrency))
    if settings.metrics_port and pool == "prefork":
        metrics.prepare_multiprocess()  # before anything imports prometheus_client; children inherit it
    ctx.settings = settings
    warn_about_drift(ctx)
    app = ctx.app()
    with clear_errors():
        logs.install(app, settings.log_format, loglevel)
        if settings.metrics_port:
            metrics.install(app, settings, pool=pool)  # before the models load: a port in use fails fast
    if "inference" in queues.split(","):
        if pool == "prefork":  # each child loads its own models as it starts
            from celery.signals import worker_process_init

            worker_process_init.connect(app.reviews_context.warm_up_quietly, weak=False)
        else:
            with clear_errors():  # a broken model stops the worker now, with one line, not in a batch
                app.reviews_context.warm_up()
        if settings.metrics_port:
            metrics.serving_at_start(app, pool)  # after the warm-up (hook) above: the models are loaded
    argv = ["worker", "-Q", queues, "--pool", pool, "--concurrency", str(concurrency), "--loglevel", loglevel]
    if hostname:
        argv += ["--hostname", hostname]
    if beat:
        argv.append("--beat")
    started = (f"worker on {redact_url(settings.broker_url)}, database {describe_db(settings)}"
               f"{f', {settings.threads} torch threads per child' if pool == 'prefork' else ''}"
               f"{f', metrics on port {settings.metrics_port}' if settings.metrics_port else ''}")
    if settings.log_format == "json":  # every line a JSON object: no banner, the start line a log record
        argv.insert(0, "--quiet")
        logging.getLogger("reviews.worker").info(started)
    else:
        click.echo(started, err=True)
    app.worker_main(argv)


@click.command()
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--schedule", "-s", type=click.Path(dir_okay=False),
              help="Where beat keeps its state [default: $REVIEWS_HOME/celerybeat-schedule]; the directory "
                   "must be writable (not the working directory of a read-only image).")
@pass_ctx
def beat(ctx: Context, loglevel: str, schedule: str | None) -> None:
    """Run the Celery beat scheduler (scheduled retraining). Run exactly one per deployment."""
    from worker.config import home_dir

    path = Path(schedule) if schedule else home_dir() / "celerybeat-schedule"
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx.app().start(["beat", "--loglevel", loglevel, "--schedule", str(path)])
