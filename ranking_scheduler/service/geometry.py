"""Each pool image's scan and place along its stack, from the media root's manifest.

The engine ranks better when it knows which slices share a scan and their order from base to
apex (``RankingEngine(stacks=...)``). ``SCHEDULER_MANIFEST`` names the manifest that
``slicerank synth`` / ``slicerank ingest`` wrote (or its media root); this module reads it.

``z`` is ``z_mm`` where the manifest has that column, else ``slice_index`` (0 = most basal):
the engine needs the order within a scan and the relative spacing, and measures spacing in
units of the pool's typical gap, so indices serve where millimetres are unknown. The
``position`` column is never read: in a synthetic manifest it is the ground truth the labels
are scored against, and handing it to the engine would leak the answer.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from pathlib import Path

MANIFEST_NAME = "manifest.csv"
"""File name of the manifest inside a media root."""


def load_stacks(
    path: str | os.PathLike[str], image_ids: Iterable[str]
) -> dict[str, tuple[str, float]]:
    """``image_id -> (scan_id, z)`` for the images of ``image_ids`` that the manifest lists.

    Raises ``ValueError`` naming the file (and line) when it is missing, lacks the
    ``image_id``/``scan_id``/``slice_index`` columns, or holds a value that is not a number.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ValueError(f"SCHEDULER_MANIFEST: {p} is not a file (a manifest.csv or its folder)")
    wanted = set(image_ids)
    out: dict[str, tuple[str, float]] = {}
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        missing = sorted({"image_id", "scan_id", "slice_index"} - columns)
        if missing:
            raise ValueError(f"SCHEDULER_MANIFEST: {p} lacks column(s) {', '.join(missing)}")
        z_column = "z_mm" if "z_mm" in columns else "slice_index"
        for line, row in enumerate(reader, start=2):
            image_id = row["image_id"]
            if image_id not in wanted:
                continue
            try:
                z = float(row[z_column])
            except (TypeError, ValueError):
                z = math.nan
            if not math.isfinite(z):
                raise ValueError(
                    f"SCHEDULER_MANIFEST: {p} line {line}: {z_column} {row[z_column]!r} "
                    "is not a number"
                )
            if not row["scan_id"]:
                raise ValueError(f"SCHEDULER_MANIFEST: {p} line {line}: empty scan_id")
            out[image_id] = (row["scan_id"], z)
    return out
