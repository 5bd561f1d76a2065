"""The dashboard's web application (Starlette): pages, actions, and the guard around them.

Pages are rendered on the server (Jinja2, autoescaped); every action is a POST form that
redirects back (post/redirect/get), so the dashboard works without a line of script.
Handlers run the model's blocking calls on Starlette's thread pool.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..jobstore.records import PAYLOAD_LIMIT, STATES
from .chart import svg
from .model import Dashboard
from .security import CSRF_COOKIE, SESSION_COOKIE, Guard, csrf_ok, csrf_value, same_origin

#: Dead letters listed on one page (oldest first, as the failed store keeps them).
FAILED_SHOWN = 500
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def _count(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m" if seconds < 3600 else f"{seconds / 3600:.1f}h"


def _size(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def _body(raw: bytes) -> str:
    """A body as text: JSON indented, anything else decoded with escapes for bad bytes."""
    text = raw.decode("utf-8", "backslashreplace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _payload(text: str) -> str:
    """A record's payload: JSON indented; one cut at the record's limit as it is kept."""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("queuekit.dashboard"),
                      autoescape=select_autoescape(default=True))  # fmt: skip
    env.filters.update(when=_when, count=_count, age=_age, size=_size, body=_body,
                       payload=_payload)  # fmt: skip
    return env


class _GuardMiddleware(BaseHTTPMiddleware):
    """Authentication on every path but the login page; the CSRF cookie; safe headers."""

    def __init__(self, app: Any, guard: Guard, render: Callable[..., HTMLResponse]) -> None:
        super().__init__(app)
        self.guard, self.render = guard, render

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        csrf, new = csrf_value(request)
        request.state.csrf = csrf
        if request.url.path != "/login" and not self.guard.authenticated(request):
            response: Response = self.render(request, "login.html", status_code=401, broker="")
        else:
            response = await call_next(request)
        if new:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict")
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response


class _Site:
    """The pages and actions over ``model``, guarded by ``guard``."""

    def __init__(self, model: Dashboard, guard: Guard) -> None:
        self.model, self.guard, self.env = model, guard, _environment()

    def render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        context.setdefault("broker", self.model.broker_url)
        page = self.env.get_template(name).render(
            request=request, csrf=request.state.csrf, read_only=self.guard.read_only,
            note=request.query_params.get("note"), **context,
        )  # fmt: skip
        return HTMLResponse(page, status_code=status_code)

    async def action_form(self, request: Request) -> FormData:
        """The form of an action POST, once it passed the CSRF and read-only checks."""
        form = await request.form()
        if not csrf_ok(request, str(form.get("csrf", ""))):
            raise HTTPException(403, "cross-site request refused (CSRF check failed)")
        if self.guard.read_only:
            raise HTTPException(403, "this dashboard is read-only")
        return form

    def back(self, form: FormData, note: str) -> RedirectResponse:
        target = str(form.get("back", "/"))
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        target = target.split("?", 1)[0]
        return RedirectResponse(f"{target}?{urlencode({'note': note})}", status_code=303)

    async def queues(self, request: Request) -> Response:
        try:
            asked = float(request.query_params.get("hours", "6"))
        except ValueError:
            asked = 6.0
        hours = min(max(asked, 0.25), 168.0) if math.isfinite(asked) else 6.0
        overview = await run_in_threadpool(self.model.overview, hours)
        charts = {
            line.queue: Markup(svg(line)) for line in overview.charts
        }  # svg() escapes its text
        return self.render(request, "queues.html", status=overview.status, charts=charts,
                      hours=overview.hours)  # fmt: skip

    async def pause(self, request: Request) -> Response:
        form = await self.action_form(request)
        name = request.path_params["name"]
        await run_in_threadpool(self.model.pause, name)
        return self.back(form, f"{name} paused: its workers take no new message")

    async def resume(self, request: Request) -> Response:
        form = await self.action_form(request)
        name = request.path_params["name"]
        await run_in_threadpool(self.model.resume, name)
        return self.back(form, f"{name} resumed")

    async def failed(self, request: Request) -> Response:
        queue = request.query_params.get("queue") or None
        entries = await run_in_threadpool(self.model.failed, queue, limit=FAILED_SHOWN)
        return self.render(request, "failed.html", entries=entries, queue=queue,
                           limit=FAILED_SHOWN)  # fmt: skip

    async def failed_one(self, request: Request) -> Response:
        entry = await run_in_threadpool(self.model.failed_one, request.path_params["id"])
        if entry is None:
            raise HTTPException(404, "no such failed message (retried or deleted already?)")
        return self.render(request, "failed_one.html", entry=entry)

    @staticmethod
    def chosen(form: FormData) -> list[int]:
        return [int(str(v)) for v in form.getlist("id") if str(v).isdigit()]

    async def retry(self, request: Request) -> Response:
        form = await self.action_form(request)
        if form.get("all") and form.get("queue"):
            done = await run_in_threadpool(self.model.retry_queue, str(form["queue"]))
        else:
            done = await run_in_threadpool(self.model.retry, self.chosen(form))
        return self.back(form, f"{done} message(s) back on their queue")

    async def delete(self, request: Request) -> Response:
        form = await self.action_form(request)
        if form.get("all") and form.get("queue"):
            done = await run_in_threadpool(self.model.delete_queue, str(form["queue"]))
        else:
            done = await run_in_threadpool(self.model.delete, self.chosen(form))
        return self.back(form, f"{done} failed message(s) deleted")

    async def jobs(self, request: Request) -> Response:
        params = request.query_params
        text, queue, state = params.get("q", "").strip(), params.get("queue"), params.get("state")
        records = await run_in_threadpool(self.model.find_jobs, text, queue, state)
        return self.render(request, "jobs.html", records=records, q=text, queue=queue or "",
                           state=state or "", states=STATES,
                           payload_limit=PAYLOAD_LIMIT)  # fmt: skip

    async def workers(self, request: Request) -> Response:
        status = await run_in_threadpool(self.model.status)
        schedules = await run_in_threadpool(self.model.schedules)
        return self.render(request, "workers.html", status=status, schedules=schedules)

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.render(request, "login.html", broker="")
        form = await request.form()
        if not same_origin(request):
            raise HTTPException(403, "cross-site request refused")
        if self.guard.session is None or not self.guard.token_matches(str(form.get("token", ""))):
            return self.render(request, "login.html", status_code=401, wrong=True, broker="")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, self.guard.session, httponly=True, samesite="strict")
        return response

    async def error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.render(request, "error.html", status_code=exc.status_code, detail=exc.detail)


def create_app(model: Dashboard, guard: Guard) -> Starlette:
    """The dashboard over ``model``, guarded by ``guard``."""
    site = _Site(model, guard)
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: site.error
    }
    return Starlette(
        routes=[
            Route("/", site.queues),
            Route("/queues/{name:path}/pause", site.pause, methods=["POST"]),
            Route("/queues/{name:path}/resume", site.resume, methods=["POST"]),
            Route("/failed", site.failed),
            Route("/failed/{id:int}", site.failed_one),
            Route("/failed/retry", site.retry, methods=["POST"]),
            Route("/failed/delete", site.delete, methods=["POST"]),
            Route("/jobs", site.jobs),
            Route("/workers", site.workers),
            Route("/login", site.login, methods=["GET", "POST"]),
        ],
        middleware=[Middleware(_GuardMiddleware, guard=guard, render=site.render)],
        exception_handlers=handlers,
    )
