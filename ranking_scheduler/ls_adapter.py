"""The scheduler's thin edge to Label Studio: every SDK call the service makes goes through here.

``LabelStudioAdapter(client, prefix)`` takes a ``label_studio_sdk.LabelStudio`` client (passed
in, never global). It also counts the time spent waiting for Label Studio so the service can
report its *own* processing time separately.
"""

from __future__ import annotations

import html
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ls_config.provision import BOUNDARY, CLASSIFY, RANK, find_projects

MODEL_VERSION = "ranking-consensus"
"""Model version of the consensus classes written as predictions on Classify tasks."""

IMAGE_STYLE = "width:200px;height:200px;object-fit:contain;background:#000"
"""Inline size of each slice in the Rank list (big enough to judge anatomy)."""


@dataclass(frozen=True)
class PoolImage:
    """One image of the pool as Label Studio knows it (from its Classify task)."""

    image_id: str
    url: str
    classify_task_id: int


def _data(obj: Any) -> dict:
    return obj if isinstance(obj, dict) else obj.dict()


class LabelStudioAdapter:
    """Project lookup, task creation/deletion, annotation listing and predictions."""

    def __init__(self, client, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self.projects: dict[str, int] = {}
        self._wait_s = 0.0
        self._wait_lock = threading.Lock()

    @contextmanager
    def _timed(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._wait_lock:
                self._wait_s += time.perf_counter() - t0

    @property
    def wait_s(self) -> float:
        """Total seconds spent in Label Studio calls so far."""
        return self._wait_s

    def connect(self) -> dict[str, int]:
        """Find the three provisioned projects (raises ``LookupError`` naming a missing one)."""
        with self._timed():
            self.projects = find_projects(self.client, self.prefix)
        return self.projects

    def kind_of_project(self, project_id: int | None) -> str | None:
        """``"Rank"``, ``"Classify"`` or ``"Boundary"`` for one of ours, else ``None``."""
        for kind, pid in self.projects.items():
            if pid == project_id:
                return kind
        return None

    def pool(self) -> list[PoolImage]:
        """Every image of the Classify project (the pool the engine ranks), in task order."""
        out = []
        with self._timed():
            for task in self.client.tasks.list(project=self.projects[CLASSIFY], page_size=1000):
                data = task.data or {}
                if data.get("image_id") and data.get("image"):
                    out.append(PoolImage(str(data["image_id"]), data["image"], task.id))
        return out

    def create_rank_task(self, batch_id: str, images: list[PoolImage]) -> int:
        """Create one Rank task showing ``images`` in the given (shuffled) order; its id."""
        items = [
            {
                "id": img.image_id,
                "html": f'<img src="{html.escape(img.url)}" alt="slice {i + 1}" '
                f'style="{IMAGE_STYLE}"/>',
            }
            for i, img in enumerate(images)
        ]
        with self._timed():
            task = self.client.tasks.create(
                project=self.projects[RANK],
                data={"images": items, "batch_id": batch_id},
                meta={"created_by": "slicerank-scheduler", "batch_id": batch_id},
            )
        return task.id

    def create_boundary_task(self, image: PoolImage, boundary: str) -> int:
        """Create one Boundary question for ``image`` near the cut ``boundary``; its id."""
        with self._timed():
            task = self.client.tasks.create(
                project=self.projects[BOUNDARY],
                data={"image": image.url, "image_id": image.image_id, "boundary": boundary},
                meta={"created_by": "slicerank-scheduler", "boundary": boundary},
            )
        return task.id

    def delete_task(self, task_id: int) -> bool:
        """Delete a task; ``False`` if it was already gone."""
        from label_studio_sdk.core.api_error import ApiError

        with self._timed():
            try:
                self.client.tasks.delete(task_id)
            except ApiError as exc:
                if exc.status_code == 404:
                    return False
                raise
        return True

    def tasks_with_annotations(self, kind: str) -> list[dict]:
        """Every task of a project with its annotations (plain dicts), for reconciliation."""
        out = []
        with self._timed():
            for task in self.client.tasks.list(
                project=self.projects[kind], fields="all", page_size=500
            ):
                out.append(_data(task))
        return out

    def publish_predictions(self, classes: dict[str, tuple[str, float]], pool: list[PoolImage]):
        """Write each image's consensus class (and its probability) as a prediction on its
        Classify task, model version ``ranking-consensus``; returns how many were written."""
        requests = []
        for img in pool:
            if img.image_id not in classes:
                continue
            label, score = classes[img.image_id]
            requests.append(
                {
                    "task": img.classify_task_id,
                    "model_version": MODEL_VERSION,
                    "score": float(score),
                    "result": [
                        {
                            "from_name": "slice_class",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": [label]},
                            "score": float(score),
                        }
                    ],
                }
            )
        with self._timed():
            for start in range(0, len(requests), 500):
                self.client.projects.import_predictions(
                    self.projects[CLASSIFY], request=requests[start : start + 500]
                )
        return len(requests)

    def consensus_predictions(self) -> int:
        """How many Classify tasks already carry a ``ranking-consensus`` prediction."""
        n = 0
        with self._timed():
            for task in self.client.tasks.list(
                project=self.projects[CLASSIFY], fields="all", page_size=1000
            ):
                d = _data(task)
                n += any(
                    (p.get("model_version") if isinstance(p, dict) else None) == MODEL_VERSION
                    for p in d.get("predictions") or []
                )
        return n
