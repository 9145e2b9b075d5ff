"""Data sets: labelled image ids → prepared uint8 tensors, and the stratified split.

Images are the 8-bit grayscale PNGs of a media root (``manifest.csv`` + files, see
docs/INTERFACES.md). Each image is read and framed once (:func:`ml_backend.transforms.prepare_image`)
and kept in memory as uint8 — 3,323 images at 256×256 take 218 MB — so training epochs do no
file I/O and, on a GPU, the whole set can live on the device.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ml_backend.config import TrainConfig
from ml_backend.labels import LabelledImage
from ml_backend.transforms import ImageRefusedError, load_grayscale, prepare_image
from slicerank_base import CLASSES


class MissingImageError(FileNotFoundError):
    """A labelled image cannot be found under the media root; the message names it."""


def read_manifest_paths(media_root: Path) -> dict[str, str]:
    """``image_id → path`` (relative to the media root) from ``<media_root>/manifest.csv``."""
    manifest = Path(media_root) / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"media root {media_root} has no manifest.csv")
    with manifest.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image_id", "path"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{manifest} lacks the column(s) {', '.join(sorted(missing))}")
        return {row["image_id"]: row["path"] for row in reader}


def resolve_image_paths(
    labels: Sequence[LabelledImage], media_root: Path, manifest: dict[str, str],
    *, skipped: list[dict[str, str]] | None = None,
) -> list[Path | None]:  # fmt: skip
    """The file of every labelled image: by manifest, else by the task's local-files path.

    A refused path raises :class:`~ml_backend.media.ImageRefError`, or, when ``skipped`` is a
    list, is recorded there (image id and reason) and gives None. An image that is not there
    raises :class:`MissingImageError` either way (the media root is wrong or incomplete).
    """
    from ml_backend.media import ImageRefError, confine, media_candidates

    root = Path(media_root)
    paths: list[Path | None] = []
    for item in labels:
        # Every path is confined to the media root (symlinks and '..' resolved) before any
        # file is looked at: task data is attacker-controlled.
        candidates = []
        where, path = "manifest path", manifest.get(item.image_id)
        try:
            if path is not None:
                candidates.append(confine(root, path))
            if item.path_hint:
                # The LS document root may be the media root or a parent of it: try both.
                where, path = "task path", item.path_hint
                candidates += media_candidates(root, item.path_hint)
        except ValueError as exc:
            error = ImageRefError(f"image {item.image_id!r}: {where} {path!r} refused: {exc}")
            if skipped is None:
                raise error from None
            skipped.append({"image_id": item.image_id, "reason": str(error)})
            paths.append(None)
            continue
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            tried = ", ".join(str(p) for p in candidates) or "no manifest row and no task path"
            raise MissingImageError(
                f"image {item.image_id!r} not found under {root} (tried: {tried})"
            )
        paths.append(found)
    return paths


def stratified_split(
    labels: Sequence[str], fractions: tuple[float, float, float], seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Indices of train/validation/test, split per class in the given proportions.

    Each class is shuffled with its own draw from ``seed`` and cut by rounding, so class
    proportions are kept (as the study's "stratified method"); deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    labels = list(labels)
    for cls in sorted(set(labels)):
        idx = np.array([i for i, lab in enumerate(labels) if lab == cls])
        rng.shuffle(idx)
        n = len(idx)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        # Tiny classes (demo-sized sets) still get one validation and one test image.
        if n >= 3:
            n_val = max(n_val, 1 if fractions[1] > 0 else 0)
            n_test = max(n_test, 1 if fractions[2] > 0 else 0)
        n_train = max(n - n_val - n_test, 0)
        train += idx[:n_train].tolist()
        val += idx[n_train : n_train + n_val].tolist()
        test += idx[n_train + n_val :].tolist()
    if not train or not val:
        raise ValueError(
            f"{len(labels)} labelled images are too few for a {fractions} split "
            "(training and validation sets must both be non-empty)"
        )
    return sorted(train), sorted(val), sorted(test)


@dataclass
class SliceDataset:
    """Prepared images (N×1×S×S uint8), class indices, optional soft targets, image ids, and
    optional consensus positions (NaN where unknown, see ``LabelledImage.position``)."""

    image_ids: list[str]
    images: torch.Tensor
    targets: torch.Tensor
    soft: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, indices: Sequence[int]) -> SliceDataset:
        """The examples at ``indices``."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return SliceDataset(
            [self.image_ids[i] for i in indices],
            self.images[idx],
            self.targets[idx],
            None if self.soft is None else self.soft[idx],
            None if self.positions is None else self.positions[idx],
        )

    def to(self, device: torch.device | str) -> SliceDataset:
        """The same data on ``device``."""
        return SliceDataset(
            self.image_ids,
            self.images.to(device),
            self.targets.to(device),
            None if self.soft is None else self.soft.to(device),
            None if self.positions is None else self.positions.to(device),
        )


def build_dataset(
    labels: Sequence[LabelledImage],
    media_root: Path,
    config: TrainConfig,
    *,
    progress: bool = False,
    skipped: list[dict[str, str]] | None = None,
) -> SliceDataset:
    """Read, frame and stack the labelled images (raises :class:`MissingImageError`).

    With ``skipped`` (a list), an image that is refused (a path out of the media root, too
    many pixels, too elongated, a decompression bomb) or cannot be decoded is left out and
    recorded there with its reason, so one bad task cannot stop every training job; the data
    set then holds only the other images (its ``image_ids`` say which).
    """
    manifest = read_manifest_paths(media_root)
    paths = resolve_image_paths(labels, media_root, manifest, skipped=skipped)
    arrays, kept = [], []
    for item, path in tqdm(
        list(zip(labels, paths, strict=True)), desc="images", disable=not progress, unit="img"
    ):
        if path is None:
            continue
        try:
            arrays.append(prepare_image(load_grayscale(path), config))
        except (OSError, ImageRefusedError) as exc:
            reason = f"image {item.image_id!r} at {path} cannot be read ({exc})"
            if skipped is None:
                raise MissingImageError(reason) from None
            skipped.append({"image_id": item.image_id, "reason": reason})
            continue
        kept.append(item)
    if not kept:
        raise MissingImageError(
            f"none of the {len(labels)} labelled images can be read: "
            + "; ".join(x["reason"] for x in (skipped or [])[:3])
        )
    labels = kept
    images = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
    targets = torch.tensor([CLASSES.index(x.label) for x in labels], dtype=torch.long)
    soft = None
    if all(x.soft is not None for x in labels) and labels:
        soft = torch.tensor([x.soft for x in labels], dtype=torch.float32)
    positions = None
    if any(x.position is not None for x in labels):
        positions = torch.tensor(
            [float("nan") if x.position is None else x.position for x in labels],
            dtype=torch.float32,
        )
    return SliceDataset([x.image_id for x in labels], images, targets, soft, positions)
