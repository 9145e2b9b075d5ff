"""Can a service be reached? One check per kind of service, one message shape, one set of exit
codes, and one retry loop for the long-running services.

Exit codes of every ``slicerank`` command (README, "Exit codes"):

==  =====================================================================================
0   done
1   the work itself failed (a training job failed, a check found problems)
2   configuration or input: a variable, an option or a file is wrong or missing
3   a service (Label Studio, Redis, PostgreSQL) cannot be reached
130 interrupted (Ctrl-C)
==  =====================================================================================

A command that needs a service checks it before doing anything else and, when it is down,
raises :class:`ServiceUnreachable`; the console script prints its two lines (what is down,
where, which variable; what to do) and exits 3. The long-running services (``scheduler``,
``backend``, ``worker``) instead keep trying with :func:`wait_until_reachable`, one log line
per attempt, and report what is down on ``/health``.

Addresses are shown without passwords (:func:`redact_url`). ``httpx`` and ``redis`` are
imported inside the checks, so importing this module costs nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_UNREACHABLE",
    "ConfigError",
    "ServiceUnreachable",
    "check_label_studio",
    "check_redis",
    "check_sql",
    "redact_url",
    "start_wait_s",
    "wait_until_reachable",
]

#: The work itself failed.
EXIT_FAILED = 1
#: A variable, an option or an input file is wrong or missing.
EXIT_CONFIG = 2
#: A service the command needs cannot be reached.
EXIT_UNREACHABLE = 3

#: Seconds a reachability check waits for an answer.
CHECK_TIMEOUT_S = 5.0
#: Environment variable: seconds a long-running service keeps retrying an unreachable service
#: at start-up before it gives up (exit 3); unset or empty = keep retrying.
START_WAIT_ENV = "SLICERANK_START_WAIT_S"
#: First and longest pause between two attempts of :func:`wait_until_reachable`.
FIRST_RETRY_S, MAX_RETRY_S = 1.0, 30.0


class ConfigError(ValueError):
    """A setting or input is wrong; the message names it and says what to enter (exit 2)."""


class ServiceUnreachable(ConnectionError):
    """``service`` did not answer at ``address`` (from ``variable``); exit 3.

    ``str()`` is two lines: what is down and why, then what to do.
    """

    def __init__(self, service: str, variable: str, address: str, reason: str, hint: str = ""):
        self.service, self.variable, self.address = service, variable, address
        self.reason, self.hint = reason, hint
        super().__init__(str(self))

    @property
    def headline(self) -> str:
        """The first line: what is down, where, and which variable says so."""
        return f"{self.service} unreachable at {self.address} ({self.variable}): {self.reason}"

    def __str__(self) -> str:
        return f"{self.headline}\n{self.hint}" if self.hint else self.headline


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (addresses go into logs and messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _reason(exc: BaseException) -> str:
    # The innermost cause is the useful part ("Connection refused"), not the wrapper's class.
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def check_label_studio(
    url: str, *, variable: str = "LABEL_STUDIO_URL", timeout: float = CHECK_TIMEOUT_S
) -> None:
    """Raise :class:`ServiceUnreachable` unless Label Studio answers ``GET /health`` at ``url``."""
    import httpx

    hint = (
        f"Start Label Studio, or set {variable} to where it runs "
        "(docs/guide/label-studio.md#for-the-project-lead-set-up)."
    )
    if not url or "://" not in url:
        raise ConfigError(f"{variable}={url!r} is not a URL; set it to e.g. http://127.0.0.1:8080")
    try:
        r = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise ServiceUnreachable(
            "Label Studio", variable, redact_url(url), _reason(exc), hint
        ) from None
    if r.status_code >= 500 or r.status_code == 404:
        raise ServiceUnreachable(
            "Label Studio", variable, redact_url(url),
            f"GET /health answered {r.status_code} (not Label Studio, or not ready)", hint,
        )  # fmt: skip


def check_redis(url: str, *, variable: str = "REDIS_URL", timeout: float = CHECK_TIMEOUT_S) -> None:
    """Raise :class:`ServiceUnreachable` unless Redis at ``url`` answers PING (a wrong password
    is a :class:`ConfigError`)."""
    import redis

    try:
        conn = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as exc:
        raise ConfigError(f"{variable}={redact_url(url)!r} is not a Redis URL: {exc}") from None
    try:
        conn.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise ConfigError(
            f"Redis at {redact_url(url)} refused the password in {variable}: {_reason(exc)}; "
            "put the right one in the URL (redis://:PASSWORD@host:port/0)"
        ) from None
    except redis.exceptions.ResponseError as exc:
        if "auth" in str(exc).lower() or "NOAUTH" in str(exc):
            raise ConfigError(
                f"Redis at {redact_url(url)} needs a password that {variable} does not carry; "
                "use redis://:PASSWORD@host:port/0"
            ) from None
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise ServiceUnreachable(
            "Redis", variable, redact_url(url), _reason(exc),
            f"Start Redis (e.g. `sudo service redis-server start`), or set {variable} to where "
            "it runs.",
        ) from None  # fmt: skip
    finally:
        conn.close()


def check_sql(url: str, *, variable: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Raise :class:`ServiceUnreachable` unless the database at SQLAlchemy ``url`` accepts a
    connection. SQLite needs no server and always passes."""
    if url.startswith("sqlite"):
        return
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    try:
        connect_args = {"connect_timeout": int(max(1, timeout))} if "postgres" in url else {}
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=_null_pool())
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(f"{variable}={redact_url(url)!r} is not a database URL: {exc}") from None
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        text = _reason(exc)
        if "password" in text.lower() or "authentication" in text.lower():
            raise ConfigError(
                f"the database at {redact_url(url)} ({variable}) refused the login: {text}"
            ) from None
        if "does not exist" in text:
            raise ConfigError(
                f"{variable}: {text}; create it (e.g. `createdb NAME`) or name another"
            ) from None
        raise ServiceUnreachable(
            "PostgreSQL", variable, redact_url(url), text,
            f"Start PostgreSQL (e.g. `sudo service postgresql start`), or set {variable} to "
            "where it runs.",
        ) from None  # fmt: skip
    finally:
        engine.dispose()


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool


def start_wait_s(environ) -> float | None:
    """Seconds to keep retrying at start-up (:data:`START_WAIT_ENV`); None = without end."""
    raw = (environ.get(START_WAIT_ENV) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"{START_WAIT_ENV}={raw!r} is not a number of seconds (leave it unset to retry "
            "without end)"
        ) from None
    if value < 0:
        raise ConfigError(f"{START_WAIT_ENV}={raw!r} must be 0 or more seconds")
    return value


def wait_until_reachable(
    check: Callable[[], object],
    *,
    who: str,
    give_up_after_s: float | None = None,
    log: logging.Logger | None = None,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    stop: Callable[[], bool] = lambda: False,
):
    """Call ``check`` until it stops raising :class:`ServiceUnreachable`; return its result.

    Each failure is one warning line ("``who``: Redis unreachable at ... (REDIS_URL): ...;
    retrying in 4 s"), the pause doubling from :data:`FIRST_RETRY_S` to :data:`MAX_RETRY_S`.
    After ``give_up_after_s`` seconds (None: never) the last error is raised; so it is when
    ``stop()`` turns true. Other errors (a :class:`ConfigError`) are raised at once: waiting
    does not mend a wrong setting.
    """
    log = log or logging.getLogger(who)
    start = clock()
    delay = FIRST_RETRY_S
    while True:
        try:
            return check()
        except ServiceUnreachable as exc:
            waited = clock() - start
            if stop() or (give_up_after_s is not None and waited + delay > give_up_after_s):
                raise
            log.warning("%s: %s; retrying in %g s (%s)", who, exc.headline, delay, exc.hint)
        sleep(delay)
        delay = min(delay * 2, MAX_RETRY_S)
