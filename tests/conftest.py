"""Shared fixtures: real Redis and PostgreSQL on this machine (scripts/services.sh starts them).

Settings for the tests come from the environment with local defaults:
``SLICERANK_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) and
``SLICERANK_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``,
the server in which each test gets its own throw-away database).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

# The real Label Studio server for the session (started only when a test asks for it).
from tests.ls_server import label_studio  # noqa: F401

ALLOWED_TO_SKIP_ON_CI = ("gpu",)
"""Markers of the only tests that may skip on CI (``CI`` set to anything but empty/0/false):
``gpu`` tests need a CUDA device and CI machines have none. Every other skip on CI fails the
run: a missing Chromium, docker-compose or Label Studio, a module-level ``importorskip``. The
README's "Tests" section states this list; keep the two in step."""


def on_ci(environ=os.environ) -> bool:
    """Whether this run is CI (``CI=true``, as CI services and ``.ci/run`` set it)."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def _fail_on_ci(report, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"CI=true and {what} was skipped ({_skip_reason(report)}): on CI every test runs; only "
        f"tests marked {', '.join(ALLOWED_TO_SKIP_ON_CI)} may skip (README, Tests)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI, a skipped test is reported as failed unless an allowed marker is on it."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and on_ci()) or hasattr(report, "wasxfail"):
        return
    if any(item.get_closest_marker(name) for name in ALLOWED_TO_SKIP_ON_CI):
        return
    _fail_on_ci(report, f"the test {item.nodeid}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """On CI, a module skipped while it is collected (``importorskip`` at the top, a module-level
    ``pytest.skip``) fails instead: it would hide every test in it."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and on_ci():
        _fail_on_ci(report, f"the module {collector.nodeid}")


TEST_REDIS_URL = os.environ.get("SLICERANK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_PG_ADMIN_URL = os.environ.get(
    "SLICERANK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of a real Redis database that is flushed before and after the test."""
    import redis

    conn = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"Redis at {TEST_REDIS_URL} is not answering ({exc}); run scripts/services.sh")
    conn.flushdb()
    yield TEST_REDIS_URL
    conn.flushdb()
    conn.close()


@pytest.fixture
def redis_conn(redis_url: str):
    """A ``redis.Redis`` connection to the flushed test database."""
    import redis

    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database, dropped after the test."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(TEST_PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"slicerank_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"PostgreSQL at {TEST_PG_ADMIN_URL} refused a test database ({exc})")
    yield make_url(TEST_PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """Run a test on SQLite (a file in tmp_path) and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'slicerank.db'}"
    return request.getfixturevalue("pg_url")
