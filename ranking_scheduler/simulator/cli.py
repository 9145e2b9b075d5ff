"""``slicerank simulate`` (the label-efficiency study); ``bench engine`` lives in ``benchmarks``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STRATEGY_CHOICES = ("one_at_a_time", "paper", "random", "bayes", "ranking", "single", "hybrid")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate``."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate raters labelling a cohort under a strategy (label-efficiency study)",
        description=(
            "Simulated experts (noise calibrated to the study's Cohen's kappa 0.90 / 0.77) label "
            "a cohort one image at a time or by ranking batches of 8; effort is counted in "
            "labelling hours at the study's time parity (5 h = 3,323 labels = 1,575 batches)."
        ),
    )
    p.add_argument(
        "--manifest",
        help="cmr_ingest manifest.csv with position and true_class "
        "(default: a synthetic study-like cohort of --images images)",
    )
    p.add_argument("--images", type=int, default=3323, help="size of the synthetic cohort")
    p.add_argument("--strategy", choices=STRATEGY_CHOICES, default="bayes")
    p.add_argument("--raters", type=int, default=3, help="simulated raters (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-cap", type=int, help="stop after this many batches")
    p.add_argument("--hours-cap", type=float, help="stop at this many labelling hours")
    p.add_argument(
        "--difficulty",
        type=float,
        default=None,
        help="how many times noisier an absolute label is than a comparison (default 1.5)",
    )
    p.add_argument(
        "--stacks",
        action="store_true",
        help="use stack geometry: a cohort of whole scans (or the manifest's scan_id and "
        "slice_index) given to the engine; one_at_a_time asks where a scan is least certain",
    )
    p.add_argument("--json", help="write the result (strategy, seed, curve, final) here")
    p.add_argument(
        "--compare",
        action="store_true",
        help="run all strategies over --seeds seeds; table and plot into --out",
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds for --compare (0..N-1)")
    p.add_argument("--out", default="runs/simulate", help="folder for --compare outputs")
    p.set_defaults(func=_simulate)


def _cohort(args: argparse.Namespace):
    from ranking_scheduler.simulator.simulate import read_cohort, stack_cohort, study_cohort

    if args.manifest:
        return read_cohort(args.manifest)
    if args.images < 16:
        raise ValueError(f"--images: need at least 16, got {args.images}")
    if getattr(args, "stacks", False):
        return stack_cohort(args.images, 0)
    return study_cohort(args.images, 0)


def _params(args: argparse.Namespace, cohort) -> Any:
    from ranking_scheduler.simulator.raters import RaterParams

    kw: dict[str, Any] = {"cuts": cohort.cuts}
    if args.difficulty is not None:
        kw["abs_difficulty"] = args.difficulty
    return RaterParams(**kw)


def _simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ranking_scheduler.simulator.simulate import simulate
    from slicerank_base.jsonout import write_json

    try:
        cohort = _cohort(args)
        params = _params(args, cohort)
    except ValueError as exc:
        log.error("%s", exc)
        print(f"error: {exc}")
        return 2
    if args.compare:
        return _compare(args, cohort, params)
    unit = "labels" if args.strategy == "one_at_a_time" else "batches"
    with tqdm(desc=f"simulate {args.strategy}", unit=unit) as bar:
        result = simulate(
            cohort,
            args.strategy,
            n_raters=args.raters,
            seed=args.seed,
            params=params,
            batch_cap=args.batch_cap,
            hours_cap=args.hours_cap,
            progress=bar,
            stacks=args.stacks,
        )
    f = result["final"]
    print(
        f"{args.strategy} seed {args.seed}: accuracy {f['accuracy']:.3f}, macro F1 "
        f"{f['macro_f1']:.3f}, Kendall tau {f['kendall_tau']:.3f} after {f['hours']:.2f} h "
        f"({f['batches']} batches, {f['boundary_labels']} single labels)"
    )
    if result.get("stop_reason"):
        print(f"stopped: {result['stop_reason']}")
    elif "stop_reason" in result:
        print("not stopped: the hours or batch cap came first")
    if result.get("advice"):
        print(f"advice: {result['advice']}")
    if result.get("provenance"):
        p = result["provenance"]
        print(
            f"labels: {p['seen']} seen by a rater, {p['inferred']} inferred from their scan, "
            f"{p['prior']} from the prior alone"
        )
    if args.json:
        write_json(args.json, result)
    return 0


def progress_bar(total_runs: int):
    from tqdm import tqdm

    bar = tqdm(total=total_runs, desc="study", unit="run")
    state = {"label": None}

    def on_progress(label: str, n: int) -> None:
        if label != state["label"]:
            if state["label"] is not None:
                bar.update(1)
            state["label"] = label
            bar.set_postfix_str(label)

    return bar, on_progress


def _compare(args: argparse.Namespace, cohort, params) -> int:
    from ranking_scheduler.simulator.study import RUNS, study
    from slicerank_base.jsonout import write_json

    if args.seeds < 1:
        print("error: --seeds: need at least 1")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar, on_progress = progress_bar(args.seeds * len(RUNS))
    with bar:
        result = study(
            cohort,
            list(range(args.seeds)),
            n_raters=args.raters,
            params=params,
            on_progress=on_progress,
        )
        bar.update(bar.total - bar.n)
    table = study_table(result)
    (out / "compare.md").write_text(table)
    plot_curves(result, out / "accuracy_vs_hours.png")
    write_json(out / "compare.json", result)
    if args.json:
        write_json(args.json, result)
    print(table)
    print(f"wrote {out / 'compare.md'}, {out / 'accuracy_vs_hours.png'}, {out / 'compare.json'}")
    return 0


def _summary_rows(summary: dict[str, Any]) -> list[str]:
    """The Markdown header and one row per run type (mean ± sd over seeds) of a study."""
    lines = [
        "| run | accuracy | macro F1 | Kendall tau | hours | batches | boundary labels |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        cells = [
            f"{s[k]['mean']:.3f} ± {s[k]['sd']:.3f}"
            for k in ("accuracy", "macro_f1", "kendall_tau")
        ]
        cells += [
            f"{s['hours']['mean']:.2f}",
            f"{s['batches']['mean']:.0f}",
            f"{s['boundary_labels']['mean']:.1f}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def study_table(result: dict[str, Any]) -> str:
    """Markdown: one row per run type (mean ± sd over seeds) and one row per seed check."""
    lines = [
        f"Seeds {result['seeds'][0]}..{result['seeds'][-1]}, {result['images']} images, "
        f"{result['raters']} raters.",
        "",
        *_summary_rows(result["summary"]),
    ]
    lines += [
        "",
        "| seed | paper batches | paper acc | cap (40%) | bayes@cap acc | ≥ paper | "
        "one-at-a-time acc | bayes@5h acc | > one-at-a-time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["checks"]:
        lines.append(
            f"| {c['seed']} | {c['paper_batches']} | {c['paper_accuracy']:.3f} | "
            f"{c['cap_batches']} | {c['bayes_capped_accuracy']:.3f} | "
            f"{'yes' if c['capped_beats_paper'] else 'NO'} | {c['one_at_a_time_accuracy']:.3f} | "
            f"{c['bayes_5h_accuracy']:.3f} | "
            f"{'yes' if c['bayes_5h_beats_one_at_a_time'] else 'NO'} |"
        )
    lines.append("")
    return "\n".join(lines)


def stack_study_table(result: dict[str, Any], kind: str = "") -> str:
    """Markdown for ``bench.stack_study``: one row per run (mean ± sd over seeds), then the
    per-seed checks against ``paper`` and the 5-hour target."""
    seeds = result["seeds"]
    lines = [
        f"{kind + ' ' if kind else ''}seeds {seeds[0]}..{seeds[-1]}, {result['images']} slices "
        f"in {result['scans']} scans, {result['raters']} raters, abs_difficulty "
        f"{result['abs_difficulty']}.",
        "",
        *_summary_rows(result["summary"]),
    ]

    def yes(flag: bool) -> str:
        return "yes" if flag else "NO"

    lines += [
        "",
        "| seed | paper batches | paper acc | no stacks @40% | stacks @25% | stacks @20% | "
        "stacks @5h (labels) | one-at-a-time | one-at-a-time + stacks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["checks"]:
        lines.append(
            f"| {c['seed']} | {c['paper_batches']} | {c['paper_accuracy']:.3f} | "
            f"{c['bayes_capped_accuracy']:.3f} {yes(c['capped_beats_paper'])} | "
            f"{c['bayes_stacks_25_accuracy']:.3f} {yes(c['stacks_25_beats_paper'])} | "
            f"{c['bayes_stacks_20_accuracy']:.3f} {yes(c['stacks_20_beats_paper'])} | "
            f"{c['bayes_stacks_accuracy']:.3f} ({c['bayes_stacks_boundary_labels']}) | "
            f"{c['one_at_a_time_accuracy']:.3f} | {c['one_at_a_time_stacks_accuracy']:.3f} |"
        )
    n = len(result["checks"])
    lines += [
        "",
        f"Reach paper's final accuracy: without stacks at 40% of its batches on "
        f"{sum(c['capped_beats_paper'] for c in result['checks'])} / {n} seeds; with stacks at "
        f"25% on {sum(c['stacks_25_beats_paper'] for c in result['checks'])} / {n}, at 20% on "
        f"{sum(c['stacks_20_beats_paper'] for c in result['checks'])} / {n}. With stacks at 5 h "
        f"≥ 0.96 on {sum(c['stacks_5h_meets_target'] for c in result['checks'])} / {n}; most "
        f"boundary labels in any run: {result['max_boundary_labels']}.",
        "",
    ]
    return "\n".join(lines)


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs labelling hours, one line per run type (mean), band = min..max over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, runs in result["runs"].items():
        end = max(r["curve"][-1]["hours"] for r in runs)
        grid = np.linspace(0, end, 60)
        ys = []
        for r in runs:
            h = [p["hours"] for p in r["curve"]]
            a = [p["accuracy"] for p in r["curve"]]
            ys.append(np.interp(grid, h, a, right=np.nan))
        arr = np.array(ys)
        with np.errstate(all="ignore"):
            mean = np.nanmean(arr, axis=0)
            lo, hi = np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
        (line,) = ax.plot(grid, mean, label=name)
        ax.fill_between(grid, lo, hi, alpha=0.2, color=line.get_color())
    ax.axvline(5.0, color="grey", linestyle=":", label="study budget (5 h)")
    ax.set_xlabel("labelling hours (study time parity)")
    ax.set_ylabel("accuracy vs true class")
    ax.set_title(
        f"{result['images']} images, {result['raters']} raters, "
        f"{len(result['seeds'])} seeds (band: min..max)"
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
