"""The task pool: which Label Studio tasks are open, and keeping enough of them there.

How many Rank tasks are kept open (:meth:`TaskPool.wanted_open_tasks`) follows the observed
demand: one per active rater plus enough spare tasks to cover the submissions that arrive while
replacements are being created (submission rate x recent worst replacement lag x a safety
factor), never fewer than ``open_per_rater`` per active rater or ``min_open_tasks``, never more
than ``max_open_tasks``.

New Rank tasks are imported by a small pool of creator threads, so that one slow import cannot
hold up the stream (Label Studio's SQLite server answers a write conflict on task import by
sleeping 3 s, then 6 s, before it retries). A creator hands the new task ids back to the worker
through ``post`` (the shell's queue); the worker records them with :meth:`TaskPool.creation_done`.

Boundary questions are asked here too, while the engine wants them. The pool reacts to the
engine's state; it never changes the log's submissions.

With the strategies ``single`` and ``hybrid`` the open slots are filled from the engine's
``next_task``: a batch becomes a Rank task, a single question a task in the Boundary project
(its config shows one slice and the three classes; ``meta.single`` marks it). Label Studio
Community cannot hand a task to a person, so the scheduler delivers its choice by what it keeps
open in each project: ``single`` keeps no Rank task open at all, ``hybrid`` keeps open the mix
the engine values most per second of the raters' measured time (docs/guide/ranking.md).

A task is never deleted in Label Studio: a task that is no longer wanted (skipped, stale, the
engine done, its answer deleted) is *retired*, taken out of the labelling stream with its
annotations and drafts kept (``LabelStudioAdapter.retire_task``), so a clinician who still has
it open can submit, and that answer counts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from ls_config.provision import RANK
from ranking_scheduler.service.settings import SchedulerSettings
from ranking_scheduler.service.store import SubmissionStore, TaskRecord
from ranking_scheduler.service.worker_stats import WorkerStats

log = logging.getLogger(__name__)

POOL_RATER = "label-studio"
"""Name the engine's open batches are drawn for: Label Studio tasks are shared by all raters."""

CREATED_BY = "slicerank-scheduler"
"""``meta.created_by`` of every task the scheduler creates (lets reconciliation adopt orphans)."""

RATE_WINDOW_S = 60.0
"""Submissions within this many seconds give the observed submission rate."""

LAG_SAMPLES = 200
"""The worst of this many recent replacement lags sizes the spare tasks."""

SINGLE_QUESTION = "Single question: the scheduler chose this slice, where one label teaches most"
"""The ``$boundary`` text of a single question (the strategies ``single`` and ``hybrid``)."""
TASK_STRATEGIES = ("single", "hybrid")
"""Strategies whose open slots are filled from ``next_task`` (batches and single questions)."""


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


class TaskPool:
    """Open tasks, creator threads and spare sizing (see the module docstring).

    Runs on the worker thread except :meth:`_create_job` (creator threads) and the read-only
    figures. ``engine`` returns the live engine, ``lock`` guards it; ``post(item, priority)``
    queues an item for the worker; ``counts`` is the service's counter dict;
    ``on_question_failed()`` is called when Label Studio refused a boundary question (the shell
    rebuilds the engine, so the question it counted does not use up the label budget).
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        store: SubmissionStore,
        ls: Any,
        *,
        engine: Callable[[], Any],
        lock: threading.RLock,
        clock: Callable[[], float],
        counts: dict[str, int],
        worker: WorkerStats,
        post: Callable[[tuple, int], None],
        post_priority: int,
        on_question_failed: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ls = ls
        self._engine = engine
        self.lock = lock
        self.clock = clock
        self.counts = counts
        self.worker = worker
        self._post = post
        self._post_priority = post_priority
        self._on_question_failed = on_question_failed
        self.images: dict[str, Any] = {}
        self.open: dict[int, TaskRecord] = {}
        self.creator: ThreadPoolExecutor | None = None
        self.creating = 0  # Rank tasks being created by the creator threads
        self.create_jobs = 0  # import requests in flight
        self.pending_since: float | None = None
        self.stopping = False
        self.last_seen: dict[str, float] = {}
        self._rank_times: deque[float] = deque()  # clock() of recent Rank submissions
        self._recent: deque[tuple[float, tuple[str, ...]]] = deque()  # (clock(), ranked ids)
        self._rate_lock = threading.Lock()  # /api/stats reads the rate from another thread

    @property
    def engine(self):
        """The live engine (replaced on every rebuild)."""
        return self._engine()

    # ------------------------------------------------------------------ life cycle
    def load(self, images: dict[str, Any]) -> None:
        """Take the image pool and the open tasks and raters the log knows (start-up)."""
        self.images = images
        self.open = {t.task_id: t for t in self.store.tasks(status="open")}
        for sub in self.store.effective_submissions(content=False):
            if sub.rater:
                self.last_seen[sub.rater] = max(
                    self.last_seen.get(sub.rater, 0.0), sub.time.timestamp()
                )

    def start_creators(self) -> None:
        """Start the creator threads (without them, tasks are created on the calling thread)."""
        self.creator = ThreadPoolExecutor(
            max_workers=self.settings.create_concurrency, thread_name_prefix="scheduler-create"
        )

    def stop_creators(self, deadline: float) -> None:
        """No new imports; wait for those in flight until ``deadline`` (monotonic)."""
        self.stopping = True
        if self.creator is not None:
            self.creator.shutdown(wait=False)
            while self.create_jobs and time.monotonic() < deadline:
                time.sleep(0.02)  # the worker records their results meanwhile

    # ------------------------------------------------------------------ demand
    def saw_submission(self, rater: str, kind: str, image_ids: tuple[str, ...] = ()) -> None:
        """A new submission by ``rater`` arrived (``kind`` rank or boundary; ``image_ids`` the
        slices it ranked)."""
        self.last_seen[rater] = self.clock()
        if kind == "rank":
            with self._rate_lock:
                self._rank_times.append(self.clock())
            self._recent.append((self.clock(), tuple(image_ids)))

    def recent_images(self) -> set[str]:
        """Slices ranked within ``recent_view_s``: new Rank tasks leave them out while enough
        others are free. Label Studio, not the scheduler, decides which rater opens a task
        (Community cannot assign), so keeping a just-ranked slice out of every new task is how
        its rater is not shown it again straight away."""
        since = self.clock() - self.settings.recent_view_s
        while self._recent and self._recent[0][0] < since:
            self._recent.popleft()
        return {i for _, ids in self._recent for i in ids}

    def active_raters(self) -> int:
        """Raters who submitted within the active window."""
        since = self.clock() - self.settings.active_window_s
        return sum(1 for t in list(self.last_seen.values()) if t >= since)

    def submission_rate(self) -> float:
        """Rank submissions per second over the last ``RATE_WINDOW_S`` seconds."""
        with self._rate_lock:
            return submission_rate(self._rank_times, self.clock())

    def spare_wanted(self) -> int:
        """Spare Rank tasks (beyond one per active rater) the observed demand needs: recent
        submission rate x worst recent replacement lag x ``spare_safety``."""
        rate = self.submission_rate()
        lags = self.worker.recent_lags(LAG_SAMPLES)
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

    def open_ids(self, store_kind: str) -> list[int]:
        """Ids of the open tasks of one kind (``rank``/``boundary``); safe off the worker."""
        # list() of a dict view runs in C under the GIL: a consistent snapshot off the worker.
        return [t.task_id for t in list(self.open.values()) if t.kind == store_kind]

    def open_counts(self) -> dict[str, int]:
        """Open tasks per kind (for the stats): ``boundary`` counts the single questions too,
        ``single`` them alone."""
        records = list(self.open.values())
        return {
            "rank": sum(1 for t in records if t.kind == "rank"),
            "boundary": sum(1 for t in records if t.kind == "boundary"),
            "single": sum(1 for t in records if _is_single(t)),
        }

    @property
    def serves_tasks(self) -> bool:
        """The strategy fills open slots from ``next_task`` (batches and single questions)."""
        return self.settings.strategy in TASK_STRATEGIES

    # ------------------------------------------------------------------ top-up
    def top_up(self) -> bool:
        """Create Rank tasks until enough are open (none once the engine is done: the open ones
        are retired) and boundary questions while the engine asks; returns ``engine.done``."""
        with self.lock:
            done = self.engine.done
        open_rank = [t for t in self.open.values() if t.kind == "rank"]
        open_single = [t for t in self.open.values() if _is_single(t)]
        if done:
            for record in open_rank + open_single:
                self.close(record, "retired", retire=True)
        else:
            self._top_up_rank(len(open_rank) + len(open_single))
        self._ask_boundary()
        return done

    def _top_up_rank(self, n_open: int) -> None:
        wanted = self.wanted_open_tasks()
        self.worker.saw_wanted(wanted)
        # Spare = open tasks beyond one per active rater (the one each has on screen).
        active = self.active_raters()
        if active:
            self.worker.saw_spare(n_open + self.creating - active)
        need = wanted - n_open - self.creating
        if need <= 0:
            self.pending_since = None  # nothing to replace: no lag to measure
            return
        if self.stopping:
            return
        if self.creator is not None and self.create_jobs >= self.settings.create_concurrency:
            return  # every creator is busy; the first to finish tops up again
        batches = []
        questions: list[str] = []
        avoid = self.recent_images()
        with self.lock:
            for _ in range(need):
                if self.serves_tasks:
                    task = self.engine.next_task(POOL_RATER, avoid=avoid)
                    if task is None:
                        break
                    if task.kind == "label":
                        questions.append(task.image_ids[0])
                        continue
                    batch = list(task.image_ids)
                else:
                    batch = self.engine.next_batch(POOL_RATER, avoid=avoid)
                    if not batch:
                        break
                batches.append((uuid.uuid4().hex[:12], batch))
        for image_id in questions:
            self._create_single(image_id)
        if not batches:
            return
        since, self.pending_since = self.pending_since, None
        if self.creator is None:  # no background threads (tests, one-shot start)
            try:
                task_ids = self._create(batches)
            except Exception:
                self.release(batches)
                raise
            self._record_created(batches, task_ids, since)
            return
        self.creating += len(batches)
        self.create_jobs += 1
        self.creator.submit(self._create_job, batches, since)

    def _create_single(self, image_id: str) -> None:
        """A single question the engine chose, as a task in the Boundary project."""
        try:
            task_id = self.ls.create_boundary_task(self.images[image_id], SINGLE_QUESTION)
        except Exception as exc:  # noqa: BLE001 - the engine may ask again at the next top-up
            self.counts["errors"] += 1
            log.warning("creating a single question for %s failed: %r", image_id, exc)
            with self.lock:
                self.engine.release_question(image_id)
            return
        rec = self.store.add_task(
            task_id,
            "boundary",
            [image_id],
            meta={"created_by": CREATED_BY, "boundary": SINGLE_QUESTION, "single": True},
        )
        self.open[task_id] = rec
        self.counts["tasks_created"] += 1

    def _create(self, batches: list[tuple[str, list[str]]]) -> list[int]:
        return self.ls.create_rank_tasks(
            [(bid, [self.images[i] for i in batch]) for bid, batch in batches]
        )

    def _create_job(self, batches: list[tuple[str, list[str]]], since: float | None) -> None:
        """On a creator thread: import the tasks, hand the ids (or the failure) to the worker."""
        try:
            task_ids = self._create(batches)
        except Exception as exc:  # noqa: BLE001 - the worker releases the batches
            self._post(("create_failed", batches, exc, since), self._post_priority)
        else:
            self._post(("created", batches, task_ids, since), self._post_priority)

    def creation_done(self, what: str, batches, result, since: float | None) -> None:
        """On the worker: record created tasks, or release the batches of a failed import."""
        self.creating -= len(batches)
        self.create_jobs -= 1
        if what == "created":
            self._record_created(batches, result, since)
        else:
            self.release(batches)
            self.counts["errors"] += 1
            log.warning("creating %d Rank tasks failed (%r); retried", len(batches), result)
            if self.pending_since is None:
                self.pending_since = since

    def release(self, batches: list[tuple[str, list[str]]]) -> None:
        """Give batches that never became tasks back to the engine (a rebuild meanwhile may
        have forgotten them already: those are not open any more)."""
        with self.lock:
            still_open = [set(b) for b in self.engine.open_batches()]
            for _, batch in batches:
                if set(batch) in still_open:
                    self.engine.release(batch)

    def _record_created(self, batches, task_ids: list[int], since: float | None) -> None:
        for task_id, (batch_id, batch) in zip(task_ids, batches, strict=True):
            rec = self.store.add_task(
                task_id, "rank", batch, batch_id=batch_id, meta={"created_by": CREATED_BY}
            )
            if rec.status == "open":  # (a reconciliation may have adopted it already)
                self.open[task_id] = rec
            self.counts["tasks_created"] += 1
        if since is not None:
            # From the oldest submission not yet replaced to its replacement being in Label Studio.
            self.worker.replaced(time.perf_counter() - since)

    def _ask_boundary(self) -> None:
        open_b = sum(1 for t in self.open.values() if t.kind == "boundary" and not _is_single(t))
        while open_b < self.settings.boundary_open:
            with self.lock:
                # Paced while batches still come; the rest of the budget once ranking is done.
                image_id = self.engine.next_boundary_query(final=self.engine.done)
                if image_id is None:
                    return
                cut = self._nearest_cut(image_id)
            try:
                task_id = self.ls.create_boundary_task(self.images[image_id], cut)
            except Exception as exc:  # noqa: BLE001 - asked again at the next top-up
                # The engine counted the question against its label budget when it chose it;
                # a question that never reached Label Studio must not use up the budget. The
                # shell rebuilds the engine, whose pending questions are then the open ones.
                self.counts["errors"] += 1
                log.warning("creating a boundary question for %s failed: %r", image_id, exc)
                if self._on_question_failed is not None:
                    self._on_question_failed()
                return
            rec = self.store.add_task(
                task_id, "boundary", [image_id], meta={"created_by": CREATED_BY, "boundary": cut}
            )
            self.open[task_id] = rec
            self.counts["tasks_created"] += 1
            open_b += 1

    def _nearest_cut(self, image_id: str) -> str:
        thresholds = self.engine.thresholds()
        score = self.engine.scores()[image_id][0]
        name = min(thresholds, key=lambda c: abs(thresholds[c]["score"] - score))
        return {"basal_lv": "too basal | LV", "lv_apical": "LV | too apical"}.get(name, name)

    def restore_open_questions(self, engine) -> None:
        """Tell a rebuilt engine which boundary questions are still open in Label Studio: they
        count against its label budget until answered (the log holds only answers)."""
        for record in list(self.open.values()):
            if record.kind == "boundary" and record.image_ids[0] in self.images:
                if _is_single(record):
                    engine.restore_question(record.image_ids[0])
                else:
                    engine.restore_pending(record.image_ids[0])

    # ------------------------------------------------------------------ closing tasks
    def retire_stale(self) -> int:
        """Withdraw Rank tasks open longer than ``stale_after_s`` (state has moved on)."""
        if self.settings.stale_after_s <= 0:
            return 0
        cutoff = datetime.fromtimestamp(self.clock() - self.settings.stale_after_s, UTC)
        stale = [t for t in self.open.values() if t.kind == "rank" and t.created_at < cutoff]
        for record in stale:
            self.close(record, "retired", retire=True)
        return len(stale)

    def close(self, record, status: str, *, retire: bool, release: bool = True) -> None:
        """Take a task out of the open set with ``status``; ``release`` gives its batch back to
        the engine, ``retire`` takes it out of Label Studio's labelling stream. A task is never
        deleted: an answer to it (a rater who had it open) still arrives and counts."""
        self.open.pop(record.task_id, None)
        if release and record.kind == "rank":
            with self.lock:
                ids = list(record.image_ids)
                if any(set(b) == set(ids) for b in self.engine.open_batches()):
                    self.engine.release(ids)
        if release and _is_single(record):
            with self.lock:
                if record.image_ids[0] in self.engine.open_questions():
                    self.engine.release_question(record.image_ids[0])
        self.store.set_task_status(record.task_id, status)
        if status in ("retired", "skipped"):
            self.counts["tasks_retired"] += 1
        if retire:
            self.ls.retire_task(record.task_id)

    # ------------------------------------------------------------------ adoption
    def adopt(self, kind: str, task: dict) -> None:
        """Record a task the scheduler created but the log does not know (an import that
        landed around a crash); a task without our ``meta.created_by`` is left alone."""
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
            if _is_single(rec) and not task.get("annotations"):
                with self.lock:
                    self.engine.restore_question(rec.image_ids[0])
        if not task.get("annotations"):
            self.open[rec.task_id] = rec
        log.info("adopted task %s created before a restart", task["id"])


def _is_single(record: TaskRecord) -> bool:
    """A single question of ``single``/``hybrid`` (not a boundary question of the cut finder)."""
    return record.kind == "boundary" and bool((record.meta or {}).get("single"))
