"""The scheduler's web app: its routes and who may call them, in one place.

``POST /webhook`` (Label Studio; the webhook secret in a header, nowhere else; a notification
only: the worker reads what it names back from Label Studio),
``GET /health`` (open), ``GET /dashboard``, ``/api/stats`` and ``/api/consensus`` (read-only:
the dashboard token as a bearer token, or the session cookie ``POST /login`` gives for it; see
:mod:`ranking_scheduler.service.auth`). A webhook is only checked and queued here: the worker
applies it after the answer, so Label Studio's ~1 s webhook timeout is never at risk. Every
request body is capped (:mod:`ranking_scheduler.service.limits`) before a route reads it.
"""

from __future__ import annotations

import html
import json
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Request  # module level: FastAPI resolves the string annotations here

from ls_config.provision import SECRET_HEADER
from ranking_scheduler.service.auth import (
    SESSION_COOKIE,
    DashboardSessions,
    bearer,
    same_secret,
)
from ranking_scheduler.service.limits import WEBHOOK_MAX_BYTES, BodyLimit

if TYPE_CHECKING:
    from ranking_scheduler.service.service import SchedulerService

#: Largest login form accepted (a token is ~30 characters).
MAX_LOGIN_BYTES = 4096


def webhook_problem(payload: object) -> str | None:
    """What makes a webhook body unfit to queue (None when nothing): the worker's intake reads
    ``annotation``/``task`` as objects and ``annotations`` as a list, so other shapes are
    refused here, with a 400, instead of failing later where nobody sees it."""
    if not isinstance(payload, dict):
        return "webhook body must be a JSON object"
    action = payload.get("action")
    if not action:
        return "webhook body has no 'action'"
    if not isinstance(action, str) or len(action) > 64:
        return "webhook 'action' must be a short string"
    for key, kind in (("annotation", dict), ("task", dict), ("annotations", list), ("tasks", list)):
        value = payload.get(key)
        if value is not None and not isinstance(value, kind):
            return f"webhook '{key}' must be a JSON {'object' if kind is dict else 'array'}"
    project = payload.get("project")
    if project is not None and not isinstance(project, (dict, int, str)):
        return "webhook 'project' must be an object or an id"
    return None


def login_page(message: str = "") -> str:
    """The dashboard's sign-in form (the token is posted, never put in a URL)."""
    note = f'<p role="alert">{html.escape(message)}</p>' if message else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>slicerank scheduler: sign in"
        "</title></head><body><h1>slicerank scheduler</h1>"
        f"{note}<form method='post' action='/login'><label>Dashboard token "
        "<input type='password' name='token' autocomplete='current-password' autofocus>"
        "</label> <button type='submit'>Sign in</button></form></body></html>"
    )


def create_app(service: SchedulerService, *, health=None):
    """The FastAPI app: ``POST /webhook`` (webhook secret header), ``GET /health`` (open),
    ``GET/POST /login``, ``POST /logout``, and the reads ``GET /dashboard``, ``/api/stats``,
    ``/api/consensus`` (dashboard token as a bearer token, or the session cookie).

    ``health()``, when given, returns what is down (name -> reason): ``/health`` then says
    "DEGRADED" and names it (``startup.HealthProbe``)."""
    from urllib.parse import parse_qs

    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

    from ranking_scheduler.service.dashboard import render_dashboard
    from ranking_scheduler.service.stats import jsonable

    secret = service.settings.secret
    dashboard_token = getattr(service.settings, "dashboard_token", "")
    sessions = DashboardSessions(dashboard_token)

    @asynccontextmanager
    async def lifespan(_app):
        # The first reconciliation, once the app serves webhooks: nothing falls in between.
        # (`slicerank scheduler` serves the app behind startup.StartGate, which answers the
        # lifespan itself; the CLI queues this pass when it opens the gate.)
        service.request_reconcile()
        yield

    app = FastAPI(
        title="slicerank scheduler",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    # Every body is capped before any route (or authentication) reads it (limits.py).
    app.add_middleware(BodyLimit, limits={"/webhook": WEBHOOK_MAX_BYTES, "/login": MAX_LOGIN_BYTES})

    def reader(request: Request) -> bool:
        # The webhook secret is not a reader's credential: only the dashboard token is.
        given = bearer(request.headers.get("authorization"))
        return same_secret(given, dashboard_token) or sessions.valid(
            request.cookies.get(SESSION_COOKIE)
        )

    def require_auth(request: Request) -> None:
        if not reader(request):
            raise HTTPException(
                401,
                "sign in at /login with the dashboard token (SCHEDULER_DASHBOARD_TOKEN), or send "
                "it as 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="slicerank scheduler"'},
            )

    @app.get("/login")
    def login_form():
        return HTMLResponse(login_page())

    @app.post("/login")
    async def login(request: Request):
        raw = await request.body()
        if len(raw) > MAX_LOGIN_BYTES:
            raise HTTPException(413, "login form too large")
        try:
            token = (parse_qs(raw.decode(), max_num_fields=5).get("token") or [""])[-1]
        except (UnicodeDecodeError, ValueError):
            token = ""
        if not same_secret(token, dashboard_token):
            return HTMLResponse(login_page("That is not the dashboard token."), status_code=401)
        page = RedirectResponse("/dashboard", status_code=303)
        page.set_cookie(
            SESSION_COOKIE, sessions.issue(), max_age=int(sessions.ttl_s), path="/",
            httponly=True, samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
        return page

    @app.post("/logout")
    def logout():
        page = RedirectResponse("/login", status_code=303)
        page.delete_cookie(SESSION_COOKIE, path="/")
        return page

    @app.get("/health")
    def health_check():
        down = health() if health is not None else {}
        if down:
            return {"status": "DEGRADED", "down": down, "queue": service.queue_depth()}
        return {"status": "UP", "queue": service.queue_depth()}

    @app.post("/webhook")
    async def webhook(request: Request):
        # The header only: a secret in the URL would end up in access logs and proxies.
        if not same_secret(request.headers.get(SECRET_HEADER), secret):
            raise HTTPException(401, f"missing or wrong {SECRET_HEADER} header")
        try:
            payload = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise HTTPException(400, "webhook body is not JSON") from None
        problem = webhook_problem(payload)
        if problem:
            raise HTTPException(400, problem)
        action = payload["action"]
        service.enqueue(action, payload)
        return {"queued": action}

    @app.get("/api/stats")
    def api_stats(request: Request):
        require_auth(request)
        return JSONResponse(jsonable(service.stats()))

    @app.get("/api/consensus")
    def api_consensus(request: Request):
        require_auth(request)
        try:
            return JSONResponse(jsonable(service.consensus()))
        except (ValueError, RuntimeError) as exc:
            raise HTTPException(409, f"no consensus yet: {exc}") from None

    @app.get("/dashboard")
    def dashboard(request: Request):
        if not reader(request):
            # A browser without a session signs in first; the token is never read from a URL.
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(render_dashboard(jsonable(service.stats())))

    return app
