"""The dashboard as an ASGI app (Starlette): routes, Jinja2 templates, the static files shipped in the
package, and headers that keep the pages self-contained.

Pages are plain HTML rendered on the server, with their figures in the markup and their chart series
in a JSON <script> block that static/dashboard.js hands to Chart.js. The Content-Security-Policy
allows nothing but this server: no CDN, no inline script, no outside request, so a page that works
here works on a machine without internet.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import inspect, text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..config import Settings, redact_url
from ..db import DatabaseError, get_engine, session_factory
from .. import rollups
from . import params, views

HERE = Path(__file__).resolve().parent
ROLLUPS = ("sentiment_daily", "entity_daily", "rollup_deltas")
HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def require_rollups(url: str) -> None:
    """The dashboard reads the rollups of migrations 0004 and 0006: say so in one line where they are missing."""
    with get_engine(url).connect() as conn:
        missing = [t for t in ROLLUPS if not inspect(conn).has_table(t)]
    if missing:
        raise DatabaseError(f"the database {redact_url(url)} has no {', '.join(missing)} table: "
                            "run `reviews db upgrade`")


class SecurityHeaders:
    """Adds HEADERS to every response (a plain ASGI middleware: no buffering of the body)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["num"] = lambda v: "–" if v is None else f"{v:,}"
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["score"] = lambda v: "–" if v is None else f"{v:+.3f}"
    env.filters["when"] = _when
    env.filters["exact"] = lambda v: "" if v is None else (repr(float(v)) if isinstance(v, float) else str(v))
    env.globals["link"] = _link
    return templates


def _when(v) -> str:
    """A time in UTC to the minute (SQLite hands back naive UTC times, PostgreSQL aware ones)."""
    if v is None:
        return "–"
    if isinstance(v, datetime):
        v = v.astimezone(timezone.utc) if v.tzinfo else v
        return v.strftime("%Y-%m-%d %H:%M UTC")
    return str(v)


def _link(request: Request, path: str, **changes) -> str:
    """`path` with the current query string, changed by `changes` (None removes a parameter)."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in changes and k != "page"]
    for k, v in changes.items():
        if v is None:
            continue
        query += [(k, item) for item in v] if isinstance(v, (list, tuple)) else [(k, str(v))]
    return path + ("?" + urlencode(query) if query else "")


def create_app(settings: Settings) -> Starlette:
    sessions = session_factory(settings.database_url)
    templates = _templates()
    database = redact_url(settings.database_url)

    def page(view, title: str):
        # A plain function: Starlette runs it in its thread pool, so blocking SQL does not stall the loop.
        def endpoint(request: Request) -> Response:
            try:
                with sessions() as session:
                    rollups.fold_pending(session)  # what workers wrote since their last fold: numbers stay exact
                    name, context = view(session, request.query_params, **request.path_params)
            except params.BadRequest as exc:
                return templates.TemplateResponse(request, "error.html", {"message": str(exc), "title": title,
                                                                          "database": database}, status_code=400)
            except views.NotFound as exc:
                return templates.TemplateResponse(request, "error.html", {"message": str(exc), "title": title,
                                                                          "database": database}, status_code=404)
            return templates.TemplateResponse(request, name, context | {"title": title, "database": database})

        return endpoint

    def health(request: Request) -> Response:
        with sessions() as session:
            session.execute(text("SELECT 1"))
        return PlainTextResponse("ok")

    routes = [
        Route("/", page(views.overview, "Overview")),
        Route("/products", page(views.products, "Products")),
        Route("/entities", page(views.entities, "Entities")),
        Route("/entity", page(views.entity, "Entity")),
        Route("/jobs", page(views.jobs, "Jobs")),
        Route("/jobs/{job_id:int}", page(views.job, "Job")),
        Route("/models", page(views.models, "Models")),
        Route("/healthz", health),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
