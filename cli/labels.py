"""`reviews label`: import human labels."""

from __future__ import annotations

import click

from .helpers import Context, clear_errors, open_input, pass_ctx


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@pass_ctx
def label(ctx: Context, file: str) -> None:
    """Import human labels from FILE (JSONL): {"id", "sentiment"}, {"text", "sentiment"} or
    {"text", "entities": [{"start", "end", "label"}]}. Importing the same label twice stores it once;
    the latest label of a text wins. Exits 1 when no line could be used."""
    from worker.labels import import_labels

    with clear_errors():
        with open_input(file) as stream:
            report = import_labels(ctx.sessions(), stream, file, ctx.settings.max_line_bytes)
    for r in report.rejected[:20]:
        click.echo(f"line {r.line_no}: {r.reason}", err=True)
    if len(report.rejected) > 20:
        click.echo(f"... and {len(report.rejected) - 20} more rejected lines", err=True)
    click.echo(f"{report.added} labels added, {report.already_known} already known, {len(report.rejected)} lines rejected")
    if report.added == 0 and report.already_known == 0:
        raise click.ClickException(f"{file}: no label could be used")
