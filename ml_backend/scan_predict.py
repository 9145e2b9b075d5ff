"""Predictions for Label Studio tasks, decoded per scan when the scan is known.

A task's scan and place in the stack come from its data (``scan_id`` + ``slice_index``) or,
failing that, from the media root's manifest (by ``image_id``). The scan's other slices
that the request does not carry are read from the media root too (when the manifest lists
them), so even Label Studio's one-task-at-a-time ``/predict`` calls are decoded against the
whole stack: the scan's monotone class sequence with the most slices expected right
(:func:`ml_backend.stack.decode_marginals`), so each shown choice, its ``score`` and its
``probabilities`` agree. A task whose scan is unknown keeps its per-slice prediction. Each
result says which way it was made (``decoding``, ``choice_rule``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ml_backend.stack import decode_marginals, stack_marginals
from slicerank_base import CLASSES

#: Decoded scans kept per served model (a scan's slices are usually asked for together).
CACHE_SCANS = 256


def task_stack_key(
    task: Mapping[str, Any], stacks: Mapping[str, tuple[str, int]]
) -> tuple[str, float] | None:
    """``(scan id, order along the stack)`` of a task, from its data or the manifest."""
    data = task.get("data") or {}
    scan, index = data.get("scan_id"), data.get("slice_index")
    if scan not in (None, "") and index not in (None, ""):
        try:
            return str(scan), float(index)
        except (TypeError, ValueError):
            pass
    image_id = data.get("image_id")
    if image_id in stacks:
        scan, index = stacks[image_id]
        return str(scan), float(index)
    return None


def _relabel(pred: dict[str, Any], marginals: np.ndarray, label: int) -> dict[str, Any]:
    """``pred`` with the scan-decoded choice: ``score`` is the choice's probability and
    ``probabilities`` the same constrained marginals, so the three agree; ``choice_rule`` says
    how the choice was made (and, in the rare stack where the most probable classes do not
    read monotone, that it is not the most probable one)."""
    out = dict(pred)
    result = [dict(r) for r in pred["result"]]
    for r in result:
        if r.get("type") == "choices":
            r["value"] = {"choices": [CLASSES[label]]}
    out["result"] = result
    out["score"] = float(marginals[label])
    out["per_slice_probabilities"] = pred.get("probabilities")
    out["probabilities"] = {c: float(x) for c, x in zip(CLASSES, marginals, strict=True)}
    out["decoding"] = "stack"
    out["choice_rule"] = (
        "most probable class given the scan's other slices"
        if int(np.argmax(marginals)) == label
        else "decoded along the scan: classes must read too_basal, lv, too_apical from base "
        "to apex, which here overrides the most probable class"
    )
    return out


class ScanDecoder:
    """Stack-decodes predictions for one served model version; caches the probabilities of
    slices read from the media root (keyed by image id) so a scan is read once."""

    def __init__(self, version: str) -> None:
        self.version = version
        self._lock = threading.Lock()
        self._probs: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    def decode(
        self,
        tasks: Sequence[Mapping[str, Any]],
        predictions: Sequence[dict[str, Any]],
        *,
        stacks: Mapping[str, tuple[str, int]],
        scan_probs: Callable[[str], dict[str, tuple[float, np.ndarray]]] | None = None,
    ) -> list[dict[str, Any]]:
        """``predictions`` (one per task, from ``Predictor.predict_images``) decoded per scan.

        ``scan_probs(scan_id)`` returns ``image_id → (order, probabilities)`` for every slice
        of the scan the media root holds (the request's own slices keep the probabilities
        predicted for them); None = only the request's slices are decoded together.
        """
        out = [dict(p, decoding="slice") for p in predictions]
        groups: dict[str, list[tuple[float, int]]] = {}
        for k, task in enumerate(tasks):
            key = task_stack_key(task, stacks)
            if key is not None:
                groups.setdefault(key[0], []).append((key[1], k))
        for scan, members in groups.items():
            rows = [
                (z, f"task:{k}", np.array([predictions[k]["probabilities"][c] for c in CLASSES]))
                for z, k in members
            ]
            known = {str((tasks[k].get("data") or {}).get("image_id")) for _, k in members}
            if scan_probs is not None:
                with self._lock:
                    cached = self._probs.get(scan)
                if cached is None:
                    cached = scan_probs(scan)
                    with self._lock:
                        self._probs[scan] = cached
                        while len(self._probs) > CACHE_SCANS:
                            self._probs.popitem(last=False)
                rows += [(z, i, p) for i, (z, p) in cached.items() if i not in known]
            if len(rows) < 2:
                continue
            rows.sort(key=lambda r: r[0])
            probs = np.stack([r[2] for r in rows])
            # The choice follows the marginals it is shown with (issue 22), in stack order.
            marg = stack_marginals(probs)
            labels = decode_marginals(marg)
            for (_, name, _), label, m in zip(rows, labels, marg, strict=True):
                if name.startswith("task:"):
                    k = int(name[5:])
                    out[k] = _relabel(predictions[k], m, label)
        return out


class ScanPredictions:
    """The media root's stacks plus one :class:`ScanDecoder` per served version: what the
    backend's ``/predict`` and the training job's write-back use to decode by scan."""

    def __init__(self, media_root: Any) -> None:
        from pathlib import Path

        self.media_root = Path(media_root) if media_root else None
        self._lock = threading.Lock()
        self._stacks: dict[str, tuple[str, int]] | None = None
        self._scans: dict[str, list[tuple[int, str, str]]] = {}
        self._decoder: ScanDecoder | None = None

    def _load(self) -> dict[str, tuple[str, int]]:
        from ml_backend.data import read_manifest_paths
        from ml_backend.splits import read_manifest_stacks

        with self._lock:
            if self._stacks is None:
                stacks, scans = {}, {}
                if self.media_root is not None and (self.media_root / "manifest.csv").is_file():
                    stacks = read_manifest_stacks(self.media_root)
                    paths = read_manifest_paths(self.media_root)
                    for image_id, (scan, index) in stacks.items():
                        if image_id in paths:
                            scans.setdefault(scan, []).append((index, image_id, paths[image_id]))
                self._stacks, self._scans = stacks, scans
            return self._stacks

    def _scan_probs(self, predictor: Any) -> Callable[[str], dict[str, tuple[float, np.ndarray]]]:
        from ml_backend.transforms import ImageRefusedError, load_grayscale

        root = self.media_root.resolve() if self.media_root is not None else None

        def probs(scan: str) -> dict[str, tuple[float, np.ndarray]]:
            members, images = [], []
            for index, image_id, rel in self._scans.get(scan, []):
                path = (root / rel).resolve() if root is not None else None
                # Manifest paths are ours, but stay inside the media root all the same.
                if path is not None and path.is_relative_to(root) and path.is_file():
                    try:
                        images.append(load_grayscale(path))
                    except (OSError, ImageRefusedError):
                        continue  # a bad slice is left out of its scan's decoding
                    members.append((index, image_id, path))
            if not members:
                return {}
            preds = predictor.predict_images(images)
            return {
                image_id: (float(index), np.array([pred["probabilities"][c] for c in CLASSES]))
                for (index, image_id, _), pred in zip(members, preds, strict=True)
            }

        return probs

    def decode(
        self, predictor: Any, tasks: Sequence[Mapping[str, Any]], results: Sequence[dict]
    ) -> list[dict[str, Any]]:
        """``results`` (per-slice, one per task) decoded per scan where the scan is known."""
        stacks = self._load()
        with self._lock:
            if self._decoder is None or self._decoder.version != predictor.version:
                self._decoder = ScanDecoder(predictor.version)
            decoder = self._decoder
        return decoder.decode(
            tasks, results, stacks=stacks,
            scan_probs=self._scan_probs(predictor) if self._scans else None,
        )  # fmt: skip
