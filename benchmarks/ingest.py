"""``slicerank bench ingest``: synth and ingest throughput against the bare work.

The baseline is the least any ingester must do: read every file of the same DICOM
cohort with ``pydicom.dcmread(...).pixel_array`` and write one 8-bit PNG per frame with
Pillow at the same compression level. Ingest and baseline run alternately, twice each,
and the faster run of each counts, because the machine may be shared.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cmr_ingest.synth import PNG_COMPRESS_LEVEL, TRUTH_NAME, generate_cohort

#: Targets from the issue.
INGEST_RATIO_TARGET = 1.5
SYNTH_300_TARGET_S = 60.0


def bare_read_write(files: list[Path], out: Path, level: int = PNG_COMPRESS_LEVEL) -> int:
    """Read each file with pydicom and write its frames as PNGs with Pillow; returns frames."""
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, f in enumerate(files):
        arr = pydicom.dcmread(f).pixel_array
        frames = arr if arr.ndim == 3 else arr[None]
        for k, frame in enumerate(frames):
            # The cheapest 12-bit → 8-bit mapping; ingest's windowing is part of its cost.
            Image.fromarray((frame >> 4).astype(np.uint8)).save(
                out / f"{i}_{k}.png", compress_level=level
            )
            n += 1
    return n


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_bench(n_scans: int = 300, *, seed: int = 0, workdir: str | None = None) -> dict[str, Any]:
    """Run the benchmark on a cohort of ``n_scans`` scans; returns the numbers."""
    from cmr_ingest.dicom_io import walk_files
    from cmr_ingest.ingest import ingest

    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="slicerank-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        for sub in ("png", "dicom", "ingested", "bare"):
            shutil.rmtree(base / sub, ignore_errors=True)
        t, c = time.perf_counter(), _cpu_seconds()
        manifest = generate_cohort(n_scans, base / "png", seed=seed, progress=True)
        synth_png_s = time.perf_counter() - t
        synth_png_cpu = _cpu_seconds() - c
        n_png = sum(1 for _ in manifest.open()) - 1

        t = time.perf_counter()
        dicom = generate_cohort(n_scans, base / "dicom", seed=seed, dicom=True, progress=True)
        synth_dicom_s = time.perf_counter() - t
        files = walk_files(dicom, exclude={dicom / TRUTH_NAME})

        ingest_runs, bare_runs, ingest_cpu, bare_cpu = [], [], [], []
        report = None
        for _ in range(2):
            shutil.rmtree(base / "ingested", ignore_errors=True)
            t, c = time.perf_counter(), _cpu_seconds()
            report = ingest(dicom, base / "ingested", salt="bench-salt-not-secret", progress=True)
            ingest_runs.append(time.perf_counter() - t)
            ingest_cpu.append(_cpu_seconds() - c)
            shutil.rmtree(base / "bare", ignore_errors=True)
            t, c = time.perf_counter(), _cpu_seconds()
            n_bare = bare_read_write(files, base / "bare")
            bare_runs.append(time.perf_counter() - t)
            bare_cpu.append(_cpu_seconds() - c)
        assert report is not None
        ingest_s, bare_s = min(ingest_runs), min(bare_runs)
        slices = report.slices_written
        return {
            "scans": n_scans,
            "cpus": os.cpu_count(),
            "synth_png_slices": n_png,
            "synth_png_seconds": round(synth_png_s, 2),
            "synth_png_slices_per_s": round(n_png / synth_png_s, 1),
            "synth_png_seconds_per_300_scans": round(synth_png_s * 300 / n_scans, 1),
            "synth_target_met": synth_png_s * 300 / n_scans < SYNTH_300_TARGET_S,
            # CPU seconds over the CPU count: the wall time on an otherwise idle machine.
            "synth_png_cpu_seconds": round(synth_png_cpu, 2),
            "synth_png_idle_estimate_per_300_scans": round(
                synth_png_cpu / (os.cpu_count() or 1) * 300 / n_scans, 1
            ),
            "synth_dicom_seconds": round(synth_dicom_s, 2),
            "dicom_files": len(files),
            "ingest_slices": slices,
            "ingest_seconds": round(ingest_s, 2),
            "ingest_slices_per_s": round(slices / ingest_s, 1),
            "bare_frames": n_bare,
            "bare_seconds": round(bare_s, 2),
            "ingest_over_bare": round(ingest_s / bare_s, 3),
            "ingest_target_met": ingest_s / bare_s <= INGEST_RATIO_TARGET,
            "ingest_over_bare_cpu": round(min(ingest_cpu) / min(bare_cpu), 3),
            "ingest_runs_s": [round(x, 2) for x in ingest_runs],
            "bare_runs_s": [round(x, 2) for x in bare_runs],
        }
    finally:
        if not workdir:
            shutil.rmtree(base, ignore_errors=True)


#: Overlays drawn for the text-check benchmark: (text, corner), as scanners and viewers write.
OVERLAYS = (
    ("DOE^JANE 19700101", "top-left"),
    ("ID 123456", "bottom-left"),
    ("ST. ELSEWHERE HOSP", "top-right"),
)


def run_text_check_bench(
    n_scans: int = 40, *, seed: int = 5, workdir: str | None = None
) -> dict[str, Any]:
    """The opt-in pixel text check on a synthetic PNG cohort: false alarms on the clean slices,
    and detections once an overlay (:data:`OVERLAYS`, drawn at full brightness with PIL's
    default font) is drawn into each of them; with the time per slice."""
    from PIL import ImageDraw
    from tqdm import tqdm

    from cmr_ingest.burned_in import text_near_borders

    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="slicerank-textbench-"))
    try:
        manifest = generate_cohort(n_scans, base / "png", seed=seed, progress=True)
        pngs = sorted(manifest.parent.rglob("*.png"))
        false_alarms, detected, missed, seconds = 0, 0, [], 0.0
        for i, path in enumerate(tqdm(pngs, desc="text check", unit="slice")):
            img = Image.open(path).convert("L")
            t = time.perf_counter()
            false_alarms += text_near_borders(np.asarray(img)) is not None
            seconds += time.perf_counter() - t
            text, corner = OVERLAYS[i % len(OVERLAYS)]
            x = 4 if corner.endswith("left") else img.width - 6 * len(text) - 4
            y = 4 if corner.startswith("top") else img.height - 14
            ImageDraw.Draw(img).text((x, y), text, fill=255)
            if text_near_borders(np.asarray(img)) is not None:
                detected += 1
            else:
                missed.append(f"{path.name} ({corner})")
        n = len(pngs)
        real_frames, real_alarms = real_sample_false_alarms()
        return {
            "scans": n_scans,
            "slices": n,
            "false_alarms": false_alarms,
            "with_overlay_detected": detected,
            "with_overlay_missed": missed[:20],
            "ms_per_slice": round(seconds / max(n, 1) * 1000, 2),
            "real_sample_frames": real_frames,
            "real_sample_false_alarms": real_alarms,
        }
    finally:
        if not workdir:
            shutil.rmtree(base, ignore_errors=True)


def real_sample_false_alarms() -> tuple[int, list[str]]:
    """The text check on the real MR and CT frames among pydicom's test files (grayscale, at
    least 32 px, windowed as ingest windows a stack without a header window): how many frames,
    and those it flags (none carries text)."""
    import warnings

    import pydicom

    from cmr_ingest import pixels
    from cmr_ingest.burned_in import text_near_borders

    frames, alarms = 0, []
    # The files pydicom ships (its test-data helper would try to download the rest).
    shipped = Path(pydicom.__file__).parent / "data" / "test_files"
    for path in sorted(p for p in shipped.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
                if ds.get("Modality") not in ("MR", "CT") or int(ds.get("SamplesPerPixel", 1)) != 1:
                    continue
                arr = ds.pixel_array
        except Exception:  # noqa: BLE001 - undecodable samples (no plugin) are not counted
            continue
        for frame in (arr if arr.ndim == 3 else arr[None])[:50]:
            center, width = pixels.percentile_window(frame.astype(np.float32).reshape(-1))
            png = pixels.rescale_window_to_uint8(frame.astype(np.float32), 1.0, 0.0, center, width)
            if min(png.shape) < 32:
                continue
            frames += 1
            if text_near_borders(png):
                alarms.append(path.name)
    return frames, alarms


def main(args) -> int:
    """Handler of ``slicerank bench ingest``."""
    if args.text_check:
        result = run_text_check_bench(args.scans, seed=args.seed, workdir=args.workdir)
    else:
        result = run_bench(args.scans, seed=args.seed, workdir=args.workdir)
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        from slicerank_base.jsonout import write_json

        write_json(args.json, result)
    return 0
