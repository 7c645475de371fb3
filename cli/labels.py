"""`reviews label`: import human labels, ours or a labeling tool's export; and the tasks that `reviews export
--for label-studio` writes for a labeling tool."""

from __future__ import annotations

import click

from worker.label_formats import FORMATS

from .helpers import Context, atomic_output, clear_errors, open_input, pass_ctx


def _mapping(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    from worker.label_formats import parse_mapping

    try:
        return parse_mapping(list(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="What FILE is: our JSONL, or a labeling tool's export; auto tells them apart by their fields.")
@click.option("--id-field", metavar="PATH",
              help="Where our review id lies in each task or record, as a dotted path (data.review_id for "
                   "tasks from `reviews export --for label-studio`). [default: match stored reviews by text]")
@click.option("--text-field", metavar="PATH",
              help="Where the text lies (data.review) when not where the tool puts it (Label Studio data.text, "
                   "doccano text, Argilla fields.text).")
@click.option("--map", "mapping", multiple=True, callback=_mapping, metavar="VALUE=TARGET[,...]",
              help="Rename the tool's values: TARGET is negative, positive, PER, ORG, LOC, MISC, or skip to drop "
                   "the value (counted, not an error). Repeatable; case does not matter.")
@click.option("--control", "controls", multiple=True, metavar="NAME",
              help="Read only these Label Studio controls (from_name) or Argilla questions. [default: all]")
@pass_ctx
def label(ctx: Context, file: str, fmt: str, id_field: str | None, text_field: str | None,
          mapping: dict[str, str], controls: tuple[str, ...]) -> None:
    """Import human labels from FILE: our JSONL ({"id", "sentiment"}, {"text", "sentiment"} or
    {"text", "entities": [{"start", "end", "label"}]}), or an export of Label Studio (JSON), doccano
    (JSONL) or Argilla (records as JSON or JSONL). A tool's own task id is never taken as our review
    id: name where ours lies with --id-field. Importing the same label twice stores it once; the latest
    label of a text wins. Exits 1 when no label could be used."""
    from worker.label_formats import ToolOptions
    from worker.labels import import_labels

    options = ToolOptions(id_field, text_field, mapping, frozenset(controls) if controls else None)
    with clear_errors():
        with open_input(file) as stream:
            report = import_labels(ctx.sessions(), stream, file, ctx.settings.max_line_bytes, fmt, options)
    unit = report.unit
    for r in report.rejected[:20]:
        click.echo(f"{unit} {r.line_no}: {r.reason}", err=True)
    if len(report.rejected) > 20:
        click.echo(f"... and {len(report.rejected) - 20} more rejected {unit}s", err=True)
    extra = [f"{_count(report.skipped, 'value')} skipped by --map"] if report.skipped else []
    extra += [f"{_count(report.unlabelled, unit)} without an answer"] if report.unlabelled else []
    detected = f" ({report.format})" if fmt == "auto" and report.format != "jsonl" else ""
    click.echo(f"{report.added} labels added, {report.already_known} already known, "
               f"{_count(len(report.rejected), unit)} rejected" + "".join(f", {e}" for e in extra) + detected)
    if report.added == 0 and report.already_known == 0 and not report.skipped:
        raise click.ClickException(f"{file}: no label could be used")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def export_for_labeling(ctx: Context, job_id: int | None, output: str, no_text: bool, uncertain: int | None) -> None:
    """One JSON array, written whole or not at all: to a temporary file beside OUTPUT, or for stdout to a
    temporary file copied out at the end, so that a failure halfway leaves no half array behind."""
    import tempfile

    from worker import jobs
    from worker.labeling_export import label_studio_tasks, write_json_array

    if no_text:
        raise click.UsageError("--no-text: tasks to label need their text")
    if click.get_current_context().get_parameter_source("fmt") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--format is for results; --for label-studio writes Label Studio JSON")
    with clear_errors():
        with ctx.sessions()() as s:
            if job_id is not None:
                jobs.progress(s, job_id)  # JobNotFound for a job that does not exist
            if output == "-":
                with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
                    n = write_json_array(spool, label_studio_tasks(s, job_id, uncertain))
                    spool.seek(0)
                    while chunk := spool.read(1 << 16):
                        click.echo(chunk, nl=False)
            else:
                with atomic_output(output) as out:
                    n = write_json_array(out, label_studio_tasks(s, job_id, uncertain))
    if output != "-":
        click.echo(f"wrote {n} tasks to {output}", err=True)
