"""The `reviews` command line: the group, its global flags, and the commands by noun (cli/ingest.py,
cli/jobs.py, cli/models.py, cli/labels.py, cli/ops.py, cli/evaluate.py,
cli/distill.py, cli/dashboard.py). Commands parse, call the
worker package, and print; the logic lives there."""

from __future__ import annotations

import click

from worker.config import Settings, SettingsError

from . import dashboard, distill, evaluate, ingest, jobs, labels, models, ops
from .helpers import Context


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar="REVIEWS_DATABASE_URL", help="SQLAlchemy URL [default: SQLite file].")
@click.option("--broker-url", envvar="REVIEWS_BROKER_URL", help="Celery broker [default: redis://localhost:6379/0].")
@click.version_option(package_name="reviews")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, broker_url: str | None) -> None:
    """Review analysis: DistilBERT sentiment and named entities, on Celery workers, into SQL."""
    try:
        settings = Settings.from_env(database_url=database_url, broker_url=broker_url)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    ctx.obj = Context(settings)


for command in (ingest.enqueue, ingest.run, jobs.status, jobs.list_jobs, jobs.export, jobs.resume, jobs.reprocess,
                labels.label, models.models, models.retrain, distill.distill, ops.db, ops.worker, ops.beat, evaluate.evaluate,
                dashboard.dashboard):
    main.add_command(command)


if __name__ == "__main__":
    main()
