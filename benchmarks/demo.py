"""``slicerank bench demo``: wall time and peak memory of a whole ``slicerank demo`` run;
with ``--runs N``, N default runs with seeds ``--seed``, ``--seed`` + 1, ... and the models'
mean ± sd across them, checked against issue 11's targets (:func:`summarise_runs`).

The demo runs as a child process so that everything it starts (Label Studio, Redis, the
scheduler, the ML backend, the RQ worker and its work-horse) is measured as one process tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: How often the process tree's memory is sampled, in seconds.
SAMPLE_INTERVAL_S = 0.5
#: The default demo must finish within this many seconds on 2 cores (issue 11).
DEMO_TIME_TARGET_S = 12 * 60
#: The two models of a demo run, as its report names them.
MODELS = ("one-at-a-time", "ranking")
#: The demo's label report names the two label sets like this.
LABEL_SETS = {"one-at-a-time": "one-at-a-time labels", "ranking": "ranking consensus"}


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (Linux)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def tree_rss_bytes(root: int) -> int:
    """Summed resident memory of ``root`` and all its descendants (an upper bound: forked
    processes share pages that each count in full)."""
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        stack += _children(pid)
    return total


def run_bench(scans: int | None, out: Path, extra: list[str]) -> dict[str, Any]:
    """Run ``slicerank demo --fresh`` into ``out`` and measure it; returns the numbers."""
    demo_json = out / "demo-result.json"
    cmd = [sys.executable, "-m", "slicerank", "demo", "--out", str(out), "--fresh"]
    cmd += ["--json", str(demo_json)] + (["--scans", str(scans)] if scans else []) + extra
    peak = 0
    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_bytes(proc.pid))
            stop.wait(SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rc = proc.wait()
    finally:
        stop.set()
        sampler.join()
    wall = time.monotonic() - start
    result: dict[str, Any] = {
        "command": " ".join(cmd[1:]),
        "exit_code": rc,
        "wall_s": round(wall, 1),
        "peak_tree_rss_gib": round(peak / 2**30, 2),
        "cpus": os.cpu_count(),
    }
    if demo_json.exists():
        demo = json.loads(demo_json.read_text())
        result["stage_timings_s"] = demo.get("timings_s")
        result["headline"] = (demo.get("report") or {}).get("headline")
        result["label_headline"] = (demo.get("label_report") or {}).get("headline")
    return result


def _mean_sd(values: list[float]) -> dict[str, float] | None:
    import statistics

    if not values:
        return None
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "n": len(values)}


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd of each model's and label set's accuracy across finished runs, the gain of
    stack decoding, and issue 11's targets: the ranking-trained model's mean accuracy is at
    least the one-at-a-time model's whenever the ranking labels are at least as accurate, no
    run has a class with F1 = 0, every run within :data:`DEMO_TIME_TARGET_S`."""
    from analysis.report import STACK_SUFFIX

    done = [r for r in runs if r.get("exit_code") == 0 and r.get("headline")]
    models: dict[str, Any] = {}
    names = [m for m in MODELS] + [m + STACK_SUFFIX for m in MODELS]
    for name in names:
        rows = [r["headline"]["models"].get(name) for r in done]
        rows = [x for x in rows if x]
        if not rows:
            continue
        models[name] = {
            "accuracy": _mean_sd([x["accuracy"]["value"] for x in rows]),
            "macro_f1": _mean_sd([x["macro_f1"]["value"] for x in rows]),
            "min_class_f1": min(min(x["f1_per_class"].values()) for x in rows),
        }
    labels = {}
    for name, label_set in LABEL_SETS.items():
        vals = [
            r["label_headline"]["models"][label_set]["accuracy"]["value"]
            for r in done
            if (r.get("label_headline") or {}).get("models", {}).get(label_set)
        ]
        labels[name] = _mean_sd(vals)
    paired = [
        c["accuracy_difference"]["value"]
        for r in done
        for c in ((r["headline"].get("clustered") or {}).get("comparisons") or [])
        if c["model"] == MODELS[1]
    ]
    stack_gain = {}
    for name in MODELS:
        if name in models and name + STACK_SUFFIX in models:
            stack_gain[name] = {
                key: models[name + STACK_SUFFIX][key]["mean"] - models[name][key]["mean"]
                for key in ("accuracy", "macro_f1")
            }
    targets: dict[str, Any] = {}
    if labels.get("ranking") and labels.get("one-at-a-time") and all(m in models for m in MODELS):
        labels_better = labels["ranking"]["mean"] >= labels["one-at-a-time"]["mean"]
        model_better = (
            models["ranking"]["accuracy"]["mean"] >= models["one-at-a-time"]["accuracy"]["mean"]
        )
        targets["ranking_labels_at_least_as_accurate"] = labels_better
        targets["model_vs_labels"] = model_better or not labels_better
    targets["no_collapsed_class"] = bool(models) and all(
        models[m]["min_class_f1"] > 0 for m in MODELS if m in models
    )
    walls = [r["wall_s"] for r in done]
    targets["time"] = bool(walls) and max(walls) <= DEMO_TIME_TARGET_S
    from analysis.intervals import runs_to_detect

    premises = sorted({r["headline"].get("premise") for r in done}, key=str)
    paired_summary = _mean_sd(paired)
    if paired_summary:
        sd = paired_summary["sd"] if len(paired) > 1 else None
        paired_summary["runs_to_detect_1_point"] = runs_to_detect(sd) if sd is not None else None
    return {
        "premise": premises[0] if len(premises) == 1 else premises,
        "paired_difference": paired_summary,
        "runs_finished": len(done),
        "runs": len(runs),
        "models": models,
        "labels": labels,
        "stack_decoding_gain": stack_gain,
        "wall_s": _mean_sd(walls),
        "max_wall_s": max(walls) if walls else None,
        "targets": targets,
    }


def runs_table(runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """A Markdown table of every run and the mean ± sd row (for docs/BENCHMARKS.md)."""
    from analysis.report import STACK_SUFFIX

    def acc(run: dict[str, Any], name: str, key: str = "headline") -> str:
        try:
            return f"{run[key]['models'][name]['accuracy']['value']:.3f}"
        except (KeyError, TypeError):
            return "—"

    def paired(run: dict[str, Any]) -> str:
        for c in ((run.get("headline") or {}).get("clustered") or {}).get("comparisons") or []:
            if c["model"] == MODELS[1]:
                d = c["accuracy_difference"]
                return f"{d['value']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})"
        return "—"

    lines = [
        f"Premise: {summary.get('premise')} (abs_difficulty). Paired difference: ranking-trained "
        "minus one-at-a-time-trained model, 95% CI from a bootstrap over held-out scans.",
        "",
        "| run (seed) | labels 1-at-a-time | labels ranking | model 1-at-a-time | model ranking "
        "| paired difference (95% CI) | ranking, stack-decoded "
        "| min class F1 (1-at-a-time / ranking) | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        head = run.get("headline") or {}
        f1 = [
            min(head["models"][m]["f1_per_class"].values()) if m in head.get("models", {}) else None
            for m in MODELS
        ]
        lines.append(
            f"| {run.get('seed')} | {acc(run, LABEL_SETS['one-at-a-time'], 'label_headline')} "
            f"| {acc(run, LABEL_SETS['ranking'], 'label_headline')} | {acc(run, MODELS[0])} "
            f"| {acc(run, MODELS[1])} | {paired(run)} | {acc(run, MODELS[1] + STACK_SUFFIX)} "
            f"| {' / '.join('—' if v is None else f'{v:.2f}' for v in f1)} | {run.get('wall_s')} |"
        )

    def ms(x: dict[str, float] | None, digits: int = 3) -> str:
        return "—" if not x else f"{x['mean']:.{digits}f} ± {x['sd']:.{digits}f}"

    m, lab = summary["models"], summary["labels"]
    lines.append(
        f"| **mean ± sd** | {ms(lab.get('one-at-a-time'))} | {ms(lab.get('ranking'))} "
        f"| {ms((m.get(MODELS[0]) or {}).get('accuracy'))} "
        f"| {ms((m.get(MODELS[1]) or {}).get('accuracy'))} "
        f"| {ms(summary.get('paired_difference'))} "
        f"| {ms((m.get(MODELS[1] + STACK_SUFFIX) or {}).get('accuracy'))} | | "
        f"{ms(summary['wall_s'], 0)} |"
    )
    need = (summary.get("paired_difference") or {}).get("runs_to_detect_1_point")
    if need:
        lines += [
            "",
            f"Runs needed to detect a 1-point paired difference (two-sided 5%, power 80%, from "
            f"the measured sd across these runs): {need}.",
        ]
    return "\n".join(lines)


def _demo_seed(extra: list[str]) -> tuple[int, list[str]]:
    """The ``--seed`` in the demo arguments (default 0) and the arguments without it.

    A leading ``--`` (``bench demo --runs 2 -- --seed 3``, the usual way to hand arguments on)
    only separates them and is dropped.
    """
    if extra[:1] == ["--"]:
        extra = extra[1:]
    rest, seed, skip = [], 0, False
    for k, arg in enumerate(extra):
        if skip:
            skip = False
            continue
        if arg == "--seed" and k + 1 < len(extra):
            seed, skip = int(extra[k + 1]), True
        elif arg.startswith("--seed="):
            seed = int(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return seed, rest


def main(args) -> int:
    from slicerank_base.jsonout import write_json

    if args.runs < 1:
        print(f"error: --runs {args.runs}: must be at least 1", file=sys.stderr)
        return 2
    from benchmarks.seeds import check_reporting

    seed0, extra = _demo_seed(args.demo_args or [])
    recipe_flags = [a for a in extra if a.split("=")[0] in ("--preset", "--epochs", "--gpu")]
    try:
        check_reporting(
            range(seed0, seed0 + args.runs), recipe_changed=bool(recipe_flags),
            what=f"bench demo with {' '.join(recipe_flags)}",
        )  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra = extra + ["--premise", str(args.premise)]
    if args.test_scans is not None:
        extra += ["--test-scans", str(args.test_scans)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="slicerank-bench-demo-") as tmp:
        base = Path(args.out) if args.out else Path(tmp) / "demo"
        for k in range(args.runs):
            out = base if args.runs == 1 else base / f"run-{k + 1}"
            seed = seed0 + k
            result = run_bench(args.scans, out, extra + ["--seed", str(seed)])
            result["seed"] = seed
            runs.append(result)
            print(
                f"demo run {k + 1}/{args.runs} (seed {seed}): exit {result['exit_code']}, wall "
                f"{result['wall_s']} s, peak memory of the process tree "
                f"{result['peak_tree_rss_gib']} GiB",
                flush=True,
            )
            if args.json:
                write_json(args.json, _bench_output(runs))
    output = _bench_output(runs)
    if args.runs > 1:
        print(runs_table(runs, output["summary"]))
        print(json.dumps(output["summary"]["targets"]))
    if args.json:
        write_json(args.json, output)
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


def _bench_output(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run: its numbers as before; several: every run plus the summary."""
    if len(runs) == 1:
        return runs[0]
    return {"runs": runs, "summary": summarise_runs(runs)}
