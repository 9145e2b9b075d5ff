"""The scan-clustered bootstrap: resamples whole scans, on a case computable by hand."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.intervals import cluster_bootstrap, runs_to_detect
from analysis.predictions import Predictions
from analysis.report import build_report


def test_resamples_whole_scans_with_the_ratio_estimator():
    # Scan A: 3 slices, all correct; scan B: 1 slice, wrong. Drawing two scans with
    # replacement gives AA (6/6 = 1, p 1/4), AB or BA (3/4, p 1/2) or BB (0/2 = 0, p 1/4):
    # nothing else. An image bootstrap would give every k/4.
    values, clusters = [1, 1, 1, 0], ["A", "A", "A", "B"]
    b = cluster_bootstrap(values, clusters, rng=np.random.default_rng(0), n_boot=4000)
    assert b.value == 0.75 and b.n_clusters == 2 and b.n_images == 4
    assert (b.low, b.high) == (0.0, 1.0)
    # Half the resamples are AB/BA, a quarter each AA and BB.
    draws = []
    for seed in range(3):
        r = cluster_bootstrap(values, clusters, rng=np.random.default_rng(seed), n_boot=1)
        draws.append(r.low)
    assert set(draws) <= {0.0, 0.75, 1.0}


def test_distribution_of_resampled_means_matches_the_hand_count():
    from analysis.intervals import percentile_interval, resample_counts

    rng = np.random.default_rng(1)
    draws = rng.integers(0, 2, size=(20000, 2))
    counts = resample_counts(draws, 2)
    boot = (counts @ np.array([3.0, 0.0])) / (counts @ np.array([3.0, 1.0]))
    share = {v: float(np.mean(boot == v)) for v in (0.0, 0.75, 1.0)}
    assert share[0.75] == pytest.approx(0.5, abs=0.02)
    assert share[1.0] == pytest.approx(0.25, abs=0.02)
    assert sum(share.values()) == pytest.approx(1.0)
    assert percentile_interval(boot) == (0.0, 1.0)


def test_clustered_interval_is_wider_than_independent_when_scans_cluster():
    # 20 scans of 10 slices; whole scans are right or wrong: the slices carry 20 scans'
    # worth of information, not 200 images'.
    rng = np.random.default_rng(2)
    scan_ok = rng.random(20) < 0.8
    values = np.repeat(scan_ok, 10).astype(float)
    clusters = np.repeat([f"s{k}" for k in range(20)], 10)
    c = cluster_bootstrap(values, clusters, rng=np.random.default_rng(0))
    n = values.size
    se_iid = np.sqrt(values.mean() * (1 - values.mean()) / n)
    assert (c.high - c.low) > 2.5 * (2 * 1.96 * se_iid)


def test_paired_difference_and_p_value():
    # Model b is right on every slice of 10 scans where a is wrong, and equal elsewhere.
    a = np.r_[np.zeros(30), np.ones(70)]
    b = np.ones(100)
    clusters = np.repeat([f"s{k}" for k in range(20)], 5)
    d = cluster_bootstrap(b - a, clusters, rng=np.random.default_rng(0))
    assert d.value == pytest.approx(0.30)
    assert d.low > 0 and d.pvalue < 0.01
    same = cluster_bootstrap(a - a, clusters, rng=np.random.default_rng(0))
    assert same.value == 0 and same.pvalue == 1.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="equally long"):
        cluster_bootstrap([1, 0], ["a"], rng=np.random.default_rng(0))


def test_runs_to_detect_one_point():
    # sd 0.01 per run: (1.96 + 0.84)^2 = 7.85 -> 8 runs; sd 0.02 -> 32.
    assert runs_to_detect(0.01) == 8
    assert runs_to_detect(0.02) == 32
    assert runs_to_detect(float("nan")) is None


def test_report_names_the_clustered_bootstrap_and_opens_with_the_lead_lines(tmp_path):
    ids = [f"i{k}" for k in range(40)]
    truth = {i: ("lv" if k % 4 else "too_basal") for k, i in enumerate(ids)}
    ref = Predictions.from_labels({i: "lv" for i in ids}, source="ref")
    good = Predictions.from_labels(dict(truth), source="good")
    clusters = {i: f"scan{k // 5}" for k, i in enumerate(ids)}
    result = build_report(
        truth, {"ref": ref, "good": good}, tmp_path, clusters=clusters,
        lead=lambda s: [f"good beats ref by {s['clustered']['comparisons'][0]['accuracy_difference']['value']:.2f}"],
    )  # fmt: skip
    md = result.markdown.read_text()
    assert md.index("## In brief") < md.index("good beats ref by 0.25") < md.index("## Table 2")
    assert "resampling scans" in md and "(8 scans, 40 images)" in md
    assert result.summary["clustered"]["models"]["good"]["accuracy"]["value"] == 1.0
    html = result.html.read_text()
    assert "In brief" in html and "resampling scans" in html


def test_report_without_clusters_is_unchanged(tmp_path):
    truth = {"a": "lv", "b": "too_basal"}
    result = build_report(truth, {"m": Predictions.from_labels(truth)}, tmp_path)
    assert result.summary["clustered"] is None
    assert "In brief" not in result.markdown.read_text()
