"""Issue 19's evidence machinery: one split for both arms, the premise, tuning vs reporting
seeds, paired differences across runs, and the dose-response bench on a tiny preset."""

from __future__ import annotations

import pytest

from analysis.report import STACK_SUFFIX
from benchmarks.demo import runs_table, summarise_runs
from benchmarks.seeds import REPORTING_SEEDS, TUNING_SEEDS, check_reporting, parse_seeds
from ml_backend.jobs import TrainRequest
from ml_backend.splits import split_by_validation_scans, validation_scans


def test_validation_scans_come_from_scan_ids_alone_and_are_stable():
    scans = [f"scan{k:02d}" for k in range(40)]
    picked = validation_scans(scans, seed=3)
    assert len(picked) == 4 and set(picked) <= set(scans)
    # Order, duplicates (one id per slice) and labels do not matter: both arms get the same.
    assert validation_scans(list(reversed(scans)) * 12, seed=3) == picked
    assert validation_scans(scans, seed=4) != picked
    assert len(validation_scans(scans[:4], seed=0)) == 1
    with pytest.raises(ValueError, match="at least 2"):
        validation_scans(["only"], seed=0)


def test_split_by_validation_scans_trains_on_every_other_slice_and_tests_none():
    groups = ["a", "a", "b", "c", "c", "c"]
    train, val, test = split_by_validation_scans(groups, ("c",))
    assert (train, val, test) == ([0, 1, 2], [3, 4, 5], [])
    with pytest.raises(ValueError, match="non-empty"):
        split_by_validation_scans(groups, ("x",))


def test_train_request_carries_the_shared_split():
    req = TrainRequest(label_source="ranking", consensus_path="/x.json", val_scans=("s1", "s2"))
    assert TrainRequest.from_dict(req.to_dict()) == req
    assert req.to_dict()["val_scans"] == ["s1", "s2"]
    # A request can come from Redis: the list is bounded like every other field.
    with pytest.raises(ValueError, match="val_scans"):
        TrainRequest(label_source="ranking", consensus_path="/x.json", val_scans=("",))


def test_seeds_tuning_and_reporting_are_disjoint_and_guarded():
    assert not set(TUNING_SEEDS) & set(REPORTING_SEEDS)
    # Held-out cohorts are drawn at seed + 1000: none collides with a labelled cohort.
    assert not {s + 1000 for s in REPORTING_SEEDS} & (set(TUNING_SEEDS) | set(REPORTING_SEEDS))
    assert parse_seeds("1,2,5-7") == [1, 2, 5, 6, 7]
    assert parse_seeds("reporting") == list(REPORTING_SEEDS)
    check_reporting([500], recipe_changed=False, what="x")
    check_reporting([1, 2], recipe_changed=True, what="x")
    with pytest.raises(ValueError, match="frozen recipe"):
        check_reporting([1, 500], recipe_changed=True, what="bench model")


def test_bench_demo_refuses_a_changed_recipe_on_reporting_seeds(capsys):
    import argparse

    from benchmarks.demo import main

    args = argparse.Namespace(
        runs=2, demo_args=["--", "--seed", "500", "--epochs", "3"], scans=None, out=None,
        json=None, premise=1.0, test_scans=None,
    )  # fmt: skip
    assert main(args) == 2
    assert "frozen recipe" in capsys.readouterr().err


def _run(seed, diff, premise=1.0):
    models = {
        m: {"accuracy": {"value": 0.9}, "macro_f1": {"value": 0.85},
            "f1_per_class": {"too_basal": 0.9, "lv": 0.95, "too_apical": 0.5}}
        for m in ("one-at-a-time", "ranking", "ranking" + STACK_SUFFIX)
    }  # fmt: skip
    clustered = {
        "comparisons": [
            {"model": "ranking", "reference": "one-at-a-time",
             "accuracy_difference": {"value": diff, "low": diff - 0.02, "high": diff + 0.02,
                                     "pvalue": 0.3}},
        ]
    }  # fmt: skip
    return {
        "seed": seed, "exit_code": 0, "wall_s": 200.0,
        "headline": {"models": models, "clustered": clustered, "premise": premise},
    }  # fmt: skip


def test_runs_summary_gives_the_paired_spread_and_runs_needed_and_names_the_premise():
    runs = [_run(0, 0.01), _run(1, -0.01), _run(2, 0.03)]
    s = summarise_runs(runs)
    d = s["paired_difference"]
    assert d["mean"] == pytest.approx(0.01) and d["sd"] == pytest.approx(0.02)
    assert d["runs_to_detect_1_point"] == 32  # ((1.96 + 0.84) * 0.02 / 0.01)^2 = 31.4
    assert s["premise"] == 1.0
    table = runs_table(runs, s)
    assert table.startswith("Premise: 1.0") and "+0.030 (+0.010 to +0.050)" in table
    assert "Runs needed to detect a 1-point paired difference" in table and ": 32." in table


def test_labels_bench_damage_is_what_it_says():
    from benchmarks.labels import NOISE_SD, SHIFT, best_cuts, damaged_labels

    cuts = (0.3, 0.8)
    ids = [f"i{k}" for k in range(2000)]
    pos = {i: k / 1999 for k, i in enumerate(ids)}
    clean = damaged_labels("clean", ids, pos, pos, {}, cuts, 0)
    noise = damaged_labels("noise", ids, pos, pos, {}, cuts, 0)
    shift = damaged_labels("shift", ids, pos, pos, {}, cuts, 0)
    flipped = [pos[i] for i in ids if noise[i] != clean[i]]
    # Zero-mean noise near the cuts only: flips within a few sd, on both sides of each cut.
    assert flipped and all(min(abs(x - c) for c in cuts) < 5 * NOISE_SD for x in flipped)
    assert any(0.3 - NOISE_SD < x < 0.3 for x in flipped) and any(
        0.3 < x < 0.3 + NOISE_SD for x in flipped
    )
    moved = [pos[i] for i in ids if shift[i] != clean[i]]
    assert moved and all(0.3 <= x < 0.3 + SHIFT + 1e-9 for x in moved)
    # The best possible classifier finds the cuts the labels imply.
    assert best_cuts(pos, clean) == pytest.approx(cuts, abs=1e-3)
    assert best_cuts(pos, shift)[0] == pytest.approx(0.3 + SHIFT, abs=1e-3)
    assert best_cuts(pos, noise) == pytest.approx(cuts, abs=0.02)
    with pytest.raises(ValueError, match="damage"):
        damaged_labels("bogus", ids, pos, pos, {}, cuts, 0)


@pytest.mark.timeout(600)
def test_labels_bench_runs_on_a_tiny_preset(tmp_path):
    from benchmarks.labels import plot, run, table

    result = run(
        tmp_path, sizes=[20, 40], damages=["clean", "image"], preset="cpu-small", epochs=1,
        n_seeds=1, test_scans=2, cohort_seed=700,
    )  # fmt: skip
    rows = result["rows"]
    assert [(r["damage"], r["size"]) for r in rows] == [
        ("clean", 20),
        ("clean", 40),
        ("image", 20),
        ("image", 40),
    ]
    for r in rows:
        assert 0 <= r["cnn_accuracy"] <= 1 and 0 <= r["best_accuracy"] <= 1
        assert r["n_train"] >= r["size"]
    assert all(r["label_accuracy"] == 1.0 for r in rows if r["damage"] == "clean")
    assert result["test_slices"] > 0 and result["validation_scans"] >= 1
    assert "best possible" in table(result)
    assert plot(result, tmp_path / "p.png").stat().st_size > 1000


def test_model_study_arms_share_raters_time_and_geometry(tmp_path):
    from benchmarks.model_study import simulate_labels
    from cmr_ingest.synth import generate_cohort
    from ranking_scheduler.simulator.raters import SECONDS_PER_BATCH, SECONDS_PER_LABEL

    generate_cohort(4, tmp_path, seed=2)
    single, ranking = simulate_labels(tmp_path, 2, premise=1.0, scans=4)
    n = len(single["images"])
    # Both arms give every slice a class, at equal labelling time.
    assert n == len(ranking["images"]) > 0
    assert single["strategy"] == "single" and single["labels"] == n
    spent = ranking["batches"] * SECONDS_PER_BATCH + ranking["boundary_labels"] * SECONDS_PER_LABEL
    assert spent <= n * SECONDS_PER_LABEL + 1e-6
