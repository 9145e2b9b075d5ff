"""``slicerank bench demo --runs N``: the across-runs summary and issue 11's targets (pure)."""

from __future__ import annotations

import pytest

from analysis.report import STACK_SUFFIX
from benchmarks.demo import _demo_seed, runs_table, summarise_runs


def _model(acc: float, f1_min: float) -> dict:
    return {
        "accuracy": {"value": acc},
        "macro_f1": {"value": acc - 0.05},
        "f1_per_class": {"too_basal": 0.9, "lv": 0.95, "too_apical": f1_min},
    }


def _run(seed, oaat, ranking, labels=(0.9, 0.94), *, stack=0.01, f1_min=0.5, wall=400.0, rc=0):
    models = {"one-at-a-time": _model(oaat, f1_min), "ranking": _model(ranking, f1_min)}
    models["ranking" + STACK_SUFFIX] = _model(ranking + stack, f1_min)
    models["one-at-a-time" + STACK_SUFFIX] = _model(oaat, f1_min)
    return {
        "seed": seed, "exit_code": rc, "wall_s": wall, "headline": {"models": models},
        "label_headline": {"models": {
            "one-at-a-time labels": {"accuracy": {"value": labels[0]}},
            "ranking consensus": {"accuracy": {"value": labels[1]}},
        }},
    }  # fmt: skip


def test_summary_gives_mean_sd_stack_gain_and_the_targets():
    runs = [_run(0, 0.90, 0.92), _run(1, 0.92, 0.94, wall=500.0), _run(2, 0.5, 0.5, rc=1)]
    s = summarise_runs(runs)
    assert (s["runs"], s["runs_finished"]) == (3, 2)  # a failed run is not averaged
    acc = s["models"]["ranking"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.93) and acc["sd"] == pytest.approx(0.01414, abs=1e-4)
    assert s["stack_decoding_gain"]["ranking"]["accuracy"] == pytest.approx(0.01)
    assert s["stack_decoding_gain"]["one-at-a-time"]["accuracy"] == pytest.approx(0.0)
    assert s["labels"]["ranking"]["mean"] == pytest.approx(0.94)
    assert s["targets"] == {
        "ranking_labels_at_least_as_accurate": True,
        "model_vs_labels": True,
        "no_collapsed_class": True,
        "time": True,
    }
    table = runs_table(runs, s)
    assert "| **mean ± sd** |" in table and "0.930 ± 0.014" in table


def test_targets_fail_on_a_worse_ranking_model_a_collapsed_class_or_a_slow_run():
    worse = summarise_runs([_run(0, 0.93, 0.90), _run(1, 0.94, 0.91)])
    assert worse["targets"]["model_vs_labels"] is False
    # With worse ranking labels the model comparison is not required.
    excused = summarise_runs([_run(0, 0.93, 0.90, labels=(0.95, 0.90))])
    assert excused["targets"]["model_vs_labels"] is True
    assert excused["targets"]["ranking_labels_at_least_as_accurate"] is False
    collapsed = summarise_runs([_run(0, 0.9, 0.9, f1_min=0.0)])
    assert collapsed["targets"]["no_collapsed_class"] is False
    slow = summarise_runs([_run(0, 0.9, 0.9, wall=800.0)])
    assert slow["targets"]["time"] is False


def test_the_demo_seed_is_taken_out_of_the_demo_arguments():
    assert _demo_seed(["--scans", "30", "--seed", "7"]) == (7, ["--scans", "30"])
    assert _demo_seed(["--seed=3"]) == (3, [])
    assert _demo_seed([]) == (0, [])
    # `bench demo --runs 2 -- --seed 3`: the separator reached the demo and failed every run.
    assert _demo_seed(["--", "--seed", "3"]) == (3, [])
