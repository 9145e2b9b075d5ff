"""The scheduler service: the shell of threads and locks around the one-way core.

An event travels one way::

    webhook / reconciliation listing
        -> intake      (intake.py: payload -> typed, validated event; pure)
        -> ledger      (store.py: idempotent, versioned appends; the source of truth)
        -> engine      (ranking_scheduler.engine: ratings, batches, classes; pure)
        -> task pool   (pool.py: open tasks, creator threads, spare sizing, boundary questions)
        -> publisher   (publisher.py: consensus.json/csv and the Classify predictions)

The reconciler (reconciler.py) reads Label Studio and proposes events through intake, the same
path a webhook takes; the web app (webapp.py) holds the routes and their auth.

This module is the shell. The webhook endpoint only checks the secret and queues the event,
answering within Label Studio's ~1 s webhook timeout. A single worker thread does everything
that changes state, in order: intake, append to the log, update the engine, then the Label
Studio calls (boundary questions, retiring tasks, publishing). Periodic passes (the watch, the
light and the full reconciliation) read Label Studio on a tick thread and queue what they read;
the worker applies it, so there is exactly one writer. Readers (``/api/stats``) take the engine
lock. New Rank tasks are imported by the pool's creator threads, which hand the ids back through
the queue; a webhook about a task that is not recorded yet while creations are in flight waits
("parked") for them instead of being rejected. The queue is ordered by priority: recorded
creations, then webhooks, then watch and reconciliation passes.

Idempotence: every annotation is appended by id, so a duplicate webhook or a reconciliation
that sees an annotation again is a no-op; an edited or deleted annotation rebuilds the engine
from the log. A restart rebuilds from the log and reconciles with Label Studio, so a webhook
missed while the service was down is picked up.

Nothing is lost by design: the log is pinned to the project ids of its first start (a start
that finds others refuses, unless ``rebind_projects``); a deletion inferred from a listing is
reversible (the ledger restores an annotation Label Studio shows again) and a pass that would
infer many is refused (reconciler.py); a rejection holds for one version of an annotation
only; tasks are retired, never deleted (pool.py); the consensus follows the classes
(publisher.py).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from ls_config.provision import BOUNDARY, RANK
from ranking_scheduler.engine.ranking import RankingEngine
from ranking_scheduler.service import intake
from ranking_scheduler.service.ls_adapter import LabelStudioAdapter
from ranking_scheduler.service.pool import TaskPool
from ranking_scheduler.service.publisher import Publisher
from ranking_scheduler.service.reconciler import REFUSED_STATE_KEY, Reconciler
from ranking_scheduler.service.settings import SchedulerSettings
from ranking_scheduler.service.store import SubmissionStore
from ranking_scheduler.service.worker_stats import PROCESSING_SAMPLES, WorkerStats, percentile

log = logging.getLogger(__name__)

MAX_DEFERRED_TOP_UPS = 8
"""At most this many queued submissions are applied before the open tasks are topped up."""

SLOW_EVENT_S = 0.5
"""A worker event taking longer than this is logged (what held the stream up)."""

PRIO_CREATED, PRIO_WEBHOOK, PRIO_PERIODIC, PRIO_STOP = range(4)
"""Worker queue priorities: recorded creations first, then webhooks, then periodic passes."""

ANSWER_ACTIONS = frozenset(
    {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "TASKS_DELETED"}
)
"""Webhook actions that bring answers: their arrival shows deliveries work (stats.webhook_health)."""

PROJECTS_KEY = "projects"
"""Store state key of the Label Studio project ids the log is pinned to."""

UNKNOWN_DELETE_MEMORY_S = 3600.0
"""How long a delete of an annotation the log does not know is remembered: an answer parked
or listed before it must not count (far longer than any listing takes)."""


def _without_ids(report: Any) -> Any:
    """A refused pass's report without its full id list (the accept command shows that)."""
    return {k: v for k, v in report.items() if k != "ids"} if isinstance(report, dict) else report


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ids(projects: dict[str, int]) -> str:
    return ", ".join(f"{kind}={pid}" for kind, pid in sorted(projects.items()))


class SchedulerService:
    """The running scheduler: call :meth:`start`, feed :meth:`enqueue`, :meth:`stop` at the end.

    ``store`` and ``adapter`` are passed in (the CLI builds them from the settings); ``clock``
    returns seconds (tests may pass a fake). The parts: ``tasks`` (:class:`TaskPool`),
    ``reconciler`` (:class:`Reconciler`), ``publisher`` (:class:`Publisher`).
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
        self.lock = threading.RLock()
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._parked: list[tuple] = []  # webhooks about tasks not recorded yet
        # Annotation id -> the version (intake.AnnotationEvent.version_key) last refused for its
        # content: only that version is refused again without a look; an edit is read anew.
        # Loaded from the log at start (the rejections table keeps the version).
        self._rejected: dict[int, str] = {}
        # Annotation id -> when a delete of it came while the log did not know it (a create
        # parked or not yet listed): nothing read before that time may count it.
        self._deleted_unknown: dict[int, datetime] = {}
        self._own_ms: deque[float] = deque(maxlen=PROCESSING_SAMPLES)
        # When the last answer webhook came, and the answers only a reconciliation found.
        self._webhook_times: dict[str, Any] = {
            "last_delivery_at": None,
            "found_by_reconciliation": 0,
            "last_found_at": None,
        }
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
            "not_in_label_studio": 0,
            "delete_not_confirmed": 0,
            "tasks_deleted": 0,
            "rebuilds": 0,
            "reconciles": 0,
            "tasks_created": 0,
            "tasks_retired": 0,
            "errors": 0,
        }
        self._deferred = 0
        self._generation = 0  # bumped whenever the engine's state changes (the publisher skips
        # its comparison while it is unchanged)
        self._worker = WorkerStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.tasks = TaskPool(
            settings,
            store,
            adapter,
            engine=lambda: self.engine,
            lock=self.lock,
            clock=clock,
            counts=self._counts,
            worker=self._worker,
            post=self._put,
            post_priority=PRIO_CREATED,
            on_question_failed=self.rebuild,
        )
        self.reconciler = Reconciler(
            store,
            adapter,
            self.tasks,
            apply=self.apply_event,
            rebuild=self.rebuild,
            counts=self._counts,
            max_delete_share=settings.reconcile_max_delete_share,
        )
        self.publisher = Publisher(
            settings,
            store,
            adapter,
            engine=lambda: self.engine,
            lock=self.lock,
            images=lambda: self.tasks.images,
        )

    @property
    def pool(self) -> dict:
        """The image pool: ``image_id`` -> ``PoolImage`` (the Classify project's images)."""
        return self.tasks.images

    @property
    def published(self) -> dict | None:
        """When and where the consensus was published, or None."""
        return self.publisher.published

    # ------------------------------------------------------------------ life cycle
    def start(self, *, background: bool = True) -> SchedulerService:
        """Connect to Label Studio and rebuild the engine from the log; then run the worker (and
        the periodic reconciliation) in background threads. The first reconciliation is queued
        by the web app once it listens (so no webhook falls between the two); without
        ``background`` it runs here."""
        self._bind_projects()
        pool = self.ls.pool()
        if not pool:
            raise ValueError(
                f"the Classify project {self.ls.projects} has no images; run slicerank provision"
            )
        self.tasks.load({img.image_id: img for img in pool})
        self._rejected = self.store.rejected_versions()
        self.rebuild()
        self.publisher.load()
        if not background:
            self.reconcile()
            self.top_up()
        if background:
            self.tasks.start_creators()
            worker = threading.Thread(target=self._work, name="scheduler-worker", daemon=True)
            worker.start()
            self._threads.append(worker)
            s = self.settings
            if max(s.reconcile_interval_s, s.watch_interval_s, s.full_reconcile_interval_s) > 0:
                timer = threading.Thread(target=self._tick, name="scheduler-tick", daemon=True)
                timer.start()
                self._threads.append(timer)
        return self

    def _bind_projects(self) -> None:
        """Find the projects and hold them to the ids the log is pinned to (pin them on the
        first start). The log is only meaningful against the projects it was written from: a
        reconciliation against others would take every logged annotation for deleted."""
        pinned = self.store.get_state(PROJECTS_KEY)
        pinned_ids = pinned.get("ids") if isinstance(pinned, dict) else None
        rebind = self.settings.rebind_projects
        found = self.ls.connect(prefer=None if rebind else pinned_ids)
        prefix = self.settings.project_prefix
        record = {"ids": dict(found), "prefix": prefix, "at": datetime.now(UTC).isoformat()}
        if pinned_ids is None:
            self.store.set_state(PROJECTS_KEY, record)
            log.info("log pinned to Label Studio projects %s", found)
            return
        if pinned_ids == found:
            return
        if not rebind:
            raise ValueError(
                f"the scheduler's log {self.store!r} belongs to Label Studio projects "
                f"{_ids(pinned_ids)} (prefix {pinned.get('prefix', '')!r}), but prefix "
                f"{prefix!r} finds {_ids(found)}. Start with the prefix and Label Studio the "
                "log was written for, or set SCHEDULER_REBIND_PROJECTS=1 (slicerank scheduler "
                "--rebind-projects) to move the log to these projects on purpose"
            )
        log.warning("log moved from Label Studio projects %s to %s (rebind)", pinned_ids, found)
        self.store.set_state(PROJECTS_KEY, {**record, "rebound_from": pinned})

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads after the events already queued and the task creations in flight
        (waiting at most ``timeout`` for those: Label Studio may hold an import for 45 s; a task
        created but not recorded is adopted by the reconciliation at the next start)."""
        self._stop.set()
        self.tasks.stop_creators(time.monotonic() + timeout)
        self._put(None, PRIO_STOP)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _new_engine(self) -> RankingEngine:
        s = self.settings
        options = dict(self.engine_options)
        if s.boundary_budget >= 0:
            options.setdefault("boundary_budget", s.boundary_budget)
        if s.min_views:
            options.setdefault("min_views", s.min_views)
        if s.manifest and "stacks" not in options:
            from ranking_scheduler.service.geometry import load_stacks

            # Scan and slice order of every pool image: the engine ranks with stack geometry.
            options["stacks"] = load_stacks(s.manifest, self.pool)
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
            self.tasks.restore_open_questions(engine)
            self._generation += 1
        self._counts["rebuilds"] += 1

    # ------------------------------------------------------------------ queue and threads
    def enqueue(self, action: str, payload: dict) -> None:
        """Queue one webhook event for the worker (returns at once)."""
        self._counts["webhooks"] += 1
        if action in ANSWER_ACTIONS:
            self._webhook_times["last_delivery_at"] = time.time()  # for the dashboard's alert
        self._put(("webhook", action, payload, time.perf_counter()), PRIO_WEBHOOK)
        self._worker.saw_depth(self._queue.qsize())

    def request_reconcile(self, *, full: bool = True) -> None:
        """Queue a reconciliation with Label Studio (``full=False``: the open tasks only)."""
        self._put(("reconcile", full), PRIO_PERIODIC)

    def queue_depth(self) -> int:
        """Events waiting for the worker, the answers parked until their task's import returns
        included (``/health`` says the scheduler is not settled while one waits)."""
        return self._queue.qsize() + len(self._parked)

    def _put(self, item: tuple | None, priority: int) -> None:
        self._queue.put((priority, next(self._seq), item))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the queue is drained (tests and the benchmark use it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0 and self.tasks.create_jobs == 0:
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
                    if self.tasks.pending_since is None:
                        self.tasks.pending_since = item[3]
                    self.handle_webhook(item[1], item[2], top_up=not defer)
                elif item[0] == "event":  # a read-back that waited for a task creation
                    if self.apply_event(item[1]) == "parked":
                        self._parked.append(entry)
                    else:
                        self.top_up()
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
                        self.reconciler.apply_open(item[2])
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

    def _creation_done(self, what: str, batches, result, since: float | None) -> None:
        """On the worker: the pool records the created tasks (or releases the batches of a
        failed import); the webhooks that waited for them go back in the queue; top up again."""
        try:
            self.tasks.creation_done(what, batches, result, since)
        finally:
            for entry in self._parked:  # back in their original place in the queue
                self._queue.put(entry)
            self._parked.clear()
        if what == "created":
            self.top_up()

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
                self._put(("watch", self.reconciler.read_watch()), PRIO_PERIODIC)
            elif what == "full reconciliation":
                self._put(("reconcile", True, self.reconciler.read_full()), PRIO_PERIODIC)
            else:
                self._put(("reconcile", False, self.reconciler.read_open()), PRIO_PERIODIC)
        except Exception:  # noqa: BLE001 - the next tick tries again
            self._counts["errors"] += 1
            log.exception("scheduler: reading Label Studio for the %s failed", what)

    # ------------------------------------------------------------------ the one path
    def handle_webhook(self, action: str, payload: dict, *, top_up: bool = True) -> str:
        """Act on one Label Studio webhook, then (with ``top_up``) make the Label Studio calls
        it needs; returns what happened (see :meth:`apply_event`).

        A webhook is a notification: it names annotations (or tasks), and the scheduler reads
        them back from Label Studio with its own token before anything changes. A webhook about
        an annotation Label Studio does not have changes nothing (``not_in_label_studio``), and
        a delete Label Studio does not confirm deletes nothing. The service's own time for it
        (everything but waiting for Label Studio) is recorded for ``own_ms_p95``."""
        t0 = time.perf_counter()
        wait0 = self.ls.wait_s
        status = "ignored"
        events = intake.from_webhook(action, payload)
        deletes = [e for e in events if isinstance(e, intake.DeleteEvent)]
        if deletes:
            status = self.delete_annotations([(e.annotation_id, e.task_id) for e in deletes])
        for event in events:
            if isinstance(event, intake.IgnoredEvent):
                self._counts["ignored"] += 1
                return "ignored"
            if isinstance(event, intake.TasksDeletedEvent):
                status = self.tasks_deleted(event.task_ids)
            elif isinstance(event, intake.AnnotationNotice):
                status = self.read_back(event.annotation_id)
                if isinstance(status, intake.AnnotationEvent):
                    read, status = status, self.apply_event(status)
                    if status == "parked":
                        self._counts["parked"] = self._counts.get("parked", 0) + 1
                        item = ("event", read, time.perf_counter())
                        self._parked.append((PRIO_WEBHOOK, next(self._seq), item))
                        return status
        if top_up:
            self.top_up()
        own_ms = (time.perf_counter() - t0 - (self.ls.wait_s - wait0)) * 1000.0
        if status in ("created", "updated", "deleted", "rejected", "skipped"):
            self._own_ms.append(own_ms)
        return status

    def read_back(self, annotation_id: int | None) -> intake.AnnotationEvent | str:
        """The event of one annotation as Label Studio shows it now, or ``not_in_label_studio``
        (a webhook about an annotation Label Studio does not have: nothing to apply)."""
        if annotation_id is None:
            self._counts["ignored"] += 1
            return "ignored"
        seen_at = _utcnow()
        ann = self.ls.annotation(annotation_id)
        event = None if ann is None else intake.from_annotation(ann, seen_at=seen_at)
        if event is None or event.annotation_id != annotation_id:
            self._counts["not_in_label_studio"] += 1
            log.info("webhook about annotation %s, which Label Studio does not have", annotation_id)
            return "not_in_label_studio"
        return event

    def _reject(
        self, reason: str, *, kind, event: intake.AnnotationEvent, content: bool = False
    ) -> str:
        ann_id = event.annotation_id
        reason = intake.short(reason)
        new = self.store.record_rejection(
            reason,
            kind=kind,
            annotation_id=ann_id,
            task_id=event.task_id,
            rater=event.rater,
            payload=event.result,
            version_key=event.version_key if content else None,
        )
        if new:  # the ledger records a refusal once per annotation, reason and content
            self._counts["rejected"] += 1
            log.warning("rejected annotation %s on task %s: %s", ann_id, event.task_id, reason)
        return "rejected"

    def _adopt_landed_late(self, kind: str, event: intake.AnnotationEvent) -> None:
        """Adopt a task of ours that the log does not know although no creation is in flight:
        an import still in flight when a previous process died can land in Label Studio after
        the restart's reconciliation, and its answer must not be rejected as foreign."""
        if event.source != "webhook" or event.task_id is None or self.tasks.creating:
            return
        if self.store.get_task(event.task_id) is None:
            task = event.task or self.ls.task(event.task_id)  # Label Studio's, not the webhook's
            if task:
                self.tasks.adopt(kind, task)  # only if its meta says the scheduler created it

    def apply_event(self, event: intake.AnnotationEvent) -> str:
        """Apply one annotation event (from a webhook or reconciliation): ledger, engine, pool.
        Returns what happened: ``created``/``updated``/``duplicate``/``stale``/``skipped``/
        ``rejected``/``ignored``, or ``parked`` (an unknown task while Rank tasks are being
        created: retried once they are recorded)."""
        kind = self.ls.kind_of_project(event.project_id)
        if kind not in (RANK, BOUNDARY):
            self._counts["ignored"] += 1
            return "ignored"
        self._adopt_landed_late(kind, event)
        store_kind = "rank" if kind == RANK else "boundary"
        if event.annotation_id is None or event.task_id is None:
            return self._reject(event.problem, kind=store_kind, event=event)
        if event.problem:
            return self._reject(event.problem, kind=store_kind, event=event)
        deleted_at = self._deleted_unknown.get(event.annotation_id)
        if deleted_at is not None and (event.seen_at is None or event.seen_at <= deleted_at):
            # Read before a delete that came while the log did not know the annotation (its
            # create was parked, or only a listing had it): it is gone.
            self._counts["stale"] += 1
            return "stale"
        rater, task_id = event.rater, event.task_id
        record = self.store.get_task(task_id)
        if record is None and self.tasks.creating > 0:
            # Possibly one of the tasks being created, answered before its id came back.
            return "parked"
        if record is None:
            return self._reject(
                f"task {task_id} in the {kind} project was not created by the scheduler",
                kind=store_kind,
                event=event,
            )
        # A refusal is about one version of the annotation: the same version again is refused
        # without a look, an edit (a clinician completing the ranking) is read anew. Refusals
        # that depend on the scheduler's state, not the content (a task not recorded yet),
        # are looked at again every time, above.
        if self._rejected.get(event.annotation_id) == event.version_key:
            return "rejected"
        if event.cancelled:
            return self._skipped(record)
        try:
            if kind == RANK:
                ordered = intake.parse_ranking(event.result, record.image_ids)
            else:
                label = intake.parse_boundary(event.result)
        except ValueError as exc:
            self._rejected[event.annotation_id] = event.version_key
            status = self._reject(str(exc), kind=store_kind, event=event, content=True)
            if record.task_id in self.tasks.open:
                self.tasks.close(record, "retired", retire=False)
            return status
        self._rejected.pop(event.annotation_id, None)
        # What a read that began after a delete shows may bring back an annotation a
        # reconciliation had judged gone; nothing read before it can (SubmissionStore._append).
        times = {
            "created_at": event.created_at,
            "updated_at": event.updated_at,
            "lead_time": event.lead_time,
            "seen_at": event.seen_at,
        }
        if kind == RANK:
            res = self.store.append_ranking(
                event.annotation_id, ordered, rater=rater, task_id=task_id, **times
            )
        else:
            res = self.store.append_boundary(
                event.annotation_id,
                record.image_ids[0],
                label,
                rater=rater,
                task_id=task_id,
                **times,
            )
        self._counts[res.status] = self._counts.get(res.status, 0) + 1
        if res.status == "created" and event.source != "webhook":
            # An answer no webhook brought: the dashboard says so if webhooks have stopped.
            self._webhook_times["found_by_reconciliation"] += 1
            self._webhook_times["last_found_at"] = time.time()
        if res.status == "created":
            with self.lock:
                if kind == RANK:
                    self._submit_ranking(rater, ordered)
                else:
                    self.engine.submit_boundary(record.image_ids[0], label, rater or None)
                _record_time(self.engine, rater, kind == RANK, event.lead_time)
                self._generation += 1
            self.tasks.saw_submission(rater, store_kind, tuple(record.image_ids))
        elif res.needs_rebuild:
            self.rebuild()
        if record.status == "open" or record.task_id in self.tasks.open:
            self.tasks.close(record, "answered", retire=False, release=False)
        return res.status

    def apply_annotation(self, project_id: Any, task_id: Any, ann: dict) -> str:
        """Apply one annotation dict of ``task_id`` in ``project_id`` (through intake), as a
        read that began now showed it."""
        event = intake.annotation_event(
            project_id, task_id, ann, source="listing", seen_at=_utcnow()
        )
        return self.apply_event(event)

    def _submit_ranking(self, rater: str, ordered: list[str]) -> None:
        engine = self.engine
        is_open = any(set(b) == set(ordered) for b in engine.open_batches())
        # After a rebuild the engine no longer knows which batches are open in Label Studio;
        # the task record has already vouched for the images.
        engine.submit(rater, ordered, require_open=is_open)

    def _skipped(self, record) -> str:
        self._counts["skipped"] += 1
        if record.status == "open":
            self.tasks.close(record, "skipped", retire=True)
        return "skipped"

    def delete_annotation(self, annotation_id: Any, task_id: Any = None) -> str:
        """An annotation was said to be deleted in Label Studio (see :meth:`delete_annotations`)."""
        if annotation_id is None:
            return "ignored"
        return self.delete_annotations([(annotation_id, task_id)])

    def delete_annotations(self, items: list[tuple[int, int | None]]) -> str:
        """Annotations (id, task id or None) were said to be deleted in Label Studio.

        Label Studio is asked first: only an annotation it no longer shows stops counting (a
        forged delete of a real answer changes nothing). A delete of an annotation the log does
        not know is remembered for UNKNOWN_DELETE_MEMORY_S, so a create parked meanwhile, or a
        listing read before it, cannot count it. However many go, the engine is rebuilt once.
        Returns ``deleted`` if any went, else ``unknown``/``duplicate``/``not_confirmed``."""
        now = _utcnow()
        known, statuses = {}, set()
        for ann_id, _ in items:
            sub = self.store.latest_version(ann_id)
            if sub is not None:
                known[int(ann_id)] = sub
            elif self.store.knows_annotation(ann_id):
                statuses.add("duplicate")  # deleted before
            else:
                statuses.add("unknown")
                self._remember_unknown_delete(int(ann_id), now)
        if not known:
            return "unknown" if "unknown" in statuses else "duplicate"
        on_tasks = {(s.kind, s.task_id) for s in known.values() if s.task_id is not None}
        still_there = self._shown_by_label_studio(on_tasks)
        for ann_id, sub in known.items():
            if sub.task_id is None and self.ls.annotation(ann_id) is not None:
                still_there.add(ann_id)
        gone, status = [], "not_confirmed"
        for ann_id, sub in known.items():
            if ann_id in still_there:
                self._counts["delete_not_confirmed"] += 1
                log.warning("delete of annotation %s not confirmed: Label Studio has it", ann_id)
                continue
            if self.store.delete_annotation(ann_id).status == "deleted":
                gone.append(sub)
        if gone:
            status = "deleted"
            self._counts["deleted"] += len(gone)
            self.rebuild()
            for sub in gone:
                record = self.store.get_task(sub.task_id) if sub.task_id is not None else None
                if record is not None and record.status == "answered":
                    # The task is back in Label Studio's queue with a stale batch: take it out
                    # of the stream (never delete it: its other answers and drafts stay).
                    self.store.set_task_status(record.task_id, "retired")
                    self.ls.retire_task(record.task_id)
        return status

    def _remember_unknown_delete(self, annotation_id: int, now: datetime) -> None:
        cutoff = now.timestamp() - UNKNOWN_DELETE_MEMORY_S
        for old in [a for a, t in self._deleted_unknown.items() if t.timestamp() < cutoff]:
            del self._deleted_unknown[old]
        self._deleted_unknown[annotation_id] = now

    def _shown_by_label_studio(self, tasks: set[tuple[str, int]]) -> set[int]:
        """The annotation ids Label Studio shows now on these (store kind, task id) tasks."""
        shown: set[int] = set()
        for store_kind, ls_kind in (("rank", RANK), ("boundary", BOUNDARY)):
            ids = sorted({t for k, t in tasks if k == store_kind})
            for start in range(0, len(ids), 500):
                for task in self.ls.tasks_with_annotations(ls_kind, ids[start : start + 500]):
                    for ann in task.get("annotations") or []:
                        ann = ann if isinstance(ann, dict) else ann.dict()
                        shown.add(int(ann["id"]))
        return shown

    def tasks_deleted(self, task_ids: tuple[int, ...] | list[int]) -> str:
        """Tasks were said to be deleted in Label Studio (``TASKS_DELETED``: their annotations
        went with them, and Label Studio says nothing more). The scheduler's tasks among them
        that Label Studio no longer shows are closed for good and every answer logged on them
        stops counting, with one rebuild; the reconcile guard is not involved, since Label
        Studio said so and confirmed it."""
        ours = [r for r in (self.store.get_task(t) for t in set(task_ids)) if r is not None]
        if not ours:
            self._counts["ignored"] += 1
            return "ignored"
        shown = set()
        for store_kind, ls_kind in (("rank", RANK), ("boundary", BOUNDARY)):
            ids = sorted(r.task_id for r in ours if r.kind == store_kind)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                shown |= {t["id"] for t in self.ls.tasks_with_annotations(ls_kind, chunk)}
        gone = {r.task_id: r for r in ours if r.task_id not in shown}
        if len(gone) < len(ours):
            self._counts["delete_not_confirmed"] += len(ours) - len(gone)
        if not gone:
            return "not_confirmed"
        dropped = 0
        for sub in list(self.store.effective_submissions(content=False)):
            if sub.task_id in gone:
                dropped += self.store.delete_annotation(sub.annotation_id).status == "deleted"
        for record in gone.values():
            if record.status != "retired":
                self.store.set_task_status(record.task_id, "retired")
            if record.task_id in self.tasks.open:
                self.tasks.close(self.tasks.open[record.task_id], "retired", retire=False)
        self._counts["tasks_deleted"] += len(gone)
        if dropped:
            self._counts["deleted"] += dropped
            self.rebuild()
        log.info(
            "%d task(s) deleted in Label Studio: %d answer(s) stop counting", len(gone), dropped
        )
        return "deleted" if dropped else "tasks_deleted"

    # ------------------------------------------------------------------ pool and publisher
    def top_up(self) -> None:
        """Let the pool create the Rank tasks and boundary questions wanted now; once the
        engine is done, publish the classes when everything is settled."""
        if self.tasks.top_up():
            self.maybe_publish()

    def retire_stale(self) -> int:
        """Withdraw Rank tasks open longer than ``stale_after_s`` (state has moved on)."""
        return self.tasks.retire_stale()

    def active_raters(self) -> int:
        """Raters who submitted within the active window."""
        return self.tasks.active_raters()

    def wanted_open_tasks(self) -> int:
        """How many Rank tasks should be open now."""
        return self.tasks.wanted_open_tasks()

    def consensus(self) -> dict[str, Any]:
        """The consensus export (INTERFACES.md): ranking, scores, views, classes, thresholds."""
        return self.publisher.consensus()

    def maybe_publish(self) -> bool:
        """Once the engine is done and no boundary question is open or wanted, write
        consensus.json/csv and the Classify predictions (once)."""
        return self.publisher.maybe_publish(
            questions_open=bool(self.tasks.open_ids("boundary")), generation=self._generation
        )

    # ------------------------------------------------------------------ reconciliation
    def reconcile(self, *, full: bool = True, read: dict | None = None) -> dict[str, int]:
        """Bring the log in line with Label Studio (see :mod:`reconciler`). ``full=False`` looks
        only at the open tasks; ``read`` is a listing made earlier on the tick thread."""
        if not full:
            return self.reconciler.apply_open(self.reconciler.read_open())
        return self.reconciler.apply_full(self.reconciler.read_full() if read is None else read)

    def watch(self, counts: list[tuple[frozenset, int]] | None = None) -> bool:
        """Cheap check for a missed webhook (see :meth:`Reconciler.watch`); reconciles the open
        tasks at once when one was missed. ``counts`` is a read made earlier (tick thread)."""
        counts = self.reconciler.read_watch() if counts is None else counts
        missed = self.reconciler.watch(counts)
        if missed:
            self.reconcile(full=False)
            self.top_up()
        return missed

    # ------------------------------------------------------------------ figures
    def service_stats(self) -> dict[str, Any]:
        """The service's own figures: processing time per submission, queue, counters."""
        own = list(self._own_ms)
        return {
            "own_ms_p50": percentile(own, 0.5),
            "own_ms_p95": percentile(own, 0.95),
            "own_ms_max": max(own) if own else None,
            "submissions_timed": len(own),
            "queue": self._queue.qsize() + self.tasks.create_jobs,
            "creating_rank_tasks": self.tasks.creating,
            "spare_wanted": self.tasks.spare_wanted(),
            "submission_rate_per_s": self.tasks.submission_rate(),
            "worker": self._worker.as_dict(),
            "label_studio_calls": self.ls.call_stats(),
            "open_tasks": self.tasks.open_counts(),
            "wanted_open_rank_tasks": self.tasks.wanted_open_tasks(),
            "active_raters": self.tasks.active_raters(),
            "counts": dict(self._counts),
            "reconcile_refused": _without_ids(self.store.get_state(REFUSED_STATE_KEY)),
            "published": self.published,
            "projects": self.ls.projects,
        }

    def stats(self) -> dict[str, Any]:
        """The dashboard figures (``compute_stats``) plus :meth:`service_stats`."""
        from ranking_scheduler.service.stats import compute_stats

        # Only the engine's figures are copied under the lock (a few ms); the log is read and
        # everything summed after it, so a dashboard refresh never holds up a submission.
        stats = compute_stats(
            self.engine,
            self.store,
            target_views=self.settings.target_views,
            engine_lock=self.lock,
            webhooks=dict(self._webhook_times),
        )
        stats["service"] = self.service_stats()
        return stats


def _record_time(engine: Any, rater: str | None, rank: bool, lead_time: Any) -> None:
    """Tell the engine how long ``rater`` took (Label Studio's ``lead_time``), if it says."""
    try:
        seconds = float(lead_time)
    except (TypeError, ValueError):
        return
    if rater and 0 < seconds < 86400:
        engine.record_time(rater, "rank" if rank else "label", seconds)
