"""Jobs and results: `status`, `jobs`, `export`, `resume`, `reprocess`."""

from __future__ import annotations

import csv
import json
import sys
from datetime import timezone

import click

from .helpers import Context, atomic_output, clear_errors, pass_ctx, print_progress, wait_for_job


@click.command()
@click.argument("job_id", type=int)
@click.option("--rejected", is_flag=True, help="List the rejected input lines.")
@click.option("--failed", is_flag=True, help="List reviews that failed, with the reason.")
@click.option("--skipped", is_flag=True, help="List reviews left out on purpose (their language), with the reason.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@pass_ctx
def status(ctx: Context, job_id: int, rejected: bool, failed: bool, skipped: bool, as_json: bool) -> None:
    """Progress, counts and failures of one job."""
    from worker import jobs

    with clear_errors():
        with ctx.sessions()() as s:
            p = jobs.progress(s, job_id)
            lines = [(r.line_no, r.reason) for r in jobs.rejected_lines(s, job_id)] if rejected else []
            failures = jobs.failed_reviews(s, job_id) if failed else []
            left_out = jobs.failed_reviews(s, job_id, jobs.SKIPPED) if skipped else []
    if as_json:
        out = p.as_dict()
        if rejected:
            out["rejected_lines"] = [{"line": n, "reason": reason} for n, reason in lines]
        if failed:
            out["failed_reviews"] = [{"id": ext, "reason": error} for ext, error in failures]
        if skipped:
            out["skipped_reviews"] = [{"id": ext, "reason": error} for ext, error in left_out]
        click.echo(json.dumps(out))
        return
    print_progress(p)
    for line_no, reason in lines:
        click.echo(f"  line {line_no}: {reason}")
    for ext, error in failures + left_out:
        click.echo(f"  {ext}: {error}")


@click.command("jobs")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="How many of the latest jobs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line instead of text.")
@pass_ctx
def list_jobs(ctx: Context, limit: int, as_json: bool) -> None:
    """The latest jobs with their progress."""
    from worker import jobs

    with clear_errors():
        with ctx.sessions()() as s:
            found = jobs.latest(s, limit)
    if not found and not as_json:
        click.echo("no jobs yet")
    for p in found:
        print_progress(p, as_json)


@click.command()
@click.option("--job", "job_id", type=int, help="Only the reviews of this job [default: all].")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="File to write, whole or not at all [default: stdout].")
@click.option("--no-text", is_flag=True, help="Leave the review text out.")
@click.option("--for", "target", type=click.Choice(["label-studio"]),
              help="Write tasks to label instead: Label Studio import JSON, the latest results as predictions "
                   "and our id in data.review_id.")
@click.option("--uncertain", type=click.IntRange(min=1), metavar="N",
              help="With --for: only the N reviews the sentiment model is least sure of, least sure first.")
@pass_ctx
def export(ctx: Context, job_id: int | None, fmt: str, output: str, no_text: bool, target: str | None,
           uncertain: int | None) -> None:
    """Write the latest results as JSONL or CSV (entities as a JSON list in CSV), or with --for, as
    tasks for a labeling tool."""
    from worker import jobs
    from worker.results import COLUMNS, iter_export

    if target is not None:
        from .labels import export_for_labeling

        export_for_labeling(ctx, job_id, output, no_text, uncertain)
        return
    if uncertain is not None:
        raise click.UsageError("--uncertain chooses reviews to label: use it with --for label-studio")
    columns = [c for c in COLUMNS if not (no_text and c == "text")]
    with clear_errors():
        with ctx.sessions()() as s:
            if job_id is not None:
                jobs.progress(s, job_id)  # JobNotFound for a job that does not exist
            n = 0
            with atomic_output(output) as out:
                writer = csv.DictWriter(out, columns, extrasaction="ignore") if fmt == "csv" else None
                if writer:
                    writer.writeheader()
                for row in iter_export(s, job_id):
                    if writer:
                        writer.writerow({**row, "entities": json.dumps(row["entities"], allow_nan=False)})
                    else:
                        out.write(json.dumps({c: row[c] for c in columns}, ensure_ascii=False, allow_nan=False) + "\n")
                    n += 1
    if output != "-":
        click.echo(f"wrote {n} reviews to {output}", err=True)


@click.command()
@click.argument("job_id", type=int)
@click.option("--failed", "retry_failed", is_flag=True, help="Also analyse the reviews that failed again.")
@click.option("--local", is_flag=True, help="Analyse here, without a broker (for jobs of `reviews run`).")
@click.option("--wait", is_flag=True, help="Follow the job until it ends; the exit code tells how it ended.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up waiting after this many seconds.")
@pass_ctx
def resume(ctx: Context, job_id: int, retry_failed: bool, local: bool, wait: bool, timeout: float | None) -> None:
    """Finish JOB from the database: take over its ingest if that died (killed, broker gone), then send
    every review without a result again (after Redis lost the queue, say). Reviews with results are
    not analysed twice."""
    from worker import jobs

    with clear_errors():
        sessions = ctx.sessions()
        if not local:
            from worker.app import check_broker

            check_broker(ctx.app())
        if jobs.recover(sessions, job_id, ctx.settings.ingest_lease):
            click.echo(f"job {job_id}: its ingest had stopped; the reviews it stored make up the job", err=True)
        ids = jobs.pending_ids(sessions, job_id, retry_failed)
        if local:
            _analyse_here(ctx, job_id, ids)
        else:
            from worker.app import batch_sender

            jobs.send_in_batches(job_id, ids, batch_sender(ctx.app()), ctx.settings.batch_size)
        with sessions() as s:
            jobs.finish_if_complete(s, job_id)
            p = jobs.progress(s, job_id)
    click.echo(f"job {job_id}: {len(ids)} reviews {'analysed' if local else 'sent'} again", err=True)
    if wait and not local:
        with clear_errors():
            sys.exit(wait_for_job(ctx, job_id, timeout))
    print_progress(p)


def _analyse_here(ctx: Context, job_id: int, ids: list[int]) -> None:
    from worker import batches
    from worker.resources import Resources

    resources = Resources(ctx.settings)
    size = ctx.settings.batch_size
    for k in range(0, len(ids), size):
        batches.run_to_end(resources, job_id, ids[k : k + size])
        click.echo(f"\ranalysed {min(k + size, len(ids))}/{len(ids)}", err=True, nl=False)
    if ids:
        click.echo("", err=True)


@click.command()
@click.option("--job", "job_id", type=int, help="The reviews of this job.")
@click.option("--since", type=click.DateTime(), help="Reviews ingested at or after this time (UTC).")
@click.option("--until", type=click.DateTime(), help="Reviews ingested before this time (UTC).")
@click.option("--all", "everything", is_flag=True, help="Every stored review.")
@click.option("--wait", is_flag=True, help="Follow the job until it ends; the exit code tells how it ended.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up waiting after this many seconds.")
@pass_ctx
def reprocess(ctx: Context, job_id, since, until, everything: bool, wait: bool, timeout: float | None) -> None:
    """Analyse chosen stored reviews again with the active model versions, as a new job."""
    from worker import jobs
    from worker.app import batch_sender, check_broker

    if not (job_id or since or until or everything):
        raise click.UsageError("choose reviews with --job, --since/--until, or --all")
    since = since.replace(tzinfo=timezone.utc) if since else None
    until = until.replace(tzinfo=timezone.utc) if until else None
    parts = [f"job {job_id}" if job_id else "", f"since {since:%Y-%m-%d %H:%M}" if since else "",
             f"until {until:%Y-%m-%d %H:%M}" if until else ""]
    description = "reprocess " + (" ".join(p for p in parts if p) or "all")
    with clear_errors():
        sessions = ctx.sessions()
        check_broker(ctx.app())
        new_id = jobs.create_reprocess(sessions, job_id, since, until, description)
        n = jobs.send_in_batches(new_id, jobs.pending_ids(sessions, new_id), batch_sender(ctx.app()),
                                 ctx.settings.batch_size)
    if n == 0:
        raise click.ClickException(f"no stored reviews match ({description}); job {new_id} failed")
    click.echo(new_id)
    click.echo(f"job {new_id}: {n} reviews queued ({description})", err=True)
    if wait:
        with clear_errors():
            sys.exit(wait_for_job(ctx, new_id, timeout))
