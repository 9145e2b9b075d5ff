"""Subcommands of ``slicerank`` that drive ``ls_config``: ``provision``."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``slicerank`` parser."""
    p = subparsers.add_parser(
        "provision",
        help="create/update the Rank, Classify and Boundary projects in Label Studio (idempotent)",
        description=(
            "Create or update the slicerank projects, their Local Files storage, the webhooks to "
            "the scheduler and the ML backend, and import one Classify task per image. Running "
            "it twice changes nothing. Label Studio is reached at LABEL_STUDIO_URL with "
            "LABEL_STUDIO_API_KEY; the webhook secret comes from SCHEDULER_WEBHOOK_SECRET."
        ),
    )
    p.add_argument("--media-root", required=True, help="folder with manifest.csv and the PNGs")
    p.add_argument("--manifest", help="manifest CSV (default: MEDIA_ROOT/manifest.csv)")
    p.add_argument(
        "--ls-media-root",
        help="the media root as Label Studio's process sees it (default: --media-root)",
    )
    p.add_argument(
        "--document-root",
        default=os.environ.get("LOCAL_FILES_DOCUMENT_ROOT") or None,
        help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (env LOCAL_FILES_DOCUMENT_ROOT; default: "
        "the parent of the media root, which 1.23 requires to be strictly above the storage)",
    )
    p.add_argument("--scheduler-url", help="base URL Label Studio posts webhooks to")
    p.add_argument("--backend-url", help="ML backend URL to register on the Classify project")
    p.add_argument("--prefix", default="", help="text put before every project title")
    p.add_argument("--seed", type=int, default=0, help="seed of the Classify task shuffle")
    p.add_argument("--json", metavar="FILE", help="write what changed as JSON")
    p.set_defaults(func=_provision)


def _provision(args: argparse.Namespace) -> int:
    import csv
    import logging
    import sys
    from pathlib import Path

    from label_studio_sdk import LabelStudio

    from ls_config.access import check_access
    from ls_config.provision import provision
    from slicerank_base.jsonout import write_json

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    url = os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:8080")
    api_key = os.environ.get("LABEL_STUDIO_API_KEY")
    secret = os.environ.get("SCHEDULER_WEBHOOK_SECRET") or os.environ.get("SCHEDULER_SECRET")
    if not api_key:
        print("error: set LABEL_STUDIO_API_KEY to a Label Studio API token", file=sys.stderr)
        return 2
    if args.scheduler_url and not secret:
        print(
            "error: --scheduler-url needs SCHEDULER_WEBHOOK_SECRET in the environment",
            file=sys.stderr,
        )
        return 2
    manifest = Path(args.manifest or Path(args.media_root) / "manifest.csv")
    if not manifest.is_file():
        print(f"error: manifest {manifest} does not exist", file=sys.stderr)
        return 2
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        print(f"error: manifest {manifest} has no rows", file=sys.stderr)
        return 2
    # Unreachable (exit 3) or a refused key (exit 2) in two lines, before any change is made.
    check_access(url, api_key)
    try:
        report = provision(
            LabelStudio(base_url=url, api_key=api_key, timeout=120),
            media_root=args.ls_media_root or args.media_root,
            manifest_rows=rows,
            scheduler_url=args.scheduler_url,
            secret=secret,
            backend_url=args.backend_url,
            # The same variables the backend reads: Label Studio must send what it expects.
            backend_auth=(
                (os.environ.get("BASIC_AUTH_USER", ""), os.environ["BASIC_AUTH_PASS"])
                if os.environ.get("BASIC_AUTH_PASS")
                else None
            ),
            document_root=args.document_root,
            prefix=args.prefix,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = report.to_json()
    print(f"projects: {summary['projects']}; {len(report.actions)} change(s)")
    if args.json:
        write_json(args.json, summary)
    return 0
