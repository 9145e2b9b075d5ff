"""Synthetic cohorts of short-axis LGE stacks: a PNG media root or DICOM series.

Each scan is planned from its own seeded generator (``seed``, scan index), so a cohort is
the same whichever mode writes it and however many worker processes draw it. The stack of
8–16 slices runs from above the base to beyond the apex with about 20% 'too_basal', 73%
'lv' and 7% 'too_apical' slices overall (the study's mix).

* PNG mode writes a media root: ``manifest.csv`` plus ``images/<image_id>.png``.
* DICOM mode writes MR series with fake patient identifiers (``ST*/SE*/IM*``, some files
  with ``.dcm``, some without, file names not in slice order, half the stacks acquired
  apex → base, every fourth study with an extra axial localiser) plus the ground-truth
  sidecar :data:`TRUTH_NAME` keyed by SOPInstanceUID, which ``ingest`` joins into its
  manifest and which holds no patient identifier.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cmr_ingest import phantom
from cmr_ingest.fakephi import FakePatient, fake_patient
from cmr_ingest.manifest import MANIFEST_NAME, write_manifest
from cmr_ingest.pixels import window_to_uint8

#: Ground-truth sidecar written beside synthetic DICOM (see :func:`generate_cohort`).
TRUTH_NAME = "synth_truth.csv"
#: Columns of the sidecar.
TRUTH_COLUMNS = ("sop_instance_uid", "frame", "scan", "slice_index", "position", "true_class")
#: zlib level for PNGs: 1 is several times faster than Pillow's default and barely larger.
PNG_COMPRESS_LEVEL = 1

_SLICES_RANGE = (8, 16)


@dataclass(frozen=True)
class ScanPlan:
    """Everything needed to draw and write one synthetic scan."""

    index: int
    anatomy: phantom.Anatomy
    view: phantom.View
    spacing_mm: float
    us: tuple[float, ...]  #: normalised long-axis coordinate per slice, base → apex
    scale: float  #: stored value of signal 1.0 (12-bit)
    window: tuple[float, float]  #: (center, width) in stored values
    long_axis: tuple[float, float, float]  #: base → apex unit vector, patient LPS
    annulus_lps: tuple[float, float, float]  #: LV axis at the mitral annulus, patient LPS
    apex_first: bool  #: acquired apex → base (InstanceNumber order)

    @property
    def positions(self) -> list[float]:
        """Ground-truth position (0 basal .. 1 apical) of each slice."""
        return [phantom.position(u) for u in self.us]

    @property
    def classes(self) -> list[str]:
        """Ground-truth SCMR class of each slice."""
        return [phantom.true_class(u) for u in self.us]


def scan_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one scan (independent of worker and mode)."""
    return np.random.default_rng([seed, index, stream])


def plan_scan(seed: int, index: int) -> ScanPlan:
    """Draw the anatomy, imaging and slice placement of scan ``index`` of cohort ``seed``."""
    rng = scan_rng(seed, index)
    anatomy = phantom.sample_anatomy(rng)
    n_basal = int(rng.choice([1, 2, 3, 4], p=[0.14, 0.37, 0.36, 0.13]))
    n_apical = int(rng.choice([0, 1, 2], p=[0.29, 0.5, 0.21]))
    for _ in range(100):
        spacing = float(rng.uniform(8.0, 11.0))
        du = spacing / anatomy.lv_length_mm
        # Exactly n_basal planes fall above u = 0; the phase places the first LV plane.
        u0 = -(n_basal - rng.random()) * du
        n_lv = int(math.floor((1.0 - u0) / du)) + 1 - n_basal
        n = n_basal + n_lv + n_apical
        if _SLICES_RANGE[0] <= n <= _SLICES_RANGE[1]:
            break
    us = tuple(float(u0 + k * du) for k in range(n))
    view = phantom.sample_view(rng, spacing)
    scale = float(rng.uniform(2600.0, 3600.0))
    blood = anatomy.blood * scale
    window = (round(blood * rng.uniform(0.48, 0.56)), round(blood * rng.uniform(1.05, 1.25)))
    axis = np.asarray(phantom.LONG_AXIS_LPS) + rng.normal(0.0, 0.12, 3)
    axis /= np.linalg.norm(axis)
    annulus = (rng.uniform(-5, 25), rng.uniform(-40, -10), rng.uniform(-40, 20))
    return ScanPlan(
        index=index,
        anatomy=anatomy,
        view=view,
        spacing_mm=spacing,
        us=us,
        scale=scale,
        window=(float(window[0]), float(window[1])),
        long_axis=tuple(float(v) for v in axis),
        annulus_lps=tuple(float(v) for v in annulus),
        apex_first=bool(rng.random() < 0.5),
    )


def slice_perception(n_scans: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """``image_id → (apparent position, reading difficulty)`` for every slice of the PNG
    cohort ``generate_cohort(n_scans, seed=seed)`` writes: what its rendered image shows
    (:func:`phantom.apparent_u`, on the position axis) and how hard its scan is to read
    (:func:`phantom.reading_difficulty`). Cheap: plans the scans, renders nothing."""
    out: dict[str, tuple[float, float]] = {}
    for index in range(n_scans):
        plan = plan_scan(seed, index)
        difficulty = phantom.reading_difficulty(plan.anatomy, plan.view)
        for k, u in enumerate(plan.us):
            apparent = phantom.position(phantom.apparent_u(plan.anatomy, plan.view, u))
            out[_synth_ids(seed, index, k)[1]] = (apparent, difficulty)
    return out


def render_scan(plan: ScanPlan, seed: int) -> list[np.ndarray]:
    """12-bit stored values (uint16) of every slice of ``plan``, base → apex."""
    rng = scan_rng(seed, plan.index, stream=1)
    out = []
    for u in plan.us:
        img = phantom.render_slice(plan.anatomy, u, plan.view, rng)
        out.append(np.clip(np.rint(img * plan.scale), 0, 4095).astype(np.uint16))
    return out


def slice_geometry(plan: ScanPlan) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Row direction, column direction and ImagePositionPatient of each slice (LPS, mm).

    The in-plane axes follow the anatomy drawn by :func:`phantom.render_slice`: image right
    is towards the patient's left, image up is anterior, both rotated by the view's
    in-plane rotation, so the DICOM geometry and the pixels agree.
    """
    n = np.asarray(plan.long_axis)
    ant = np.array([0.0, -1.0, 0.0]) - n * -n[1]
    ey = ant / np.linalg.norm(ant)
    left = np.array([1.0, 0.0, 0.0]) - n * n[0] - ey * ey[0]
    ex = left / np.linalg.norm(left)
    v = plan.view
    c, s = math.cos(v.rotation), math.sin(v.rotation)
    d_dx = c * ex - s * ey  # dP/dX (image right)
    d_dy = s * ex + c * ey  # dP/dY (image up)
    row_dir, col_dir = d_dx, -d_dy
    half = v.matrix / 2 - 0.5
    x0, y0 = -half * v.pixel_mm, half * v.pixel_mm  # pixel (0, 0) in image-plane mm
    ox, oy = v.offset_mm
    origin_offset = (x0 - ox) * d_dx + (y0 - oy) * d_dy
    annulus = np.asarray(plan.annulus_lps)
    ipps = [annulus + plan.anatomy.z_of(u) * n + origin_offset for u in plan.us]
    return row_dir, col_dir, ipps


def _synth_ids(seed: int, index: int, k: int) -> tuple[str, str]:
    scan = hashlib.sha256(f"synth-scan:{seed}:{index}".encode()).hexdigest()[:12]
    image = hashlib.sha256(f"synth-image:{seed}:{index}:{k}".encode()).hexdigest()[:16]
    return scan, image


def _write_png_scan(job: tuple[int, int, str]) -> list[dict[str, Any]]:
    seed, index, out_dir = job
    plan = plan_scan(seed, index)
    rows = []
    c, w = plan.window
    for k, (stored, pos, cls) in enumerate(
        zip(render_scan(plan, seed), plan.positions, plan.classes, strict=True)
    ):
        scan_id, image_id = _synth_ids(seed, index, k)
        rel = f"images/{image_id}.png"
        Image.fromarray(window_to_uint8(stored, c, w)).save(
            Path(out_dir) / rel, compress_level=PNG_COMPRESS_LEVEL
        )
        rows.append(
            {
                "image_id": image_id,
                "scan_id": scan_id,
                "slice_index": k,
                "n_slices": len(plan.us),
                "path": rel,
                "position": pos,
                "true_class": cls,
            }
        )
    return rows


def _write_dicom_scan(job: tuple[int, int, str]) -> list[dict[str, Any]]:
    from cmr_ingest.synth_dicom import write_scan_dicom

    seed, index, out_dir = job
    plan = plan_scan(seed, index)
    patient = fake_patient(scan_rng(seed, index, stream=2))
    return write_scan_dicom(plan, render_scan(plan, seed), patient, Path(out_dir), seed)


def cohort_patients(n_scans: int, seed: int = 0) -> list[FakePatient]:
    """The fake patients of a DICOM cohort (for tests that search outputs for them)."""
    return [fake_patient(scan_rng(seed, i, stream=2)) for i in range(n_scans)]


def generate_cohort(
    n_scans: int,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    dicom: bool = False,
    workers: int | None = None,
    progress: bool = False,
    on_scan: Callable[[int], None] | None = None,
) -> Path:
    """Write a synthetic cohort of ``n_scans`` scans under ``out_dir``.

    Returns the path of ``manifest.csv`` (PNG mode) or of the DICOM folder (``dicom=True``;
    it holds :data:`TRUTH_NAME`). ``workers`` processes draw scans in parallel (default: one
    per CPU); ``progress`` shows a tqdm bar; ``on_scan`` is called with each finished scan's
    index. Raises ``ValueError`` for ``n_scans < 1``.
    """
    if n_scans < 1:
        raise ValueError(f"n_scans must be at least 1, got {n_scans}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not dicom:
        (out / "images").mkdir(exist_ok=True)
    jobs = [(seed, i, str(out)) for i in range(n_scans)]
    func = _write_dicom_scan if dicom else _write_png_scan
    workers = workers or min(os.cpu_count() or 1, n_scans)

    from tqdm import tqdm

    bar = tqdm(total=n_scans, unit="scan", desc="synth", disable=not progress)
    results: list[list[dict[str, Any]]] = []
    try:
        if workers <= 1:
            mapped = map(func, jobs)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            mapped = pool.map(func, jobs, chunksize=max(1, min(8, n_scans // (4 * workers))))
        for i, rows in enumerate(mapped):
            results.append(rows)
            bar.update(1)
            if on_scan is not None:
                on_scan(i)
    finally:
        bar.close()
        if workers > 1 and pool is not None:
            pool.shutdown()
    rows = [r for scan in results for r in scan]
    if dicom:
        truth = out / TRUTH_NAME
        with truth.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=TRUTH_COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, "position": f"{r['position']:.6f}"})
        return out
    return write_manifest(out / MANIFEST_NAME, rows)
