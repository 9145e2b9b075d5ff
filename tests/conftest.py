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

REQUIRED_ON_CI = ("chromium", "docker-compose")
"""Tools whose absence skips a test on a developer's machine but fails it on CI (``CI`` set to
anything but empty/0/false): CI must run the browser and compose tests, not pass by skipping."""


def on_ci(environ=os.environ) -> bool:
    """Whether this run is CI (``CI=true``, as CI services and ``.ci/run`` set it)."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI, a test skipped for a missing Chromium or docker-compose is reported as failed."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and on_ci()) or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2])
    if any(tool in reason.lower() for tool in REQUIRED_ON_CI):
        report.outcome = "failed"
        report.longrepr = f"CI=true and a required tool is missing, so this fails: {reason}"


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
