"""Train/validation/test splits grouped by scan, and each image's place in its stack.

Slices of one scan look alike (same anatomy, coil, windowing): splitting by image lets a
model see a test scan's neighbours while training, which flatters the stored test metrics.
:func:`grouped_stratified_split` keeps every scan in exactly one split, and keeps each
split's class mix close to the whole set's.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slicerank_base import CLASSES


def read_manifest_stacks(media_root: Path) -> dict[str, tuple[str, int]]:
    """``image_id → (scan_id, slice_index)`` from ``<media_root>/manifest.csv``.

    Rows without a scan id or a whole-number slice index are left out (their images are then
    treated as scans of their own). A missing manifest gives an empty mapping.
    """
    manifest = Path(media_root) / "manifest.csv"
    if not manifest.is_file():
        return {}
    out: dict[str, tuple[str, int]] = {}
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh):
            scan, index = (row.get("scan_id") or "").strip(), (row.get("slice_index") or "").strip()
            if row.get("image_id") and scan and index.lstrip("-").isdigit():
                out[row["image_id"]] = (scan, int(index))
    return out


#: Share of a cohort's scans held out for validation when both arms of a comparison share
#: one split (:func:`validation_scans`); every other labelled slice trains.
VALIDATION_SHARE = 0.1


def validation_scans(scan_ids, seed: int, share: float = VALIDATION_SHARE) -> tuple[str, ...]:
    """The scans held out for validation, drawn once per cohort before any label exists.

    Chosen from the scan ids alone (no label, no class), so every arm of a comparison can use
    the same split: ``max(1, round(share * scans))`` scans, a seeded draw, sorted.
    """
    names = sorted({str(s) for s in scan_ids})
    if len(names) < 2:
        raise ValueError(f"{len(names)} scan(s): need at least 2 to hold one out for validation")
    if not 0 < share < 1:
        raise ValueError(f"validation share must lie strictly between 0 and 1, got {share}")
    k = min(len(names) - 1, max(1, round(share * len(names))))
    pick = np.random.default_rng([seed, 41]).permutation(len(names))[:k]
    return tuple(sorted(names[i] for i in pick))


def split_by_validation_scans(groups, val_scans) -> tuple[list[int], list[int], list[int]]:
    """Train/validation/test indices when ``val_scans`` are the validation set: every other
    image trains, none is held out as a test set. Raises ``ValueError`` when either is empty."""
    held = set(val_scans)
    val = [k for k, g in enumerate(groups) if g in held]
    train = [k for k, g in enumerate(groups) if g not in held]
    if not val or not train:
        raise ValueError(
            f"validation scans {sorted(held)[:3]}...: leave {len(train)} training and "
            f"{len(val)} validation images; both must be non-empty"
        )
    return train, val, []


def grouped_stratified_split(
    labels: Sequence[str],
    groups: Sequence[str],
    fractions: tuple[float, float, float],
    seed: int,
) -> tuple[list[int], list[int], list[int]]:
    """Indices of train/validation/test with every group (scan) in exactly one split.

    Groups are dealt in a seeded random order, the ones holding the rarest class first; each
    goes to the split that most lacks its classes relative to ``fractions`` (a greedy
    multi-label stratification, after Sechidis et al. 2011). Validation and test each get at
    least one group when the fractions ask for them. Deterministic for a seed; raises
    ``ValueError`` when training or validation would be empty, or on mismatched lengths.
    """
    labels, groups = list(labels), list(groups)
    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} scan ids")
    names = sorted(set(groups))
    if len(names) < 2 or (fractions[2] > 0 and len(names) < 3):
        raise ValueError(
            f"{len(names)} scan(s) are too few for a {fractions} split by scan "
            "(each split needs its own scans)"
        )
    k = len(CLASSES)
    counts = np.zeros((len(names), k))
    where = {g: i for i, g in enumerate(names)}
    for lab, g in zip(labels, groups, strict=True):
        counts[where[g], CLASSES.index(lab)] += 1
    total = counts.sum(0)
    rarity = 1.0 / np.maximum(total, 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    # Scans holding the rarest class are placed first, while every split still has room.
    order = sorted(order, key=lambda i: -float((counts[i] * rarity).max()))
    want = np.outer(np.asarray(fractions, float), total)  # split × class
    have = np.zeros_like(want)
    assign = np.full(len(names), -1)
    # Validation and test each get one scan first (a tiny set must still have both).
    seeded = [s for s in (1, 2) if fractions[s] > 0]
    for s, i in zip(seeded, order[: len(seeded)], strict=False):
        assign[i] = s
        have[s] += counts[i]
    for i in order[len(seeded) :]:
        need = np.clip(want - have, 0, None)
        gain = (np.minimum(need, counts[i]) * rarity).sum(1) - 1e-9 * np.arange(3)
        gain[np.asarray(fractions) <= 0] = -np.inf
        s = int(np.argmax(gain)) if gain.max() > 0 else int(np.argmax(want.sum(1) - have.sum(1)))
        assign[i] = s
        have[s] += counts[i]
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for idx, g in enumerate(groups):
        parts[int(assign[where[g]])].append(idx)
    if not parts[0] or not parts[1]:
        raise ValueError(
            f"{len(labels)} labelled images in {len(names)} scans are too few for a "
            f"{fractions} split (training and validation sets must both be non-empty)"
        )
    return parts
