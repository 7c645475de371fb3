"""`reviews evaluate sentiment|ner FILE`: a readable report, then one JSON line with the figures.

Also runs on its own: `python -m cli.evaluate sentiment FILE`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .helpers import clear_errors


def _model_option(task: str):
    return click.option("--model", metavar="PATH_OR_ID",
                        help=f"Directory or Hugging Face id [default: the active {task} version, else the bundled"
                             f" model (REVIEWS_{task.upper()}_MODEL)].")


def _settings(ctx):
    obj = ctx.find_object(object)
    settings = getattr(obj, "settings", None)
    if settings is None:  # run as `python -m cli.evaluate`, outside the `reviews` group
        from worker.config import Settings, SettingsError

        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from exc
    return settings


def _resolve(ctx, task: str, model: str | None) -> str:
    """An explicit --model, else the active version in the database, else the configured default."""
    if model:
        return model
    settings = _settings(ctx)
    default = settings.sentiment_model if task == "sentiment" else settings.ner_model
    from worker.db import DatabaseError, check_schema, session_factory

    try:
        check_schema(settings.database_url)
    except DatabaseError:
        return default
    from worker import registry

    with session_factory(settings.database_url)() as s:
        return registry.active_versions(s, settings)[task].source


def _select(rows: list, limit: int | None, last: int | None) -> list:
    if last is not None:
        rows = rows[-last:]
    return rows[:limit] if limit is not None else rows


def _progress(what: str):
    """A progress line on stderr (the report and the JSON line go to stdout)."""
    started = time.monotonic()

    def show(done: int, total: int) -> None:
        rate = done / max(1e-9, time.monotonic() - started)
        click.echo(f"\r{done}/{total} {what} ({rate:.0f}/s)", nl=done == total, err=True)

    return show


def _load(task: str, source: str, ctx):
    from worker.nlp.ner import load_ner
    from worker.nlp.sentiment import load_sentiment

    started = time.monotonic()
    loaded = (load_sentiment if task == "sentiment" else load_ner)(source, _settings(ctx).engine_options())
    return loaded, time.monotonic() - started


limit_option = click.option("--limit", type=click.IntRange(1), help="Only the first N examples (after --last).")
last_option = click.option("--last", type=click.IntRange(1),
                           help="Only the last N examples of FILE: `--last 2000` on imdb/train.jsonl.gz is the"
                                " held-out slice the bundled sentiment model never trained on.")
batch_option = click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True,
                            help="Texts handed to the engine per call (it batches them by tokens inside).")


@click.group()
def evaluate() -> None:
    """Measure a model on labeled data it did not train on."""


@evaluate.command("sentiment")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_model_option("sentiment")
@limit_option
@last_option
@batch_option
@click.pass_context
def evaluate_sentiment(ctx, file: Path, model: str | None, limit: int | None, last: int | None,
                       batch_size: int) -> None:
    """FILE: JSONL {"text", "label"} (negative/positive or 0/1; .gz too) or GLUE TSV
    (label<TAB>sentence, 1 = positive)."""
    from worker.training import data
    from worker.training import evaluate as ev

    with clear_errors():
        try:
            examples = _select(data.read_sentiment(file), limit, last)
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise click.ClickException(str(exc) if str(exc).startswith(str(file)) else f"{file}: {exc}") from exc
        if not examples:
            raise click.ClickException(f"{file}: no examples")
        source = _resolve(ctx, "sentiment", model)
        loaded, load_s = _load("sentiment", source, ctx)
        started = time.monotonic()
        m = ev.evaluate_sentiment(loaded, examples, batch_size=batch_size, progress=_progress("examples"))
        seconds = time.monotonic() - started
    positives = sum(e.label for e in examples)
    click.echo(f"model: {source} (loaded in {load_s:.1f} s)")
    click.echo(f"data:  {file}: {m['n']} examples, {positives} positive, {m['n'] - positives} negative")
    click.echo(f"time:  {seconds:.1f} s ({m['n'] / max(seconds, 1e-9):.1f} examples/s)")
    click.echo(f"accuracy {m['accuracy']:.4f}   F1 (positive) {m['f1']:.4f}")
    click.echo(json.dumps(m))


@evaluate.command("ner")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_model_option("ner")
@limit_option
@last_option
@batch_option
@click.pass_context
def evaluate_ner(ctx, file: Path, model: str | None, limit: int | None, last: int | None, batch_size: int) -> None:
    """FILE: CoNLL-2003 (token and BIO tag per line, blank line between sentences, -DOCSTART- ignored).
    Entity-level exact match, as seqeval counts it."""
    from worker.training import data
    from worker.training import evaluate as ev

    with clear_errors():
        try:
            sentences = _select(data.read_conll(file), limit, last)
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise click.ClickException(str(exc) if str(exc).startswith(str(file)) else f"{file}: {exc}") from exc
        if not sentences:
            raise click.ClickException(f"{file}: no sentences")
        source = _resolve(ctx, "ner", model)
        loaded, load_s = _load("ner", source, ctx)
        started = time.monotonic()
        m = ev.evaluate_ner(loaded, sentences, batch_size=batch_size, progress=_progress("sentences"))
        seconds = time.monotonic() - started
    click.echo(f"model: {source} (loaded in {load_s:.1f} s)")
    click.echo(f"data:  {file}: {m['n']} sentences, {m['entities']} entities")
    click.echo(f"time:  {seconds:.1f} s ({m['n'] / max(seconds, 1e-9):.1f} sentences/s)")
    click.echo(f"{'type':6} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
    for kind, t in m["per_type"].items():
        click.echo(f"{kind:6} {t['precision']:9.4f} {t['recall']:7.4f} {t['f1']:7.4f} {t['support']:8d}")
    click.echo(f"{'all':6} {m['precision']:9.4f} {m['recall']:7.4f} {m['f1']:7.4f} {m['entities']:8d}")
    click.echo(json.dumps(m))


if __name__ == "__main__":
    sys.exit(evaluate())
