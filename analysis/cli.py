"""Subcommands of ``slicerank`` that drive ``analysis``: ``slicerank analyze``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``analyze`` to the ``slicerank`` parser."""
    p = subparsers.add_parser(
        "analyze",
        help="compare models / labelling strategies with the study's statistics, tables and plots",
        description=(
            "Evaluate one or more prediction or label sets against a ground truth and write "
            "DIR/report.md and DIR/report.html (with PNG plots): accuracy, F1 and ROC AUC with "
            "95% CIs, LV vs not-LV tables, McNemar's test, Cohen's kappa, label-efficiency curves."
        ),
    )
    p.add_argument(
        "--truth", required=True, metavar="CSV", help="ground truth, columns image_id,label"
    )
    p.add_argument(
        "--pred",
        action="append",
        required=True,
        metavar="NAME=CSV",
        help="a prediction set: image_id plus label and/or p_too_basal,p_lv,p_too_apical "
        "(repeatable; the first is the reference of the paired tests)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for report.md, report.html and plots"
    )
    p.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    p.add_argument(
        "--curves",
        nargs="+",
        default=[],
        metavar="JSON",
        help="label-efficiency runs from `slicerank simulate --compare --json`",
    )
    p.add_argument(
        "--seed", type=int, help="bootstrap seed (default 0; env SLICERANK_ANALYSIS_SEED)"
    )
    p.add_argument(
        "--n-boot",
        type=int,
        help="bootstrap resamples (default 2000; env SLICERANK_ANALYSIS_N_BOOT)",
    )
    p.add_argument(
        "--ci-method",
        choices=("clopper-pearson", "wilson"),
        help="interval for proportions (default clopper-pearson, which reproduces the study's "
        "Table 4; env SLICERANK_ANALYSIS_CI_METHOD)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        help="level of every interval (default 0.95; env SLICERANK_ANALYSIS_CONFIDENCE)",
    )
    p.add_argument(
        "--reference", metavar="NAME", help="reference prediction set (default: the first --pred)"
    )
    p.add_argument(
        "--scans",
        metavar="CSV",
        help="image_id,scan_id per image (a slicerank manifest.csv will do): adds accuracy "
        "and paired differences with a bootstrap that resamples whole scans, since slices of "
        "one scan are not independent",
    )
    p.set_defaults(func=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    """Handler of ``slicerank analyze``: read the inputs, build the report, print where it is."""
    from analysis.io import (
        AnalysisInputError,
        check_prediction_ids,
        parse_prediction_spec,
        read_curves,
        read_predictions,
        read_scans,
        read_truth,
    )
    from analysis.report import build_report
    from analysis.settings import AnalysisSettings
    from slicerank_base.jsonout import write_json

    try:
        env = AnalysisSettings.from_env(os.environ)
        settings = AnalysisSettings(
            n_boot=env.n_boot if args.n_boot is None else args.n_boot,
            seed=env.seed if args.seed is None else args.seed,
            ci_method=env.ci_method if args.ci_method is None else args.ci_method,
            confidence=env.confidence if args.confidence is None else args.confidence,
        )
    except ValueError as exc:
        print(f"slicerank analyze: error: {exc}", file=sys.stderr)
        return 2
    try:
        truth = read_truth(args.truth)
        predictions = {}
        for spec in args.pred:
            name, path = parse_prediction_spec(spec)
            if name in predictions:
                raise AnalysisInputError(f"--pred {spec!r}: the name {name!r} is used twice")
            pred = read_predictions(path)
            check_prediction_ids(truth, pred, name)
            predictions[name] = pred
        curves = read_curves(args.curves) if args.curves else None
        clusters = read_scans(args.scans, truth) if args.scans else None
        result = build_report(
            truth,
            predictions,
            args.out,
            curves=curves,
            seed=settings.seed,
            n_boot=settings.n_boot,
            confidence=settings.confidence,
            proportion_method=settings.ci_method,
            reference=args.reference,
            clusters=clusters,
        )
    except (AnalysisInputError, ValueError) as exc:
        print(f"slicerank analyze: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_json(args.json, result.summary)
    print(f"report: {result.html}")
    print(f"        {result.markdown}")
    for name, model in result.summary["models"].items():
        acc = model["overall"]["accuracy"]
        print(f"  {name}: accuracy {acc['value']:.3f} ({acc['low']:.3f}-{acc['high']:.3f})")
    clustered = result.summary.get("clustered")
    if clustered:
        print(f"  CIs over {clustered['n_clusters']} scans: {clustered['method']}")
        for c in clustered["comparisons"]:
            d = c["accuracy_difference"]
            print(
                f"  {c['model']} - {c['reference']}: {d['value']:+.3f} "
                f"({d['low']:+.3f} to {d['high']:+.3f}), P = {d['pvalue']:.3g}"
            )
    return 0
