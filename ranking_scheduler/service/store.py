"""Durable store of the scheduler service: the submission log, rejections, tasks and state.

The **submission log** is the source of truth (docs/INTERFACES.md): every ranked batch and every
boundary label that Label Studio delivered, with its annotation id, task id, rater and times.
It is append-only: an edited annotation appends an ``update`` event that supersedes the
earlier one, a deleted annotation appends a ``delete`` event. Engine state is *derived*: it is
rebuilt by replaying :meth:`SubmissionStore.effective_submissions` into a fresh engine
(:meth:`SubmissionStore.rebuild`), which is how the service handles edits, deletions and
restarts.

Besides the log the store keeps

* **rejections**: submissions that were refused, with the reason (shown on the dashboard);
* **tasks**: the Label Studio tasks the scheduler created (so a submission on a task the
  scheduler never created can be refused, and open tasks can be reconciled with Label Studio);
* a small **key/value** table for service state (e.g. the reconciliation watermark).

Backends: SQLite by default (one file, nothing to run), PostgreSQL by URL
(``postgresql+psycopg://user@host/db``) for the compose deployment. Only portable SQLAlchemy 2
Core constructs are used so both behave alike; the test-suite runs every test on both.

Concurrency (the service is one process with several request threads, a CLI may read the
same database): each write is one short transaction. Idempotency does not rely on a
read-then-write race being impossible: every event of an annotation carries a ``version``
number and ``(annotation_id, version)`` is UNIQUE, so two threads appending to the same
annotation at once cannot both win; the loser gets an ``IntegrityError``, re-reads and finds a
duplicate. SQLite additionally gets a per-store lock around writes (it allows one writer at a
time anyway, and waiting on a Python lock is cheaper and clearer than "database is locked"
retries), WAL journaling (readers do not block the writer) and a busy timeout (for other
processes).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.types import TypeDecorator

__all__ = [
    "AppendResult",
    "Rejection",
    "Submission",
    "SubmissionStore",
    "TaskRecord",
    "open_store",
]

SUBMISSION_KINDS = ("rank", "boundary")
"""What a submission holds: a ranked batch or one absolute (boundary) label."""

TASK_KINDS = ("rank", "boundary")
"""Which Label Studio project a scheduler-created task lives in."""

TASK_STATUSES = ("open", "answered", "retired", "skipped")
"""Life of a task: waiting for a rater, answered, withdrawn by the scheduler, skipped by a rater."""

REJECTION_PAYLOAD_MAX_CHARS = 4000
"""Rejected payloads are kept for diagnosis but truncated: a hostile client cannot fill the DB."""

REJECTION_REASON_MAX_CHARS = 500
"""Rejection reasons are cut to this length too (they are stored, logged and served)."""

_WRITE_RETRIES = 5
"""How often a write is retried after losing a race (IntegrityError / locked SQLite)."""


class _UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both backends.

    SQLite has no time zone type and hands back naive datetimes; PostgreSQL returns aware
    ones. Normalising to aware UTC on the way in and out makes both compare and subtract alike.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return _as_utc(value).replace(tzinfo=None) if dialect.name == "sqlite" else _as_utc(value)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_metadata = MetaData()

# One row per event. ``version`` counts the events of one annotation (1 = create); the
# UNIQUE (annotation_id, version) makes concurrent appends to one annotation safe.
_events = Table(
    "submission_events",
    _metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("annotation_id", BigInteger, nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("op", String(8), nullable=False),  # create | update | delete | restore
    Column("kind", String(16), nullable=False),  # rank | boundary
    Column("task_id", BigInteger, nullable=True),
    Column("rater", String(200), nullable=True),
    Column(
        "payload", JSON, nullable=True
    ),  # rank: {"ordered": [...]}; boundary: {"image_id", "label"}
    Column("content_hash", String(64), nullable=True),
    Column("created_at", _UTCDateTime, nullable=True),  # Label Studio's annotation times
    Column("updated_at", _UTCDateTime, nullable=True),
    Column("recorded_at", _UTCDateTime, nullable=False),  # when this store wrote the event
    # Seconds the rater spent on it, as Label Studio measured (its annotation's lead_time).
    Column("lead_time", Float, nullable=True),
    UniqueConstraint("annotation_id", "version", name="uq_submission_events_annotation_version"),
)

_rejections = Table(
    "rejections",
    _metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    # NULL for rejections that cannot be tied to a delivery; NULLs never collide in a UNIQUE.
    Column("dedupe_key", String(64), nullable=True, unique=True),
    Column("kind", String(16), nullable=True),
    Column("annotation_id", BigInteger, nullable=True),
    Column("task_id", BigInteger, nullable=True),
    Column("rater", String(200), nullable=True),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=True),
    Column("received_at", _UTCDateTime, nullable=False),
    # Which version of the annotation was refused for its content (intake's version_key):
    # that version is refused again without a look, after a restart too.
    Column("version_key", String(64), nullable=True),
)

_tasks = Table(
    "tasks",
    _metadata,
    Column("task_id", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("image_ids", JSON, nullable=False),
    Column("batch_id", String(200), nullable=True, index=True),
    Column("status", String(16), nullable=False, index=True),
    Column("meta", JSON, nullable=True),
    Column("created_at", _UTCDateTime, nullable=False),
    Column("updated_at", _UTCDateTime, nullable=False),
)

_state = Table(
    "service_state",
    _metadata,
    Column("key", String(200), primary_key=True),
    Column("value", JSON, nullable=True),
    Column("updated_at", _UTCDateTime, nullable=False),
)


@dataclass(frozen=True)
class Submission:
    """One effective submission: the latest version of a non-deleted annotation.

    ``kind == "rank"``: ``ordered`` holds the image ids, most basal first.
    ``kind == "boundary"``: ``image_id`` and ``label`` (a class name) are set.
    ``seq`` is the log position of the annotation's first event (its place in the stream);
    ``version`` counts its events (1 = never edited). ``lead_time``: seconds the rater spent on
    it (Label Studio's measure; None if it sent none).
    """

    seq: int
    annotation_id: int
    kind: str
    task_id: int | None
    rater: str | None
    ordered: tuple[str, ...] | None
    image_id: str | None
    label: str | None
    created_at: datetime | None
    updated_at: datetime | None
    recorded_at: datetime
    version: int = 1
    lead_time: float | None = None

    @property
    def time(self) -> datetime:
        """When the rater submitted: Label Studio's creation time, else when the store saw it."""
        return self.created_at or self.recorded_at


@dataclass(frozen=True)
class AppendResult:
    """What an append did.

    ``status`` is one of ``created`` (a new annotation: apply it to the live engine),
    ``updated`` / ``deleted`` / ``restored`` (an existing annotation changed, went or came
    back: rebuild the engine),
    ``duplicate`` (same content delivered again: nothing to do), ``stale`` (an older version
    than the one recorded arrived late: nothing to do), ``unknown`` (deleting an annotation
    the log never saw: nothing to do). ``seq`` is the new event's log position, if any.
    """

    status: str
    annotation_id: int
    seq: int | None = None
    version: int | None = None

    @property
    def changed(self) -> bool:
        """True when the log gained an event."""
        return self.status in ("created", "updated", "deleted", "restored")

    @property
    def needs_rebuild(self) -> bool:
        """True when live engine state no longer matches the log (an edit or a deletion)."""
        return self.status in ("updated", "deleted", "restored")


@dataclass(frozen=True)
class Rejection:
    """A refused submission and why."""

    seq: int
    reason: str
    received_at: datetime
    kind: str | None = None
    annotation_id: int | None = None
    task_id: int | None = None
    rater: str | None = None
    payload: str | None = None


@dataclass(frozen=True)
class TaskRecord:
    """A Label Studio task the scheduler created."""

    task_id: int
    kind: str
    image_ids: tuple[str, ...]
    batch_id: str | None
    status: str
    created_at: datetime
    updated_at: datetime
    meta: dict[str, Any] = field(default_factory=dict)


def _as_utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"expected a datetime, got {value!r}")
    # A naive time is taken to be UTC (Label Studio's API speaks UTC).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_time(value: datetime | str | None, name: str) -> datetime | None:
    """Accept a datetime or an ISO-8601 string (Label Studio's ``created_at``)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name} {value!r} is not an ISO-8601 time") from None
    return _as_utc(value)


def _as_id(value: Any, name: str, *, optional: bool = False) -> int | None:
    """Label Studio ids are integers; accept ints and digit strings, refuse anything else."""
    if value is None and optional:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer id, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{name} must be an integer id, got {value!r}")


def _content_hash(kind: str, payload: Mapping[str, Any]) -> str:
    blob = json.dumps({"kind": kind, **payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _as_seconds(value: Any, name: str) -> float | None:
    """A duration in seconds (finite, >= 0) or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _now() -> datetime:
    return datetime.now(UTC)


class SubmissionStore:
    """The scheduler's durable store (see the module docstring).

    ``SubmissionStore(url)`` opens (and if needed creates) the schema. Use one store per
    process and share it between threads; call :meth:`close` when done.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        if not url or "://" not in url:
            raise ValueError(
                f"database URL {url!r} is not a SQLAlchemy URL; use e.g. "
                "sqlite:///runs/scheduler.db or postgresql+psycopg://user@host/db"
            )
        self.url = url
        self.engine: Engine = _make_engine(url, echo=echo)
        self._is_sqlite = self.engine.dialect.name == "sqlite"
        # SQLite serialises writers anyway; doing it here avoids SQLITE_BUSY on the
        # read-then-write upgrade inside one process (see module docstring).
        self._write_lock = threading.Lock() if self._is_sqlite else None
        _metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> SubmissionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SubmissionStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # -- writes ----------------------------------------------------------------------------

    def _write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(conn)`` in one transaction, retrying when it lost a race."""
        for attempt in range(_WRITE_RETRIES):
            try:
                if self._write_lock is None:
                    with self.engine.begin() as conn:
                        return fn(conn)
                with self._write_lock, self.engine.begin() as conn:
                    return fn(conn)
            except IntegrityError:
                # Another writer appended the same annotation version first: re-read and decide
                # again (it is usually a duplicate now).
                if attempt == _WRITE_RETRIES - 1:
                    raise
            except OperationalError as exc:
                # Another *process* holds the SQLite write lock beyond the busy timeout.
                if "locked" not in str(exc).lower() or attempt == _WRITE_RETRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def append_ranking(
        self,
        annotation_id: int | str,
        ordered: Sequence[str],
        *,
        rater: str | None,
        task_id: int | str | None = None,
        created_at: datetime | str | None = None,
        updated_at: datetime | str | None = None,
        lead_time: float | None = None,
        seen_at: datetime | str | None = None,
    ) -> AppendResult:
        """Record a ranked batch (image ids, most basal first) for a Label Studio annotation.

        Idempotent: delivering the same annotation with the same content again is a no-op
        (``duplicate``); different content appends an ``update`` event that supersedes the
        earlier one, unless its ``updated_at`` is older than the recorded version (``stale``).
        ``seen_at`` is when the Label Studio read that showed this content began. A *deleted*
        annotation comes back (a ``restore`` event, status ``restored``) only when that read
        began after the delete was recorded (Label Studio showed it again since: the delete was
        inferred wrongly); anything read before the delete is a late arrival (``stale``).
        ``lead_time`` is the seconds the rater spent (Label Studio's measure).
        The store does not validate the ranking against the engine: the service does that
        first and records refusals with :meth:`record_rejection`.
        """
        if isinstance(ordered, str) or not isinstance(ordered, Sequence):
            raise ValueError(f"ordered must be a list of image ids, got {ordered!r}")
        ids = [str(i) for i in ordered]
        if not ids:
            raise ValueError("ordered is empty: a ranked batch needs image ids")
        return self._append(
            "rank",
            annotation_id,
            {"ordered": ids},
            rater,
            task_id,
            created_at,
            updated_at,
            lead_time=lead_time,
            seen_at=seen_at,
        )

    def append_boundary(
        self,
        annotation_id: int | str,
        image_id: str,
        label: str,
        *,
        rater: str | None,
        task_id: int | str | None = None,
        created_at: datetime | str | None = None,
        updated_at: datetime | str | None = None,
        lead_time: float | None = None,
        seen_at: datetime | str | None = None,
    ) -> AppendResult:
        """Record one absolute (boundary) label ``label`` for ``image_id``; same idempotence as
        :meth:`append_ranking`."""
        if not image_id or not isinstance(image_id, str):
            raise ValueError(f"image_id must be a non-empty string, got {image_id!r}")
        if not label or not isinstance(label, str):
            raise ValueError(f"label must be a class name, got {label!r}")
        payload = {"image_id": image_id, "label": label}
        return self._append(
            "boundary",
            annotation_id,
            payload,
            rater,
            task_id,
            created_at,
            updated_at,
            lead_time=lead_time,
            seen_at=seen_at,
        )

    def _append(
        self,
        kind,
        annotation_id,
        payload,
        rater,
        task_id,
        created_at,
        updated_at,
        *,
        lead_time=None,
        seen_at=None,
    ):
        ann = _as_id(annotation_id, "annotation_id")
        seen = _parse_time(seen_at, "seen_at")
        task = _as_id(task_id, "task_id", optional=True)
        created = _parse_time(created_at, "created_at")
        updated = _parse_time(updated_at, "updated_at")
        digest = _content_hash(kind, payload)
        lead = _as_seconds(lead_time, "lead_time")

        def write(conn):
            last = _latest_event(conn, ann)
            op = "create" if last is None else "update"
            if last is not None and last.op == "delete":
                # A delete is not final: a reconciliation may have judged an annotation gone
                # that Label Studio shows again (a project bound by mistake, a listing gap).
                # Only a read of Label Studio that began after the delete was recorded brings
                # it back; a listing or a read-back made before it is late and stays out.
                if seen is None or seen <= last.recorded_at:
                    return AppendResult("stale", ann, None, last.version)
                op = "restore"
            elif last is not None:
                if last.content_hash == digest and last.kind == kind:
                    return AppendResult("duplicate", ann, None, last.version)
                if (
                    updated is not None
                    and last.updated_at is not None
                    and updated < last.updated_at
                ):
                    return AppendResult("stale", ann, None, last.version)
            version = 1 if last is None else last.version + 1
            row = {
                "annotation_id": ann,
                "version": version,
                "op": op,
                "kind": kind,
                "task_id": task,
                "rater": rater,
                "payload": payload,
                "content_hash": digest,
                "created_at": created,
                "updated_at": updated,
                "recorded_at": _now(),
                "lead_time": lead,
            }
            seq = conn.execute(insert(_events).values(**row)).inserted_primary_key[0]
            return AppendResult(op + "d", ann, seq, version)

        return self._write(write)

    def delete_annotation(
        self, annotation_id: int | str, *, deleted_at: datetime | str | None = None
    ) -> AppendResult:
        """Append a ``delete`` event: the annotation stops counting. Idempotent."""
        ann = _as_id(annotation_id, "annotation_id")
        when = _parse_time(deleted_at, "deleted_at")

        def write(conn):
            last = _latest_event(conn, ann)
            if last is None:
                return AppendResult("unknown", ann)
            if last.op == "delete":
                return AppendResult("duplicate", ann, None, last.version)
            row = {
                "annotation_id": ann,
                "version": last.version + 1,
                "op": "delete",
                "kind": last.kind,
                "task_id": last.task_id,
                "rater": last.rater,
                "payload": None,
                "content_hash": None,
                "created_at": last.created_at,
                "updated_at": when,
                "recorded_at": _now(),
            }
            seq = conn.execute(insert(_events).values(**row)).inserted_primary_key[0]
            return AppendResult("deleted", ann, seq, row["version"])

        return self._write(write)

    def record_rejection(
        self,
        reason: str,
        *,
        kind: str | None = None,
        annotation_id: int | str | None = None,
        task_id: int | str | None = None,
        rater: str | None = None,
        payload: Any = None,
        received_at: datetime | str | None = None,
        version_key: str | None = None,
    ) -> bool:
        """Record a refused submission with its reason. Returns False if it was already recorded.
        ``version_key`` marks a refusal of that version's content (see :meth:`rejected_versions`).

        A re-delivery of the same refused annotation (same id, reason and payload) is recorded
        once, so a webhook retried by Label Studio does not flood the dashboard. The payload
        is stored as JSON text, truncated to ``REJECTION_PAYLOAD_MAX_CHARS``.
        """
        if not reason or not isinstance(reason, str):
            raise ValueError("reason must be a non-empty string saying why it was refused")
        if len(reason) > REJECTION_REASON_MAX_CHARS:
            reason = reason[: REJECTION_REASON_MAX_CHARS - 1] + "…"
        ann = _as_id(annotation_id, "annotation_id", optional=True)
        task = _as_id(task_id, "task_id", optional=True)
        text = None
        if payload is not None:
            text = (
                payload
                if isinstance(payload, str)
                else json.dumps(payload, default=str, sort_keys=True)
            )
            text = text[:REJECTION_PAYLOAD_MAX_CHARS]
        key = None
        if ann is not None:
            key = hashlib.sha256(json.dumps([ann, task, reason, text]).encode()).hexdigest()
        row = {
            "dedupe_key": key,
            "kind": kind,
            "annotation_id": ann,
            "task_id": task,
            "rater": rater,
            "reason": reason,
            "payload": text,
            "received_at": _parse_time(received_at, "received_at") or _now(),
            "version_key": version_key,
        }

        def write(conn):
            if (
                key is not None
                and conn.execute(
                    select(_rejections.c.seq).where(_rejections.c.dedupe_key == key)
                ).first()
            ):
                return False
            conn.execute(insert(_rejections).values(**row))
            return True

        try:
            return self._write(write)
        except IntegrityError:
            return False  # a concurrent writer recorded the same rejection

    # -- reads -----------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """The whole log, oldest first, as plain dicts (for export and audits)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_events).order_by(_events.c.seq)).mappings().all()
        return [dict(r) for r in rows]

    def event_count(self) -> int:
        """Number of events in the log (creates, updates and deletes)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(_events)).scalar_one()

    def knows_annotation(self, annotation_id: int | str) -> bool:
        """Whether the log holds any event of this annotation (deleted ones included)."""
        ann = _as_id(annotation_id, "annotation_id")
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_events.c.seq).where(_events.c.annotation_id == ann).limit(1)
            ).first()
        return row is not None

    def latest_version(self, annotation_id: int | str) -> Submission | None:
        """The current version of one annotation, or None if unknown or deleted."""
        ann = _as_id(annotation_id, "annotation_id")
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_events).where(_events.c.annotation_id == ann).order_by(_events.c.version)
            ).all()
        if not rows or rows[-1].op == "delete":
            return None
        return _to_submission(rows[0].seq, rows[-1])

    def effective_submissions(
        self, kind: str | None = None, *, content: bool = True
    ) -> Iterator[Submission]:
        """The current rankings and boundary labels, in log order.

        Each annotation appears once, with its latest content, at the position of its *first*
        event: an edit corrects what the rater said then, it is not a new judgement, so
        replaying the other submissions in their original order keeps order-dependent
        strategies (the study's Glicko-style updates) reproducible. Deleted annotations are
        dropped. ``kind`` (``"rank"`` or ``"boundary"``) filters. ``content=False`` leaves
        ``ordered``/``image_id``/``label`` as None and skips reading the payloads (about 5x
        faster: the dashboard only needs who submitted when).
        """
        if kind is not None and kind not in SUBMISSION_KINDS:
            raise ValueError(f"kind must be one of {SUBMISSION_KINDS}, got {kind!r}")
        columns = (
            [_events]
            if content
            else [c for c in _events.c if c.name not in ("payload", "content_hash")]
        )
        with self.engine.connect() as conn:
            rows = conn.execute(select(*columns).order_by(_events.c.seq)).all()
        first_seq: dict[int, int] = {}
        latest: dict[int, Any] = {}
        for row in rows:
            first_seq.setdefault(row.annotation_id, row.seq)
            latest[row.annotation_id] = row
        out = [
            _to_submission(first_seq[ann], row)
            for ann, row in latest.items()
            if row.op != "delete" and (kind is None or row.kind == kind)
        ]
        out.sort(key=lambda s: s.seq)
        yield from out

    def rebuild(
        self,
        engine_factory: Callable[[], Any],
        *,
        on_invalid: Callable[[Submission, Exception], None] | None = None,
    ) -> Any:
        """Replay the effective submissions into ``engine_factory()`` and return the engine.

        Rankings go to ``engine.submit(rater, ordered, require_open=False)`` (the batch need
        not be open: it was served by an earlier process) and boundary labels to
        ``engine.submit_boundary(image_id, label, rater)``, in log order. A submission the engine
        refuses (``ValueError``, e.g. an image no longer in the pool) raises ``ValueError``
        naming the annotation, unless ``on_invalid(submission, error)`` is given, which is
        then called and the replay goes on.
        """
        engine = engine_factory()
        for sub in self.effective_submissions():
            try:
                if sub.kind == "rank":
                    engine.submit(sub.rater, list(sub.ordered), require_open=False)
                else:
                    engine.submit_boundary(sub.image_id, sub.label, sub.rater or None)
                lead = sub.lead_time
                if sub.rater and lead is not None and 0 < lead < 86400:
                    # The measured times the task chooser values tasks by.
                    engine.record_time(sub.rater, "rank" if sub.kind == "rank" else "label", lead)
            except ValueError as exc:
                if on_invalid is None:
                    raise ValueError(
                        f"rebuild: the engine refused annotation {sub.annotation_id} "
                        f"(log seq {sub.seq}, {sub.kind}): {exc}"
                    ) from exc
                on_invalid(sub, exc)
        return engine

    def rejections(self, limit: int | None = None) -> list[Rejection]:
        """Refused submissions, newest first (``limit`` caps how many)."""
        query = select(_rejections).order_by(_rejections.c.seq.desc())
        if limit is not None:
            query = query.limit(int(limit))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Rejection(
                seq=r.seq,
                reason=r.reason,
                received_at=r.received_at,
                kind=r.kind,
                annotation_id=r.annotation_id,
                task_id=r.task_id,
                rater=r.rater,
                payload=r.payload,
            )
            for r in rows
        ]

    def rejected_versions(self) -> dict[int, str]:
        """Annotation id -> the version last refused for its content (a restart must not look
        at all of them again, nor log them again)."""
        query = (
            select(_rejections.c.annotation_id, _rejections.c.version_key)
            .where(_rejections.c.version_key.is_not(None))
            .order_by(_rejections.c.seq)
        )
        with self.engine.connect() as conn:
            return {r.annotation_id: r.version_key for r in conn.execute(query).all()}

    def rejection_count(self) -> int:
        """How many submissions were refused in all."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(_rejections)).scalar_one()

    # -- tasks -----------------------------------------------------------------------------

    def add_task(
        self,
        task_id: int | str,
        kind: str,
        image_ids: Sequence[str],
        *,
        batch_id: str | None = None,
        status: str = "open",
        meta: Mapping[str, Any] | None = None,
        created_at: datetime | str | None = None,
    ) -> TaskRecord:
        """Record a task the scheduler created in Label Studio.

        Idempotent: adding a task id that is already recorded with the same kind and images
        returns the stored record unchanged; the same id with different content raises
        ``ValueError`` (Label Studio never reuses task ids, so that is a bug upstream).
        """
        tid = _as_id(task_id, "task_id")
        if kind not in TASK_KINDS:
            raise ValueError(f"task kind must be one of {TASK_KINDS}, got {kind!r}")
        if status not in TASK_STATUSES:
            raise ValueError(f"task status must be one of {TASK_STATUSES}, got {status!r}")
        if isinstance(image_ids, str) or not image_ids:
            raise ValueError(f"image_ids must be a non-empty list of image ids, got {image_ids!r}")
        ids = [str(i) for i in image_ids]
        when = _parse_time(created_at, "created_at") or _now()

        def write(conn):
            existing = conn.execute(select(_tasks).where(_tasks.c.task_id == tid)).first()
            if existing is not None:
                if existing.kind != kind or list(existing.image_ids) != ids:
                    raise ValueError(
                        f"task {tid} is already recorded as {existing.kind} {list(existing.image_ids)}"
                    )
                return _to_task(existing)
            row = {
                "task_id": tid,
                "kind": kind,
                "image_ids": ids,
                "batch_id": batch_id,
                "status": status,
                "meta": dict(meta or {}),
                "created_at": when,
                "updated_at": when,
            }
            conn.execute(insert(_tasks).values(**row))
            return TaskRecord(
                tid,
                kind,
                tuple(ids),
                batch_id,
                status,
                _as_utc(when),
                _as_utc(when),
                dict(meta or {}),
            )

        return self._write(write)

    def set_task_status(self, task_id: int | str, status: str) -> TaskRecord:
        """Move a task to ``open``/``answered``/``retired``/``skipped``; unknown ids raise."""
        tid = _as_id(task_id, "task_id")
        if status not in TASK_STATUSES:
            raise ValueError(f"task status must be one of {TASK_STATUSES}, got {status!r}")

        def write(conn):
            done = conn.execute(
                update(_tasks)
                .where(_tasks.c.task_id == tid)
                .values(status=status, updated_at=_now())
            )
            if done.rowcount == 0:
                raise ValueError(f"task {tid} was not created by the scheduler")
            return _to_task(conn.execute(select(_tasks).where(_tasks.c.task_id == tid)).one())

        return self._write(write)

    def get_task(self, task_id: int | str) -> TaskRecord | None:
        """The record of a scheduler-created task, or None (the task is not ours)."""
        tid = _as_id(task_id, "task_id")
        with self.engine.connect() as conn:
            row = conn.execute(select(_tasks).where(_tasks.c.task_id == tid)).first()
        return None if row is None else _to_task(row)

    def tasks(self, *, status: str | None = None, kind: str | None = None) -> list[TaskRecord]:
        """Scheduler-created tasks, oldest first, optionally filtered by status and kind."""
        query = select(_tasks).order_by(_tasks.c.created_at, _tasks.c.task_id)
        if status is not None:
            if status not in TASK_STATUSES:
                raise ValueError(f"task status must be one of {TASK_STATUSES}, got {status!r}")
            query = query.where(_tasks.c.status == status)
        if kind is not None:
            if kind not in TASK_KINDS:
                raise ValueError(f"task kind must be one of {TASK_KINDS}, got {kind!r}")
            query = query.where(_tasks.c.kind == kind)
        with self.engine.connect() as conn:
            return [_to_task(r) for r in conn.execute(query).all()]

    # -- key/value state -------------------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        """A JSON value the service stored under ``key``, or ``default``."""
        with self.engine.connect() as conn:
            row = conn.execute(select(_state.c.value).where(_state.c.key == key)).first()
        return default if row is None else row.value

    def set_state(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key`` (last write wins)."""
        if not key or not isinstance(key, str):
            raise ValueError(f"state key must be a non-empty string, got {key!r}")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"state value for {key!r} is not JSON-serialisable: {exc}") from None

        def write(conn):
            done = conn.execute(
                update(_state).where(_state.c.key == key).values(value=value, updated_at=_now())
            )
            if done.rowcount == 0:
                conn.execute(insert(_state).values(key=key, value=value, updated_at=_now()))

        self._write(write)


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns a store written by an older version lacks (``create_all``
    creates missing tables only): the log must open without a migration step."""
    inspector = inspect(engine)
    for table in _metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"the store's table {table.name} lacks column {column.name}, which cannot be "
                    "added in place; open it with the version that wrote it, or start a new store"
                )
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')


def open_store(url: str) -> SubmissionStore:
    """Open (creating the schema if needed) the store at a SQLAlchemy URL."""
    return SubmissionStore(url)


def _make_engine(url: str, *, echo: bool) -> Engine:
    if url.startswith("sqlite"):
        # check_same_thread=False: the pool hands connections to the service's request threads;
        # the store never shares one connection between threads at the same time.
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            if not url.rstrip("/").endswith(":memory:") and url not in ("sqlite://", "sqlite:///"):
                cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints, fine with WAL
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # pool_pre_ping: a PostgreSQL restart must not break the service's next request.
    return create_engine(url, echo=echo, pool_pre_ping=True)


def _latest_event(conn, annotation_id: int):
    return conn.execute(
        select(_events)
        .where(_events.c.annotation_id == annotation_id)
        .order_by(_events.c.version.desc())
        .limit(1)
    ).first()


def _to_submission(first_seq: int, row) -> Submission:
    payload = row._mapping.get("payload") or {}  # absent when read with content=False
    return Submission(
        seq=first_seq,
        annotation_id=row.annotation_id,
        kind=row.kind,
        task_id=row.task_id,
        rater=row.rater,
        ordered=tuple(payload["ordered"]) if "ordered" in payload else None,
        image_id=payload.get("image_id"),
        label=payload.get("label"),
        created_at=row.created_at,
        updated_at=row.updated_at,
        recorded_at=row.recorded_at,
        version=row.version,
        lead_time=row._mapping.get("lead_time"),
    )


def _to_task(row) -> TaskRecord:
    return TaskRecord(
        task_id=row.task_id,
        kind=row.kind,
        image_ids=tuple(row.image_ids),
        batch_id=row.batch_id,
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
        meta=dict(row.meta or {}),
    )
