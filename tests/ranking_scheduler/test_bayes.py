"""The ranked-probit model: EP update against closed forms and Monte Carlo; rater noise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from ranking_scheduler.engine.bayes import BayesModel, fit_beta, ranking_update

GOLDEN = json.loads((Path(__file__).parent / "data" / "rating_updates.json").read_text())
MC_TOL = 0.01
"""Monte Carlo error of the golden moments (2e6 draws) plus EP's approximation error."""


def test_two_images_match_the_trueskill_closed_form():
    mu, var, beta2 = [0.3, 0.1], [0.5, 0.2], 0.04
    c = math.sqrt(var[0] + var[1] + 2 * beta2)
    t = (mu[0] - mu[1]) / c
    v = norm.pdf(t) / norm.cdf(t)
    w = v * (v + t)
    new_mu, new_var = ranking_update(mu, var, beta2)
    assert new_mu == pytest.approx([mu[0] + var[0] / c * v, mu[1] - var[1] / c * v], abs=1e-9)
    assert new_var == pytest.approx(
        [var[0] * (1 - var[0] / c**2 * w), var[1] * (1 - var[1] / c**2 * w)], abs=1e-9
    )


@pytest.mark.parametrize("case", GOLDEN["ranked_probit"], ids=lambda c: c["desc"][:40])
def test_whole_ranking_update_matches_monte_carlo(case):
    new_mu, new_var = ranking_update(case["mu"], case["var"], case["beta2"])
    assert new_mu == pytest.approx(case["expected_mu"], abs=MC_TOL)
    assert new_var == pytest.approx(case["expected_var"], abs=MC_TOL)


def test_update_orders_the_means_and_shrinks_the_variances():
    new_mu, new_var = ranking_update([0.0] * 8, [1.0] * 8, 0.04)
    assert all(a > b for a, b in zip(new_mu, new_mu[1:], strict=False))
    assert max(new_var) < 1.0


def test_rater_noise_is_recovered_and_separates_raters():
    rng = np.random.default_rng(3)
    n = 600
    truth = rng.standard_normal(n)
    model = BayesModel(n)
    noise = {"careful": 0.05, "loose": 0.4}
    for b in range(600):
        rater = "careful" if b % 2 else "loose"
        idx = rng.choice(n, 8, replace=False)
        seen = truth[idx] + noise[rater] * rng.standard_normal(8)
        model.update(list(idx[np.argsort(-seen)]), rater)
    est = model.rater_noise()
    assert est["careful"] < est["loose"]
    assert 0.2 < est["loose"] < 0.8


def test_fit_beta_needs_pairs():
    with pytest.raises(ValueError, match="diffs"):
        fit_beta(np.array([]), np.array([]))
