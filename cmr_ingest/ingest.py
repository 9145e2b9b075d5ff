"""DICOM folders → an anonymised media root: 8-bit PNG slices + ``manifest.csv``, and a report
beside it.

Two passes. The first reads every file's header (pixels deferred), groups frames by
series, keeps the short-axis stacks and orders each base → apex along its normal. The
second decodes each kept stack, applies the modality and VOI transforms, and writes one
PNG per slice named by its salted-hash ``image_id``. Nothing identifying is written: ids
are HMACs of UIDs, PNGs carry no metadata, the report names source files by hashed ids
(:func:`cmr_ingest.ids.file_id`; ``slicerank ingest SRC --locate ID`` finds them) and its
messages have every identifying header value seen in the run, and every date, redacted. The
report goes outside the media root, which Label Studio serves to every project member. No bad
file stops the run; each is listed in the report with its reason.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cmr_ingest import dicom_io, geometry, ids, pixels
from cmr_ingest.burned_in import text_near_borders
from cmr_ingest.errors import REASONS, IngestError, IngestInputError
from cmr_ingest.manifest import MANIFEST_NAME, write_manifest
from cmr_ingest.settings import MIN_SALT_LENGTH

log = logging.getLogger(__name__)

#: Names of the report files (``<media root>-ingest_report.json`` beside the media root by
#: default; earlier versions wrote these names inside it, and ingest removes those).
REPORT_JSON = "ingest_report.json"
REPORT_TEXT = "ingest_report.txt"


def report_paths(out_dir: Path, report_dir: Path | None = None) -> tuple[Path, Path]:
    """Where the report of an ingest into ``out_dir`` goes: ``report_dir`` (default: the media
    root's parent) / ``<media root name>-ingest_report.{json,txt}``.
    :class:`IngestInputError` when that lies inside the media root: Label Studio would serve
    it."""
    out = Path(os.path.realpath(out_dir))
    folder = Path(os.path.realpath(report_dir)) if report_dir is not None else out.parent
    if folder == out or folder.is_relative_to(out):
        raise IngestInputError(
            f"the ingest report folder {report_dir} is inside the media root {out_dir}, which "
            "Label Studio serves to every project member: choose a folder outside it"
        )
    stem = f"{out.name}-"
    return folder / (stem + REPORT_JSON), folder / (stem + REPORT_TEXT)


def locate_files(src: str | os.PathLike[str], salt: str, wanted: set[str]) -> dict[str, Path]:
    """The files under ``src`` whose report ids (:func:`cmr_ingest.ids.file_id`) are in
    ``wanted``: how an operator finds a reported file again."""
    src = Path(src)
    root = src if src.is_dir() else src.parent
    found = {}
    for path in dicom_io.walk_files(src):
        fid = ids.file_id(salt, os.path.relpath(path, root))
        if fid in wanted:
            found[fid] = path
    return found


#: Ground-truth sidecar that ``synth --dicom`` writes; joined automatically when present.
TRUTH_NAME = "synth_truth.csv"


@dataclass
class IngestReport:
    """What an ingest run did: counts, every bad file and skipped series, every stack."""

    files: int = 0
    slices_written: int = 0
    bad_files: list[dict[str, str]] = field(default_factory=list)
    skipped_series: list[dict[str, Any]] = field(default_factory=list)
    stacks: list[dict[str, Any]] = field(default_factory=list)
    truth: dict[str, Any] | None = None
    seconds: float = 0.0
    #: Slices flagged for burned-in text but kept (``include_burned_in``), by reason code.
    burned_in_kept: dict[str, int] = field(default_factory=dict)
    #: PNGs in ``images/`` the manifest does not list (an earlier run's), and whether
    #: ``clean`` removed them.
    stale_images: list[str] = field(default_factory=list)
    stale_removed: bool = False

    def counts(self) -> dict[str, Any]:
        """Totals and the number of files per reason."""
        reasons = Counter(b["reason"] for b in self.bad_files)
        for s in self.skipped_series:
            reasons[s["reason"]] += s["files"]
        return {
            "files": self.files,
            "slices_written": self.slices_written,
            "stacks_kept": len(self.stacks),
            "series_skipped": len(self.skipped_series),
            "files_skipped_with_series": sum(s["files"] for s in self.skipped_series),
            "bad_files": len(self.bad_files),
            "by_reason": dict(sorted(reasons.items())),
            "burned_in_excluded": reasons.get("burned_in_annotation", 0)
            + reasons.get("burned_in_text", 0),
            "burned_in_kept": sum(self.burned_in_kept.values()),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the content of ``ingest_report.json``)."""
        return {
            "counts": self.counts(),
            "reasons": {k: REASONS[k] for k in self.counts()["by_reason"] if k in REASONS},
            "bad_files": self.bad_files,
            "skipped_series": self.skipped_series,
            "stacks": self.stacks,
            "truth": self.truth,
            "stale_images": {"count": len(self.stale_images), "removed": self.stale_removed},
            "supported_transfer_syntaxes": [u.name for u in dicom_io.supported_transfer_syntaxes()],
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        """A few readable lines: totals, then each problem with its reason."""
        c = self.counts()
        lines = [
            f"ingested {c['slices_written']} slices in {c['stacks_kept']} short-axis stacks "
            f"from {c['files']} files in {self.seconds:.1f} s",
        ]
        if c["series_skipped"]:
            lines.append(
                f"skipped {c['series_skipped']} series ({c['files_skipped_with_series']} files)"
            )
        if self.bad_files:
            lines.append(f"{len(self.bad_files)} bad files:")
        for reason, n in c["by_reason"].items():
            lines.append(f"  {reason}: {n} — {REASONS.get(reason, '')}")
        for b in self.bad_files[:50]:
            lines.append(f"  {b['file']}: {b['reason']}: {b['detail']}")
        if len(self.bad_files) > 50:
            lines.append(f"  … and {len(self.bad_files) - 50} more (see the JSON report)")
        for s in self.skipped_series:
            lines.append(
                f"  series {s['series']} ({s['files']} files): {s['reason']}: {s['detail']}"
            )
        if c["burned_in_excluded"]:
            lines.append(
                f"excluded {c['burned_in_excluded']} files/slices that may show burned-in text "
                "(patient names, dates, ids drawn into the pixels); --include-burned-in keeps them"
            )
        if c["burned_in_kept"]:
            lines.append(
                f"WARNING: kept {c['burned_in_kept']} files/slices flagged for burned-in text "
                "(--include-burned-in): check them before sharing the media root"
            )
        if self.truth:
            lines.append(f"ground truth joined for {self.truth['matched']} slices")
        if self.stale_images and self.stale_removed:
            lines.append(f"removed {len(self.stale_images)} PNGs of an earlier run (--clean)")
        elif self.stale_images:
            lines.append(
                f"WARNING: images/ holds {len(self.stale_images)} PNGs of an earlier run that "
                "manifest.csv does not list; --clean removes them (or ingest into a new folder)"
            )
        return "\n".join(lines)


#: Dates in any common order and separator (1970-01-02, 02.01.1970, 19700102): a date in a
#: message is redacted whether or not a header said it (birth dates hide in folder names).
_DATE = re.compile(
    r"(?<!\d)(?:(?:19|20)\d\d([-./_ ]?)[01]?\d\1[0-3]?\d|[0-3]?\d([-./_ ])[01]?\d\2(?:19|20)\d\d)(?!\d)"
)


class _Redactor:
    """Replaces every identifying value seen in the run, and every date, by ``[redacted]``.

    Values of three or more characters are matched anywhere (case-insensitive); shorter ones
    (a name "LI", an initial) only as whole words, so "slice" keeps its "li".
    """

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self._rx: re.Pattern[str] | None = None

    def add(self, tokens: set[str]) -> None:
        if not tokens <= self.tokens:
            self.tokens |= tokens
            self._rx = None

    def __call__(self, text: str) -> str:
        if self.tokens and self._rx is None:
            alts = [
                re.escape(t) if len(t) >= 3 else rf"(?<![^\W_]){re.escape(t)}(?![^\W_])"
                for t in sorted(self.tokens, key=len, reverse=True)
            ]
            self._rx = re.compile("|".join(alts), re.IGNORECASE)
        if self._rx is not None:
            text = self._rx.sub("[redacted]", text)
        return _DATE.sub("[redacted]", text)


#: Columns a ground-truth CSV must have (``frame`` is optional, 0 when absent).
TRUTH_COLUMNS = ("sop_instance_uid", "position", "true_class")


def _read_truth(path: Path) -> dict[tuple[str, int], tuple[float, str]]:
    """The ground truth keyed by (SOPInstanceUID, frame); :class:`IngestInputError` naming the
    file, the line and what to fix when it cannot be read."""
    if not path.is_file():
        raise IngestInputError(f"--truth {path}: no such file")
    out: dict[tuple[str, int], tuple[float, str]] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in TRUTH_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise IngestInputError(
                f"--truth {path} lacks column(s) {', '.join(missing)}; its header must be "
                f"sop_instance_uid,frame,position,true_class (frame optional), found "
                f"{','.join(reader.fieldnames or []) or 'no header'}"
            )
        for line, r in enumerate(reader, start=2):
            try:
                out[(r["sop_instance_uid"], int(r.get("frame") or 0))] = (
                    float(r["position"]),
                    r["true_class"],
                )
            except (TypeError, ValueError):
                raise IngestInputError(
                    f"--truth {path} line {line}: frame must be a whole number and position a "
                    f"number (got frame={r.get('frame')!r}, position={r.get('position')!r})"
                ) from None
    return out


def _stale_images(out: Path, rows: list[dict[str, Any]], *, clean: bool) -> list[str]:
    """PNGs under ``out/images`` that the new manifest does not list (left by an earlier run
    into the same folder); removed when ``clean``. Returns their names."""
    listed = {Path(r["path"]).name for r in rows}
    stale = sorted(p.name for p in (out / "images").glob("*.png") if p.name not in listed)
    if clean:
        for name in stale:
            (out / "images" / name).unlink()
    return stale


def _stack_key(h: dicom_io.SliceHeader) -> str:
    # A file without SeriesInstanceUID is invalid DICOM; group it with its folder so it
    # is still ordered with its neighbours rather than lost.
    return h.series_uid or f"no-series:{h.path.parent}"


def _split_consistent(
    headers: list[dicom_io.SliceHeader],
) -> tuple[list[dicom_io.SliceHeader], list[dicom_io.SliceHeader]]:
    """The largest group of frames sharing orientation and matrix, and the rest."""
    groups: list[list[dicom_io.SliceHeader]] = []
    for h in headers:
        normal = geometry.slice_normal(h.orientation) if h.orientation else None
        for g in groups:
            g0 = g[0]
            g_normal = geometry.slice_normal(g0.orientation) if g0.orientation else None
            same_geom = (normal is None and g_normal is None) or (
                normal is not None
                and g_normal is not None
                and geometry.same_orientation(normal, g_normal)
            )
            if same_geom and (h.rows, h.columns) == (g0.rows, g0.columns):
                g.append(h)
                break
        else:
            groups.append([h])
    groups.sort(key=len, reverse=True)
    return groups[0], [h for g in groups[1:] for h in g]


def ingest(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    salt: str,
    orientation_tolerance_deg: float = geometry.DEFAULT_TOLERANCE_DEG,
    any_orientation: bool = False,
    truth: str | os.PathLike[str] | None = None,
    png_compress_level: int = 1,
    include_burned_in: bool = False,
    check_pixels_for_text: bool = True,
    clean: bool = False,
    report_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> IngestReport:
    """Ingest every DICOM file under ``src`` into the media root ``out_dir``.

    Writes ``images/<image_id>.png`` and ``manifest.csv`` into it, and the report
    (:func:`report_paths`: ``report_dir``, default beside the media root) outside it; returns
    the report. ``salt`` keys the id hashes (see
    :mod:`cmr_ingest.ids`). Series whose normal is more than ``orientation_tolerance_deg``
    from the typical LV long axis are skipped unless ``any_orientation``. ``truth`` is a
    ground-truth CSV keyed by SOPInstanceUID (``synth --dicom`` writes one into ``src``,
    used when ``truth`` is None) whose ``position`` and ``true_class`` go into the manifest.
    Files whose header says their pixels may carry burned-in text (see
    :func:`cmr_ingest.burned_in.header_risk`) and, with ``check_pixels_for_text`` (the
    default), slices with text-like strokes in their margins are excluded and reported,
    unless ``include_burned_in`` (then they are written and counted as kept). PNGs already in
    ``out_dir/images`` that the new manifest does not list are reported, and removed when
    ``clean``. Raises :class:`IngestInputError` for a salt shorter than 8 characters, an
    unusable truth file or a report folder inside the media root, before anything is written.
    """
    t0 = time.perf_counter()
    if not isinstance(salt, str) or len(salt) < MIN_SALT_LENGTH:
        # The same rule as the command line: a short salt makes the ids guessable.
        raise IngestInputError(
            f"the id salt must be a secret of at least {MIN_SALT_LENGTH} characters (got "
            f"{len(salt) if isinstance(salt, str) else type(salt).__name__}); e.g. "
            "python3 -c 'import secrets; print(secrets.token_hex(16))'"
        )
    src, out = Path(src), Path(out_dir)
    if not src.exists():
        raise FileNotFoundError(f"ingest source {src} does not exist")
    report_json, report_text = report_paths(out, Path(report_dir) if report_dir else None)
    if truth is None and src.is_dir() and (src / TRUTH_NAME).is_file():
        truth = src / TRUTH_NAME
    truth_map = _read_truth(Path(truth)) if truth is not None else None
    (out / "images").mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    report = IngestReport()
    redact = _Redactor()
    root = src if src.is_dir() else src.parent
    files = dicom_io.walk_files(src, exclude={Path(truth)} if truth is not None else None)
    report.files = len(files)
    bad: list[tuple[Path, str, str]] = []

    # Pass 1: headers.
    series: dict[str, list[dicom_io.SliceHeader]] = defaultdict(list)
    seen: dict[tuple[str, int], str] = {}
    with dicom_io.quiet_pydicom():
        for path in tqdm(files, desc="ingest: headers", unit="file", disable=not progress):
            try:
                headers, phi = dicom_io.read_headers(path)
            except IngestError as exc:
                bad.append((path, exc.code, str(exc)))
                continue
            redact.add(phi)
            if headers[0].burned_in:
                if not include_burned_in:
                    bad.append((path, "burned_in_annotation", headers[0].burned_in))
                    continue
                report.burned_in_kept["burned_in_annotation"] = (
                    report.burned_in_kept.get("burned_in_annotation", 0) + 1
                )
            key = (headers[0].sop_uid, 0)
            if headers[0].sop_uid and key in seen:
                bad.append((path, "duplicate_instance", f"same SOPInstanceUID as {seen[key]}"))
                continue
            seen[key] = ids.file_id(salt, os.path.relpath(path, root))
            for h in headers:
                series[_stack_key(h)].append(h)

    # Group, filter and order.
    stacks = _plan_stacks(
        series,
        salt=salt,
        tolerance_deg=orientation_tolerance_deg,
        any_orientation=any_orientation,
        report=report,
        bad=bad,
    )

    # Pass 2: pixels → PNG, one stack at a time.
    rows: list[dict[str, Any]] = []
    matched = 0
    total = sum(len(k) for _, k, _ in stacks)
    bar = tqdm(total=total, desc="ingest: slices", unit="slice", disable=not progress)
    with dicom_io.quiet_pydicom():
        for sid, kept, info in stacks:
            written, window_source = _write_stack(
                kept, out, salt, png_compress_level, bad,
                text_check=check_pixels_for_text, include_burned_in=include_burned_in,
                kept_counts=report.burned_in_kept,
            )  # fmt: skip
            bar.update(len(kept))
            if not written:
                continue  # every file of it is already listed in bad_files
            info["n_slices"] = len(written)
            info["window"] = window_source
            report.stacks.append(info)
            for k, (h, image_id) in enumerate(written):
                pos, cls = None, None
                if truth_map is not None and (h.sop_uid, h.frame) in truth_map:
                    pos, cls = truth_map[(h.sop_uid, h.frame)]
                    matched += 1
                rows.append(
                    {
                        "image_id": image_id,
                        "scan_id": sid,
                        "slice_index": k,
                        "n_slices": len(written),
                        "path": f"images/{image_id}.png",
                        "position": pos,
                        "true_class": cls,
                    }
                )
    bar.close()
    write_manifest(out / MANIFEST_NAME, rows)
    report.slices_written = len(rows)
    report.stale_images = _stale_images(out, rows, clean=clean)
    report.stale_removed = clean
    if truth_map is not None:
        report.truth = {"file": Path(truth).name, "entries": len(truth_map), "matched": matched}
    for path, code, detail in bad:
        fid = ids.file_id(salt, os.path.relpath(path, root))
        report.bad_files.append({"file": fid, "reason": code, "detail": redact(detail)})
    report.seconds = time.perf_counter() - t0

    from slicerank_base.jsonout import write_json

    report_json.parent.mkdir(parents=True, exist_ok=True)
    write_json(report_json, report.to_dict())
    report_text.write_text(report.summary() + "\n")
    for stale in (out / REPORT_JSON, out / REPORT_TEXT):
        # Written by earlier versions inside the media root, where Label Studio serves it.
        if stale.is_file():
            stale.unlink()
            log.info("removed %s from the media root (the report now lives beside it)", stale)
    log.info("ingest: %d slices, %d stacks, %d bad files", len(rows), len(report.stacks), len(bad))
    return report


def _plan_stacks(
    series: dict[str, list[dicom_io.SliceHeader]],
    *,
    salt: str,
    tolerance_deg: float,
    any_orientation: bool,
    report: IngestReport,
    bad: list[tuple[Path, str, str]],
) -> list[tuple[str, list[dicom_io.SliceHeader], dict[str, Any]]]:
    """Split off inconsistent frames, drop non-short-axis series, order the rest base → apex.

    Returns (scan_id, ordered headers, stack info) per kept stack; what is dropped goes to
    ``bad`` (files) or ``report.skipped_series`` (whole series).
    """
    stacks: list[tuple[str, list[dicom_io.SliceHeader], dict[str, Any]]] = []
    for key, headers in series.items():
        sid = ids.scan_id(salt, key)
        kept, odd = _split_consistent(headers)
        for h in odd:
            bad.append(
                (
                    h.path,
                    "inconsistent_series",
                    "orientation or matrix differs from the other "
                    f"{len(kept)} slices of its series (kept those)",
                )
            )
        n_files = len({h.path for h in kept})
        info: dict[str, Any] = {"scan_id": sid, "notes": []}
        if kept[0].orientation is None or any(h.position is None for h in kept):
            if not any_orientation:
                report.skipped_series.append(
                    {
                        "series": sid,
                        "files": n_files,
                        "reason": "no_geometry",
                        "detail": REASONS["no_geometry"],
                    }
                )
                continue
            kept.sort(key=lambda h: (h.instance_number, h.frame))
            info.update(ordered_by="instance_number", angle_to_long_axis_deg=None, spacing_mm=None)
            info["notes"].append(
                "no patient geometry: ordered by InstanceNumber, direction unknown"
            )
        else:
            normal = geometry.slice_normal(kept[0].orientation)
            angle = geometry.angle_to_long_axis(normal)
            if not any_orientation and angle > tolerance_deg:
                report.skipped_series.append(
                    {
                        "series": sid,
                        "files": n_files,
                        "reason": "not_short_axis",
                        "detail": f"normal is {angle:.0f}° from the LV long axis "
                        f"(tolerance {tolerance_deg:g}°)",
                    }
                )
                continue
            order, dist = geometry.order_base_to_apex([h.position for h in kept], normal)
            kept = [kept[i] for i in order]
            for i in reversed(geometry.duplicates(dist)):
                h = kept.pop(i)
                dist.pop(i)
                bad.append(
                    (
                        h.path,
                        "duplicate_position",
                        "same position as another slice of its series (kept the first read)",
                    )
                )
            spacing, uneven = geometry.spacing_summary(dist)
            info.update(
                ordered_by="geometry",
                angle_to_long_axis_deg=round(angle, 1),
                spacing_mm=None if spacing is None else round(spacing, 2),
            )
            if uneven:
                info["notes"].append("uneven slice spacing (missing slices?)")
            if abs(float(np.dot(normal, geometry.TYPICAL_LONG_AXIS_LPS))) < 0.2:
                info["notes"].append(
                    "normal nearly perpendicular to the long axis: base/apex direction uncertain"
                )
        stacks.append((sid, kept, info))
    return stacks


def _write_stack(
    kept: list[dicom_io.SliceHeader],
    out: Path,
    salt: str,
    level: int,
    bad: list[tuple[Path, str, str]],
    *,
    text_check: bool = False,
    include_burned_in: bool = False,
    kept_counts: dict[str, int] | None = None,
) -> tuple[list[tuple[dicom_io.SliceHeader, str]], str]:
    """Decode, window and write one ordered stack; returns (header, image_id) per slice.

    With ``text_check`` each slice is searched for text in its margins before it is written;
    one that has some is left out (listed in ``bad``) unless ``include_burned_in``.
    """
    decoded: dict[Path, tuple[np.ndarray, Any] | None] = {}
    values: list[tuple[dicom_io.SliceHeader, np.ndarray, tuple[float, float]]] = []
    for h in kept:
        if h.path not in decoded:
            try:
                decoded[h.path] = dicom_io.read_frames(h.path)
            except IngestError as exc:
                decoded[h.path] = None
                bad.append((h.path, exc.code, str(exc)))
        entry = decoded[h.path]
        if entry is None:
            continue
        frames, ds = entry
        if h.frame >= frames.shape[0]:
            bad.append((h.path, "decode_failed", f"frame {h.frame + 1} missing from pixel data"))
            continue
        arr = pixels.to_grayscale(frames[h.frame], h.photometric)
        if h.has_modality_lut_sequence:
            from pydicom.pixels import apply_modality_lut

            arr = apply_modality_lut(arr, ds).astype(np.float32)
            rescale = (1.0, 0.0)
        else:
            rescale = h.rescale  # applied together with the window, in one table lookup
        if h.window is None and h.has_voi_lut_sequence:
            from pydicom.pixels import apply_voi_lut

            arr = apply_voi_lut(pixels.apply_rescale(arr, *rescale), ds).astype(np.float32)
            rescale = (1.0, 0.0)
        values.append((h, arr, rescale))
    # One window for the whole stack when the header has none, so slices stay comparable.
    stack_window = None
    if values and any(h.window is None for h, _, _ in values):
        sample = np.concatenate(
            [pixels.apply_rescale(a.reshape(-1)[::7], *r) for _, a, r in values]
        )
        stack_window = pixels.percentile_window(sample)
    written = []
    for h, arr, rescale in values:
        center, width = h.window or stack_window
        # Without an SOPInstanceUID (invalid, but seen) the file path keys the id instead.
        image_id = ids.image_id(salt, h.sop_uid or f"file:{h.path.resolve()}", h.frame)
        png = pixels.rescale_window_to_uint8(arr, *rescale, center, width)
        # The check runs on the pixels as written: what a rater (or anyone) would see.
        found = text_near_borders(png) if text_check else None
        if found:
            if not include_burned_in:
                where = f"frame {h.frame + 1}: " if h.n_frames > 1 else ""
                bad.append((h.path, "burned_in_text", where + found))
                continue
            if kept_counts is not None:
                kept_counts["burned_in_text"] = kept_counts.get("burned_in_text", 0) + 1
        Image.fromarray(png).save(out / "images" / f"{image_id}.png", compress_level=level)
        written.append((h, image_id))
    source = "header" if stack_window is None else "percentiles"
    return written, source
