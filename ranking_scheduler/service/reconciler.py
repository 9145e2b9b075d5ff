"""The reconciler: reads Label Studio and proposes what the webhooks missed.

Every annotation it finds goes through :mod:`intake` and the same ``apply`` call a webhook
takes, so a listing can never do what a webhook could not. Three passes, cheapest first:

* the **watch** compares Label Studio's count of unanswered tasks with the open tasks the
  scheduler holds; the same shortfall twice in a row means a lost webhook;
* the **light** pass reads only the open tasks (missed submissions on them);
* the **full** pass lists every task of the Rank and Boundary projects: edits, deletions,
  tasks created just before a crash (adopted), vanished tasks.

The reads run on the tick thread (``read_*``); the worker applies them (``apply_*``), so it
never waits for a listing.

A listing can only *suggest* that an annotation is gone (it is not shown); Label Studio never
said so. A pass that would drop more than a small share of the log (``max_delete_share`` of the
logged annotations, and more than ``RECONCILE_DELETE_FLOOR``) is therefore refused and
reported, not applied: that is what a wrong project, a wrong prefix or a broken listing looks
like, never what raters do. A drop that was wrong is undone anyway once a listing shows the
annotation again (the ledger restores it), but a refused pass never needs undoing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ls_config.provision import BOUNDARY, RANK
from ranking_scheduler.service import intake
from ranking_scheduler.service.pool import TaskPool
from ranking_scheduler.service.store import SubmissionStore

log = logging.getLogger(__name__)

RECONCILE_DELETE_FLOOR = 3
"""A pass may always drop this many annotations (a small log has no meaningful share)."""

REFUSED_STATE_KEY = "reconcile_refused"
"""Store state key of the last refused reconciliation pass (shown in the service stats)."""

ACCEPTED_STATE_KEY = "reconcile_accepted"
"""Store state key of the annotation ids a lead accepted to drop from a refused pass."""


class Reconciler:
    """Reads Label Studio (``ls``) against the log (``store``) and the open tasks (``pool``);
    ``apply(event)`` is the service's one path for an annotation event, ``rebuild()`` replays
    the log into a new engine, ``counts`` is the service's counter dict."""

    def __init__(
        self,
        store: SubmissionStore,
        ls: Any,
        pool: TaskPool,
        *,
        apply: Callable[[intake.AnnotationEvent], str],
        rebuild: Callable[[], None],
        counts: dict[str, int],
        max_delete_share: float = 0.05,
    ) -> None:
        self.store = store
        self.ls = ls
        self.pool = pool
        self._apply = apply
        self._rebuild = rebuild
        self.counts = counts
        self.max_delete_share = max_delete_share
        self._watch_short: list = []

    # ------------------------------------------------------------------ watch
    def read_watch(self) -> list[tuple[frozenset, int]]:
        """Per project: the task ids the scheduler holds open, then Label Studio's count of
        unanswered tasks (read in that order, so a task created meanwhile cannot look lost)."""
        out = []
        for kind, store_kind in ((RANK, "rank"), (BOUNDARY, "boundary")):
            ours = frozenset(self.pool.open_ids(store_kind))
            out.append((ours, self.ls.unlabelled_tasks(kind)))
        return out

    def watch(self, counts: list[tuple[frozenset, int]]) -> bool:
        """Whether ``counts`` (a :meth:`read_watch`) shows a missed webhook: Label Studio has
        fewer unanswered tasks than are open, and the same shortfall was seen last time."""
        short = [ours for ours, unanswered in counts if unanswered < len(ours)]
        # A submission whose webhook is still on its way looks the same for a moment: only the
        # same shortfall seen twice in a row (nothing arrived in between) means a lost webhook.
        missed = bool(short) and short == self._watch_short
        self._watch_short = [] if missed else short
        if missed:
            self.counts["watch_reconciles"] = self.counts.get("watch_reconciles", 0) + 1
        return missed

    # ------------------------------------------------------------------ light pass
    def read_open(self) -> list[tuple[str, list[int], list[dict]]]:
        """Per project: the task ids held open and Label Studio's view of those tasks."""
        out = []
        for kind, store_kind in ((RANK, "rank"), (BOUNDARY, "boundary")):
            ids = self.pool.open_ids(store_kind)
            seen_at = datetime.now(UTC)  # when the read began: nothing older restores a delete
            out.append((kind, ids, self.ls.tasks_with_annotations(kind, ids), seen_at))
        return out

    def apply_open(self, reads) -> dict[str, int]:
        """Apply a :meth:`read_open`: submissions on open tasks, open tasks gone from Label
        Studio retired."""
        # ``reads`` may be a little old (read on the tick thread): applying an annotation is
        # idempotent, and a task only counts as gone if it is still open here.
        self.counts["light_reconciles"] = self.counts.get("light_reconciles", 0) + 1
        applied = 0
        for kind, ids, found, seen_at in reads:
            for task in found:
                for event in intake.from_listing(self.ls.projects[kind], task, seen_at=seen_at):
                    applied += self._apply(event) in ("created", "updated")
            gone = set(ids) - {t["id"] for t in found}
            for task_id in gone:
                if task_id in self.pool.open:
                    self.pool.close(self.pool.open[task_id], "retired", retire=False)
        return {"applied": applied, "deleted": 0}

    # ------------------------------------------------------------------ full pass
    def read_full(self) -> dict[str, Any]:
        """Every task of the Rank and Boundary projects with its annotations, and the
        annotations and open tasks the scheduler knew *before* listing them: only those can be
        judged gone from a listing that may be a little old by the time it is applied."""
        known_before = {s.annotation_id for s in self.store.effective_submissions(content=False)}
        open_before = {t.task_id for t in list(self.pool.open.values())}
        # The listing carries the time its read began: an annotation deleted after that time
        # and shown by it is not brought back (SubmissionStore._append).
        seen_at = datetime.now(UTC)
        tasks = [(kind, self.ls.tasks_with_annotations(kind)) for kind in (RANK, BOUNDARY)]
        return {
            "known_before": known_before,
            "open_before": open_before,
            "tasks": tasks,
            "seen_at": seen_at,
        }

    def apply_full(self, read: dict[str, Any]) -> dict[str, int]:
        """Apply a :meth:`read_full` (see the module docstring)."""
        self.counts["reconciles"] += 1
        seen_annotations: set[int] = set()
        seen_tasks: set[int] = set()
        applied = 0
        # Preloaded so that a pass over thousands of unchanged annotations costs no queries.
        known = {s.annotation_id: s for s in self.store.effective_submissions()}
        # The images of each known task as shown: what a typed order's marks refer to.
        known_tasks = {t.task_id: t.image_ids for t in self.store.tasks()}
        for kind, tasks in read["tasks"]:
            project_id = self.ls.projects[kind]
            for task in tasks:
                task_id = task["id"]
                seen_tasks.add(task_id)
                if task_id not in known_tasks:
                    self.pool.adopt(kind, task)
                for event in intake.from_listing(project_id, task, seen_at=read.get("seen_at")):
                    seen_annotations.add(event.annotation_id)
                    sub = known.get(event.annotation_id)
                    if intake.unchanged(sub, event, known_tasks.get(task_id)):
                        if task_id in self.pool.open:
                            self.pool.close(
                                self.pool.open[task_id], "answered", retire=False, release=False
                            )
                        continue
                    applied += self._apply(event) in ("created", "updated")
        missing = read["known_before"] - seen_annotations
        unseen = {t for t in read["open_before"] - seen_tasks if t in self.pool.open}
        if missing or unseen:
            self._confirm_gone(missing, unseen, seen_annotations, seen_tasks)
        gone = sorted(missing - seen_annotations)
        accepted = self._accepted(gone)
        if self._refuse([a for a in gone if a not in accepted], len(known), gone):
            return {"applied": applied, "deleted": 0, "refused": len(gone)}
        if accepted:
            log.warning("reconciliation: dropping %d annotation(s) a lead accepted", len(accepted))
            self.store.set_state(ACCEPTED_STATE_KEY, None)
            self.store.set_state(REFUSED_STATE_KEY, None)
        deleted = 0
        for annotation_id in gone:
            deleted += self.store.delete_annotation(annotation_id).status == "deleted"
        if deleted:
            self.counts["deleted"] += deleted
            self._rebuild()
        for task_id in unseen - seen_tasks:
            if task_id in self.pool.open:
                self.pool.close(self.pool.open[task_id], "retired", retire=False)
        return {"applied": applied, "deleted": deleted}

    def allowed_deletes(self, logged: int) -> int:
        """How many annotations one pass may drop from a log of ``logged``."""
        return max(RECONCILE_DELETE_FLOOR, int(self.max_delete_share * logged))

    def _accepted(self, gone: list[int]) -> set[int]:
        """The annotations of ``gone`` that a lead accepted to drop (``slicerank scheduler
        accept-reconcile``); an acceptance covers only ids it listed."""
        accepted = self.store.get_state(ACCEPTED_STATE_KEY)
        ids = accepted.get("ids") if isinstance(accepted, dict) else None
        return set(gone) & {int(i) for i in ids or []}

    def _refuse(self, unaccepted: list[int], logged: int, gone: list[int]) -> bool:
        """Whether dropping ``unaccepted`` (of all ``gone``) is too much to be real; if so,
        report it, with every id, so that a lead can look and accept it."""
        if len(unaccepted) <= self.allowed_deletes(logged):
            return False
        report = {
            "at": datetime.now(UTC).isoformat(),
            "would_delete": len(gone),
            "logged": logged,
            "allowed": self.allowed_deletes(logged),
            "projects": dict(self.ls.projects),
            "examples": gone[:10],
            "ids": gone,
        }
        self.counts["reconcile_refused"] = self.counts.get("reconcile_refused", 0) + 1
        self.store.set_state(REFUSED_STATE_KEY, report)
        log.error(
            "reconciliation refused: Label Studio projects %s do not show %d of the %d logged "
            "annotations (at most %d may go in one pass); nothing was dropped. Check the "
            "project prefix and Label Studio; if the work was removed on purpose, review and "
            "accept the drop with: slicerank scheduler --accept-reconcile",
            report["projects"],
            len(gone),
            logged,
            report["allowed"],
        )
        return True

    def _confirm_gone(self, missing, unseen, seen_annotations, seen_tasks) -> None:
        # The listing is paged: a task deleted while it ran (a skip, a retirement) shifts the
        # pages and can hide another task. Before anything is dropped from the log, read the
        # tasks in question directly; what turns up there is not gone.
        by_kind: dict[str, set[int]] = {RANK: set(), BOUNDARY: set()}
        for sub in self.store.effective_submissions(content=False):
            if sub.annotation_id in missing and sub.task_id is not None:
                by_kind[RANK if sub.kind == "rank" else BOUNDARY].add(int(sub.task_id))
        for task_id in unseen:
            by_kind[RANK if self.pool.open[task_id].kind == "rank" else BOUNDARY].add(task_id)
        for kind, ids in by_kind.items():
            if not ids:
                continue
            for task in self.ls.tasks_with_annotations(kind, sorted(ids)):
                seen_tasks.add(task["id"])
                for ann in task.get("annotations") or []:
                    ann = ann if isinstance(ann, dict) else ann.dict()
                    seen_annotations.add(int(ann["id"]))
