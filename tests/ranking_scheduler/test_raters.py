"""The simulated panel: calibration to the study's kappas, ranking, time parity."""

from __future__ import annotations

import pytest
from scipy.stats import kendalltau

from ranking_scheduler.simulator.raters import (
    SECONDS_PER_BATCH,
    SECONDS_PER_LABEL,
    RaterPanel,
    RaterParams,
    cohens_kappa,
    kappa_study,
    study_positions,
)

KAPPA_TOL = 0.03
"""Allowed distance from the study's kappas (0.90 intra, 0.77 inter): about two standard errors
of a kappa on the study's 333 double-labelled images, far tighter than the study can claim."""


def test_one_at_a_time_labels_reproduce_the_study_kappas():
    intra, inter = kappa_study(study_positions(5000, seed=1), seeds=(0, 1, 2))
    assert intra == pytest.approx(0.90, abs=KAPPA_TOL)
    assert inter == pytest.approx(0.77, abs=KAPPA_TOL)


def test_time_parity_constants():
    assert pytest.approx(5 * 3600) == SECONDS_PER_LABEL * 3323
    assert pytest.approx(5 * 3600) == SECONDS_PER_BATCH * 1575


def test_rank_is_a_noisy_but_faithful_order_most_basal_first():
    pos = study_positions(400, seed=2)
    panel = RaterPanel.from_positions(pos, n_raters=3, seed=2)
    ids = list(pos)
    order = panel.raters[0].rank(ids)
    assert sorted(order) == sorted(ids)
    tau = kendalltau(range(len(order)), [pos[i] for i in order]).statistic
    assert 0.9 < tau < 1.0


def test_noiseless_rater_is_exact_and_boundary_offsets_only_touch_labels():
    pos = study_positions(200, seed=3)
    exact = RaterParams(persistent_sd=0, view_sd=0, offset_sd=0, lapse=0)
    rater = RaterPanel.from_positions(pos, 1, 0, exact).raters[0]
    assert rater.rank(list(pos)) == sorted(pos, key=pos.__getitem__)
    shifted = RaterParams(persistent_sd=0, view_sd=0, offset_sd=0.2, lapse=0)
    rater = RaterPanel.from_positions(pos, 1, 5, shifted).raters[0]
    assert rater.rank(list(pos)) == sorted(pos, key=pos.__getitem__)
    truth = [RaterPanel.from_positions(pos, 1, 0, exact).raters[0].classify(i) for i in pos]
    assert [rater.classify(i) for i in pos] != truth


def test_persistent_noise_makes_a_rater_consistent_with_themself():
    pos = study_positions(3000, seed=4)
    panel = RaterPanel.from_positions(pos, 2, 4)
    a, b = panel.raters
    first = [a.classify(i) for i in pos]
    again = [a.classify(i) for i in pos]
    other = [b.classify(i) for i in pos]
    assert cohens_kappa(first, again) > cohens_kappa(first, other)


def test_same_seed_same_panel():
    pos = study_positions(100, seed=5)
    one = RaterPanel.from_positions(pos, 3, 9).raters[1]
    two = RaterPanel.from_positions(pos, 3, 9).raters[1]
    ids = list(pos)[:8]
    assert one.rank(ids) == two.rank(ids) and one.classify(ids[0]) == two.classify(ids[0])


def test_bad_input():
    with pytest.raises(ValueError, match="positions"):
        RaterPanel.from_positions({"a": 1.5})
    with pytest.raises(ValueError, match="n_raters"):
        RaterPanel.from_positions({"a": 0.5}, n_raters=0)
    with pytest.raises(ValueError, match="lapse"):
        RaterParams(lapse=1.0)
    panel = RaterPanel.from_positions({"a": 0.5, "b": 0.2})
    with pytest.raises(ValueError, match="unknown"):
        panel.raters[0].rank(["a", "zzz"])
