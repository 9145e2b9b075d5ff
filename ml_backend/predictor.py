"""Serving a registered model: load once, frame images with the evaluation preset, predict in
batches, and shape the answer as Label Studio pre-annotations."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ml_backend.config import TrainConfig
from ml_backend.data import MissingImageError, read_manifest_paths
from ml_backend.labels import CLASS_CONTROL
from ml_backend.media import MediaAccess
from ml_backend.registry import ModelRegistry, ModelVersion
from ml_backend.train import load_checkpoint, predict_proba
from ml_backend.transforms import EvalPreset, ImageRefusedError, load_grayscale
from slicerank_base import CLASSES

#: Tasks whose images are decoded at once when predicting a request (bounds its memory: a
#: 4096² image is 16 MB as grayscale).
TASK_CHUNK = 16


@dataclass
class Predictor:
    """One loaded model version on one device."""

    version: str
    model: torch.nn.Module
    config: TrainConfig
    device: torch.device
    from_name: str = CLASS_CONTROL
    to_name: str = "image"
    batch_size: int = 32

    @classmethod
    def from_version(
        cls, version: ModelVersion, *, device: torch.device | str = "cpu"
    ) -> Predictor:
        """Load a registry version's checkpoint (onto the CPU first, then ``device``)."""
        model, config, _ = load_checkpoint(version.checkpoint)
        device = torch.device(device)
        # Channels-last is ~25 % faster for this ResNet on CPU (oneDNN) as well as on GPU.
        model = model.to(device).to(memory_format=torch.channels_last).eval()
        return cls(version.name, model, config, device)

    def predict_images(self, images: Sequence[np.ndarray], *, from_name: str | None = None,
                       to_name: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """One Label Studio prediction per image: the most probable class as a ``choices``
        result, its probability as ``score``, this version as ``model_version``."""
        if not images:
            return []
        batch = EvalPreset(self.config).images_to_batch(images)
        probs = predict_proba(
            self.model, batch, self.device, batch_size=self.batch_size, channels_last=True
        ).numpy()
        out = []
        for p in probs:
            k = int(p.argmax())
            out.append({
                "result": [{
                    "from_name": from_name or self.from_name, "to_name": to_name or self.to_name,
                    "type": "choices", "value": {"choices": [CLASSES[k]]},
                }],
                "score": float(p[k]),
                "model_version": self.version,
                # Not part of LS's contract; kept for analysis clients calling /predict directly.
                "probabilities": {c: float(x) for c, x in zip(CLASSES, p, strict=True)},
            })  # fmt: skip
        return out

    def predict_tasks(
        self, tasks: Sequence[dict[str, Any]], *, media_root: Path | None,
        manifest: dict[str, str] | None = None, label_studio_url: str | None = None,
        api_key: str | None = None, value: str = "image", from_name: str | None = None,
        to_name: str | None = None, scans: Any = None,
    ) -> tuple[list[Any], list[dict[str, Any]]]:  # fmt: skip
        """Predictions for ``tasks`` (one per task, in order; ``[]`` — Label Studio's "no
        prediction" — for a task whose image is refused or unreadable) and those skipped tasks
        with their reasons (index, task id, reason, error type).

        Images are read and predicted :data:`TASK_CHUNK` at a time, so a request holds at most
        that many decoded images; ``scans`` (a :class:`~ml_backend.scan_predict.ScanPredictions`)
        then decodes the served tasks by scan. One bad task does not stop the others.
        """
        from ml_backend.media import ImageRefError

        served: list[int] = []
        per_slice: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        for start in range(0, len(tasks), TASK_CHUNK):
            images, chunk_served = [], []
            for k in range(start, min(start + TASK_CHUNK, len(tasks))):
                try:
                    images.append(self.load_task_image(
                        tasks[k], media_root=media_root, manifest=manifest,
                        label_studio_url=label_studio_url, api_key=api_key, value=value,
                    ))  # fmt: skip
                    chunk_served.append(k)
                except (ImageRefError, MissingImageError) as exc:
                    task = tasks[k]
                    tid = task.get("id") if isinstance(task, dict) else None
                    skipped.append({"index": k, "task": tid, "reason": str(exc),
                                    "error": type(exc).__name__})  # fmt: skip
            per_slice += self.predict_images(images, from_name=from_name, to_name=to_name)
            served += chunk_served
        if scans is not None and served:
            per_slice = scans.decode(self, [tasks[k] for k in served], per_slice)
        out: list[Any] = [[] for _ in tasks]
        for k, pred in zip(served, per_slice, strict=True):
            out[k] = pred
        return out, skipped

    @staticmethod
    def load_task_image(
        task: dict[str, Any], *, media_root: Path | None, manifest: dict[str, str] | None = None,
        label_studio_url: str | None = None, api_key: str | None = None, value: str = "image",
        http_client: Any = None,
    ) -> np.ndarray:  # fmt: skip
        """The task's image: from the media root when it is there, else fetched from Label
        Studio (only from ``label_studio_url``, with the API key). Raises
        :class:`~ml_backend.media.ImageRefError` for a refused reference (nothing read) and
        :class:`MissingImageError` for an allowed one that is not there or not an image."""
        if (
            media_root is not None
            and manifest is None
            and (Path(media_root) / "manifest.csv").is_file()
        ):
            manifest = read_manifest_paths(Path(media_root))
        access = MediaAccess(
            media_root=Path(media_root) if media_root is not None else None, manifest=manifest,
            label_studio_url=label_studio_url or "", api_key=api_key or "", http_client=http_client,
        )  # fmt: skip
        try:
            source = access.open_task_image(task, value)
            return load_grayscale(source)
        except FileNotFoundError as exc:
            raise MissingImageError(str(exc)) from None
        except ImageRefusedError as exc:
            raise MissingImageError(f"task {task.get('id')}: its image is refused: {exc}") from None
        except (OSError, Image.DecompressionBombError) as exc:
            raise MissingImageError(
                f"task {task.get('id')}: its image cannot be decoded ({type(exc).__name__})"
            ) from None


class PredictorCache:
    """Keeps the served model loaded; reloads only when a newer version is registered (or the
    pinned one changes). Thread-safe: the server's worker threads share one instance."""

    def __init__(
        self, registry: ModelRegistry, *, device: torch.device | str = "cpu", pinned: str = ""
    ) -> None:
        self.registry = registry
        self.device = torch.device(device)
        self.pinned = pinned
        self._lock = threading.Lock()
        self._predictor: Predictor | None = None

    def wanted(self) -> ModelVersion | None:
        """The version that should be served now (pinned, else the newest)."""
        return self.registry.get(self.pinned) if self.pinned else self.registry.newest()

    def get(self) -> Predictor | None:
        """The loaded predictor for :meth:`wanted`, or None when no model is registered."""
        version = self.wanted()
        if version is None:
            return None
        with self._lock:
            if self._predictor is None or self._predictor.version != version.name:
                self._predictor = Predictor.from_version(version, device=self.device)
            return self._predictor
