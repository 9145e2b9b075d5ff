"""The manifest of a media root: one CSV row per slice image (see docs/INTERFACES.md).

Columns: ``image_id``, ``scan_id``, ``slice_index`` (0 = most basal in its stack),
``n_slices``, ``path`` (relative to the media root), ``position`` (0 basal .. 1 apical,
synthetic data only) and ``true_class`` (synthetic data only; empty when unknown).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from slicerank_base import CLASSES

#: Column order of ``manifest.csv``.
COLUMNS: tuple[str, ...] = (
    "image_id",
    "scan_id",
    "slice_index",
    "n_slices",
    "path",
    "position",
    "true_class",
)

#: File name of the manifest inside a media root.
MANIFEST_NAME = "manifest.csv"


class ManifestError(ValueError):
    """A manifest row is malformed; the message names the file, the line and the column."""


def write_manifest(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the :data:`COLUMNS`) to ``path``; returns the path.

    ``position`` is written with 6 decimals; ``None`` becomes an empty cell. Written to a
    temporary file and renamed, so a reader never sees half a manifest.
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            out = {k: row.get(k) for k in COLUMNS}
            pos = out["position"]
            out["position"] = "" if pos is None else f"{float(pos):.6f}"
            out["true_class"] = out["true_class"] or ""
            writer.writerow(out)
    os.replace(tmp, target)
    return target


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a manifest into typed dicts (``slice_index``/``n_slices`` int, ``position``
    float or None, ``true_class`` str or None).

    ``path`` may be the CSV itself or the media root holding it. Raises
    :class:`ManifestError` naming the line for a missing column or a bad value.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    rows: list[dict[str, Any]] = []
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS[:5] if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{p}: missing column(s) {', '.join(missing)}")
        for line, raw in enumerate(reader, start=2):
            try:
                row: dict[str, Any] = dict(raw)
                row["slice_index"] = int(raw["slice_index"])
                row["n_slices"] = int(raw["n_slices"])
                pos = raw.get("position") or ""
                row["position"] = float(pos) if pos else None
                cls = raw.get("true_class") or ""
                if cls and cls not in CLASSES:
                    raise ValueError(f"true_class {cls!r} is not one of {CLASSES}")
                row["true_class"] = cls or None
            except (TypeError, ValueError) as exc:
                raise ManifestError(f"{p}, line {line}: {exc}") from exc
            rows.append(row)
    return rows
