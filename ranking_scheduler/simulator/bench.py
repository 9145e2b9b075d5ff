"""The label-efficiency study over seeds and the engine's speed numbers (``bench engine``).

Pure functions returning JSON-ready dicts; the CLI (``simulate_cli``) adds progress bars,
files and the plot.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ranking_scheduler.engine.ranking import RankingEngine
from ranking_scheduler.simulator.raters import RaterParams
from ranking_scheduler.simulator.simulate import Cohort, simulate, study_cohort

CAP_FRACTION = 0.4
"""``bayes`` gets this share of the batches ``paper`` needs to reach its own stop."""
BUDGET_HOURS = 5.0
"""The study's labelling budget per strategy."""
RUNS = ("one_at_a_time", "paper", "random", "bayes", "bayes_capped")
"""Runs per seed in the study (``bayes`` up to the 5-hour budget, ``bayes_capped`` at 40%)."""


def study(
    cohort: Cohort,
    seeds: Sequence[int],
    *,
    n_raters: int = 3,
    params: RaterParams | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Run every strategy on every seed; returns the runs and the per-seed target checks.

    ``on_progress(label, n)`` is called as batches/labels complete (for a progress bar).
    """

    class _Bar:
        def __init__(self, label: str) -> None:
            self.label = label

        def update(self, n: int) -> None:
            if on_progress is not None:
                on_progress(self.label, n)

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in RUNS}
    checks = []
    for seed in seeds:
        kw = {"n_raters": n_raters, "seed": seed, "params": params}
        one = simulate(cohort, "one_at_a_time", progress=_Bar("one_at_a_time"), **kw)
        paper = simulate(cohort, "paper", progress=_Bar("paper"), **kw)
        cap = int(CAP_FRACTION * paper["final"]["batches"])
        capped = simulate(cohort, "bayes", batch_cap=cap, progress=_Bar("bayes_capped"), **kw)
        bayes = simulate(cohort, "bayes", hours_cap=BUDGET_HOURS, progress=_Bar("bayes"), **kw)
        rnd = simulate(cohort, "random", hours_cap=BUDGET_HOURS, progress=_Bar("random"), **kw)
        for name, res in (
            ("one_at_a_time", one),
            ("paper", paper),
            ("random", rnd),
            ("bayes", bayes),
            ("bayes_capped", capped),
        ):
            runs[name].append(res)
        at_budget = _at_hours(bayes["curve"], BUDGET_HOURS)
        checks.append(
            {
                "seed": seed,
                "paper_batches": paper["final"]["batches"],
                "paper_accuracy": paper["final"]["accuracy"],
                "paper_boundary_labels": paper["final"]["boundary_labels"],
                "cap_batches": cap,
                "bayes_capped_batches": capped["final"]["batches"],
                "bayes_capped_accuracy": capped["final"]["accuracy"],
                "bayes_capped_boundary_labels": capped["final"]["boundary_labels"],
                "capped_beats_paper": capped["final"]["accuracy"] >= paper["final"]["accuracy"],
                "one_at_a_time_accuracy": one["final"]["accuracy"],
                "bayes_5h_accuracy": at_budget["accuracy"],
                "bayes_5h_beats_one_at_a_time": at_budget["accuracy"] > one["final"]["accuracy"],
            }
        )
    summary = {
        name: {
            key: _mean_sd([r["final"][key] for r in res])
            for key in (
                "accuracy",
                "macro_f1",
                "kendall_tau",
                "hours",
                "batches",
                "boundary_labels",
            )
        }
        for name, res in runs.items()
    }
    return {
        "seeds": list(seeds),
        "images": len(cohort.ids),
        "raters": n_raters,
        "summary": summary,
        "checks": checks,
        "all_capped_beat_paper": all(c["capped_beats_paper"] for c in checks),
        "all_5h_beat_one_at_a_time": all(c["bayes_5h_beats_one_at_a_time"] for c in checks),
        "max_boundary_labels": max(
            r["final"]["boundary_labels"] for res in runs.values() for r in res
        ),
        "runs": runs,
    }


def _at_hours(curve: list[dict[str, Any]], hours: float) -> dict[str, Any]:
    """The last curve point within ``hours``."""
    within = [p for p in curve if p["hours"] <= hours + 1e-9]
    return within[-1] if within else curve[0]


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": float(statistics.fmean(values)),
        "sd": float(statistics.stdev(values)) if len(values) > 1 else 0.0,
        "min": float(min(values)),
        "max": float(max(values)),
    }


def speed(
    n_images: int,
    strategy: str,
    *,
    warm_batches: int = 300,
    timed: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Median / p95 milliseconds of ``next_batch`` + ``submit`` after ``warm_batches``.

    The ranking comes from the true positions plus noise (the rater's own cost is excluded).
    """
    cohort = study_cohort(n_images, seed)
    pos = cohort.positions
    rng = np.random.default_rng(seed)
    engine = RankingEngine(cohort.ids, strategy=strategy, seed=seed)
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
        "calls": int(ms.size),
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def replay_speed(
    n_images: int = 3323, n_batches: int = 2000, strategy: str = "bayes", seed: int = 0
) -> dict[str, Any]:
    """Seconds to rebuild an engine by replaying ``n_batches`` submissions, and whether the
    rebuilt scores equal the live engine's exactly."""
    cohort = study_cohort(n_images, seed)
    pos = cohort.positions
    rng = np.random.default_rng(seed)
    live = RankingEngine(cohort.ids, strategy=strategy, seed=seed)
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
    rebuilt = RankingEngine(cohort.ids, strategy=strategy, seed=seed)
    for rater, ordered in log:
        rebuilt.submit(rater, ordered, require_open=False)
    seconds = time.perf_counter() - t0
    return {
        "images": n_images,
        "batches": n_batches,
        "strategy": strategy,
        "seconds": seconds,
        "identical_scores": rebuilt.scores() == live.scores(),
    }
