"""The scheduler's web app: its routes and who may call them, in one place.

``POST /webhook`` (Label Studio; the shared secret in a header), ``GET /health`` (open),
``GET /dashboard``, ``/api/stats`` and ``/api/consensus`` (the secret as a bearer token, an
HTTP basic password, or ``?token=``, which also sets a cookie for the browser). A webhook is
only checked and queued here: the worker applies it after the answer, so Label Studio's ~1 s
webhook timeout is never at risk.
"""

from __future__ import annotations

import base64
import hmac
import json
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from fastapi import Request  # module level: FastAPI resolves the string annotations here

from ls_config.provision import SECRET_HEADER

if TYPE_CHECKING:
    from ranking_scheduler.service.service import SchedulerService

TOKEN_COOKIE = "slicerank_token"


def _authorised(request, secret: str) -> bool:
    candidates = [request.query_params.get("token"), request.cookies.get(TOKEN_COOKIE)]
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        candidates.append(value.strip())
    elif scheme.lower() == "basic":
        with suppress(ValueError, UnicodeDecodeError):
            candidates.append(base64.b64decode(value).decode().partition(":")[2])
    return any(c and hmac.compare_digest(c.encode(), secret.encode()) for c in candidates)


def create_app(service: SchedulerService):
    """The FastAPI app: ``POST /webhook`` (secret header), ``GET /health`` (open),
    ``GET /dashboard``, ``/api/stats``, ``/api/consensus`` (secret as a bearer token, HTTP basic
    password, or ``?token=`` which also sets a cookie for the browser)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse

    from ranking_scheduler.service.dashboard import render_dashboard
    from ranking_scheduler.service.stats import jsonable

    secret = service.settings.secret

    @asynccontextmanager
    async def lifespan(_app):
        # Reconcile only once the server accepts webhooks: nothing can fall in between.
        service.request_reconcile()
        yield

    app = FastAPI(
        title="slicerank scheduler",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )

    def require_auth(request: Request) -> None:
        if not _authorised(request, secret):
            raise HTTPException(
                401,
                "send the scheduler secret as a bearer token, HTTP basic password or ?token=",
                headers={"WWW-Authenticate": 'Basic realm="slicerank scheduler"'},
            )

    @app.get("/health")
    def health():
        return {"status": "UP", "queue": service.queue_depth()}

    @app.post("/webhook")
    async def webhook(request: Request):
        given = request.headers.get(SECRET_HEADER, "")
        if not given or not hmac.compare_digest(given.encode(), secret.encode()):
            raise HTTPException(401, f"missing or wrong {SECRET_HEADER} header")
        try:
            payload = json.loads(await request.body())
        except ValueError:
            raise HTTPException(400, "webhook body is not JSON") from None
        action = payload.get("action") if isinstance(payload, dict) else None
        if not action:
            raise HTTPException(400, "webhook body has no 'action'")
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
        require_auth(request)
        page = HTMLResponse(render_dashboard(jsonable(service.stats())))
        token = request.query_params.get("token")
        if token:
            page.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return page

    return app
