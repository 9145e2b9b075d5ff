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
from slicerank_base import CLASSES


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


def task_speed(
    n_images: int,
    strategy: str,
    *,
    warm_tasks: int = 300,
    timed: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Median / p95 milliseconds of ``next_task`` + its answer (``submit`` for a batch,
    ``submit_boundary`` for a single question) after ``warm_tasks``, with stacks: the path the
    scheduler service takes for ``single`` and ``hybrid``. As ``speed``, the rater's own cost
    excluded; the share of single questions among the timed tasks is reported too."""
    cohort = stack_cohort(n_images, seed)
    pos = cohort.positions
    cuts = cohort.cuts
    rng = np.random.default_rng(seed)
    engine = RankingEngine(cohort.ids, strategy=strategy, seed=seed, stacks=cohort.stacks)
    times, labels = [], 0
    for t in range(warm_tasks + timed):
        rater = f"r{t % 3 + 1}"
        t0 = time.perf_counter()
        task = engine.next_task(rater)
        t1 = time.perf_counter()
        if task is None:
            break
        if task.kind == "rank":
            noisy = {i: pos[i] + 0.02 * rng.standard_normal() for i in task.image_ids}
            answer = sorted(task.image_ids, key=noisy.__getitem__)
            t2 = time.perf_counter()
            engine.submit(rater, answer)
        else:
            (image,) = task.image_ids
            x = pos[image] + 0.02 * rng.standard_normal()
            cls = "too_basal" if x < cuts[0] else ("too_apical" if x >= cuts[1] else "lv")
            t2 = time.perf_counter()
            engine.submit_boundary(image, cls, rater)
        t3 = time.perf_counter()
        if t >= warm_tasks:
            times.append((t1 - t0) + (t3 - t2))
            labels += task.kind == "label"
    ms = np.array(times) * 1000
    return {
        "images": n_images,
        "strategy": strategy,
        "stacks": True,
        "calls": int(ms.size),
        "single_questions": labels,
        "median_ms": float(np.median(ms)) if ms.size else None,
        "p95_ms": float(np.percentile(ms, 95)) if ms.size else None,
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
    if args.strategies_only:
        cases = []
    for n, s, st in tqdm(cases, desc="speed", unit="case"):
        result["speed"].append(speed(n, s, stacks=st))
    result["replay"] = [
        replay_speed(3323, 2000, s, stacks=st)
        for s, st in (("bayes", False), ("bayes", True), ("paper", False))
        if not args.strategies_only
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
    if not args.skip_study and not args.strategies_only:
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
    if not args.skip_study and args.holdout_seeds > 0:
        _strategy_phases(args, premises, out, result)
    write_json(out / "engine.json", result)
    if args.json:
        write_json(args.json, result)
    print(f"wrote {out / 'engine.json'}")
    return 0


def _strategy_phases(
    args: argparse.Namespace, premises: list[float], out: Path, result: dict[str, Any]
) -> None:
    """``ranking``, ``single`` and ``hybrid`` on the held-out seeds at each premise, on complete
    and (``--incomplete``) partly covered cohorts, then the pilot cohorts; tables into ``out``."""
    from slicerank_base.jsonout import write_json

    held = list(range(1000, 1000 + args.holdout_seeds))
    coverages = [0.0] + ([args.incomplete] if args.incomplete > 0 else [])
    result["strategies"], result["pilots"] = [], []
    for h in premises:
        for incomplete in coverages:
            print(f"strategy study: premise {h}, incomplete coverage {incomplete:.0%}", flush=True)
            st = strategy_study(args.images, held, h, incomplete=incomplete)
            table = strategy_table(st)
            (out / f"strategies_{h}_incomplete{incomplete:g}.md").write_text(table)
            print(table)
            result["strategies"].append(st)
            write_json(out / "engine.json", result)
        result["pilots"].append({"premise": h, "rows": pilot_study(h)})
        write_json(out / "engine.json", result)


BUDGETS = (0.10, 0.15, 0.20, 0.25, 0.50, 1.00)
"""Clinician-time budgets of the strategy study, as shares of the paper heuristic's batches."""
PILOT_SCANS = (6, 25, 50)
"""Pilot cohorts (scans) every strategy must stop on."""
TASK_STRATEGIES = ("ranking", "single", "hybrid")
STUDY_ROWS = {"one_at_a_time": "stack_labeller"}
"""The strongest one-at-a-time baseline (``one_at_a_time`` with stacks: the simulator's
``StackLabeller``, the evidence's one-at-a-time arm) under its row name in the study."""


def _at(curve: list[dict[str, Any]], hours: float) -> float:
    """Accuracy at the last checkpoint within ``hours`` (never past the budget)."""
    return max((p for p in curve if p["hours"] <= hours + 1e-9), key=lambda p: p["hours"])[
        "accuracy"
    ]


def strategy_study(
    n_images: int,
    seeds: list[int],
    premise: float,
    *,
    incomplete: float = 0.0,
    min_views: tuple[int, ...] = (0, 1),
) -> dict[str, Any]:
    """``ranking``, ``single`` and ``hybrid`` with stacks, and the strongest one-at-a-time
    baseline (``stack_labeller``), against the paper heuristic, at time-equivalent budgets
    (``BUDGETS`` of paper's batches, 11.4 s a batch, 5.4 s a label): accuracy per seed and
    budget; ``hybrid`` run to its stop at each of ``min_views`` (hours, accuracy, provenance);
    what the panel's readings allow (``ceiling``)."""
    from ranking_scheduler.simulator.raters import SECONDS_PER_BATCH, RaterParams
    from ranking_scheduler.simulator.simulate import simulate

    rows = []
    for seed in seeds:
        cohort = stack_cohort(n_images, seed, incomplete=incomplete)
        params = RaterParams(abs_difficulty=premise, cuts=cohort.cuts)
        kw = {"seed": seed, "params": params, "stacks": True}
        paper = simulate(cohort, "paper", **kw)
        paper_h = paper["final"]["batches"] * SECONDS_PER_BATCH / 3600
        step = paper_h * 0.05
        row: dict[str, Any] = {
            "seed": seed,
            "paper_batches": paper["final"]["batches"],
            "paper_hours": paper_h,
            "paper_accuracy": paper["final"]["accuracy"],
        }
        for strategy in (*TASK_STRATEGIES, "one_at_a_time"):
            run = simulate(cohort, strategy, hours_cap=paper_h, checkpoint_hours=step, **kw)
            row[STUDY_ROWS.get(strategy, strategy)] = [
                _at(run["curve"], b * paper_h) for b in BUDGETS
            ]
        for m in min_views:
            run = simulate(
                cohort,
                "hybrid",
                hours_cap=4 * paper_h,
                checkpoint_hours=paper_h,
                engine_options={"min_views": m},
                **kw,
            )
            row[f"hybrid_m{m}"] = {
                "hours": run["final"]["hours"],
                "batches": run["final"]["batches"],
                "labels": run["final"]["boundary_labels"],
                "accuracy": run["final"]["accuracy"],
                "stop_reason": run.get("stop_reason"),
                "provenance": run.get("provenance"),
            }
        rows.append(row)
    ceiling = panel_ceiling(n_images, seeds, premise, incomplete=incomplete)["accuracy"]
    for row, acc in zip(rows, ceiling, strict=True):
        row["ceiling"] = acc
    return {"images": n_images, "premise": premise, "incomplete": incomplete, "rows": rows}


def panel_ceiling(
    n_images: int, seeds: list[int], premise: float, *, incomplete: float = 0.0
) -> dict[str, Any]:
    """The best accuracy any strategy could reach with this panel: every slice read infinitely
    often by all three raters in comparisons (the fresh noise averages away, the raters'
    persistent misreadings of the slice do not), the two cuts placed where they agree best
    with the truth, and the classes decoded monotonically along each stack: what the raters'
    readings allow, whatever the budget. (Not a strict bound: an engine that also uses the
    spacing of the slices along each stack can pass it a little.)"""
    from ranking_scheduler.engine.stacks import monotone_classes, stack_layout
    from ranking_scheduler.simulator.raters import RaterPanel, RaterParams

    per_seed = []
    for seed in seeds:
        cohort = stack_cohort(n_images, seed, incomplete=incomplete)
        params = RaterParams(abs_difficulty=premise, cuts=cohort.cuts)
        panel = RaterPanel.from_positions(cohort.positions, 3, seed, params)
        ids = cohort.ids
        x = np.array([cohort.positions[i] for i in ids])
        persistent = np.mean([r.persistent_error(ids) for r in panel.raters], axis=0)
        seen = x + persistent / premise
        truth = np.array([CLASSES.index(cohort.classes[i]) for i in ids])
        best, best_cls = -1.0, None
        for a in np.quantile(seen, np.linspace(0.05, 0.4, 71)):
            for b in np.quantile(seen, np.linspace(0.8, 0.995, 40)):
                cls = np.where(seen < a, 0, np.where(seen >= b, 2, 1))
                acc = float((cls == truth).mean())
                if acc > best:
                    best, best_cls = acc, cls
        onehot = np.log(np.where(np.eye(3)[best_cls] > 0, 0.9, 0.05))
        layout = stack_layout(ids, cohort.stacks)
        decoded = monotone_classes(onehot, layout.padded())
        per_seed.append(max(best, float((decoded == truth).mean())))
    return {"premise": premise, "seeds": seeds, "accuracy": per_seed}


def pilot_study(premise: float, seed: int = 0) -> list[dict[str, Any]]:
    """Each strategy run to its own stop on cohorts of ``PILOT_SCANS`` scans: hours,
    accuracy, why it stopped (22: a pilot must not cost more than labelling one at a time)."""
    from ranking_scheduler.simulator.raters import RaterParams
    from ranking_scheduler.simulator.simulate import Cohort, simulate

    out = []
    for n_scans in PILOT_SCANS:
        big = stack_cohort(14 * n_scans, seed)
        keep = sorted({s for s, _ in big.stacks.values()})[:n_scans]
        ids = [i for i in big.ids if big.stacks[i][0] in keep]
        cohort = Cohort(
            ids,
            {i: big.positions[i] for i in ids},
            {i: big.classes[i] for i in ids},
            {i: big.stacks[i] for i in ids},
        )
        params = RaterParams(abs_difficulty=premise, cuts=cohort.cuts)
        for strategy in ("paper", *TASK_STRATEGIES):
            run = simulate(cohort, strategy, seed=seed, params=params, stacks=True)
            out.append(
                {
                    "scans": n_scans,
                    "slices": len(ids),
                    "strategy": strategy,
                    "hours": run["final"]["hours"],
                    "batches": run["final"]["batches"],
                    "labels": run["final"]["boundary_labels"],
                    "accuracy": run["final"]["accuracy"],
                    "stop_reason": run.get("stop_reason"),
                    "advice": run.get("advice"),
                }
            )
    return out


def _margin_row(label: str, margin: np.ndarray) -> str:
    """A table row of a (seeds x budgets) margin: its mean and worst seed per budget."""
    cells = " | ".join(
        f"{m:+.3f} / {w:+.3f}" for m, w in zip(margin.mean(0), margin.min(0), strict=True)
    )
    return f"| {label}: mean / worst | {cells} |"


def strategy_table(study: dict[str, Any]) -> str:
    """Markdown: mean and worst seed per strategy and budget, and ``hybrid``'s margin."""
    rows = study["rows"]
    head = " | ".join(f"{int(b * 100)}%" for b in BUDGETS)
    lines = [
        f"Premise {study['premise']}, {study['images']} slices, incomplete coverage "
        f"{study['incomplete']:.0%}, seeds {[r['seed'] for r in rows]}; paper heuristic "
        f"{np.mean([r['paper_batches'] for r in rows]):.0f} batches, accuracy "
        f"{np.mean([r['paper_accuracy'] for r in rows]):.3f} (worst "
        f"{min(r['paper_accuracy'] for r in rows):.3f})",
        "",
        f"| strategy (mean / worst seed) | {head} |",
        "|---|" + "---|" * len(BUDGETS),
    ]
    names = [*TASK_STRATEGIES] + (["stack_labeller"] if "stack_labeller" in rows[0] else [])
    for s in names:
        acc = np.array([r[s] for r in rows])
        cells = " | ".join(
            f"{m:.3f} / {w:.3f}" for m, w in zip(acc.mean(0), acc.min(0), strict=True)
        )
        label = f"`{s}`" if s in TASK_STRATEGIES else "one at a time knowing the stacks"
        lines.append(f"| {label} | {cells} |")
    h = np.array([r["hybrid"] for r in rows])
    best = np.maximum(np.array([r["ranking"] for r in rows]), np.array([r["single"] for r in rows]))
    lines.append(_margin_row("hybrid - max(ranking, single)", h - best))
    if "stack_labeller" in rows[0]:
        strongest = np.maximum(best, np.array([r["stack_labeller"] for r in rows]))
        lines.append(_margin_row("hybrid - the strongest of all", h - strongest))
    if "ceiling" in rows[0]:
        ceil = [r["ceiling"] for r in rows]
        lines.append(
            f"\nWhat the panel's readings allow (every slice read infinitely often by all three "
            f"raters; their persistent misreadings stay; `panel_ceiling`): {np.mean(ceil):.3f} "
            f"(lowest seed {min(ceil):.3f})"
        )
    for m in (0, 1):
        key = f"hybrid_m{m}"
        if key in rows[0]:
            lines.append(
                f"\n`hybrid` min_views={m} run to its stop: "
                f"{np.mean([r[key]['hours'] for r in rows]):.2f} h, "
                f"{np.mean([r[key]['batches'] for r in rows]):.0f} batches + "
                f"{np.mean([r[key]['labels'] for r in rows]):.0f} labels, accuracy "
                f"{np.mean([r[key]['accuracy'] for r in rows]):.3f} (worst "
                f"{min(r[key]['accuracy'] for r in rows):.3f}); seen/inferred/prior "
                f"{[r[key]['provenance'] for r in rows]}"
            )
    return "\n".join(lines) + "\n"
