"""Model versions and retraining: `models list|show|add|promote|rollback`, `retrain`."""

from __future__ import annotations

import json

import click

from .helpers import Context, clear_errors, pass_ctx

task_option = click.option("--task", type=click.Choice(["sentiment", "ner"]), help="Only this task.")


def _as_dict(mv, parent_version: int | None = None) -> dict:
    return {"task": mv.task, "version": mv.version, "status": mv.status, "source": mv.source,
            "parent_version": parent_version, "train_counts": mv.train_counts, "metrics": mv.metrics,
            "note": mv.note, "created_at": mv.created_at.isoformat(),
            "promoted_at": mv.promoted_at.isoformat() if mv.promoted_at else None}


def _describe(mv) -> str:
    m = mv.metrics or {}
    key = m.get("gate_metric")
    gate = ""
    if key and isinstance(m.get("candidate"), dict) and isinstance(m.get("active"), dict):
        gate = f"{key} {m['candidate'].get(key, float('nan')):.4f} vs {m['active'].get(key, float('nan')):.4f} (parent)"
    extra = ", ".join(f"{k}={v}" for k, v in m.items() if not isinstance(v, dict) and v is not None
                      and k != "gate_metric")
    return "  ".join(p for p in (f"{mv.task:9} v{mv.version:<3} {mv.status:9} {mv.created_at:%Y-%m-%d %H:%M}",
                                  gate, extra, mv.note) if p)


@click.group()
def models() -> None:
    """Model versions: list, show, add your own, promote, roll back."""


@models.command("list")
@task_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line instead of text.")
@pass_ctx
def models_list(ctx: Context, task: str | None, as_json: bool) -> None:
    """Every version, with status, the promotion gate's figures and the note."""
    from worker import registry

    with clear_errors():
        with ctx.sessions()() as s:
            for warning in registry.configured_drift(s, ctx.settings):  # also registers the defaults
                click.echo(f"warning: {warning}", err=True)
            for mv in registry.versions(s, task):
                click.echo(json.dumps(_as_dict(mv)) if as_json else _describe(mv))


@models.command("show")
@click.argument("task", type=click.Choice(["sentiment", "ner"]))
@click.argument("version", type=int)
@pass_ctx
def models_show(ctx: Context, task: str, version: int) -> None:
    """Everything known about one version, as JSON."""
    from worker import registry

    with clear_errors():
        with ctx.sessions()() as s:
            registry.active_versions(s, ctx.settings)
            mv = registry.get(s, task, version)
            parent = registry.parent(s, mv)
            click.echo(json.dumps(_as_dict(mv, parent.version if parent else None), indent=2))


@models.command("add")
@click.argument("task", type=click.Choice(["sentiment", "ner"]))
@click.argument("source")
@click.option("--revision", help="Hub ids: branch, tag or commit to pin [default: main]; recorded as its commit.")
@click.option("--activate/--as-candidate", default=False, show_default=True,
              help="Make it the active version at once (workers switch at their next batch), or leave it a "
                   "candidate for `reviews models promote`.")
@click.option("--map", "label_map", multiple=True, metavar="LABEL=NAME,...",
              help="Our name for a label of the model: negative/positive/skip for sentiment; PER/ORG/LOC/MISC "
                   "(a type or a whole tag), O or skip for NER. Known synonyms map by themselves.")
@pass_ctx
def models_add(ctx: Context, task: str, source: str, revision: str | None, activate: bool,
               label_map: tuple[str, ...]) -> None:
    """Register a model directory or Hugging Face hub id as a new version of TASK.

    It is checked first (safetensors weights, a fast tokenizer, the task's head and labels, sane
    output on sample sentences through the serving engine), then copied under REVIEWS_MODEL_DIR, so
    that the version never depends on the source again."""
    from worker import model_import
    from worker.nlp.labels import parse_map

    with clear_errors():
        mapping = parse_map(label_map)
        sessions = ctx.sessions()
        done = model_import.import_model(ctx.settings, sessions, task, source, revision, mapping, activate,
                                         progress=lambda m: click.echo(m, err=True))
        for warning in done.warnings:
            click.secho(f"warning: {warning}", err=True, fg="yellow")
        changed = {o: n for o, n in zip(done.mapping.original, done.mapping.names) if o != n}
        if changed:
            click.echo("labels: " + ", ".join(f"{o} -> {n}" for o, n in changed.items()), err=True)
        click.echo(f"{task} version {done.version} added from {done.origin} as {done.status} ({done.directory})")
        if done.status != "active":
            click.echo(f"make it active with: reviews models promote {task} {done.version}", err=True)


@models.command("promote")
@click.argument("task", type=click.Choice(["sentiment", "ner"]))
@click.argument("version", type=int)
@pass_ctx
def models_promote(ctx: Context, task: str, version: int) -> None:
    """Make VERSION the active one (workers switch at their next batch)."""
    from worker import registry

    with clear_errors():
        with ctx.sessions()() as s:
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
        with ctx.sessions()() as s:
            registry.active_versions(s, ctx.settings)
            mv = registry.rollback(s, task)
            s.commit()
            click.echo(f"{task} version {mv.version} is active again")


@click.command()
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
        from worker.app import check_broker

        app = ctx.app()
        check_broker(app)
        sent = [(t, app.send_task("reviews.retrain", args=[t], kwargs=options, queue="training")) for t in tasks]
        for t, result in sent:
            click.echo(f"{t} retrain sent to queue 'training': task {result.id}", err=True)
        if wait:
            for _, result in sent:
                click.echo(json.dumps(result.get(propagate=True)))
