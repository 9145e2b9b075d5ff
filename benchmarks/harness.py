"""What the service benchmarks share: Label Studio on SQLite or PostgreSQL, a fresh PostgreSQL
database per run, and the audit of the submission log against Label Studio.

``slicerank bench service --ls-db postgresql`` and ``slicerank bench faults`` start Label Studio
the way compose deploys it (``DJANGO_DB=default`` with the ``POSTGRE_*`` variables Label Studio
1.23 reads in ``core/settings/base.py``) instead of its SQLite dev default, so the figures cover
the production database too. Each run gets a throw-away database that is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LS_DATABASES",
    "PG_ADMIN_URL_ENV",
    "Audit",
    "audit",
    "fresh_postgres_database",
    "label_studio_db_env",
]

LS_DATABASES = ("sqlite", "postgresql")
"""The databases Label Studio can run on in the benchmarks."""

PG_ADMIN_URL_ENV = "SLICERANK_BENCH_PG_URL"
"""Environment variable with the PostgreSQL server the benchmarks create databases in."""

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
"""The local server of scripts/services.sh (trust authentication)."""


def _admin_url(environ: Mapping[str, str] = os.environ) -> str:
    url = environ.get(PG_ADMIN_URL_ENV) or DEFAULT_PG_ADMIN_URL
    # SQLAlchemy spellings are accepted too; psycopg wants the plain libpq URL.
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def fresh_postgres_database(prefix: str = "slicerank_bench") -> Iterator[dict[str, str]]:
    """Create an empty PostgreSQL database, yield its parts (``host``, ``port``, ``user``,
    ``password``, ``name``, ``url``: SQLAlchemy form), and drop it afterwards.

    The server is :data:`PG_ADMIN_URL_ENV` (default: the local trust server). A server that does
    not answer raises ``RuntimeError`` naming the URL and the variable to set.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    admin = _admin_url()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL at {admin} does not answer ({exc}); start it (scripts/services.sh) or set "
            f"{PG_ADMIN_URL_ENV}"
        ) from None
    parts = conninfo_to_dict(admin)
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = {
        "host": str(parts.get("host") or "127.0.0.1"),
        "port": str(parts.get("port") or "5432"),
        "user": str(parts.get("user") or "postgres"),
        "password": str(parts.get("password") or ""),
        "name": name,
    }
    auth = info["user"] + (f":{info['password']}" if info["password"] else "")
    info["url"] = f"postgresql+psycopg://{auth}@{info['host']}:{info['port']}/{name}"
    try:
        yield info
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def label_studio_db_env(kind: str) -> Iterator[dict[str, str]]:
    """Environment for ``LabelStudioServer(extra_env=...)`` that puts Label Studio on ``kind``
    (``sqlite``: its dev default, nothing to add; ``postgresql``: a fresh database, dropped
    when the block ends)."""
    if kind not in LS_DATABASES:
        raise ValueError(f"Label Studio database {kind!r} is not one of {', '.join(LS_DATABASES)}")
    if kind == "sqlite":
        yield {}
        return
    with fresh_postgres_database("slicerank_ls") as db:
        yield {
            "DJANGO_DB": "default",
            "POSTGRE_HOST": db["host"],
            "POSTGRE_PORT": db["port"],
            "POSTGRE_USER": db["user"],
            "POSTGRE_PASSWORD": db["password"],
            "POSTGRE_NAME": db["name"],
        }


@dataclass(frozen=True)
class Audit:
    """The log against Label Studio after a run.

    ``lost``: valid answers in Label Studio that the log does not count and never rejected;
    ``wrongly_rejected``: valid answers the log does not count because it rejected them;
    ``double_counted``: engine batches beyond the log's rankings; ``unknown_in_log``: counted annotations Label Studio no longer has;
    ``order_mismatches``: counted rankings whose order differs from Label Studio's.
    """

    label_studio_answers: int
    log_submissions: int
    lost: int
    wrongly_rejected: int
    double_counted: int
    unknown_in_log: int
    order_mismatches: int
    lost_ids: tuple[int, ...] = ()
    rejected_ids: tuple[int, ...] = ()

    @property
    def clean(self) -> bool:
        """Nothing lost, double-counted or wrongly rejected."""
        return not (self.lost or self.wrongly_rejected or self.double_counted)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (the first ids of each kind of problem, for diagnosis)."""
        return {
            "label_studio_answers": self.label_studio_answers,
            "log_submissions": self.log_submissions,
            "lost": self.lost,
            "wrongly_rejected": self.wrongly_rejected,
            "double_counted": self.double_counted,
            "unknown_in_log": self.unknown_in_log,
            "order_mismatches": self.order_mismatches,
            "lost_ids": list(self.lost_ids[:10]),
            "rejected_ids": list(self.rejected_ids[:10]),
        }


def audit(
    ls_answers: Mapping[int, list[str]],
    log_answers: Mapping[int, list[str]],
    *,
    rejected: set[int],
    engine_batches: int | None,
) -> Audit:
    """Compare Label Studio's valid Rank answers (annotation id → order, or None when only
    its existence is known) with the log's
    effective rankings (annotation id → order). ``rejected`` holds the annotation ids the log
    rejected, ``engine_batches`` the live engine's batch count (None when it could not be
    read): batches beyond the log's rankings were counted twice (the log itself holds one
    effective entry per annotation by construction)."""
    missing = set(ls_answers) - set(log_answers)
    wrongly = {a for a in missing if a in rejected}
    return Audit(
        label_studio_answers=len(ls_answers),
        log_submissions=len(log_answers),
        lost=len(missing - wrongly),
        wrongly_rejected=len(wrongly),
        double_counted=max(0, (engine_batches or 0) - len(log_answers)),
        unknown_in_log=len(set(log_answers) - set(ls_answers)),
        order_mismatches=sum(
            1
            for a, o in log_answers.items()
            if ls_answers.get(a) is not None and list(ls_answers[a]) != list(o)
        ),
        lost_ids=tuple(sorted(missing - wrongly)),
        rejected_ids=tuple(sorted(wrongly)),
    )
