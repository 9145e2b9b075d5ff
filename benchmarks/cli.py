"""``slicerank bench TARGET``: every benchmark's arguments, in one place.

Each target's work lives in ``benchmarks/<target>.py`` and is imported only when that
target runs, so ``slicerank --help`` stays fast (no torch, no Label Studio SDK).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable


def _handler(module: str) -> Callable[[argparse.Namespace], int]:
    """The ``main(args)`` of ``benchmarks.<module>``, imported when the target runs."""

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(f"benchmarks.{module}").main(args)

    return run


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add every benchmark target."""
    _ingest(bench_subparsers)
    _engine(bench_subparsers)
    _service(bench_subparsers)
    _faults(bench_subparsers)
    _train(bench_subparsers)
    _model(bench_subparsers)
    _demo(bench_subparsers)
    _analysis(bench_subparsers)
    _raters(bench_subparsers)
    _labels(bench_subparsers)
    _images(bench_subparsers)


def _ingest(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``slicerank bench ingest``."""
    p = bench_subparsers.add_parser(
        "ingest",
        help="synth and ingest throughput; ingest vs bare pydicom + Pillow",
        description="Times synth (PNG and DICOM), ingest of the DICOM cohort, and the bare "
        "work of reading the same files with pydicom and writing the same PNGs with Pillow.",
    )
    p.add_argument("--scans", type=int, default=300, help="cohort size (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", metavar="DIR", help="keep the cohorts here (default: a temp dir)")
    p.add_argument(
        "--text-check",
        action="store_true",
        help="instead: false alarms and detections of --check-pixels-for-text on a PNG cohort",
    )
    p.add_argument("--json", metavar="FILE", help="write the numbers here")
    p.set_defaults(func=_handler("ingest"))


def _engine(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``engine`` benchmark target."""
    p = bench_subparsers.add_parser(
        "engine",
        help="engine speed and the label-efficiency study (bayes vs paper vs one-at-a-time, "
        "with and without stack geometry, at equal noise and at the study's premise)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="tuning seeds 0..N-1 of the study, at equal noise only (default 5; 0: skip)",
    )
    p.add_argument("--images", type=int, default=3323, help="slices of the stack cohort")
    p.add_argument(
        "--holdout-seeds",
        type=int,
        default=10,
        help="further seeds (1000..) not looked at while tuning the engine, at every premise "
        "(0: skip)",
    )
    p.add_argument(
        "--premises",
        default="1.0,1.5",
        help="abs_difficulty values of the held-out study: how many times noisier an "
        "absolute label is than a comparison (default 1.0,1.5: equal noise, the study's)",
    )
    p.add_argument("--skip-study", action="store_true", help="speed numbers only")
    p.add_argument(
        "--strategies-only",
        action="store_true",
        help="only the strategy study (ranking, single, hybrid at time-equivalent budgets, "
        "min_views 0 and 1) and the pilot cohorts, on the held-out seeds at every premise",
    )
    p.add_argument(
        "--incomplete",
        type=float,
        default=0.14,
        help="share of stacks missing the base or the apex in the strategy study's second "
        "cohort (default 0.14, as in UK Biobank; 0: complete cohorts only)",
    )
    p.add_argument("--out", default="runs/bench/engine", help="folder for tables and plots")
    p.add_argument("--json", help="write all numbers here")
    p.set_defaults(func=_handler("engine"))


def _service(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``service`` benchmark target."""
    p = bench_subparsers.add_parser(
        "service",
        help="simulated raters submit batches through a real Label Studio to the scheduler",
    )
    p.add_argument("--raters", type=int, default=10, help="concurrent simulated raters")
    p.add_argument("--batches", type=int, default=1000, help="batches submitted in all")
    p.add_argument("--images", type=int, default=3323, help="images in the pool")
    p.add_argument("--strategy", default="bayes", help="engine strategy")
    p.add_argument(
        "--think-s",
        type=float,
        default=3.0,
        help="seconds a simulated clinician looks at a task before submitting (the study: "
        "~11 s per batch; 0 = back-to-back, which saturates Label Studio itself)",
    )
    p.add_argument("--out", default="runs/bench-service", help="working folder")
    p.add_argument(
        "--ls-db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="Label Studio's database: its SQLite dev default, or PostgreSQL as compose deploys "
        "it (a fresh database per run on SLICERANK_BENCH_PG_URL, default the local server)",
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.set_defaults(func=_handler("service"))


def _faults(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``faults`` benchmark target."""
    from benchmarks.faults import CASES  # light: httpx and the standard library

    p = bench_subparsers.add_parser(
        "faults",
        help="the scheduler under faults (kill -9, Label Studio restart, lost/duplicated "
        "webhooks, edits and deletes, foreign projects, retired tasks): nothing may be lost",
    )
    p.add_argument("--case", action="append", choices=CASES, help="run only this case (repeatable)")
    p.add_argument(
        "--runs", type=int, help="runs per case (default: 20 kills, 2-5 runs of the others)"
    )
    p.add_argument("--small", action="store_true", help="one run per case, two kills")
    p.add_argument(
        "--ls-db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="Label Studio's database",
    )
    p.add_argument(
        "--off-s", type=float, default=90.0, help="seconds the webhooks stay off (webhooks_off)"
    )
    p.add_argument("--seed", type=int, default=0, help="random moments and orders")
    p.add_argument("--out", default="runs/bench-faults", help="working folder")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.set_defaults(func=_handler("faults"))


def _train(bench_subparsers: argparse._SubParsersAction) -> None:
    """``slicerank bench train``."""
    p = bench_subparsers.add_parser(
        "train",
        help="training throughput vs the bare step, optional /predict latency; --full: the "
        "study protocol (GPU), cut to --epochs/--seeds/--max-seconds",
    )
    p.add_argument(
        "--batches", type=int,
        help="timed steps per rate (default 6; --full: 200 for its bare forward+backward)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--repeats", type=int,
        help="timings per rate, the median reported (default 3 on a GPU, 1 on a CPU)",
    )  # fmt: skip
    p.add_argument(
        "--predict-requests", type=int, default=40,
        help="/predict requests timed (0: skip; skipped anyway without FastAPI/uvicorn)",
    )  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--preset", help="training preset (default: gpu on CUDA, study otherwise; --full on a "
        "CPU needs cpu-small)",
    )  # fmt: skip
    p.add_argument("--full", action="store_true",
                   help="run the study's protocol (70 epochs x 10 seeds, 3,323 images; GPU)")  # fmt: skip
    p.add_argument("--epochs", type=int, help="--full: epochs per seed (default: the preset's, 70)")
    p.add_argument("--seeds", type=int, help="--full: seeds 0..N-1 (default: the preset's 10)")
    p.add_argument(
        "--max-seconds", type=float,
        help="--full: stop after the epoch that leaves less than two epochs' time, start no "
        "new seed, and extrapolate to 70 epochs x 10 seeds",
    )  # fmt: skip
    p.add_argument("--images", type=int, default=3323, help="--full: synthetic images")
    p.add_argument("--jsonl", metavar="FILE", help="--full: append one JSON line per epoch here")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    p.set_defaults(func=_handler("train"))


def _model(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``model`` benchmark target."""
    p = bench_subparsers.add_parser(
        "model",
        help="both arms' labels (fair: same raters, time, geometry, split) turned into CNNs and "
        "scored on held-out phantom scans, with scan-clustered paired differences",
    )
    p.add_argument(
        "--cohorts", default="1,2,3",
        help="cohort seeds: 1,2,3 / 500-504 / 'reporting' (default 1,2,3: tuning seeds; the "
        "reporting seeds 500-509 run only the frozen recipe)",
    )  # fmt: skip
    p.add_argument(
        "--premise", type=float, default=1.0,
        help="abs_difficulty of the simulated raters (1.0 equal noise, 1.5 the study's)",
    )  # fmt: skip
    p.add_argument("--scans", type=int, default=40, help="labelled scans per cohort (default 40)")
    p.add_argument(
        "--test-scans", type=int, default=20,
        help="held-out scans per cohort (default 20; 200 gives about 2,400 test slices)",
    )  # fmt: skip
    p.add_argument(
        "--seeds", type=int, help="training seeds per variant (default: the preset's ensemble)"
    )
    p.add_argument("--variants", help="comma-separated source[:FIELD=VALUE...] over cpu-small")
    p.add_argument("--data", help="keep the drawn cohorts here (default: a temporary folder)")
    p.add_argument("--json", metavar="FILE", help="write every row and the summary as JSON")
    p.set_defaults(func=_handler("model_study"))


def _demo(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` benchmark target."""
    p = bench_subparsers.add_parser(
        "demo", help="wall time and peak memory of a whole demo run (default size)"
    )
    p.add_argument("--scans", type=int, help="scans to label (default: the demo's default)")
    p.add_argument(
        "--test-scans", type=int,
        help="held-out scans (default: the demo's 20; 200 gives about 2,400 test slices)",
    )  # fmt: skip
    p.add_argument(
        "--premise", type=float, default=1.0,
        help="abs_difficulty of the simulated raters (1.0 equal noise, 1.5 the study's)",
    )  # fmt: skip
    p.add_argument("--out", help="keep the demo's output here (default: a temporary folder)")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    p.add_argument(
        "--runs", type=int, default=1,
        help="demo runs with seeds --seed, --seed+1, ... (default 1); reports mean ± sd",
    )  # fmt: skip
    p.add_argument(
        "demo_args", nargs=argparse.REMAINDER, help="further arguments for slicerank demo"
    )
    p.set_defaults(func=_handler("demo"))


def _analysis(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``slicerank bench analysis``."""
    p = bench_subparsers.add_parser(
        "analysis", help="time the statistics and the report on synthetic predictions"
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[333, 3323], help="images per cohort")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--repeats", type=int, default=3, help="runs per size (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="write the timings as JSON")
    p.set_defaults(func=_handler("analysis"))


def _raters(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``slicerank bench raters``."""
    p = bench_subparsers.add_parser(
        "raters",
        help="calibrate the image-grounded simulated raters to the study's kappa on phantoms",
    )
    p.add_argument("--scans", type=int, default=300, help="scans per phantom cohort (default 300)")
    p.add_argument("--json", metavar="FILE", help="write the fit and the table as JSON")
    p.set_defaults(func=_handler("raters"))


def _labels(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``slicerank bench labels``."""
    p = bench_subparsers.add_parser(
        "labels",
        help="dose-response: the CNN trained on labels with controlled damage (noise near the "
        "cuts, a shifted cut, image-tied ambiguity) at several sizes, beside the best possible "
        "classifier for those labels",
    )
    p.add_argument(
        "--sizes", default="250,1000",
        help="training sizes in slices, comma-separated (default 250,1000; the full study: "
        "250,500,1000,2000,3323)",
    )  # fmt: skip
    p.add_argument("--damages", default="clean,noise,shift,image", help="label damages to train on")
    p.add_argument("--preset", default="cpu-small", help="training preset (default cpu-small)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per model (default 4)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per model (ensemble)")
    p.add_argument("--test-scans", type=int, default=40, help="held-out scans (default 40)")
    p.add_argument("--cohort-seed", type=int, default=700, help="phantom cohort seed (700)")
    p.add_argument("--data", help="keep the drawn cohorts here (default: a temporary folder)")
    p.add_argument("--out", help="write labels.md and labels_dose_response.png here")
    p.add_argument("--json", metavar="FILE", help="write every row as JSON")
    p.set_defaults(func=_handler("labels"))


def _images(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``slicerank bench images``."""
    p = bench_subparsers.add_parser(
        "images",
        help="hostile image files (decompression bombs, elongated, oversized) against the "
        "backend's image limits: refused or read, time and extra memory",
    )
    p.add_argument("--json", metavar="FILE", help="write the numbers here")
    p.set_defaults(func=_handler("images"))
