"""Who may call the scheduler: two credentials, one per job, never interchangeable.

* The **webhook secret** (SCHEDULER_WEBHOOK_SECRET) authenticates Label Studio's writes: it is
  accepted only on ``POST /webhook`` and only in the :data:`SECRET_HEADER` header.
* The **dashboard token** (SCHEDULER_DASHBOARD_TOKEN) lets a project lead read: the dashboard,
  ``/api/stats`` and ``/api/consensus``. A browser exchanges it once, on ``POST /login``, for a
  session cookie (HttpOnly, SameSite=Strict, Secure when served over https) that holds no
  secret: an expiry, a nonce and their HMAC under a key derived from the token, so rotating the
  token ends every session and a restart keeps them. Scripts send it as
  ``Authorization: Bearer``. It never travels in a URL.

Every comparison hashes both sides first and compares the digests in constant time, so
neither content nor length leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

#: Name of the dashboard's session cookie.
SESSION_COOKIE = "slicerank_session"
#: How long a dashboard session lasts (a working day and a half).
SESSION_TTL_S = 12 * 3600


def same_secret(given: str | None, expected: str) -> bool:
    """Whether ``given`` equals ``expected`` (never true for an empty ``expected``), in time
    independent of both."""
    if not expected or given is None:
        return False
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(expected.encode()).digest()
    return hmac.compare_digest(a, b)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class DashboardSessions:
    """Issues and checks the dashboard's session cookies (stateless; see the module doc)."""

    def __init__(
        self, token: str, *, ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        # A key of its own: the cookie's MAC says nothing about the token itself.
        self._key = hmac.new(token.encode(), b"slicerank dashboard session", "sha256").digest()
        self._enabled = bool(token)
        self.ttl_s = ttl_s
        self.clock = clock

    def issue(self) -> str:
        """A new session cookie value."""
        expires = int(self.clock() + self.ttl_s)
        body = f"{expires}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._mac(body)}"

    def valid(self, cookie: str | None) -> bool:
        """Whether ``cookie`` is a session this token issued and it has not expired."""
        if not self._enabled or not cookie or len(cookie) > 200:
            return False
        body, _, mac = cookie.rpartition(".")
        expires, _, _ = body.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return False
        return expires.isdigit() and int(expires) > self.clock()

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode("utf-8", "surrogatepass"), "sha256").hexdigest()
