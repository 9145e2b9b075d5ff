"""Subcommands of ``slicerank`` that drive ``cmr_ingest``: ``synth``, ``ingest``, ``bench ingest``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``slicerank`` parser."""
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic short-axis LGE cohort (PNG media root or DICOM)",
        description="Draw N synthetic scans (8-16 short-axis LGE slices each, base to beyond "
        "the apex) with ground-truth position and class per slice.",
    )
    p.add_argument("--scans", type=int, required=True, metavar="N", help="number of scans")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument(
        "--dicom",
        action="store_true",
        help="write MR DICOM series with fake patient identifiers (for `slicerank ingest`)",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    p.add_argument("--json", metavar="FILE", help="write a machine-readable summary here")
    p.set_defaults(func=_synth)

    p = subparsers.add_parser(
        "ingest",
        help="DICOM folder → anonymised PNG slices + manifest.csv + ingest report",
        description="Read every file under SRC, keep short-axis stacks, order them base to "
        "apex and write 8-bit PNGs named by salted-hash ids. The salt comes from the "
        "environment (SLICERANK_ID_SALT unless --salt-env names another variable).",
    )
    p.add_argument("src", metavar="SRC", help="folder (or file) of DICOM files")
    p.add_argument("--out", metavar="DIR", help="media root to write (required unless --locate)")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="folder for the ingest report, outside the media root (default: the media root's "
        "parent, as OUT-ingest_report.json and .txt)",
    )
    p.add_argument(
        "--locate",
        nargs="+",
        metavar="ID",
        help="instead of ingesting: print the files under SRC that the report names by these "
        "ids (file-...; the same salt is needed)",
    )
    p.add_argument(
        "--salt-env",
        default="SLICERANK_ID_SALT",
        metavar="NAME",
        help="environment variable holding the id salt (default SLICERANK_ID_SALT)",
    )
    p.add_argument(
        "--orientation-tolerance",
        type=float,
        default=None,
        metavar="DEG",
        help="largest angle between a stack's normal and the LV long axis for it to count as "
        "short-axis (default 40, env SLICERANK_ORIENTATION_TOLERANCE)",
    )
    p.add_argument(
        "--any-orientation",
        action="store_true",
        help="keep every image series whatever its orientation",
    )
    p.add_argument(
        "--truth",
        metavar="FILE",
        help="ground-truth CSV keyed by SOPInstanceUID (default: SRC/synth_truth.csv if present)",
    )
    p.add_argument(
        "--include-burned-in",
        action="store_true",
        help="keep slices that may show burned-in text (BurnedInAnnotation YES, secondary "
        "capture, DERIVED\\SECONDARY, or text found by --check-pixels-for-text); by default they "
        "are excluded and reported (env SLICERANK_INCLUDE_BURNED_IN=1)",
    )
    p.add_argument(
        "--check-pixels-for-text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="search each slice's margins for text drawn into the pixels and exclude those that "
        "have some (a heuristic for scanner overlays; on by default, --no-check-pixels-for-text "
        "or env SLICERANK_CHECK_PIXELS_FOR_TEXT=0 turns it off)",
    )
    p.add_argument(
        "--clean",
        action="store_true",
        help="remove PNGs in OUT/images that the new manifest does not list (an earlier run's); "
        "without it they are kept and reported",
    )
    p.add_argument("--json", metavar="FILE", help="also write the ingest report here")
    p.set_defaults(func=_ingest)


def _synth(args: argparse.Namespace) -> int:
    from cmr_ingest.synth import generate_cohort

    if args.scans < 1:
        print(f"slicerank synth: --scans must be at least 1, got {args.scans}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    path = generate_cohort(
        args.scans, args.out, seed=args.seed, dicom=args.dicom, workers=args.workers, progress=True
    )
    seconds = time.perf_counter() - t0
    summary = _cohort_summary(path, args.dicom)
    summary.update(scans=args.scans, seed=args.seed, dicom=args.dicom, seconds=round(seconds, 2))
    summary["output"] = str(path)
    print(
        f"wrote {summary['slices']} slices of {args.scans} scans to {path} in {seconds:.1f} s "
        f"(classes: {summary['classes']})"
    )
    if args.json:
        from slicerank_base.jsonout import write_json

        write_json(args.json, summary)
    return 0


def _cohort_summary(path, dicom: bool) -> dict:
    import csv
    from collections import Counter
    from pathlib import Path

    from cmr_ingest.synth import TRUTH_NAME

    csv_path = Path(path) / TRUTH_NAME if dicom else Path(path)
    with open(csv_path, newline="") as fh:
        classes = Counter(r["true_class"] for r in csv.DictReader(fh))
    return {"slices": sum(classes.values()), "classes": dict(sorted(classes.items()))}


def _ingest(args: argparse.Namespace) -> int:
    import dataclasses

    from cmr_ingest.ingest import ingest
    from cmr_ingest.settings import IngestSettings

    try:
        settings = IngestSettings.from_env(os.environ, salt_env=args.salt_env)
        changes: dict = {}
        if args.orientation_tolerance is not None:
            changes["orientation_tolerance_deg"] = args.orientation_tolerance
        if args.include_burned_in:
            changes["include_burned_in"] = True
        if args.check_pixels_for_text is not None:
            changes["check_pixels_for_text"] = args.check_pixels_for_text
        settings = dataclasses.replace(settings, **changes)
    except ValueError as exc:
        print(f"slicerank ingest: {exc}", file=sys.stderr)
        return 2
    if not os.path.exists(args.src):
        print(f"slicerank ingest: source {args.src} does not exist", file=sys.stderr)
        return 2
    if args.locate:
        from cmr_ingest.ingest import locate_files

        found = locate_files(args.src, settings.id_salt, set(args.locate))
        for fid in args.locate:
            print(f"{fid}: {found.get(fid, 'not found under SRC with this salt')}")
        return 0 if len(found) == len(set(args.locate)) else 1
    if not args.out:
        print("slicerank ingest: --out DIR (the media root to write) is required", file=sys.stderr)
        return 2
    from cmr_ingest.errors import IngestInputError
    from cmr_ingest.ingest import report_paths

    try:
        report_json, report_text = report_paths(
            Path(args.out), Path(args.report) if args.report else None
        )
        report = ingest(
            args.src,
            args.out,
            salt=settings.id_salt,
            orientation_tolerance_deg=settings.orientation_tolerance_deg,
            any_orientation=args.any_orientation,
            truth=args.truth,
            png_compress_level=settings.png_compress_level,
            include_burned_in=settings.include_burned_in,
            check_pixels_for_text=settings.check_pixels_for_text,
            clean=args.clean,
            report_dir=args.report,
            progress=True,
        )
    except IngestInputError as exc:
        print(f"slicerank ingest: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"report: {report_json} and {report_text} (outside the media root)")
    if args.json:
        from slicerank_base.jsonout import write_json

        write_json(args.json, report.to_dict())
    if report.slices_written == 0:
        print("slicerank ingest: no short-axis slice was written (see the report)", file=sys.stderr)
        return 1
    return 0
