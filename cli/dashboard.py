"""`reviews dashboard`: the web dashboard (worker/dashboard) served by uvicorn."""

from __future__ import annotations

import click

from .helpers import Context, clear_errors, describe_db, pass_ctx


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; the dashboard has no login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8050, show_default=True,
              help="Port to listen on; 0 picks a free one (printed on start).")
@pass_ctx
def dashboard(ctx: Context, host: str, port: int) -> None:
    """Serve the web dashboard: sentiment per day and product, top entities with the reviews that
    mention them, jobs and model versions, read from the database the workers write. Every asset
    ships in the package: it works offline."""
    import socket

    with clear_errors():
        import uvicorn

        from worker.dashboard.app import create_app, require_rollups

        ctx.sessions()  # one clear line when the database is unreachable or has no schema
        require_rollups(ctx.settings.database_url)
        app = create_app(ctx.settings)
        # Bound here, not by uvicorn: a port in use is one line (OSError) and port 0 gets its number.
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"dashboard on http://{shown}:{bound_port}/ (database {describe_db(ctx.settings)}); Ctrl-C stops it",
               err=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
