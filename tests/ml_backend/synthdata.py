"""A tiny synthetic media root for the ML-backend tests: grayscale PNGs whose class shows in
the image (a bright disc whose radius depends on the class), a manifest, and Label Studio
Classify tasks/annotations in the shape Label Studio exports them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from slicerank_base import CLASSES

#: Disc radius (fraction of the image side) per class: basal slices show a large cavity.
RADIUS = {"too_basal": 0.22, "lv": 0.14, "too_apical": 0.06}
PREFIX = {"too_basal": "tb", "lv": "lv", "too_apical": "ta"}


def make_media_root(
    root: Path, n_per_class: int = 12, *, size: int = 96, seed: int = 0
) -> list[dict]:
    """Write PNGs and manifest.csv under ``root``; returns the manifest rows."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size]
    for cls in CLASSES:
        for i in range(n_per_class):
            image_id = f"{PREFIX[cls]}{i:03d}"
            cy, cx = size / 2 + rng.normal(0, 2, 2)
            r = RADIUS[cls] * size * rng.uniform(0.9, 1.1)
            img = rng.normal(60, 15, (size, size))
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 220
            path = f"img/{image_id}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(root / path)
            # Four scans, each a stack whose slice order runs too_basal… lv… too_apical.
            order = CLASSES.index(cls) * n_per_class + i
            rows.append({"image_id": image_id, "scan_id": f"s{i % 4}", "slice_index": order,
                         "n_slices": n_per_class, "path": path, "true_class": cls})  # fmt: skip
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def classify_task(task_id: int, row: dict, *, label: str | None = None, prefix: str = "") -> dict:
    """A Classify task as Label Studio exports it (one annotation when ``label`` is given)."""
    task = {
        "id": task_id,
        "data": {
            "image": f"/data/local-files/?d={prefix}{row['path']}",
            "image_id": row["image_id"],
            "scan_id": row["scan_id"],
        },
        "annotations": [],
        "predictions": [],
        "project": 1,
    }
    if label is not None:
        task["annotations"].append({
            "id": 1000 + task_id,
            "completed_by": 1,
            "was_cancelled": False,
            "created_at": "2026-11-27T02:00:00.000000Z",
            "updated_at": "2026-11-27T02:00:00.000000Z",
            "lead_time": 3.2,
            "result": [{
                "id": f"r{task_id}", "from_name": "slice_class", "to_name": "image",
                "type": "choices", "origin": "manual", "value": {"choices": [label]},
            }],
        })  # fmt: skip
    return task


def prediction(p) -> dict:
    """A /predict result choosing the most probable class of ``p``, with its probabilities."""
    k = int(np.argmax(p))
    return {
        "result": [{"from_name": "slice_class", "to_name": "image", "type": "choices",
                    "value": {"choices": [CLASSES[k]]}}],
        "score": float(p[k]), "model_version": "v1",
        "probabilities": dict(zip(CLASSES, map(float, p), strict=True)),
    }  # fmt: skip
