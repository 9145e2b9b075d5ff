"""Starting the scheduler while Label Studio or its database may be down, and saying so.

``slicerank scheduler`` listens at once, behind a :class:`StartGate` that answers ``/health``
with 503 ``{"status": "STARTING", "down": {...}}`` (and every other path with 503) while
:func:`start_when_reachable` waits for the database and Label Studio with backoff, one log
line per attempt (:func:`slicerank_base.reach.wait_until_reachable`). Once the service has
started, the gate hands every request to the real app. Afterwards :class:`HealthProbe` tells
``/health`` what is down (cached for a few seconds: a health check must stay cheap).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from slicerank_base.reach import (
    ServiceUnreachable,
    check_label_studio,
    check_sql,
    redact_url,
    wait_until_reachable,
)

log = logging.getLogger(__name__)

#: Seconds a health probe's answer is reused.
PROBE_TTL_S = 5.0
#: Seconds a health probe waits for Label Studio.
PROBE_TIMEOUT_S = 2.0


class StartGate:
    """An ASGI app that answers 503 until :meth:`open` hands it the real app.

    It answers the server's lifespan messages itself: the real app's start-up work (the first
    reconciliation) is the caller's, done when it opens the gate.
    """

    def __init__(self) -> None:
        self.app: Any = None
        #: What is being waited for: service name -> one-line reason.
        self.down: dict[str, str] = {}

    def open(self, app: Any) -> None:
        """From now on every request goes to ``app``."""
        self.down = {}
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        app = self.app
        if app is not None:
            await app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        body = json.dumps({"status": "STARTING", "down": dict(self.down)}).encode()
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"5")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def label_studio_error(url: str, exc: BaseException) -> ServiceUnreachable:
    """A Label Studio call that failed on the network, as :class:`ServiceUnreachable`."""
    return ServiceUnreachable(
        "Label Studio", "LABEL_STUDIO_URL", redact_url(url), str(exc) or type(exc).__name__,
        "Start Label Studio, or set LABEL_STUDIO_URL to where it runs.",
    )  # fmt: skip


def start_when_reachable(
    open_store: Callable[[], Any],
    start_service: Callable[[Any], Any],
    *,
    db_url: str,
    label_studio_url: str,
    api_key: str,
    gate: StartGate,
    give_up_after_s: float | None,
    stop: Callable[[], bool] = lambda: False,
):
    """Open the store once its database answers, then start the service once Label Studio
    answers (both retried with backoff; what is awaited shows on the gate's ``/health``).
    Returns ``(store, service)``; raises ServiceUnreachable after ``give_up_after_s`` and
    ConfigError/ValueError/LookupError for what waiting cannot mend."""
    import httpx

    from ls_config.access import check_access

    def down(name: str, check: Callable[[], Any]) -> Callable[[], Any]:
        def attempt():
            try:
                result = check()
            except ServiceUnreachable as exc:
                gate.down[name] = exc.headline
                raise
            gate.down.pop(name, None)
            return result

        return attempt

    def store_attempt():
        check_sql(db_url, variable="SCHEDULER_DB_URL")
        return open_store()

    store = wait_until_reachable(
        down("database", store_attempt), who="scheduler", give_up_after_s=give_up_after_s,
        log=log, stop=stop,
    )  # fmt: skip

    def service_attempt():
        check_access(label_studio_url, api_key)
        try:
            return start_service(store)
        except httpx.TransportError as exc:  # went down between the check and the start
            raise label_studio_error(label_studio_url, exc) from None

    try:
        service = wait_until_reachable(
            down("label_studio", service_attempt), who="scheduler",
            give_up_after_s=give_up_after_s, log=log, stop=stop,
        )  # fmt: skip
    except BaseException:
        store.close()
        raise
    return store, service


class HealthProbe:
    """What is down now (Label Studio, the database), for ``/health``; logs each change once."""

    def __init__(self, label_studio_url: str, store: Any = None, *, clock=time.monotonic) -> None:
        self.url, self.store, self.clock = label_studio_url, store, clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._down: dict[str, str] = {}

    def down(self) -> dict[str, str]:
        """Service name -> one-line reason, for each service that does not answer."""
        with self._lock:
            if self._at is not None and self.clock() - self._at < PROBE_TTL_S:
                return dict(self._down)
            found: dict[str, str] = {}
            try:
                check_label_studio(self.url, timeout=PROBE_TIMEOUT_S)
            except ServiceUnreachable as exc:
                found["label_studio"] = exc.headline
            if self.store is not None and getattr(self.store, "url", "").startswith("postgres"):
                try:
                    with self.store.engine.connect():
                        pass
                except Exception as exc:  # noqa: BLE001 - any failure means "down" here
                    found["database"] = (
                        f"PostgreSQL unreachable at {redact_url(self.store.url)} "
                        f"(SCHEDULER_DB_URL): {str(exc).splitlines()[0][:200]}"
                    )
            for name in found.keys() - self._down.keys():
                log.warning(
                    "scheduler: %s (it catches up by reconciliation once back)", found[name]
                )
            for name in self._down.keys() - found.keys():
                log.info("scheduler: %s answers again", name)
            self._down, self._at = found, self.clock()
            return dict(found)
