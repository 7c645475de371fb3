"""The `reviews` command line: parse, call worker functions, show progress and results."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from contextlib import contextmanager

import click

from worker.config import Settings, redact_url
from worker.db import DatabaseError, check_schema, session_factory
from worker.inputs import InputError
from worker.nlp.types import ModelLoadError


class Context:
    """What every command needs: settings (environment plus global flags) and lazy database access."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def sessions(self, check: bool = True):
        if check:
            check_schema(self.settings.database_url)
        return session_factory(self.settings.database_url)


pass_ctx = click.make_pass_decorator(Context)


@contextmanager
def clear_errors():
    """Known failures become one line on stderr and exit code 1, not a traceback."""
    try:
        yield
    except (DatabaseError, ModelLoadError, InputError, LookupError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    except ValueError as exc:
        if "REVIEWS_" in str(exc):
            raise click.ClickException(str(exc)) from exc
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar="REVIEWS_DATABASE_URL", help="SQLAlchemy URL [default: SQLite file].")
@click.option("--broker-url", envvar="REVIEWS_BROKER_URL", help="Celery broker [default: redis://localhost:6379/0].")
@click.version_option(package_name="reviews")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, broker_url: str | None) -> None:
    """Review analysis: DistilBERT sentiment and named entities, on Celery workers, into SQL."""
    try:
        settings = Settings.from_env(database_url=database_url, broker_url=broker_url)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    ctx.obj = Context(settings)


# -- database ---------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Create or change the database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_ctx
def db_upgrade(ctx: Context, revision: str) -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from worker import migrate

    url = ctx.settings.database_url
    with clear_errors(), _db_errors(url):
        migrate.upgrade(url, revision)
        click.echo(f"database {redact_url(url)} at revision {migrate.current(url)}")


@db.command("downgrade")
@click.argument("revision")
@pass_ctx
def db_downgrade(ctx: Context, revision: str) -> None:
    """Undo migrations down to REVISION ('base' removes everything)."""
    from worker import migrate

    url = ctx.settings.database_url
    with clear_errors(), _db_errors(url):
        migrate.downgrade(url, revision)
        click.echo(f"database {redact_url(url)} at revision {migrate.current(url) or 'base'}")


@contextmanager
def _db_errors(url: str):
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        raise click.ClickException(f"cannot connect to the database {redact_url(url)}: {reason}") from exc


def _ensure_schema(url: str) -> None:
    """The embedded default creates its SQLite schema on first use; other databases need `db upgrade`."""
    if url.startswith("sqlite"):
        from worker import migrate

        migrate.upgrade(url)


# -- ingest and run ---------------------------------------------------------------------------------


def _open_input(path: str):
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def _report_rejections(report) -> None:
    for r in report.first_rejections:
        click.echo(f"line {r.line_no}: {r.reason}", err=True)
    more = report.rejected - len(report.first_rejections)
    if more > 0:
        click.echo(f"... and {more} more rejected lines", err=True)
    if report.rejected:
        click.echo(f"rejected lines are kept: reviews status {report.job_id} --rejected", err=True)


input_file = click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
format_option = click.option(
    "--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True,
    help="Input format; auto: .csv files are CSV, anything else JSONL.",
)
batch_option = click.option("--batch-size", type=click.IntRange(1, 10_000), help="Reviews per queue message [64].")


@main.command()
@input_file
@format_option
@batch_option
@click.option("--wait", is_flag=True, help="Show a progress bar until the job ends.")
@pass_ctx
def enqueue(ctx: Context, file: str, fmt: str, batch_size: int | None, wait: bool) -> None:
    """Store the reviews of FILE (JSONL, CSV with a header, '-' for stdin) and queue them for the workers."""
    from worker import pipeline
    from worker.app import configure
    from worker.tasks import app, check_broker, enqueue_batch

    settings = ctx.settings.with_(batch_size=batch_size)
    configure(app, settings)
    with clear_errors():
        sessions = ctx.sessions()
        check_broker()
        with _open_input(file) as stream:
            report = pipeline.ingest(sessions, stream, file, settings, enqueue_batch, fmt=fmt)
    _report_rejections(report)
    if report.accepted == 0:
        raise click.ClickException(f"{file}: no reviews to analyse (job {report.job_id})")
    click.echo(report.job_id)
    click.echo(f"job {report.job_id}: {report.accepted} reviews queued in {report.batches} batches, "
               f"{report.rejected} lines rejected", err=True)
    if wait:
        _wait(sessions, report.job_id)


def _wait(sessions, job_id: int) -> None:
    from worker import pipeline

    with sessions() as s:
        p = pipeline.progress(s, job_id)
    with click.progressbar(length=p.total, label=f"job {job_id}", file=sys.stderr, show_pos=True) as bar:
        seen = 0
        while True:
            with sessions() as s:
                p = pipeline.progress(s, job_id)
            bar.update(p.done + p.failed - seen)
            seen = p.done + p.failed
            if p.finished:
                break
            time.sleep(0.5)
    _print_progress(p)


@main.command()
@input_file
@format_option
@batch_option
@pass_ctx
def run(ctx: Context, file: str, fmt: str, batch_size: int | None) -> None:
    """Analyse FILE in this process, without a broker: the embedded default (SQLite unless
    REVIEWS_DATABASE_URL says otherwise)."""
    from worker import pipeline
    from worker.runtime import Runtime

    settings = ctx.settings.with_(batch_size=batch_size)
    with clear_errors():
        _ensure_schema(settings.database_url)
        check_schema(settings.database_url)
        runtime = Runtime(settings)
        models = runtime.models()
        started = time.monotonic()
        done = 0

        def analyze_now(job_id: int, ids: list[int]) -> None:
            nonlocal done
            done += pipeline.analyze_batch(runtime.sessions, models, job_id, ids)
            rate = done / max(time.monotonic() - started, 1e-9)
            click.echo(f"\ranalysed {done} reviews ({rate:.1f}/s)", err=True, nl=False)

        with _open_input(file) as stream:
            report = pipeline.ingest(runtime.sessions, stream, file, settings, analyze_now, fmt=fmt)
    click.echo("", err=True)
    _report_rejections(report)
    if report.accepted == 0:
        raise click.ClickException(f"{file}: no reviews to analyse (job {report.job_id})")
    with runtime.sessions() as s:
        _print_progress(pipeline.progress(s, report.job_id))
    click.echo(f"database: {redact_url(settings.database_url)}; results: reviews export --job {report.job_id}")


# -- progress and results ---------------------------------------------------------------------------


def _print_progress(p) -> None:
    click.echo(f"job {p.job_id} [{p.status}] {p.source}: {p.done}/{p.total} done, {p.failed} failed, "
               f"{p.pending} pending, {p.rejected} lines rejected")


@main.command()
@click.argument("job_id", type=int)
@click.option("--rejected", is_flag=True, help="List the rejected input lines.")
@click.option("--failed", is_flag=True, help="List reviews that failed, with the reason.")
@pass_ctx
def status(ctx: Context, job_id: int, rejected: bool, failed: bool) -> None:
    """Progress, counts and failures of one job."""
    from sqlalchemy import select

    from worker import pipeline
    from worker.schema import JobReview, RejectedLine, Review

    with clear_errors():
        sessions = ctx.sessions()
        with sessions() as s:
            _print_progress(pipeline.progress(s, job_id))
            if rejected:
                q = select(RejectedLine).where(RejectedLine.job_id == job_id).order_by(RejectedLine.line_no)
                for r in s.scalars(q):
                    click.echo(f"  line {r.line_no}: {r.reason}")
            if failed:
                q = (select(Review.external_id, JobReview.error).join(JobReview, JobReview.review_id == Review.id)
                     .where(JobReview.job_id == job_id, JobReview.status == "failed"))
                for ext, error in s.execute(q):
                    click.echo(f"  {ext}: {error}")


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many of the latest jobs.")
@pass_ctx
def jobs(ctx: Context, limit: int) -> None:
    """The latest jobs with their progress."""
    from sqlalchemy import select

    from worker import pipeline
    from worker.schema import Job

    with clear_errors():
        sessions = ctx.sessions()
        with sessions() as s:
            ids = s.scalars(select(Job.id).order_by(Job.id.desc()).limit(limit)).all()
            if not ids:
                click.echo("no jobs yet")
            for job_id in ids:
                _print_progress(pipeline.progress(s, job_id))


@main.command()
@click.option("--job", "job_id", type=int, help="Only the reviews of this job [default: all].")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="File to write [default: stdout].")
@click.option("--no-text", is_flag=True, help="Leave the review text out.")
@pass_ctx
def export(ctx: Context, job_id: int | None, fmt: str, output: str, no_text: bool) -> None:
    """Write the latest results as JSONL or CSV (entities as a JSON list in CSV)."""
    from worker.export import COLUMNS, iter_results

    columns = [c for c in COLUMNS if not (no_text and c == "text")]
    with clear_errors():
        sessions = ctx.sessions()
        with sessions() as s, click.open_file(output, "w", encoding="utf-8") as out:
            writer = csv.DictWriter(out, columns, extrasaction="ignore") if fmt == "csv" else None
            if writer:
                writer.writeheader()
            n = 0
            for row in iter_results(s, job_id):
                if writer:
                    writer.writerow({**row, "entities": json.dumps(row["entities"])})
                else:
                    out.write(json.dumps({c: row[c] for c in columns}, ensure_ascii=False) + "\n")
                n += 1
    if output != "-":
        click.echo(f"wrote {n} reviews to {output}", err=True)


@main.command()
@click.argument("job_id", type=int)
@click.option("--failed", "retry_failed", is_flag=True, help="Also send the reviews that failed again.")
@pass_ctx
def resume(ctx: Context, job_id: int, retry_failed: bool) -> None:
    """Send every review of JOB that has no result yet to the queue again, from the database
    (after Redis was flushed or restarted, say). Reviews with results are not sent twice."""
    from worker import pipeline
    from worker.app import configure
    from worker.tasks import app, check_broker, enqueue_batch

    configure(app, ctx.settings)
    with clear_errors():
        sessions = ctx.sessions()
        check_broker()
        n = pipeline.requeue(sessions, job_id, enqueue_batch, ctx.settings.batch_size, retry_failed)
    click.echo(f"job {job_id}: {n} reviews sent again")


@main.command()
@click.option("--job", "job_id", type=int, help="The reviews of this job.")
@click.option("--since", type=click.DateTime(), help="Reviews ingested at or after this time (UTC).")
@click.option("--until", type=click.DateTime(), help="Reviews ingested before this time (UTC).")
@click.option("--all", "everything", is_flag=True, help="Every stored review.")
@click.option("--wait", is_flag=True, help="Show a progress bar until the job ends.")
@pass_ctx
def reprocess(ctx: Context, job_id, since, until, everything: bool, wait: bool) -> None:
    """Analyse chosen stored reviews again with the active model versions, as a new job."""
    from datetime import timezone

    from worker import pipeline
    from worker.app import configure
    from worker.tasks import app, check_broker, enqueue_batch

    if not (job_id or since or until or everything):
        raise click.UsageError("choose reviews with --job, --since/--until, or --all")
    since = since.replace(tzinfo=timezone.utc) if since else None
    until = until.replace(tzinfo=timezone.utc) if until else None
    parts = [f"job {job_id}" if job_id else "", f"since {since:%Y-%m-%d %H:%M}" if since else "",
             f"until {until:%Y-%m-%d %H:%M}" if until else ""]
    description = "reprocess " + (" ".join(p for p in parts if p) or "all")
    configure(app, ctx.settings)
    with clear_errors():
        sessions = ctx.sessions()
        check_broker()
        new_id = pipeline.create_reprocess_job(sessions, job_id, since, until, description)
        n = pipeline.requeue(sessions, new_id, enqueue_batch, ctx.settings.batch_size)
    click.echo(new_id)
    click.echo(f"job {new_id}: {n} reviews queued ({description})", err=True)
    if wait and n:
        _wait(sessions, new_id)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@pass_ctx
def label(ctx: Context, file: str) -> None:
    """Import human labels from FILE (JSONL): {"id", "sentiment"}, {"text", "sentiment"} or
    {"text", "entities": [{"start", "end", "label"}]}. Importing the same label twice stores it once."""
    from worker.labels import import_labels

    with clear_errors():
        sessions = ctx.sessions()
        with _open_input(file) as stream:
            report = import_labels(sessions, stream, file, ctx.settings.max_line_bytes)
    for r in report.rejected[:20]:
        click.echo(f"line {r.line_no}: {r.reason}", err=True)
    if len(report.rejected) > 20:
        click.echo(f"... and {len(report.rejected) - 20} more rejected lines", err=True)
    click.echo(f"{report.added} labels added, {report.already_known} already known, {len(report.rejected)} lines rejected")


@main.command()
@click.option("--task", type=click.Choice(["sentiment", "ner", "all"]), default="all", show_default=True)
@click.option("--wait", is_flag=True, help="Wait for the outcome and print it.")
@click.option("--local", is_flag=True, help="Train in this process instead of on a trainer worker.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of the label loss; the rest is distillation from the active version (1: no teacher).")
@click.option("--temperature", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@click.option("--epochs", type=click.FloatRange(min=0.01), default=2.0, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0), default=3e-5, show_default=True)
@pass_ctx
def retrain(ctx: Context, task: str, wait: bool, local: bool, alpha: float, temperature: float, epochs: float,
            lr: float) -> None:
    """Fine-tune the active version on the human labels and promote the result if it is not worse."""
    tasks = ["sentiment", "ner"] if task == "all" else [task]
    options = dict(alpha=alpha, temperature=temperature, epochs=epochs, lr=lr)
    with clear_errors():
        sessions = ctx.sessions()
        if local:
            from worker import retrain as retraining

            for t in tasks:
                outcome = retraining.retrain(ctx.settings, sessions, t, 0, progress=lambda m: click.echo(m, err=True),
                                             **options)
                click.echo(json.dumps(outcome.as_dict()))
            return
        from worker.app import configure
        from worker.tasks import app, check_broker
        from worker.tasks import retrain as retrain_task

        configure(app, ctx.settings)
        check_broker()
        sent = [(t, retrain_task.apply_async(args=[t], kwargs=options, queue="training")) for t in tasks]
        for t, result in sent:
            click.echo(f"{t} retrain sent to queue 'training': task {result.id}", err=True)
        if wait:
            for _, result in sent:
                click.echo(json.dumps(result.get(propagate=True)))


# -- model versions ---------------------------------------------------------------------------------


@main.group()
def models() -> None:
    """Model versions: list, show, promote, roll back."""


task_option = click.option("--task", type=click.Choice(["sentiment", "ner"]), help="Only this task.")


def _describe(mv) -> str:
    metrics = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in (mv.metrics or {}).items()
                        if not isinstance(v, dict))
    return f"{mv.task:9} v{mv.version:<3} {mv.status:9} {mv.created_at:%Y-%m-%d %H:%M}  {metrics}"


@models.command("list")
@task_option
@pass_ctx
def models_list(ctx: Context, task: str | None) -> None:
    """Every version, with status and headline metrics."""
    from worker import registry

    with clear_errors():
        sessions = ctx.sessions()
        with sessions() as s:
            registry.active_versions(s, ctx.settings)  # the configured defaults are version 1
            for mv in registry.versions(s, task):
                click.echo(_describe(mv))


@models.command("show")
@click.argument("task", type=click.Choice(["sentiment", "ner"]))
@click.argument("version", type=int)
@pass_ctx
def models_show(ctx: Context, task: str, version: int) -> None:
    """Everything known about one version, as JSON."""
    from worker import registry

    with clear_errors():
        sessions = ctx.sessions()
        with sessions() as s:
            registry.active_versions(s, ctx.settings)
            mv = registry.get(s, task, version)
            parent = s.get(type(mv), mv.parent_id) if mv.parent_id else None
            click.echo(json.dumps({
                "task": mv.task, "version": mv.version, "status": mv.status, "source": mv.source,
                "parent_version": parent.version if parent else None, "train_counts": mv.train_counts,
                "metrics": mv.metrics, "note": mv.note, "created_at": mv.created_at.isoformat(),
                "promoted_at": mv.promoted_at.isoformat() if mv.promoted_at else None,
            }, indent=2))


@models.command("promote")
@click.argument("task", type=click.Choice(["sentiment", "ner"]))
@click.argument("version", type=int)
@pass_ctx
def models_promote(ctx: Context, task: str, version: int) -> None:
    """Make VERSION the active one (workers switch at their next batch)."""
    from worker import registry

    with clear_errors():
        sessions = ctx.sessions()
        with sessions() as s:
            registry.active_versions(s, ctx.settings)
            mv = registry.promote(s, task, version, note="promoted by hand")
            s.commit()
            click.echo(f"{task} version {mv.version} is active")


@models.command("rollback")
@click.argument("task", type=click.Choice(["sentiment", "ner"]))
@pass_ctx
def models_rollback(ctx: Context, task: str) -> None:
    """Put back the version that was active before the current one."""
    from worker import registry

    with clear_errors():
        sessions = ctx.sessions()
        with sessions() as s:
            registry.active_versions(s, ctx.settings)
            mv = registry.rollback(s, task)
            s.commit()
            click.echo(f"{task} version {mv.version} is active again")


# -- workers ----------------------------------------------------------------------------------------


@main.command()
@click.option("--queues", "-Q", default="inference", show_default=True, help="Comma-separated queues to consume.")
@click.option("--pool", type=click.Choice(["solo", "threads", "prefork"]), default="solo", show_default=True,
              help="solo: one process, safe with CUDA. prefork forks children: CPU only.")
@click.option("--concurrency", "-c", type=click.IntRange(1), default=1, show_default=True)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--hostname", "-n", help="Worker name [default: reviews@<host>].")
@click.option("--beat", "-B", is_flag=True, help="Also run the beat scheduler (one per deployment).")
@pass_ctx
def worker(ctx: Context, queues: str, pool: str, concurrency: int, loglevel: str, hostname: str | None,
           beat: bool) -> None:
    """Start a Celery worker that analyses batches (queue 'inference') or retrains ('training')."""
    from worker.nlp.device import pick_device

    settings = ctx.settings
    with clear_errors():
        check_schema(settings.database_url)
        if pool == "prefork" and pick_device(settings.device).type == "cuda":
            raise click.ClickException("CUDA cannot run in forked children: use --pool solo and scale processes")
    if pool == "prefork" and settings.threads == 0:
        # Each child gets its share of the cores; oversubscribed torch threads slow everyone down.
        os.environ["REVIEWS_THREADS"] = str(max(1, (os.cpu_count() or 1) // concurrency))
    from worker.app import configure
    from worker.tasks import app

    configure(app, settings)
    argv = ["worker", "-Q", queues, "--pool", pool, "--concurrency", str(concurrency), "--loglevel", loglevel]
    if hostname:
        argv += ["--hostname", hostname]
    if beat:
        argv.append("--beat")
    click.echo(f"worker on {redact_url(settings.broker_url)}, database {redact_url(settings.database_url)}", err=True)
    app.worker_main(argv)


@main.command()
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@pass_ctx
def beat(ctx: Context, loglevel: str) -> None:
    """Run the Celery beat scheduler (scheduled retraining). Run exactly one per deployment."""
    from worker.app import configure
    from worker.tasks import app

    configure(app, ctx.settings)
    app.start(["beat", "--loglevel", loglevel])


from cli.evaluate import evaluate  # noqa: E402  (the group needs `main` defined first)

main.add_command(evaluate)


if __name__ == "__main__":
    main()
