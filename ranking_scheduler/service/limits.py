"""Limits on what a client may send the scheduler, enforced before any work is done for it.

* :class:`BodyLimit` (ASGI middleware): every request body is capped, per path, first from its
  ``Content-Length`` and then while it streams in (a chunked body that grows past the cap is
  cut off); the app only ever sees a body that arrived whole and within its cap. Nothing is
  authenticated before this: ``POST /login`` with 800 MB is refused after 4 KiB.
* :class:`SlowClientProtocol` (uvicorn's h11 protocol with a deadline): a request must arrive
  whole, headers and body, within ``REQUEST_READ_TIMEOUT_S`` of its connection opening (or of
  the previous response on a kept-alive connection), or the connection is closed. uvicorn alone
  holds a half-sent request forever (21 of them were still open after 45 s).
* :func:`make_server` builds the uvicorn server with those limits and a cap on concurrent
  connections; :func:`listen` opens a socket before the service starts (the tests' harness).

A reverse proxy in front (docs/guide/label-studio.md) may add its own, stricter limits.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

WEBHOOK_MAX_BYTES = 4 * 1024 * 1024
"""Largest webhook body (a bulk delete of tens of thousands of ids fits; a label config too)."""

DEFAULT_MAX_BYTES = 4096
"""Largest body of every other route (the login form; the reads take none)."""

REQUEST_READ_TIMEOUT_S = 10.0
"""Seconds a client has to send a whole request (Label Studio sends a webhook in milliseconds)."""

MAX_CONNECTIONS = 512
"""Concurrent connections (and requests) served; beyond that uvicorn answers 503 at once."""


class BodyLimit:
    """ASGI middleware capping request bodies: ``limits`` maps a path to its cap in bytes,
    ``default`` caps every other path. A body over its cap gets ``413`` and the app is not
    called; a body within it is handed to the app whole."""

    def __init__(self, app, *, limits: dict[str, int], default: int = DEFAULT_MAX_BYTES) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default = default

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.limits.get(scope["path"], self.default)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if declared > cap:
                await _answer(send, 413, f"request body over {cap} bytes")
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > cap:  # a chunked body, or one longer than it said
                await _answer(send, 413, f"request body over {cap} bytes")
                return
            chunks.append(body)
            more = message.get("more_body", False)
        whole = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()  # after the body: only a disconnect can come

        await self.app(scope, replay, send)


async def _answer(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SlowClientProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for receiving each request whole."""

    read_timeout_s = REQUEST_READ_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self._request_in():
            self._disarm()  # the request is in: the app's own time does not count

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def _request_in(self) -> bool:
        """Whether a request has arrived whole and is not answered yet."""
        cycle = self.cycle
        return cycle is not None and not cycle.more_body and not cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._request_in():
            return  # the request arrived; its response is under way
        if not self.transport.is_closing():
            self.transport.close()


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket listening on ``host:port`` now: connections wait in its backlog until the app
    serves them, so a restarted scheduler misses no webhook while it starts."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=backlog)


def make_server(app, **config: Any):
    """A ``uvicorn.Server`` for ``app`` with the limits above (``config`` overrides them);
    run it on a listening socket with ``server.run(sockets=[sock])``."""
    import uvicorn

    settings = {
        "log_level": "warning",
        "http": SlowClientProtocol,
        "limit_concurrency": MAX_CONNECTIONS,
        "timeout_keep_alive": 5,
        **config,
    }
    return uvicorn.Server(uvicorn.Config(app, **settings))
