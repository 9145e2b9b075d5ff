"""The scheduler's thin edge to Label Studio: every SDK call the service makes goes through here.

``LabelStudioAdapter(client, prefix)`` takes a ``label_studio_sdk.LabelStudio`` client (passed
in, never global). It also counts the time spent waiting for Label Studio (per thread, so the
service can report its *own* processing time separately) and keeps recent latencies per kind of
call (``call_stats``: how slow Label Studio is, e.g. at creating tasks).
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections import deque
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ls_config.provision import BOUNDARY, CLASSIFY, RANK, find_projects
from ranking_scheduler.service.typed_order import MARKS

MODEL_VERSION = "ranking-consensus"
"""Model version of the consensus classes written as predictions on Classify tasks."""

CALL_SAMPLES = 2000
"""Recent latencies kept per kind of Label Studio call (for ``call_stats``)."""


@dataclass(frozen=True)
class PoolImage:
    """One image of the pool as Label Studio knows it (from its Classify task)."""

    image_id: str
    url: str
    classify_task_id: int


def _data(obj: Any) -> dict:
    return obj if isinstance(obj, dict) else obj.dict()


PROVENANCE_KEYS = ("source", "ranked_by", "labelled_by", "labels")
"""What a consensus prediction says of where its class came from (consensus.json's columns)."""


def provenance_text(where: Mapping[str, Any]) -> str:
    """One line for a clinician: who saw the slice, or that its class was inferred."""
    source = where.get("source")
    if source == "seen":
        ranked, labelled = int(where.get("ranked_by", 0)), int(where.get("labelled_by", 0))
        return (
            f"consensus: seen, ranked by {ranked} rater{'s' if ranked != 1 else ''} and "
            f"labelled by {labelled}"
        )
    if source == "inferred":
        return (
            "consensus: nobody has seen this slice; inferred from its scan between seen neighbours"
        )
    return "consensus: nobody has seen this slice or its scan; the class-mix prior"


def _prediction_class(prediction: dict) -> str | None:
    """The one class a consensus prediction holds, or None."""
    for r in prediction.get("result") or []:
        choices = (r.get("value") or {}).get("choices") if isinstance(r, dict) else None
        if choices and len(choices) == 1:
            return choices[0]
    return None


class LabelStudioAdapter:
    """Project lookup, task creation/deletion, annotation listing and predictions."""

    def __init__(self, client, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self.projects: dict[str, int] = {}
        self._local = threading.local()
        self._calls: dict[str, deque[float]] = {}
        self._call_counts: dict[str, int] = {}
        self._calls_lock = threading.Lock()

    @contextmanager
    def _timed(self, op: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            # Per thread: a read on the reader thread must not be subtracted from the worker's
            # own time.
            self._local.wait_s = getattr(self._local, "wait_s", 0.0) + dt
            with self._calls_lock:
                self._calls.setdefault(op, deque(maxlen=CALL_SAMPLES)).append(dt)
                self._call_counts[op] = self._call_counts.get(op, 0) + 1

    @property
    def wait_s(self) -> float:
        """Seconds the calling thread has spent in Label Studio calls so far."""
        return getattr(self._local, "wait_s", 0.0)

    def recent_latencies(self, op: str) -> list[float]:
        """The recent latencies (seconds) of one kind of call, oldest first."""
        with self._calls_lock:
            return list(self._calls.get(op, ()))

    def call_stats(self) -> dict[str, dict[str, float | int | None]]:
        """Per kind of call: how many so far and the recent latency p50/p95/max in ms."""
        with self._calls_lock:
            snapshot = {op: (self._call_counts[op], sorted(v)) for op, v in self._calls.items()}
        out = {}
        for op, (n, values) in sorted(snapshot.items()):
            out[op] = {
                "calls": n,
                "p50_ms": 1000.0 * values[(len(values) - 1) // 2],
                "p95_ms": 1000.0 * values[int(0.95 * (len(values) - 1))],
                "max_ms": 1000.0 * values[-1],
            }
        return out

    def connect(self, prefer: dict[str, int] | None = None) -> dict[str, int]:
        """Find the three provisioned projects by title (raises ``LookupError`` naming a missing
        one, or a title several projects share unless ``prefer``, kind -> id, names one)."""
        with self._timed("connect"):
            self.projects = find_projects(self.client, self.prefix, prefer=prefer)
        return self.projects

    def kind_of_project(self, project_id: int | None) -> str | None:
        """``"Rank"``, ``"Classify"`` or ``"Boundary"`` for one of ours, else ``None``."""
        for kind, pid in self.projects.items():
            if pid == project_id:
                return kind
        return None

    def unlabelled_tasks(self, kind: str) -> int:
        """How many tasks of a project are still in the labelling stream (not ``is_labeled``:
        neither answered nor retired; one cheap project request)."""
        with self._timed("project_counts"):
            project = self.client.projects.get(self.projects[kind])
        return int(project.task_number or 0) - int(project.finished_task_number or 0)

    def pool(self) -> list[PoolImage]:
        """Every image of the Classify project (the pool the engine ranks), in task order."""
        out = []
        with self._timed("pool"):
            for task in self.client.tasks.list(project=self.projects[CLASSIFY], page_size=1000):
                data = task.data or {}
                if data.get("image_id") and data.get("image"):
                    out.append(PoolImage(str(data["image_id"]), data["image"], task.id))
        return out

    @staticmethod
    def rank_task(batch_id: str, images: list[PoolImage]) -> dict:
        """The task (data + meta) showing ``images`` in the given (shuffled) order.

        ``grid`` is the HTML of the large 4 x 2 grid, ``images`` the Ranker's list; both mark
        the i-th slice with ``MARKS[i]``, the letters a typed order is made of (rank.xml)."""
        if len(images) > len(MARKS):
            raise ValueError(f"a Rank task holds at most {len(MARKS)} slices, got {len(images)}")
        cells, items = [], []
        for mark, img in zip(MARKS, images, strict=False):
            src = html.escape(img.url)
            tag = f'<span class="sr-mark">{mark}</span>'
            cells.append(f'<div class="sr-cell"><img src="{src}" alt="slice {mark}"/>{tag}</div>')
            items.append(
                {"id": img.image_id, "html": f'{tag}<img src="{src}" alt="slice {mark}"/>'}
            )
        return {
            "data": {
                "images": items,
                "grid": f'<div class="sr-grid">{"".join(cells)}</div>',
                "batch_id": batch_id,
            },
            "meta": {"created_by": "slicerank-scheduler", "batch_id": batch_id},
        }

    def create_rank_task(self, batch_id: str, images: list[PoolImage]) -> int:
        """Create one Rank task; its id."""
        return self.create_rank_tasks([(batch_id, images)])[0]

    def create_rank_tasks(self, batches: list[tuple[str, list[PoolImage]]]) -> list[int]:
        """Create several Rank tasks in one request; their ids, in the same order."""
        tasks = [self.rank_task(batch_id, images) for batch_id, images in batches]
        with self._timed("create_rank_tasks"):
            resp = self.client.projects.import_tasks(
                self.projects[RANK], request=tasks, return_task_ids=True
            )
        ids = list(resp.task_ids or [])
        if len(ids) != len(tasks):
            raise RuntimeError(f"Label Studio created {len(ids)} of {len(tasks)} Rank tasks")
        return ids

    def create_boundary_task(self, image: PoolImage, boundary: str) -> int:
        """Create one Boundary question for ``image`` near the cut ``boundary``; its id."""
        with self._timed("create_boundary_task"):
            task = self.client.tasks.create(
                project=self.projects[BOUNDARY],
                data={"image": image.url, "image_id": image.image_id, "boundary": boundary},
                meta={"created_by": "slicerank-scheduler", "boundary": boundary},
            )
        return task.id

    def retire_task(self, task_id: int) -> bool:
        """Take a task out of the labelling stream without deleting it; ``False`` if it is gone.

        Label Studio 1.23 serves only tasks with ``is_labeled`` false, and recomputes that flag
        on every annotation change as "distinct annotators >= ``overlap``": with ``overlap`` 0
        it stays true for good. The task, its annotations and drafts stay; a rater who has it
        open can still submit, and the scheduler counts the answer. (Deleting would take the
        answers with it and make that rater's Submit fail.)"""
        from label_studio_sdk.core.api_error import ApiError

        with self._timed("retire_task"):
            try:
                self.client.tasks.update(task_id, overlap=0, is_labeled=True)
            except ApiError as exc:
                if exc.status_code == 404:
                    return False
                raise
        return True

    def delete_task(self, task_id: int) -> bool:
        """Delete a task; ``False`` if it was already gone. The scheduler itself never deletes
        a task (see :meth:`retire_task`); tests and tools use this."""
        from label_studio_sdk.core.api_error import ApiError

        with self._timed("delete_task"):
            try:
                self.client.tasks.delete(task_id)
            except ApiError as exc:
                if exc.status_code == 404:
                    return False
                raise
        return True

    def annotation(self, annotation_id: int) -> dict | None:
        """One annotation as Label Studio holds it now (read with the scheduler's own token),
        or None if Label Studio does not have it. A webhook only names the id: this is what
        the scheduler believes."""
        from label_studio_sdk.core.api_error import ApiError

        with self._timed("read_annotation"):
            try:
                return _data(self.client.annotations.get(int(annotation_id)))
            except ApiError as exc:
                if exc.status_code == 404:
                    return None
                raise

    def task(self, task_id: int) -> dict | None:
        """One task as Label Studio holds it now, or None if it is gone."""
        from label_studio_sdk.core.api_error import ApiError

        with self._timed("read_task"):
            try:
                return _data(self.client.tasks.get(str(int(task_id))))
            except ApiError as exc:
                if exc.status_code == 404:
                    return None
                raise

    def tasks_with_annotations(self, kind: str, task_ids: list[int] | None = None) -> list[dict]:
        """Tasks of a project with their annotations (plain dicts), for reconciliation: all of
        them, or only ``task_ids`` (one small request instead of a scan of the project)."""
        query = None
        if task_ids is not None:
            if not task_ids:
                return []
            query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
        out = []
        with self._timed("list_open_tasks" if query else "list_all_tasks"):
            for task in self.client.tasks.list(
                project=self.projects[kind], fields="all", page_size=500, query=query
            ):
                out.append(_data(task))
        return out

    def publish_predictions(
        self,
        classes: dict[str, tuple[str, float]],
        pool: list[PoolImage],
        provenance: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        """Write each image's consensus class (and its probability) as a new prediction on its
        Classify task, model version ``ranking-consensus``; returns how many were written. Not
        idempotent by itself: the scheduler calls it through :meth:`sync_predictions`.

        ``provenance`` (image id -> ``source``, ``ranked_by``, ``labelled_by``, ``labels``, as in
        consensus.json) goes into the result's ``meta``: ``text`` in words for whoever opens the
        task, ``provenance`` as numbers for an export. It is the provenance when the class was
        written; a later view that leaves the class as it was does not rewrite it."""
        requests = []
        for img in pool:
            if img.image_id not in classes:
                continue
            label, score = classes[img.image_id]
            result = {
                "from_name": "slice_class",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [label]},
                "score": float(score),
            }
            where = (provenance or {}).get(img.image_id)
            if where is not None:
                result["meta"] = {
                    "text": [provenance_text(where)],
                    "provenance": {k: where[k] for k in PROVENANCE_KEYS if k in where},
                }
            requests.append(
                {
                    "task": img.classify_task_id,
                    "model_version": MODEL_VERSION,
                    "score": float(score),
                    "result": [result],
                }
            )
        with self._timed("publish_predictions"):
            for start in range(0, len(requests), 500):
                self.client.projects.import_predictions(
                    self.projects[CLASSIFY], request=requests[start : start + 500]
                )
        return len(requests)

    def sync_predictions(
        self,
        classes: dict[str, tuple[str, float]],
        pool: list[PoolImage],
        *,
        known: dict[str, str] | None = None,
        provenance: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, int]:
        """Bring the ``ranking-consensus`` predictions on the Classify tasks to ``classes``
        (each created one carries its image's ``provenance``, :meth:`publish_predictions`):
        exactly one per task, holding its class. A prediction already right is kept, a wrong or
        surplus one deleted, a missing one created. Idempotent (run it twice, or after a crash
        half-way, and nothing is duplicated); returns how many were kept, deleted, created.

        ``known`` (image id -> class) is what Label Studio holds after the last *complete*
        sync: then only the tasks whose class differs from it are read (a republish after a
        late answer touches a handful of tasks; listing all 3,323 Classify tasks takes about a
        minute on a busy 2-core machine). ``None`` reads every Classify task (the first publish,
        and the one after an interrupted sync)."""
        if known is None:
            check = list(pool)
            with self._timed("list_classify"):
                tasks = list(
                    self.client.tasks.list(
                        project=self.projects[CLASSIFY], fields="all", page_size=1000
                    )
                )
        else:
            check = [
                img
                for img in pool
                if classes.get(img.image_id, (None, 0.0))[0] != known.get(img.image_id)
            ]
            tasks = []
            with self._timed("list_changed_classify"):
                ids = [img.classify_task_id for img in check]
                for start in range(0, len(ids), 500):
                    query = json.dumps(
                        {"selectedItems": {"all": False, "included": ids[start : start + 500]}}
                    )
                    tasks += self.client.tasks.list(
                        project=self.projects[CLASSIFY], fields="all", page_size=500, query=query
                    )
        have: dict[int, list[dict]] = {}
        for task in tasks:
            d = _data(task)
            have[d["id"]] = [
                p
                for p in (_data(p) for p in d.get("predictions") or [])
                if p.get("model_version") == MODEL_VERSION
            ]
        keep, drop, want = len(pool) - len(check), [], {}
        for img in check:
            existing = have.get(img.classify_task_id, [])
            label = classes.get(img.image_id, (None, 0.0))[0]
            right = [p for p in existing if label is not None and _prediction_class(p) == label]
            keep += bool(right)
            drop += [p["id"] for p in existing if not right or p is not right[0]]
            if label is not None and not right:
                want[img.image_id] = classes[img.image_id]
        with self._timed("delete_predictions"):
            for prediction_id in drop:
                self.client.predictions.delete(prediction_id)
        created = self.publish_predictions(want, pool, provenance) if want else 0
        return {"kept": keep, "deleted": len(drop), "created": created}

    def consensus_predictions(self) -> int:
        """How many Classify tasks already carry a ``ranking-consensus`` prediction."""
        n = 0
        with self._timed("list_classify"):
            for task in self.client.tasks.list(
                project=self.projects[CLASSIFY], fields="all", page_size=1000
            ):
                d = _data(task)
                n += any(
                    (p.get("model_version") if isinstance(p, dict) else None) == MODEL_VERSION
                    for p in d.get("predictions") or []
                )
        return n
