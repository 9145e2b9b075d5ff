"""``slicerank bench engine``: the engine's speed, log replay, and the label-efficiency study.

``speed`` and ``replay_speed`` time the engine alone (the rater's cost excluded); ``main``
adds the study over tuning and held-out seeds (``ranking_scheduler.simulator.study``) with
its tables and plots.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from ranking_scheduler.engine import RankingEngine
from ranking_scheduler.simulator.simulate import stack_cohort, study_cohort


def speed(
    n_images: int,
    strategy: str,
    *,
    warm_batches: int = 300,
    timed: int = 200,
    seed: int = 0,
    stacks: bool = False,
) -> dict[str, Any]:
    """Median / p95 milliseconds of ``next_batch`` + ``submit`` after ``warm_batches``.

    The ranking comes from the true positions plus noise (the rater's own cost is excluded).
    ``stacks``: a cohort of whole stacks, its geometry given to the engine.
    """
    cohort = stack_cohort(n_images, seed) if stacks else study_cohort(n_images, seed)
    pos = cohort.positions
    rng = np.random.default_rng(seed)
    engine = RankingEngine(cohort.ids, strategy=strategy, seed=seed, stacks=cohort.stacks)
    times = []
    for b in range(warm_batches + timed):
        rater = f"r{b % 3 + 1}"
        t0 = time.perf_counter()
        batch = engine.next_batch(rater)
        t1 = time.perf_counter()
        if not batch:
            break
        noisy = {i: pos[i] + 0.02 * rng.standard_normal() for i in batch}
        ordered = sorted(batch, key=noisy.__getitem__)
        t2 = time.perf_counter()
        engine.submit(rater, ordered)
        t3 = time.perf_counter()
        if b >= warm_batches:
            times.append((t1 - t0) + (t3 - t2))
    ms = np.array(times) * 1000
    return {
        "images": n_images,
        "strategy": strategy,
        "stacks": stacks,
        "calls": int(ms.size),
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def replay_speed(
    n_images: int = 3323,
    n_batches: int = 2000,
    strategy: str = "bayes",
    seed: int = 0,
    stacks: bool = False,
) -> dict[str, Any]:
    """Seconds to rebuild an engine by replaying ``n_batches`` submissions, and whether the
    rebuilt scores equal the live engine's exactly (``stacks``: as in ``speed``)."""
    cohort = stack_cohort(n_images, seed) if stacks else study_cohort(n_images, seed)
    pos = cohort.positions
    rng = np.random.default_rng(seed)
    live = RankingEngine(cohort.ids, strategy=strategy, seed=seed, stacks=cohort.stacks)
    log = []
    for b in range(n_batches):
        rater = f"r{b % 3 + 1}"
        batch = live.next_batch(rater)
        if not batch:
            # Past the stopping rule: keep logging random batches (the log is what counts).
            batch = [cohort.ids[k] for k in rng.choice(n_images, live.batch_size, replace=False)]
            ordered = sorted(batch, key=lambda i: pos[i] + 0.02 * rng.standard_normal())
            live.submit(rater, ordered, require_open=False)
        else:
            ordered = sorted(batch, key=lambda i: pos[i] + 0.02 * rng.standard_normal())
            live.submit(rater, ordered)
        log.append((rater, ordered))
    t0 = time.perf_counter()
    rebuilt = RankingEngine(cohort.ids, strategy=strategy, seed=seed, stacks=cohort.stacks)
    for rater, ordered in log:
        rebuilt.submit(rater, ordered, require_open=False)
    seconds = time.perf_counter() - t0
    return {
        "images": n_images,
        "batches": n_batches,
        "strategy": strategy,
        "stacks": stacks,
        "seconds": seconds,
        "identical_scores": rebuilt.scores() == live.scores(),
    }


def main(args: argparse.Namespace) -> int:
    """Handler of ``slicerank bench engine``: speed, replay, then the study at each premise."""
    import datetime

    from tqdm import tqdm

    from ranking_scheduler.simulator.cli import plot_curves, progress_bar, stack_study_table
    from ranking_scheduler.simulator.raters import RaterParams
    from ranking_scheduler.simulator.simulate import stack_cohort
    from ranking_scheduler.simulator.study import STACK_RUNS, stack_study
    from slicerank_base.jsonout import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "speed": [],
    }
    try:
        premises = [float(x) for x in args.premises.split(",") if x.strip()]
    except ValueError:
        print(f"error: --premises: expected numbers like 1.0,1.5, got {args.premises!r}")
        return 2
    if not premises or min(premises) <= 0:
        print(f"error: --premises: need positive values, got {args.premises!r}")
        return 2
    cases = [
        (n, s, st)
        for n in (3323, 100_000)
        for s, st in (("bayes", False), ("bayes", True), ("paper", False), ("random", True))
    ]
    for n, s, st in tqdm(cases, desc="speed", unit="case"):
        result["speed"].append(speed(n, s, stacks=st))
    result["replay"] = [
        replay_speed(3323, 2000, s, stacks=st)
        for s, st in (("bayes", False), ("bayes", True), ("paper", False))
    ]
    for row in result["speed"]:
        print(
            f"next_batch+submit {row['strategy']:6s}{' +stacks' if row['stacks'] else '        '} "
            f"{row['images']:>6} images: median {row['median_ms']:.2f} ms, "
            f"p95 {row['p95_ms']:.2f} ms"
        )
    for row in result["replay"]:
        print(
            f"replay {row['batches']} batches ({row['strategy']}"
            f"{' +stacks' if row['stacks'] else ''}): {row['seconds']:.2f} s, "
            f"identical scores: {row['identical_scores']}"
        )
    write_json(out / "engine.json", result)
    if not args.skip_study:
        cohort = stack_cohort(args.images, 0)
        phases = []
        if args.seeds > 0:
            # The stack model's defaults were chosen while looking at these, at equal noise.
            phases.append(("tuning", 1.0, list(range(args.seeds))))
        if args.holdout_seeds > 0:
            held = list(range(1000, 1000 + args.holdout_seeds))
            phases += [("holdout", h, held) for h in premises]
        result["study"] = []
        for kind, h, seeds in phases:
            params = RaterParams(abs_difficulty=h, cuts=cohort.cuts)
            bar, on_progress = progress_bar(len(seeds) * len(STACK_RUNS))
            with bar:
                bar.set_description(f"{kind} seeds, abs_difficulty {h}")
                st = stack_study(cohort, seeds, params=params, on_progress=on_progress)
                bar.update(bar.total - bar.n)
            table = stack_study_table(st, kind)
            (out / f"study_{kind}_{h}.md").write_text(table)
            plot_curves(st, out / f"accuracy_vs_hours_{kind}_{h}.png")
            print(table)
            result["study"].append(
                {
                    "kind": kind,
                    **{k: v for k, v in st.items() if k != "runs"},
                    "curves": {name: [r["curve"] for r in rs] for name, rs in st["runs"].items()},
                }
            )
            write_json(out / "engine.json", result)  # keep what is done if a later phase fails
    write_json(out / "engine.json", result)
    if args.json:
        write_json(args.json, result)
    print(f"wrote {out / 'engine.json'}")
    return 0
