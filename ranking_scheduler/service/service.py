"""The scheduler service: Label Studio webhooks in, ranked batches out, classes published.

One :class:`SchedulerService` wraps a :class:`~ranking_scheduler.engine.ranking.RankingEngine` around
the durable :class:`~ranking_scheduler.service.store.SubmissionStore` (the log is the source of truth)
and a :class:`~ranking_scheduler.service.ls_adapter.LabelStudioAdapter` (the SDK edge).

Concurrency: the webhook endpoint only checks the secret and queues the event, answering within
Label Studio's ~1 s webhook timeout. A single worker thread does everything that changes state,
in order: parse, append to the log, update the engine, then the Label Studio calls (boundary
questions, retiring tasks, publishing). Periodic passes (the watch, the light and the full
reconciliation) read Label Studio on a tick thread and queue what they read; the worker applies
it, so there is exactly one writer. Readers (``/api/stats``) take the engine lock.

New Rank tasks are the exception to "the worker calls Label Studio": the worker draws the
batches from the engine, and a small pool of creator threads imports them, so that one slow
import cannot hold up the stream (Label Studio's SQLite server answers a write conflict on task
import by sleeping 3 s, then 6 s, before it retries). The creator hands the new task ids back to
the worker, which records them ahead of any webhook; a webhook about a task that is not recorded
yet while creations are in flight waits for them instead of being rejected. The queue is ordered
by priority: recorded creations, then webhooks, then watch and reconciliation passes.

How many Rank tasks are kept open (``wanted_open_tasks``) follows the observed demand: one per
active rater plus enough spare tasks to cover the submissions that arrive while replacements are
being created (submission rate x recent worst replacement lag x a safety factor), never fewer
than ``open_per_rater`` per active rater or ``min_open_tasks``, never more than
``max_open_tasks``.

Idempotence: every annotation is appended by id, so a duplicate webhook or a reconciliation
that sees an annotation again is a no-op; an edited or deleted annotation rebuilds the engine
from the log. A restart rebuilds from the log and reconciles with Label Studio, so a webhook
missed while the service was down is picked up.
"""

from __future__ import annotations

import csv
import hmac
import itertools
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the string annotations here

from ls_config.provision import BOUNDARY, RANK, SECRET_HEADER
from ranking_scheduler.engine.ranking import RankingEngine
from ranking_scheduler.service.ls_adapter import MODEL_VERSION, LabelStudioAdapter, PoolImage
from ranking_scheduler.service.settings import SchedulerSettings
from ranking_scheduler.service.store import SubmissionStore
from slicerank_base import CLASSES

log = logging.getLogger(__name__)

POOL_RATER = "label-studio"
"""Name the engine's open batches are drawn for: Label Studio tasks are shared by all raters."""

CREATED_BY = "slicerank-scheduler"
"""``meta.created_by`` of every task the scheduler creates (lets reconciliation adopt orphans)."""

MAX_DEFERRED_TOP_UPS = 8
"""At most this many queued submissions are applied before the open tasks are topped up."""

SLOW_EVENT_S = 0.5
"""A worker event taking longer than this is logged (what held the stream up)."""

PRIO_CREATED, PRIO_WEBHOOK, PRIO_PERIODIC, PRIO_STOP = range(4)
"""Worker queue priorities: recorded creations first, then webhooks, then periodic passes."""

RATE_WINDOW_S = 60.0
"""Submissions within this many seconds give the observed submission rate."""

LAG_SAMPLES = 200
"""The worst of this many recent replacement lags sizes the spare tasks."""

PROCESSING_SAMPLES = 20000
"""How many recent per-submission processing times are kept for the percentiles."""


def rater_name(completed_by: Any) -> str:
    """A stable rater name from Label Studio's ``completed_by`` (a user id or a user dict)."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id") or completed_by.get("email")
    if completed_by in (None, ""):
        raise ValueError("the annotation names no rater (completed_by is empty)")
    return f"ls-user-{completed_by}"


def parse_ranking(result: Any, expected: tuple[str, ...] | list[str]) -> list[str]:
    """The ordered image ids (top = most basal) of a Ranker result; ``ValueError`` says what is
    wrong (no ranking, items missing, extra or repeated)."""
    if not isinstance(result, list):
        raise ValueError(f"annotation result is {type(result).__name__}, not a list")
    rankers = [r for r in result if isinstance(r, dict) and r.get("type") == "ranker"]
    if len(rankers) != 1:
        raise ValueError(f"expected one ranker result, found {len(rankers)}")
    value = rankers[0].get("value") or {}
    ranker = value.get("ranker") if isinstance(value, dict) else None
    if not isinstance(ranker, dict) or len(ranker) != 1:
        keys = sorted(ranker) if isinstance(ranker, dict) else ranker
        raise ValueError(f"ranker value must hold exactly one ordered list, got {keys!r}")
    order = next(iter(ranker.values()))
    if not isinstance(order, list) or not all(isinstance(i, str) for i in order):
        raise ValueError(f"ranker order must be a list of image ids, got {order!r}")
    want = set(expected)
    missing = sorted(want - set(order))
    extra = sorted(set(order) - want)
    repeated = sorted({i for i in order if order.count(i) > 1})
    if missing or extra or repeated:
        parts = [
            f"{name} {ids}"
            for name, ids in (("missing", missing), ("extra", extra), ("repeated", repeated))
            if ids
        ]
        raise ValueError(
            f"ranking does not match the task's {len(want)} images: {'; '.join(parts)}"
        )
    return order


def parse_boundary(result: Any) -> str:
    """The class chosen in a boundary (Choices) result; ``ValueError`` if none or unknown."""
    if not isinstance(result, list):
        raise ValueError(f"annotation result is {type(result).__name__}, not a list")
    chosen = [
        c
        for r in result
        if isinstance(r, dict) and r.get("type") == "choices"
        for c in (r.get("value") or {}).get("choices") or []
    ]
    if len(chosen) != 1:
        raise ValueError(f"expected exactly one class, got {chosen!r}")
    if chosen[0] not in CLASSES:
        raise ValueError(f"class {chosen[0]!r} is not one of {', '.join(CLASSES)}")
    return chosen[0]


def _unchanged(sub, ann: dict) -> bool:
    """Whether the log already holds exactly this annotation's content."""
    if sub is None or ann.get("was_cancelled"):
        return False
    try:
        if sub.kind == "rank":
            return parse_ranking(ann.get("result"), sub.ordered) == list(sub.ordered)
        return parse_boundary(ann.get("result")) == sub.label
    except ValueError:
        return False


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def spare_tasks(rate_per_s: float, lag_s: float, safety: float) -> int:
    """Spare open Rank tasks needed so that ``rate_per_s`` submissions, each replaced after up
    to ``lag_s`` seconds, never drain the pool (Little's law, times ``safety``)."""
    for name, value in (("rate_per_s", rate_per_s), ("lag_s", lag_s), ("safety", safety)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return math.ceil(rate_per_s * lag_s * safety - 1e-9)


def wanted_open(
    active: int, *, spare: int, open_per_rater: int, min_open: int, max_open: int
) -> int:
    """Open Rank tasks to keep: one on each active rater's screen plus ``spare``, at least
    ``open_per_rater`` per active rater and ``min_open``, at most ``max_open``."""
    if active < 0 or spare < 0:
        raise ValueError(f"active and spare must be >= 0, got {active} and {spare}")
    if max_open < min_open:
        raise ValueError(f"max_open={max_open} is below min_open={min_open}")
    return min(max_open, max(min_open, open_per_rater * active, active + spare))


def submission_rate(times: deque[float], now: float, window_s: float = RATE_WINDOW_S) -> float:
    """Submissions per second over the last ``window_s`` seconds; drops older ``times`` (a
    deque of timestamps in ascending order) as it goes."""
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    while times and times[0] < now - window_s:
        times.popleft()
    return len(times) / window_s


class WorkerStats:
    """What the worker thread spends its time on (thread-safe snapshots for ``/api/stats``):
    per kind of event its count, total and worst duration; the deepest queue seen; the lowest
    number of spare Rank tasks seen before a top-up; the replacement lag (a submission's webhook
    queued until the top-up after it has created the new tasks in Label Studio); the largest
    number of open Rank tasks aimed at."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: dict[str, list[float]] = {}
        self.queue_max = 0
        self.spare_low: int | None = None
        self.wanted_high = 0
        self.lags: deque[float] = deque(maxlen=PROCESSING_SAMPLES)

    def record(self, kind: str, seconds: float) -> None:
        """One worker event of ``kind`` took ``seconds``."""
        with self._lock:
            n, total, worst = self.events.get(kind, (0, 0.0, 0.0))
            self.events[kind] = [n + 1, total + seconds, max(worst, seconds)]

    def saw_depth(self, depth: int) -> None:
        """The queue held ``depth`` events."""
        self.queue_max = max(self.queue_max, depth)

    def saw_spare(self, spare: int) -> None:
        """A top-up found ``spare`` open Rank tasks beyond one per active rater."""
        with self._lock:
            self.spare_low = spare if self.spare_low is None else min(self.spare_low, spare)

    def recent_lags(self, n: int) -> list[float]:
        """The last ``n`` replacement lags (seconds)."""
        with self._lock:
            return list(self.lags)[-n:]

    def saw_wanted(self, wanted: int) -> None:
        """A top-up aimed at ``wanted`` open Rank tasks."""
        self.wanted_high = max(self.wanted_high, wanted)

    def replaced(self, lag_s: float) -> None:
        """A top-up finished ``lag_s`` after the oldest submission it replaces was queued."""
        with self._lock:
            self.lags.append(lag_s)

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON values (ms for times)."""
        with self._lock:
            lags = list(self.lags)
            events = {
                kind: {"n": n, "total_s": round(total, 3), "max_ms": round(worst * 1000, 1)}
                for kind, (n, total, worst) in sorted(self.events.items())
            }
        p95 = _percentile(lags, 0.95)
        return {
            "events": events,
            "queue_max": self.queue_max,
            "spare_low": self.spare_low,
            "wanted_open_high": self.wanted_high,
            "replacement_lag_ms_p50": None if not lags else 1000 * _percentile(lags, 0.5),
            "replacement_lag_ms_p95": None if p95 is None else 1000 * p95,
            "replacement_lag_ms_max": None if not lags else 1000 * max(lags),
        }


class SchedulerService:
    """The running scheduler: call :meth:`start`, feed :meth:`enqueue`, :meth:`stop` at the end.

    ``store`` and ``adapter`` are passed in (the CLI builds them from the settings); ``clock``
    returns seconds (tests may pass a fake).
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        store: SubmissionStore,
        adapter: LabelStudioAdapter,
        *,
        clock=time.time,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ls = adapter
        self.clock = clock
        self.engine_options = dict(engine_options or {})
        self.engine: RankingEngine | None = None
        self.pool: dict[str, PoolImage] = {}
        self.lock = threading.RLock()
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._creator: ThreadPoolExecutor | None = None
        self._creating = 0  # Rank tasks being created by the creator threads
        self._create_jobs = 0  # import requests in flight
        self._parked: list[tuple] = []  # webhooks about tasks not recorded yet
        self._rank_times: deque[float] = deque()  # clock() of recent Rank submissions
        self._rate_lock = threading.Lock()  # /api/stats reads the rate from another thread
        self._open: dict[int, Any] = {}
        self._rejected: set[int] = set()
        self._last_seen: dict[str, float] = {}
        self._own_ms: deque[float] = deque(maxlen=PROCESSING_SAMPLES)
        self._counts = {
            "webhooks": 0,
            "created": 0,
            "updated": 0,
            "deleted": 0,
            "duplicate": 0,
            "stale": 0,
            "rejected": 0,
            "skipped": 0,
            "ignored": 0,
            "rebuilds": 0,
            "reconciles": 0,
            "tasks_created": 0,
            "tasks_retired": 0,
            "errors": 0,
        }
        self._deferred = 0
        self._worker = WorkerStats()
        self._pending_since: float | None = None
        self._watch_short: list = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.published: dict | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self, *, background: bool = True) -> SchedulerService:
        """Connect to Label Studio and rebuild the engine from the log; then run the worker (and
        the periodic reconciliation) in background threads. The first reconciliation is queued
        by the web app once it listens (so no webhook falls between the two); without
        ``background`` it runs here."""
        self.ls.connect()
        pool = self.ls.pool()
        if not pool:
            raise ValueError(
                f"the Classify project {self.ls.projects} has no images; run slicerank provision"
            )
        self.pool = {img.image_id: img for img in pool}
        self._open = {t.task_id: t for t in self.store.tasks(status="open")}
        self.rebuild()
        self._rejected = {r.annotation_id for r in self.store.rejections() if r.annotation_id}
        for sub in self.store.effective_submissions():
            if sub.rater:
                self._last_seen[sub.rater] = max(
                    self._last_seen.get(sub.rater, 0.0), sub.time.timestamp()
                )
        self.published = self.store.get_state("published")
        if not background:
            self.reconcile()
            self.top_up()
        if background:
            self._creator = ThreadPoolExecutor(
                max_workers=self.settings.create_concurrency, thread_name_prefix="scheduler-create"
            )
            worker = threading.Thread(target=self._work, name="scheduler-worker", daemon=True)
            worker.start()
            self._threads.append(worker)
            s = self.settings
            if max(s.reconcile_interval_s, s.watch_interval_s, s.full_reconcile_interval_s) > 0:
                timer = threading.Thread(target=self._tick, name="scheduler-tick", daemon=True)
                timer.start()
                self._threads.append(timer)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads after the events already queued and the task creations in flight
        (waiting at most ``timeout`` for those: Label Studio may hold an import for 45 s; a task
        created but not recorded is adopted by the reconciliation at the next start)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._creator is not None:
            self._creator.shutdown(wait=False)
            while self._create_jobs and time.monotonic() < deadline:
                time.sleep(0.02)  # the worker records their results meanwhile
        self._put(None, PRIO_STOP)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _new_engine(self) -> RankingEngine:
        s = self.settings
        options = dict(self.engine_options)
        if s.boundary_budget >= 0:
            options.setdefault("boundary_budget", s.boundary_budget)
        return RankingEngine(
            list(self.pool),
            strategy=s.strategy,
            batch_size=s.batch_size,
            target_views=s.target_views,
            seed=s.seed,
            **options,
        )

    def rebuild(self) -> None:
        """Replace the engine by one replayed from the log (start-up, edits, deletions)."""

        def invalid(sub, exc):
            log.warning("log entry %s no longer applies: %s", sub.annotation_id, exc)

        engine = self.store.rebuild(self._new_engine, on_invalid=invalid)
        with self.lock:
            self.engine = engine
            self._restore_open_questions()
        self._counts["rebuilds"] += 1

    def _restore_open_questions(self) -> None:
        """Tell a rebuilt engine which boundary questions are still open in Label Studio: they
        count against its label budget until answered (the log holds only answers)."""
        for record in list(self._open.values()):
            if record.kind == "boundary" and record.image_ids[0] in self.pool:
                self.engine.restore_pending(record.image_ids[0])

    # ------------------------------------------------------------------ events
    def enqueue(self, action: str, payload: dict) -> None:
        """Queue one webhook event for the worker (returns at once)."""
        self._counts["webhooks"] += 1
        self._put(("webhook", action, payload, time.perf_counter()), PRIO_WEBHOOK)
        self._worker.saw_depth(self._queue.qsize())

    def request_reconcile(self, *, full: bool = True) -> None:
        """Queue a reconciliation with Label Studio (``full=False``: the open tasks only)."""
        self._put(("reconcile", full), PRIO_PERIODIC)

    def _put(self, item: tuple | None, priority: int) -> None:
        self._queue.put((priority, next(self._seq), item))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the queue is drained (tests and the benchmark use it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0 and self._create_jobs == 0:
                return True
            time.sleep(0.02)
        return False

    def _work(self) -> None:
        while True:
            entry = self._queue.get()
            item = entry[2]
            t0 = time.perf_counter()
            kind = "stop" if item is None else item[0]
            if kind == "reconcile":
                kind = "reconcile_full" if item[1] else "reconcile_open"
            depth = self._queue.qsize()
            try:
                if item is None:
                    return
                if item[0] == "webhook":
                    # Under a burst, apply the queued submissions first and top up once
                    # (one Label Studio request for all new tasks) rather than after each.
                    defer = self._queue.qsize() > 0 and self._deferred < MAX_DEFERRED_TOP_UPS
                    self._deferred = self._deferred + 1 if defer else 0
                    if self._pending_since is None:
                        self._pending_since = item[3]
                    status = self.handle_webhook(item[1], item[2], top_up=not defer)
                    if status == "parked":
                        self._parked.append(entry)
                elif item[0] in ("created", "create_failed"):
                    self._creation_done(*item)
                elif item[0] == "watch":
                    self.watch(item[1] if len(item) > 1 else None)
                elif item[0] == "reconcile":
                    self.top_up()  # the stream first: a full pass may take a while
                    if len(item) < 3:
                        self.reconcile(full=item[1])
                    elif item[1]:  # the listing, already read on the tick thread
                        self.reconcile(read=item[2])
                    else:
                        self._reconcile_open(item[2])
                    self.retire_stale()
                    self.top_up()
            except Exception:  # noqa: BLE001 - one bad event must not stop the stream
                self._counts["errors"] += 1
                log.exception("scheduler: event failed; the next reconciliation retries it")
            finally:
                dt = time.perf_counter() - t0
                self._worker.record(kind, dt)
                if dt > SLOW_EVENT_S:
                    log.info("slow %s: %.0f ms (queue %d behind it)", kind, dt * 1000, depth)
                self._queue.task_done()

    def _tick(self) -> None:
        s = self.settings
        intervals = (s.reconcile_interval_s, s.watch_interval_s, s.full_reconcile_interval_s)
        step = min(x for x in intervals if x > 0)
        last_light = last_full = time.monotonic()
        while not self._stop.wait(step):
            now = time.monotonic()
            if s.full_reconcile_interval_s > 0 and now - last_full >= s.full_reconcile_interval_s:
                last_full = last_light = now
                self._read_then_queue("full reconciliation")
            elif s.reconcile_interval_s > 0 and now - last_light >= s.reconcile_interval_s:
                last_light = now
                self._read_then_queue("light reconciliation")
            elif s.watch_interval_s > 0 and self._queue.qsize() == 0:
                self._read_then_queue("watch")

    def _read_then_queue(self, what: str) -> None:
        # The Label Studio reads of the watch and the periodic reconciliations run here, on the
        # tick thread; the worker only applies what they found, so it never waits for them.
        try:
            if what == "watch":
                self._put(("watch", self._read_watch()), PRIO_PERIODIC)
            elif what == "full reconciliation":
                self._put(("reconcile", True, self._read_full()), PRIO_PERIODIC)
            else:
                self._put(("reconcile", False, self._read_open()), PRIO_PERIODIC)
        except Exception:  # noqa: BLE001 - the next tick tries again
            self._counts["errors"] += 1
            log.exception("scheduler: reading Label Studio for the %s failed", what)

    def _open_ids(self, store_kind: str) -> list[int]:
        # list() of a dict view runs in C under the GIL: a consistent snapshot off the worker.
        return [t.task_id for t in list(self._open.values()) if t.kind == store_kind]

    def _read_watch(self) -> list[tuple[frozenset, int]]:
        """Per project: the task ids the scheduler holds open, then Label Studio's count of
        unanswered tasks (read in that order, so a task created meanwhile cannot look lost)."""
        out = []
        for kind, store_kind in ((RANK, "rank"), (BOUNDARY, "boundary")):
            ours = frozenset(self._open_ids(store_kind))
            out.append((ours, self.ls.unlabelled_tasks(kind)))
        return out

    def watch(self, counts: list[tuple[frozenset, int]] | None = None) -> bool:
        """Cheap check for a missed webhook: if Label Studio has fewer unanswered tasks than the
        scheduler thinks are open, reconcile now (instead of at the next full interval).
        ``counts`` is a :meth:`_read_watch` made earlier (on the tick thread); read now if
        ``None``."""
        counts = self._read_watch() if counts is None else counts
        short = [ours for ours, unanswered in counts if unanswered < len(ours)]
        # A submission whose webhook is still on its way looks the same for a moment: only the
        # same shortfall seen twice in a row (nothing arrived in between) means a lost webhook.
        missed = bool(short) and short == self._watch_short
        self._watch_short = [] if missed else short
        if missed:
            self._counts["watch_reconciles"] = self._counts.get("watch_reconciles", 0) + 1
            self.reconcile(full=False)
            self.top_up()
        return missed

    def handle_webhook(self, action: str, payload: dict, *, top_up: bool = True) -> str:
        """Apply one Label Studio webhook event, then (with ``top_up``) make the Label Studio
        calls it needs; returns what happened (see :meth:`apply_annotation`). The service's own
        time for it (everything but waiting for Label Studio) is recorded for ``own_ms_p95``."""
        t0 = time.perf_counter()
        wait0 = self.ls.wait_s
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            ann = payload.get("annotation") or {}
            task = payload.get("task") or {}
            project = payload.get("project") or {}
            project_id = project.get("id") if isinstance(project, dict) else project
            project_id = project_id or task.get("project")
            task_id = task.get("id") or ann.get("task")
            self._adopt_landed_late(project_id, task)
            status = self.apply_annotation(project_id, task_id, ann)
        elif action == "ANNOTATIONS_DELETED":
            status = "ignored"
            for ann in payload.get("annotations") or []:
                status = self.delete_annotation(ann.get("id"), ann.get("task"))
        else:
            self._counts["ignored"] += 1
            return "ignored"
        if status == "parked":
            return status
        if top_up:
            self.top_up()
        own_ms = (time.perf_counter() - t0 - (self.ls.wait_s - wait0)) * 1000.0
        if status in ("created", "updated", "deleted", "rejected", "skipped"):
            self._own_ms.append(own_ms)
        return status

    def _reject(self, reason: str, *, kind, ann: dict, task_id, rater=None) -> str:
        ann_id = ann.get("id")
        self.store.record_rejection(
            reason,
            kind=kind,
            annotation_id=ann_id,
            task_id=task_id,
            rater=rater,
            payload=ann.get("result"),
        )
        if ann_id is not None:
            self._rejected.add(int(ann_id))
        self._counts["rejected"] += 1
        log.warning("rejected annotation %s on task %s: %s", ann_id, task_id, reason)
        return "rejected"

    def apply_annotation(self, project_id: Any, task_id: Any, ann: dict) -> str:
        """Apply one annotation (from a webhook or reconciliation); returns what happened:
        ``created``/``updated``/``duplicate``/``stale``/``skipped``/``rejected``/``ignored``, or
        ``parked`` (an unknown task while Rank tasks are being created: retried once they are
        recorded)."""
        kind = self.ls.kind_of_project(project_id)
        if kind not in (RANK, BOUNDARY):
            self._counts["ignored"] += 1
            return "ignored"
        ann_id = ann.get("id")
        store_kind = "rank" if kind == RANK else "boundary"
        if ann_id is None or task_id is None:
            return self._reject(
                "webhook without annotation or task id", kind=store_kind, ann=ann, task_id=task_id
            )
        if int(ann_id) in self._rejected:
            return "rejected"
        try:
            rater = rater_name(ann.get("completed_by"))
        except ValueError as exc:
            return self._reject(str(exc), kind=store_kind, ann=ann, task_id=task_id)
        record = self.store.get_task(task_id)
        if record is None and self._creating > 0:
            # Possibly one of the tasks being created, answered before its id came back.
            return "parked"
        if record is None:
            return self._reject(
                f"task {task_id} in the {kind} project was not created by the scheduler",
                kind=store_kind,
                ann=ann,
                task_id=task_id,
                rater=rater,
            )
        if ann.get("was_cancelled"):
            return self._skipped(record)
        try:
            if kind == RANK:
                ordered = parse_ranking(ann.get("result"), record.image_ids)
            else:
                label = parse_boundary(ann.get("result"))
        except ValueError as exc:
            status = self._reject(str(exc), kind=store_kind, ann=ann, task_id=task_id, rater=rater)
            self._close_task(record, "retired", delete=False)
            return status
        times = {"created_at": ann.get("created_at"), "updated_at": ann.get("updated_at")}
        if kind == RANK:
            res = self.store.append_ranking(ann_id, ordered, rater=rater, task_id=task_id, **times)
        else:
            res = self.store.append_boundary(
                ann_id, record.image_ids[0], label, rater=rater, task_id=task_id, **times
            )
        self._counts[res.status] = self._counts.get(res.status, 0) + 1
        if res.status == "created":
            with self.lock:
                if kind == RANK:
                    self._submit_ranking(rater, ordered)
                else:
                    self.engine.submit_boundary(record.image_ids[0], label)
            self._last_seen[rater] = self.clock()
            if kind == RANK:
                with self._rate_lock:
                    self._rank_times.append(self.clock())
        elif res.needs_rebuild:
            self.rebuild()
        if record.status == "open" or record.task_id in self._open:
            self._close_task(record, "answered", delete=False, release=False)
        return res.status

    def _submit_ranking(self, rater: str, ordered: list[str]) -> None:
        engine = self.engine
        is_open = any(set(b) == set(ordered) for b in engine.open_batches())
        # After a rebuild the engine no longer knows which batches are open in Label Studio;
        # the task record has already vouched for the images.
        engine.submit(rater, ordered, require_open=is_open)

    def _skipped(self, record) -> str:
        self._counts["skipped"] += 1
        if record.status == "open":
            self._close_task(record, "skipped", delete=True)
        return "skipped"

    def delete_annotation(self, annotation_id: Any, task_id: Any = None) -> str:
        """An annotation was deleted in Label Studio: it stops counting (engine rebuilt)."""
        if annotation_id is None:
            return "ignored"
        res = self.store.delete_annotation(annotation_id)
        if res.status == "deleted":
            self._counts["deleted"] += 1
            self.rebuild()
            record = self.store.get_task(task_id) if task_id is not None else None
            if record is not None and record.status == "answered":
                # The task is back in Label Studio's queue with a stale batch: withdraw it.
                self.store.set_task_status(record.task_id, "retired")
                self.ls.delete_task(record.task_id)
        return res.status

    def _close_task(self, record, status: str, *, delete: bool, release: bool = True) -> None:
        self._open.pop(record.task_id, None)
        if release and record.kind == "rank":
            with self.lock:
                ids = list(record.image_ids)
                if any(set(b) == set(ids) for b in self.engine.open_batches()):
                    self.engine.release(ids)
        self.store.set_task_status(record.task_id, status)
        if status in ("retired", "skipped"):
            self._counts["tasks_retired"] += 1
        if delete:
            self.ls.delete_task(record.task_id)

    # ------------------------------------------------------------------ tasks
    def active_raters(self) -> int:
        """Raters who submitted within the active window."""
        since = self.clock() - self.settings.active_window_s
        return sum(1 for t in self._last_seen.values() if t >= since)

    def submission_rate(self) -> float:
        """Rank submissions per second over the last ``RATE_WINDOW_S`` seconds."""
        with self._rate_lock:
            return submission_rate(self._rank_times, self.clock())

    def spare_wanted(self) -> int:
        """Spare Rank tasks (beyond one per active rater) the observed demand needs: recent
        submission rate x worst recent replacement lag x ``spare_safety``."""
        rate = self.submission_rate()
        lags = self._worker.recent_lags(LAG_SAMPLES)
        return spare_tasks(rate, max(lags, default=0.0), self.settings.spare_safety)

    def wanted_open_tasks(self) -> int:
        """How many Rank tasks should be open now (see the module docstring)."""
        s = self.settings
        return wanted_open(
            self.active_raters(),
            spare=self.spare_wanted(),
            open_per_rater=s.open_per_rater,
            min_open=s.min_open_tasks,
            max_open=s.max_open_tasks,
        )

    def top_up(self) -> None:
        """Create Rank tasks until enough are open (none once the engine is done) and boundary
        questions while the engine asks; publish the classes when everything is settled."""
        with self.lock:
            done = self.engine.done
        open_rank = [t for t in self._open.values() if t.kind == "rank"]
        if done:
            for record in open_rank:
                self._close_task(record, "retired", delete=True)
        else:
            self._top_up_rank(len(open_rank))
        self._ask_boundary()
        if done:
            self.maybe_publish()

    def _top_up_rank(self, n_open: int) -> None:
        wanted = self.wanted_open_tasks()
        self._worker.saw_wanted(wanted)
        # Spare = open tasks beyond one per active rater (the one each has on screen).
        active = self.active_raters()
        if active:
            self._worker.saw_spare(n_open + self._creating - active)
        need = wanted - n_open - self._creating
        if need <= 0:
            self._pending_since = None  # nothing to replace: no lag to measure
            return
        if self._stop.is_set():
            return
        if self._creator is not None and self._create_jobs >= self.settings.create_concurrency:
            return  # every creator is busy; the first to finish tops up again
        batches = []
        with self.lock:
            for _ in range(need):
                batch = self.engine.next_batch(POOL_RATER)
                if not batch:
                    break
                batches.append((uuid.uuid4().hex[:12], batch))
        if not batches:
            return
        since, self._pending_since = self._pending_since, None
        if self._creator is None:  # no background threads (tests, one-shot start)
            try:
                task_ids = self._create(batches)
            except Exception:
                self._release(batches)
                raise
            self._record_created(batches, task_ids, since)
            return
        self._creating += len(batches)
        self._create_jobs += 1
        self._creator.submit(self._create_job, batches, since)

    def _create(self, batches: list[tuple[str, list[str]]]) -> list[int]:
        return self.ls.create_rank_tasks(
            [(bid, [self.pool[i] for i in batch]) for bid, batch in batches]
        )

    def _create_job(self, batches: list[tuple[str, list[str]]], since: float | None) -> None:
        """On a creator thread: import the tasks, hand the ids (or the failure) to the worker."""
        try:
            task_ids = self._create(batches)
        except Exception as exc:  # noqa: BLE001 - the worker releases the batches
            self._put(("create_failed", batches, exc, since), PRIO_CREATED)
        else:
            self._put(("created", batches, task_ids, since), PRIO_CREATED)

    def _creation_done(self, what: str, batches, result, since: float | None) -> None:
        """On the worker: record created tasks (or release the batches of a failed import),
        retry the webhooks that waited for them, top up again."""
        self._creating -= len(batches)
        self._create_jobs -= 1
        if what == "created":
            self._record_created(batches, result, since)
        else:
            self._release(batches)
            self._counts["errors"] += 1
            log.warning("creating %d Rank tasks failed (%r); retried", len(batches), result)
            if self._pending_since is None:
                self._pending_since = since
        for entry in self._parked:  # back in their original place in the queue
            self._queue.put(entry)
        self._parked.clear()
        if what == "created":
            self.top_up()

    def _release(self, batches: list[tuple[str, list[str]]]) -> None:
        with self.lock:
            for _, batch in batches:
                self.engine.release(batch)

    def _record_created(self, batches, task_ids: list[int], since: float | None) -> None:
        for task_id, (batch_id, batch) in zip(task_ids, batches, strict=True):
            rec = self.store.add_task(
                task_id, "rank", batch, batch_id=batch_id, meta={"created_by": CREATED_BY}
            )
            if rec.status == "open":  # (a reconciliation may have adopted it already)
                self._open[task_id] = rec
            self._counts["tasks_created"] += 1
        if since is not None:
            # From the oldest submission not yet replaced to its replacement being in Label Studio.
            self._worker.replaced(time.perf_counter() - since)

    def _ask_boundary(self) -> None:
        open_b = sum(1 for t in self._open.values() if t.kind == "boundary")
        while open_b < self.settings.boundary_open:
            with self.lock:
                # Paced while batches still come; the rest of the budget once ranking is done.
                image_id = self.engine.next_boundary_query(final=self.engine.done)
                if image_id is None:
                    return
                cut = self._nearest_cut(image_id)
            task_id = self.ls.create_boundary_task(self.pool[image_id], cut)
            rec = self.store.add_task(
                task_id, "boundary", [image_id], meta={"created_by": CREATED_BY, "boundary": cut}
            )
            self._open[task_id] = rec
            self._counts["tasks_created"] += 1
            open_b += 1

    def _nearest_cut(self, image_id: str) -> str:
        thresholds = self.engine.thresholds()
        score = self.engine.scores()[image_id][0]
        name = min(thresholds, key=lambda c: abs(thresholds[c]["score"] - score))
        return {"basal_lv": "too basal | LV", "lv_apical": "LV | too apical"}.get(name, name)

    def retire_stale(self) -> int:
        """Withdraw Rank tasks open longer than ``stale_after_s`` (state has moved on)."""
        if self.settings.stale_after_s <= 0:
            return 0
        cutoff = datetime.fromtimestamp(self.clock() - self.settings.stale_after_s, UTC)
        stale = [t for t in self._open.values() if t.kind == "rank" and t.created_at < cutoff]
        for record in stale:
            self._close_task(record, "retired", delete=True)
        return len(stale)

    # ------------------------------------------------------------------ reconciliation
    def reconcile(self, *, full: bool = True, read: dict | None = None) -> dict[str, int]:
        """Bring the log in line with Label Studio: apply annotations the webhooks missed, drop
        ones deleted meanwhile, adopt tasks created just before a crash, forget vanished tasks.

        ``full=False`` looks only at the tasks the scheduler holds open (one small request per
        project): it finds missed submissions on them without scanning every annotation, so it
        can run often without holding up the stream; edits and deletions need a full pass.
        ``read`` is a :meth:`_read_full` made earlier (the periodic pass reads on the tick
        thread, so the worker never waits for the listing); read now if ``None``."""
        if not full:
            return self._reconcile_open()
        return self._apply_full(self._read_full() if read is None else read)

    def _read_full(self) -> dict[str, Any]:
        """Every task of the Rank and Boundary projects with its annotations, and the
        annotations and open tasks the scheduler knew *before* listing them: only those can be
        judged gone from a listing that may be a little old by the time it is applied."""
        known_before = {s.annotation_id for s in self.store.effective_submissions()}
        open_before = {t.task_id for t in list(self._open.values())}
        tasks = [(kind, self.ls.tasks_with_annotations(kind)) for kind in (RANK, BOUNDARY)]
        return {"known_before": known_before, "open_before": open_before, "tasks": tasks}

    def _apply_full(self, read: dict[str, Any]) -> dict[str, int]:
        self._counts["reconciles"] += 1
        seen_annotations: set[int] = set()
        seen_tasks: set[int] = set()
        applied = 0
        # Preloaded so that a pass over thousands of unchanged annotations costs no queries.
        known = {s.annotation_id: s for s in self.store.effective_submissions()}
        known_tasks = {t.task_id for t in self.store.tasks()}
        for kind, tasks in read["tasks"]:
            project_id = self.ls.projects[kind]
            for task in tasks:
                task_id = task["id"]
                seen_tasks.add(task_id)
                if task_id not in known_tasks:
                    self._adopt(kind, task)
                for ann in task.get("annotations") or []:
                    ann = ann if isinstance(ann, dict) else ann.dict()
                    seen_annotations.add(int(ann["id"]))
                    if _unchanged(known.get(int(ann["id"])), ann):
                        if task_id in self._open:
                            self._close_task(
                                self._open[task_id], "answered", delete=False, release=False
                            )
                        continue
                    ann.setdefault("task", task_id)
                    status = self.apply_annotation(project_id, task_id, ann)
                    applied += status in ("created", "updated")
        missing = read["known_before"] - seen_annotations
        unseen = {t for t in read["open_before"] - seen_tasks if t in self._open}
        if missing or unseen:
            self._confirm_gone(missing, unseen, seen_annotations, seen_tasks)
        deleted = 0
        for annotation_id in sorted(missing - seen_annotations):
            deleted += self.store.delete_annotation(annotation_id).status == "deleted"
        if deleted:
            self._counts["deleted"] += deleted
            self.rebuild()
        for task_id in unseen - seen_tasks:
            if task_id in self._open:
                self._close_task(self._open[task_id], "retired", delete=False)
        return {"applied": applied, "deleted": deleted}

    def _confirm_gone(self, missing, unseen, seen_annotations, seen_tasks) -> None:
        # The listing is paged: a task deleted while it ran (a skip, a retirement) shifts the
        # pages and can hide another task. Before anything is dropped from the log, read the
        # tasks in question directly; what turns up there is not gone.
        by_kind: dict[str, set[int]] = {RANK: set(), BOUNDARY: set()}
        for sub in self.store.effective_submissions():
            if sub.annotation_id in missing and sub.task_id is not None:
                by_kind[RANK if sub.kind == "rank" else BOUNDARY].add(int(sub.task_id))
        for task_id in unseen:
            by_kind[RANK if self._open[task_id].kind == "rank" else BOUNDARY].add(task_id)
        for kind, ids in by_kind.items():
            if not ids:
                continue
            for task in self.ls.tasks_with_annotations(kind, sorted(ids)):
                seen_tasks.add(task["id"])
                for ann in task.get("annotations") or []:
                    ann = ann if isinstance(ann, dict) else ann.dict()
                    seen_annotations.add(int(ann["id"]))

    def _read_open(self) -> list[tuple[str, list[int], list[dict]]]:
        """Per project: the task ids held open and Label Studio's view of those tasks."""
        out = []
        for kind, store_kind in ((RANK, "rank"), (BOUNDARY, "boundary")):
            ids = self._open_ids(store_kind)
            out.append((kind, ids, self.ls.tasks_with_annotations(kind, ids)))
        return out

    def _reconcile_open(self, reads=None) -> dict[str, int]:
        # ``reads`` may be a little old (read on the tick thread): applying an annotation is
        # idempotent, and a task only counts as gone if it is still open here.
        reads = self._read_open() if reads is None else reads
        self._counts["light_reconciles"] = self._counts.get("light_reconciles", 0) + 1
        applied = 0
        for kind, ids, found in reads:
            for task in found:
                for ann in task.get("annotations") or []:
                    ann = ann if isinstance(ann, dict) else ann.dict()
                    ann.setdefault("task", task["id"])
                    status = self.apply_annotation(self.ls.projects[kind], task["id"], ann)
                    applied += status in ("created", "updated")
            gone = set(ids) - {t["id"] for t in found}
            for task_id in gone:
                if task_id in self._open:
                    self._close_task(self._open[task_id], "retired", delete=False)
        return {"applied": applied, "deleted": 0}

    def _adopt_landed_late(self, project_id: Any, task: dict) -> None:
        """Adopt a task of ours that the log does not know although no creation is in flight:
        an import still in flight when a previous process died can land in Label Studio after
        the restart's reconciliation, and its answer must not be rejected as foreign."""
        task_id = task.get("id")
        if task_id is None or self._creating or self.store.get_task(task_id) is not None:
            return
        kind = self.ls.kind_of_project(project_id)
        if kind in (RANK, BOUNDARY):
            self._adopt(kind, task)  # only if its meta says the scheduler created it

    def _adopt(self, kind: str, task: dict) -> None:
        meta = task.get("meta") or {}
        if meta.get("created_by") != CREATED_BY:
            return
        data = task.get("data") or {}
        if kind == RANK:
            ids = [i.get("id") for i in data.get("images") or [] if isinstance(i, dict)]
            rec = self.store.add_task(
                task["id"], "rank", ids, batch_id=data.get("batch_id"), meta=meta
            )
        else:
            rec = self.store.add_task(task["id"], "boundary", [data.get("image_id")], meta=meta)
        if not task.get("annotations"):
            self._open[rec.task_id] = rec
        log.info("adopted task %s created before a restart", task["id"])

    # ------------------------------------------------------------------ outputs
    def consensus(self) -> dict[str, Any]:
        """The consensus export (INTERFACES.md): ranking, scores, views, classes, thresholds."""
        with self.lock:
            engine = self.engine
            ranking = engine.ranking()
            scores = engine.scores()
            views = engine.view_counts()
            classes = engine.classes()
            probs = engine.class_probabilities()
            thresholds = engine.thresholds()
            done = engine.done
        images = []
        for rank, image_id in enumerate(ranking, start=1):
            mean, sd = scores[image_id]
            p = probs[image_id]
            images.append(
                {
                    "image_id": image_id,
                    "rank": rank,
                    "score_mean": float(mean),
                    "score_sd": float(sd),
                    "views": int(views[image_id]),
                    "class": classes[image_id],
                    "p_too_basal": float(p[0]),
                    "p_lv": float(p[1]),
                    "p_too_apical": float(p[2]),
                }
            )
        return {
            "model_version": MODEL_VERSION,
            "thresholds": thresholds,
            "done": bool(done),
            "published": self.published,
            "images": images,
        }

    def maybe_publish(self) -> bool:
        """Once the engine is done and no boundary question is open or wanted, write
        consensus.json/csv and the Classify predictions (once)."""
        if self.published is not None:
            return False
        if any(t.kind == "boundary" for t in self._open.values()):
            return False
        consensus = self.consensus()
        out = Path(self.settings.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "consensus.json.tmp"
        tmp.write_text(json.dumps(consensus, indent=2))
        tmp.replace(out / "consensus.json")
        columns = list(consensus["images"][0])
        with open(out / "consensus.csv.tmp", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(consensus["images"])
        (out / "consensus.csv.tmp").replace(out / "consensus.csv")
        order = {c: i for i, c in enumerate(CLASSES)}
        classes = {
            im["image_id"]: (im["class"], im[f"p_{im['class']}"])
            for im in consensus["images"]
            if im["class"] in order
        }
        n = self.ls.publish_predictions(classes, list(self.pool.values()))
        self.published = {
            "at": datetime.now(UTC).isoformat(),
            "predictions": n,
            "path": str(out / "consensus.json"),
        }
        self.store.set_state("published", self.published)
        log.info("published %d consensus classes to %s and Label Studio", n, out)
        return True

    def service_stats(self) -> dict[str, Any]:
        """The service's own figures: processing time per submission, queue, counters."""
        own = list(self._own_ms)
        return {
            "own_ms_p50": _percentile(own, 0.5),
            "own_ms_p95": _percentile(own, 0.95),
            "own_ms_max": max(own) if own else None,
            "submissions_timed": len(own),
            "queue": self._queue.qsize() + self._create_jobs,
            "creating_rank_tasks": self._creating,
            "spare_wanted": self.spare_wanted(),
            "submission_rate_per_s": self.submission_rate(),
            "worker": self._worker.as_dict(),
            "label_studio_calls": self.ls.call_stats(),
            "open_tasks": {
                "rank": sum(1 for t in self._open.values() if t.kind == "rank"),
                "boundary": sum(1 for t in self._open.values() if t.kind == "boundary"),
            },
            "wanted_open_rank_tasks": self.wanted_open_tasks(),
            "active_raters": self.active_raters(),
            "counts": dict(self._counts),
            "published": self.published,
            "projects": self.ls.projects,
        }

    def stats(self) -> dict[str, Any]:
        """The dashboard figures (``compute_stats``) plus :meth:`service_stats`."""
        from ranking_scheduler.service.stats import compute_stats

        with self.lock:
            stats = compute_stats(self.engine, self.store, target_views=self.settings.target_views)
        stats["service"] = self.service_stats()
        return stats


# ---------------------------------------------------------------------- web app
TOKEN_COOKIE = "slicerank_token"


def _authorised(request, secret: str) -> bool:
    import base64

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
        return {"status": "UP", "queue": service._queue.qsize()}

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
