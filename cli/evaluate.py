"""`reviews evaluate sentiment|ner FILE`: a readable report, then one JSON line with the figures."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _model_option(task: str):
    return click.option("--model", help=f"Directory or Hugging Face id [default: the active {task} version].")


def _resolve(ctx, task: str, model: str | None) -> str:
    """An explicit --model, else the active version in the database, else the configured default."""
    if model:
        return model
    settings = ctx.obj.settings
    from worker.db import DatabaseError, check_schema, session_factory

    try:
        check_schema(settings.database_url)
    except DatabaseError:
        return settings.sentiment_model if task == "sentiment" else settings.ner_model
    from worker import registry

    with session_factory(settings.database_url)() as s:
        return registry.active_versions(s, settings)[task].source


def _engine_options(ctx) -> dict:
    s = ctx.obj.settings
    return dict(device=s.device, precision=s.precision, token_budget=s.token_budget, max_length=s.max_length,
                stride=s.window_stride, max_chars=s.max_review_chars)


@click.group()
def evaluate() -> None:
    """Measure a model on labeled data it did not train on."""


@evaluate.command("sentiment")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_model_option("sentiment")
@click.option("--limit", type=click.IntRange(1), help="Only the first N examples.")
@click.pass_context
def evaluate_sentiment(ctx, file: Path, model: str | None, limit: int | None) -> None:
    """FILE: JSONL {"text", "label"} or GLUE TSV (label<TAB>sentence, 1 = positive)."""
    from cli.main import clear_errors
    from worker.training import data
    from worker.training import evaluate as ev

    with clear_errors():
        try:
            examples = data.read_sentiment(file)[:limit]
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        source = _resolve(ctx, "sentiment", model)
        m = ev.evaluate_sentiment(source, examples, **_engine_options(ctx))
    click.echo(f"model: {source}\ndata: {file} ({m['n']} examples)")
    click.echo(f"accuracy {m['accuracy']:.4f}   F1 (positive) {m['f1']:.4f}")
    click.echo(json.dumps(m))


@evaluate.command("ner")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_model_option("ner")
@click.option("--limit", type=click.IntRange(1), help="Only the first N sentences.")
@click.pass_context
def evaluate_ner(ctx, file: Path, model: str | None, limit: int | None) -> None:
    """FILE: CoNLL-2003 (token and BIO tag per line, blank line between sentences)."""
    from cli.main import clear_errors
    from worker.training import data
    from worker.training import evaluate as ev

    with clear_errors():
        sentences = data.read_conll(file)[:limit]
        source = _resolve(ctx, "ner", model)
        m = ev.evaluate_ner(source, sentences, **_engine_options(ctx))
    click.echo(f"model: {source}\ndata: {file} ({m['n']} sentences, {m['entities']} entities)")
    click.echo(f"{'type':6} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
    for kind, t in m["per_type"].items():
        click.echo(f"{kind:6} {t['precision']:9.4f} {t['recall']:7.4f} {t['f1']:7.4f} {t['support']:8d}")
    click.echo(f"{'all':6} {m['precision']:9.4f} {m['recall']:7.4f} {m['f1']:7.4f} {m['entities']:8d}")
    click.echo(json.dumps(m))
