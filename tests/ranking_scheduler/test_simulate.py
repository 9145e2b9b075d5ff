"""The simulator and its CLI: JSON schema, manifests, the compare table and plot."""

from __future__ import annotations

import csv
import json
import math

import pytest

from ranking_scheduler.simulator.simulate import (
    CURVE_KEYS,
    SIM_STRATEGIES,
    read_cohort,
    simulate,
    study_cohort,
)
from slicerank.cli import main

TOP_KEYS = {"strategy", "seed", "curve", "final"}
ENGINE_KEYS = {"stop_reason", "advice", "provenance"}
"""Added by every engine strategy: why it stopped (None: a cap came first), its advice, and
how many images were seen, inferred from their scan, or from the prior alone."""


@pytest.mark.parametrize("strategy", SIM_STRATEGIES)
def test_simulate_cli_writes_the_agreed_json(tmp_path, strategy):
    out = tmp_path / "sim.json"
    code = main(
        ["simulate", "--strategy", strategy, "--images", "160", "--seed", "3", "--json", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == TOP_KEYS | (set() if strategy == "one_at_a_time" else ENGINE_KEYS)
    assert result["strategy"] == strategy and result["seed"] == 3
    assert len(result["curve"]) >= 2
    for point in [*result["curve"], result["final"]]:
        assert set(point) == set(CURVE_KEYS)
        assert 0.0 <= point["accuracy"] <= 1.0 and 0.0 <= point["macro_f1"] <= 1.0
    hours = [p["hours"] for p in result["curve"]]
    assert hours == sorted(hours) and result["final"] == result["curve"][-1]
    if strategy not in ("single", "hybrid"):  # their single labels count here too
        assert result["final"]["boundary_labels"] <= 40
    if strategy == "one_at_a_time":
        assert result["final"]["views"] == 160 and result["final"]["batches"] == 0
    elif strategy == "single":
        assert result["final"]["batches"] == 0 and result["final"]["accuracy"] > 0.8
        assert sum(result["provenance"].values()) == 160
    else:
        assert result["final"]["batches"] > 0 and result["final"]["accuracy"] > 0.8


def test_simulate_reads_a_cmr_ingest_manifest(tmp_path):
    cohort = study_cohort(120, seed=4)
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["image_id", "scan_id", "slice_index", "n_slices", "path", "position", "true_class"]
        )
        for k, i in enumerate(cohort.ids):
            w.writerow(
                [
                    i,
                    f"scan{k // 10}",
                    k % 10,
                    10,
                    f"{i}.png",
                    cohort.positions[i],
                    cohort.classes[i],
                ]
            )
    assert read_cohort(path).classes == cohort.classes
    out = tmp_path / "r.json"
    assert (
        main(["simulate", "--manifest", str(path), "--strategy", "paper", "--json", str(out)]) == 0
    )
    assert json.loads(out.read_text())["final"]["views"] >= 3 * 120


def test_bad_manifest_is_reported(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text("image_id,path\na,a.png\n")
    assert main(["simulate", "--manifest", str(path)]) == 2
    assert "position" in capsys.readouterr().out
    with pytest.raises(ValueError, match="strategy"):
        simulate(study_cohort(50), "sorting_hat")


def test_compare_writes_table_plot_and_json(tmp_path):
    out = tmp_path / "cmp"
    assert (
        main(["simulate", "--compare", "--images", "120", "--seeds", "2", "--out", str(out)]) == 0
    )
    table = (out / "compare.md").read_text()
    for name in ("one_at_a_time", "paper", "random", "bayes", "bayes_capped"):
        assert f"| {name} |" in table
    assert (out / "accuracy_vs_hours.png").stat().st_size > 10_000
    result = json.loads((out / "compare.json").read_text())
    assert len(result["checks"]) == 2
    cap = result["checks"][0]
    assert cap["cap_batches"] == int(0.4 * cap["paper_batches"])
    assert cap["bayes_capped_batches"] <= cap["cap_batches"]


def test_bench_engine_target_and_its_options():
    from slicerank.cli import build_parser

    args = build_parser().parse_args(["bench", "engine", "--seeds", "12", "--holdout-seeds", "0"])
    assert (args.seeds, args.holdout_seeds, args.premises) == (12, 0, "1.0,1.5")
    assert callable(args.func)


@pytest.mark.parametrize("strategy", ["ranking", "hybrid", "one_at_a_time"])
def test_a_budgets_point_is_what_that_budget_buys(strategy):
    """Each checkpoint's point is taken before the first task that would pass it: its hours lie
    within the checkpoint, and no further than one task below it (batches and labels alike)."""
    from ranking_scheduler.simulator.raters import SECONDS_PER_BATCH
    from ranking_scheduler.simulator.simulate import stack_cohort

    cohort = stack_cohort(150, seed=4)
    step = 0.02
    run = simulate(cohort, strategy, seed=4, stacks=True, hours_cap=0.2, checkpoint_hours=step)
    inner = run["curve"][1:-1]
    assert inner
    for point in inner:
        k = math.ceil(point["hours"] / step - 1e-9)  # the checkpoint this point stands for
        assert point["hours"] <= k * step + 1e-9
        assert k * step - point["hours"] < SECONDS_PER_BATCH / 3600 + 1e-9
