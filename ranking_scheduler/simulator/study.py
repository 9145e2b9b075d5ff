"""The label-efficiency study over seeds (``simulate --compare`` and ``bench engine``).

Pure functions returning JSON-ready dicts; the CLI (``simulate_cli``) adds progress bars,
files and the plot.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from ranking_scheduler.simulator.raters import RaterParams
from ranking_scheduler.simulator.simulate import Cohort, simulate

CAP_FRACTION = 0.4
"""``bayes`` gets this share of the batches ``paper`` needs to reach its own stop."""
BUDGET_HOURS = 5.0
"""The study's labelling budget per strategy."""
RUNS = ("one_at_a_time", "paper", "random", "bayes", "bayes_capped")
"""Runs per seed in the study (``bayes`` up to the 5-hour budget, ``bayes_capped`` at 40%)."""
STACK_CAPS = (0.25, 0.2)
"""With stacks, ``bayes`` gets these shares of ``paper``'s batches (target 25%, moonshot 20%)."""
ACCURACY_TARGET = 0.96
"""With stacks, ``bayes`` at the 5-hour budget should reach this accuracy."""
STACK_RUNS = (
    "one_at_a_time",
    "one_at_a_time_stacks",
    "paper",
    "bayes",
    "bayes_capped",
    "bayes_stacks",
    "bayes_stacks_25",
    "bayes_stacks_20",
)
"""Runs per seed in the stack study: the same cohort with and without its geometry."""


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
    summary = _summarise(runs)
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


def stack_study(
    cohort: Cohort,
    seeds: Sequence[int],
    *,
    n_raters: int = 3,
    params: RaterParams | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """The study on a cohort of whole stacks, with and without its geometry, per seed.

    Runs: one-at-a-time (random order, and the stack-aware ``StackLabeller``; 5 h), ``paper``
    (no geometry: the study's heuristic, the reference), ``bayes`` without stacks at 5 h and at
    40% of ``paper``'s batches (the old claim), and ``bayes`` with stacks at 5 h and at 25% and
    20% of ``paper``'s batches. Checks per seed: does each capped run reach ``paper``'s final
    accuracy, and does ``bayes`` with stacks reach ``ACCURACY_TARGET`` at 5 h.
    """
    if cohort.stacks is None:
        raise ValueError("cohort: no stack geometry (use simulate.stack_cohort)")

    def bar(label: str) -> Any:
        class _Bar:
            def update(self, n: int) -> None:
                if on_progress is not None:
                    on_progress(label, n)

        return _Bar()

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in STACK_RUNS}
    checks = []
    for seed in seeds:
        kw = {"n_raters": n_raters, "seed": seed, "params": params}
        res = {"one_at_a_time": simulate(cohort, "one_at_a_time", progress=bar("one"), **kw)}
        res["one_at_a_time_stacks"] = simulate(
            cohort, "one_at_a_time", stacks=True, progress=bar("one_stacks"), **kw
        )
        res["paper"] = simulate(cohort, "paper", progress=bar("paper"), **kw)
        paper_batches = res["paper"]["final"]["batches"]
        res["bayes"] = simulate(
            cohort, "bayes", hours_cap=BUDGET_HOURS, progress=bar("bayes"), **kw
        )
        res["bayes_capped"] = simulate(
            cohort,
            "bayes",
            batch_cap=int(CAP_FRACTION * paper_batches),
            progress=bar("bayes_capped"),
            **kw,
        )
        res["bayes_stacks"] = simulate(
            cohort, "bayes", stacks=True, hours_cap=BUDGET_HOURS, progress=bar("stacks"), **kw
        )
        for share in STACK_CAPS:
            name = f"bayes_stacks_{round(share * 100)}"
            res[name] = simulate(
                cohort,
                "bayes",
                stacks=True,
                batch_cap=int(share * paper_batches),
                progress=bar(name),
                **kw,
            )
        for name, r in res.items():
            runs[name].append(r)
        paper_acc = res["paper"]["final"]["accuracy"]
        final = {name: r["final"] for name, r in res.items()}
        checks.append(
            {
                "seed": seed,
                "paper_batches": paper_batches,
                "paper_accuracy": paper_acc,
                **{f"{name}_accuracy": f["accuracy"] for name, f in final.items()},
                **{
                    f"{name}_batches": final[name]["batches"]
                    for name in (
                        "bayes_capped",
                        "bayes_stacks",
                        "bayes_stacks_25",
                        "bayes_stacks_20",
                    )
                },
                "bayes_stacks_boundary_labels": final["bayes_stacks"]["boundary_labels"],
                "capped_beats_paper": final["bayes_capped"]["accuracy"] >= paper_acc,
                "stacks_25_beats_paper": final["bayes_stacks_25"]["accuracy"] >= paper_acc,
                "stacks_20_beats_paper": final["bayes_stacks_20"]["accuracy"] >= paper_acc,
                "stacks_5h_meets_target": final["bayes_stacks"]["accuracy"] >= ACCURACY_TARGET,
            }
        )
    summary = _summarise(runs)
    premise = params.abs_difficulty if params is not None else RaterParams().abs_difficulty
    return {
        "seeds": list(seeds),
        "images": len(cohort.ids),
        "scans": len({s for s, _ in cohort.stacks.values()}),
        "raters": n_raters,
        "abs_difficulty": premise,
        "summary": summary,
        "checks": checks,
        "all_stacks_25_beat_paper": all(c["stacks_25_beats_paper"] for c in checks),
        "all_stacks_20_beat_paper": all(c["stacks_20_beats_paper"] for c in checks),
        "all_capped_beat_paper": all(c["capped_beats_paper"] for c in checks),
        "all_stacks_5h_meet_target": all(c["stacks_5h_meets_target"] for c in checks),
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


SUMMARY_KEYS = ("accuracy", "macro_f1", "kendall_tau", "hours", "batches", "boundary_labels")
"""The final figures each study summarises as mean ± sd over seeds."""


def _summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean ± sd over seeds of each run type's final figures (``SUMMARY_KEYS``)."""
    return {
        name: {key: _mean_sd([r["final"][key] for r in res]) for key in SUMMARY_KEYS}
        for name, res in runs.items()
    }
