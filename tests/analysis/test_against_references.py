"""κ, McNemar, metrics and AUC intervals checked against scikit-learn / statsmodels and textbooks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.inter_rater import cohens_kappa as sm_kappa

from analysis.agreement import cohen_kappa, kappa_from_table
from analysis.intervals import (
    bootstrap_interval,
    delong_interval,
    delong_test,
    delong_variance,
    resample_counts,
    resampled_auc,
)
from analysis.mcnemar import EXACT_BELOW, mcnemar_from_correct, mcnemar_test
from analysis.metrics import (
    confusion_matrix,
    f1_scores,
    macro_f1,
    precision_recall,
    roc_auc,
    roc_curve,
    weighted_f1,
)
from slicerank_base import CLASSES

#: Agreement with the reference implementations, up to floating-point noise.
TOL = 1e-9
SEEDS = range(25)


def _random_labels(rng, n, p=(0.2, 0.7, 0.1)):
    return list(rng.choice(CLASSES, size=n, p=p))


def _noisy_copy(rng, labels, flip):
    return [rng.choice(CLASSES) if rng.random() < flip else y for y in labels]


# --- Cohen's kappa -------------------------------------------------------------------------


def test_kappa_textbook_example():
    """Wikipedia's "Cohen's kappa" worked example: po = 0.7, pe = 0.5, κ = 0.4."""
    k = kappa_from_table([[20, 5], [10, 15]])
    assert k.observed_agreement == pytest.approx(0.7)
    assert k.expected_agreement == pytest.approx(0.5)
    assert k.kappa == pytest.approx(0.4)


def test_kappa_sas_printout_example():
    """SAS PROC FREQ "Simple Kappa Coefficient" printout for [[0,4,1],[0,8,0],[0,1,5]]
    (the reference statsmodels tests against): κ 0.4842, ASE 0.1380, 95% CI 0.2137–0.7547."""
    k = kappa_from_table([[0, 4, 1], [0, 8, 0], [0, 1, 5]])
    assert k.kappa == pytest.approx(0.4842, abs=5e-5)
    assert k.se == pytest.approx(0.1380, abs=5e-5)
    assert (k.low, k.high) == (pytest.approx(0.2137, abs=5e-5), pytest.approx(0.7547, abs=5e-5))


@pytest.mark.parametrize("seed", SEEDS)
def test_kappa_matches_sklearn_and_statsmodels_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    a = _random_labels(rng, int(rng.integers(20, 400)))
    b = _noisy_copy(rng, a, flip=float(rng.uniform(0.05, 0.9)))
    ours = cohen_kappa(a, b)
    assert ours.kappa == pytest.approx(skm.cohen_kappa_score(a, b), abs=TOL)
    ref = sm_kappa(confusion_matrix(a, b))
    assert ours.kappa == pytest.approx(ref.kappa, abs=TOL)
    assert ours.se == pytest.approx(ref.std_kappa, abs=TOL)
    assert ours.low == pytest.approx(max(-1, ref.kappa_low), abs=TOL)
    assert ours.high == pytest.approx(min(1, ref.kappa_upp), abs=TOL)


def test_kappa_undefined_when_both_raters_use_one_class():
    k = cohen_kappa(["lv"] * 5, ["lv"] * 5)
    assert np.isnan(k.kappa)


# --- McNemar -------------------------------------------------------------------------------


def test_mcnemar_textbook_example():
    """Agresti (2007) §8.1, presidential approval, b = 150, c = 86: the book's z² = 17.36
    (no continuity correction); the corrected statistic we use is (|150 - 86| - 1)² / 236."""
    table = np.array([[794, 150], [86, 570]])
    assert sm_mcnemar(table, exact=False, correction=False).statistic == pytest.approx(
        17.36, abs=0.005
    )
    result = mcnemar_test(150, 86)
    assert result.method == "chi-square, continuity-corrected"
    assert result.statistic == pytest.approx(16.818, abs=5e-4)
    assert result.pvalue == pytest.approx(
        sm_mcnemar(table, exact=False, correction=True).pvalue, abs=TOL
    )
    assert result.pvalue < 1e-4


def test_mcnemar_exact_small_example():
    """b = 1, c = 6: two-sided exact P = 2 · (1 + 7) / 2^7 = 0.125."""
    result = mcnemar_test(1, 6)
    assert result.method == "exact binomial"
    assert result.pvalue == pytest.approx(0.125, abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_mcnemar_matches_statsmodels_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    b, c = (int(x) for x in rng.integers(0, 60, size=2))
    table = np.array([[int(rng.integers(0, 100)), b], [c, int(rng.integers(0, 100))]])
    exact = mcnemar_test(b, c, exact=True)
    assert exact.pvalue == pytest.approx(min(1.0, sm_mcnemar(table, exact=True).pvalue), abs=TOL)
    assert exact.statistic == sm_mcnemar(table, exact=True).statistic
    if b + c:
        chi = mcnemar_test(b, c, exact=False)
        ref = sm_mcnemar(table, exact=False, correction=True)
        assert chi.statistic == pytest.approx(ref.statistic, abs=TOL)
        assert chi.pvalue == pytest.approx(ref.pvalue, abs=TOL)
    auto = mcnemar_test(b, c)
    assert auto.method == (
        "exact binomial" if b + c < EXACT_BELOW else "chi-square, continuity-corrected"
    )


def test_mcnemar_from_correctness_counts_discordant_pairs():
    a = [True, True, False, False, True]
    b = [True, False, True, True, True]
    result = mcnemar_from_correct(a, b)
    assert (result.b, result.c) == (1, 2)
    assert mcnemar_test(0, 0).pvalue == 1.0
    with pytest.raises(ValueError, match="non-negative integer"):
        mcnemar_test(-1, 3)


# --- metrics vs scikit-learn ---------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = _random_labels(rng, int(rng.integers(5, 300)))
    p = _noisy_copy(rng, y, flip=float(rng.uniform(0, 1)))
    cm = confusion_matrix(y, p)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, p, labels=list(CLASSES)))
    kw = {"labels": list(CLASSES), "zero_division": 0}
    np.testing.assert_allclose(f1_scores(cm), skm.f1_score(y, p, average=None, **kw), atol=TOL)
    assert macro_f1(cm) == pytest.approx(skm.f1_score(y, p, average="macro", **kw), abs=TOL)
    assert weighted_f1(cm) == pytest.approx(skm.f1_score(y, p, average="weighted", **kw), abs=TOL)
    precision, recall = precision_recall(cm)
    np.testing.assert_allclose(precision, skm.precision_score(y, p, average=None, **kw), atol=TOL)
    np.testing.assert_allclose(recall, skm.recall_score(y, p, average=None, **kw), atol=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 300))
    y = rng.random(n) < 0.3
    y[0], y[1] = True, False
    # Rounded scores create ties, the case where implementations most often differ.
    s = np.round(rng.random(n) + y * rng.uniform(0, 1), int(rng.integers(1, 4)))
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=TOL)
    fpr, tpr, thr = roc_curve(y, s)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=TOL)
    np.testing.assert_allclose(tpr, ref_tpr, atol=TOL)
    np.testing.assert_allclose(thr[1:], ref_thr[1:], atol=TOL)


# --- DeLong --------------------------------------------------------------------------------


def _delong_naive(y, s):
    """DeLong et al. (1988) placement values by direct O(m·n) comparison."""
    pos, neg = s[y], s[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size, v10, v01


@pytest.mark.parametrize("seed", range(10))
def test_delong_variance_matches_direct_formula(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 200))
    y = rng.random(n) < 0.4
    y[:2] = [True, False]
    s = np.round(rng.normal(size=n) + y, 1)
    auc, var = delong_variance(y, s)
    ref_auc, ref_var, _, _ = _delong_naive(y, s)
    assert auc == pytest.approx(ref_auc, abs=TOL)
    assert var == pytest.approx(ref_var, abs=TOL)
    value, low, high = delong_interval(y, s)
    assert 0 <= low <= value <= high <= 1


def test_delong_paired_test_matches_direct_formula():
    rng = np.random.default_rng(7)
    n = 150
    y = rng.random(n) < 0.5
    a = rng.normal(size=n) + 1.2 * y
    b = rng.normal(size=n) + 0.4 * y
    result = delong_test(y, a, b)
    _, _, v10a, v01a = _delong_naive(y, a)
    _, _, v10b, v01b = _delong_naive(y, b)
    s10 = np.cov(v10a, v10b)
    s01 = np.cov(v01a, v01b)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / y.sum() + (
        s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]
    ) / (~y).sum()
    assert result.z == pytest.approx((result.auc_a - result.auc_b) / np.sqrt(var), rel=1e-9)
    assert result.pvalue < 0.01
    same = delong_test(y, a, a)
    assert same.pvalue == 1.0


def test_bootstrap_is_reproducible_for_a_seed():
    values = np.arange(50.0)

    def stat(idx):
        return values[idx].mean(axis=1)

    first = bootstrap_interval(stat, 50, rng=np.random.default_rng(3), n_boot=500)
    second = bootstrap_interval(stat, 50, rng=np.random.default_rng(3), n_boot=500)
    other = bootstrap_interval(stat, 50, rng=np.random.default_rng(4), n_boot=500)
    assert first == second
    assert first != other
    assert first[0] < values.mean() < first[1]


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_resampled_auc_equals_auc_of_each_resample(seed, ties):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = rng.random(n) < 0.3
    s = rng.random(n) + 0.5 * y
    if ties:
        s = np.round(s, 1)
    idx = rng.integers(0, n, size=(40, n))
    fast = resampled_auc(y, s, resample_counts(idx, n))
    for row, value in zip(idx, fast, strict=True):
        yy, ss = y[row], s[row]
        if yy.all() or not yy.any():
            assert np.isnan(value)
        else:
            assert value == pytest.approx(skm.roc_auc_score(yy, ss), abs=TOL)


def test_bootstrap_confusion_matrices_match_resampled_labels():
    """The per-resample F1 (from multiplicities) equals scikit-learn's on the resampled labels."""
    from analysis.evaluation import _boot_model
    from analysis.metrics import class_indices

    rng = np.random.default_rng(11)
    n = 60
    y = _random_labels(rng, n)
    p = _noisy_copy(rng, y, flip=0.4)
    idx = rng.integers(0, n, size=(30, n))
    f1, support, auc = _boot_model(
        class_indices(y), class_indices(p), None, resample_counts(idx, n).astype(float)
    )
    assert auc is None
    for row, f1_row, support_row in zip(idx, f1, support, strict=True):
        yy = [y[i] for i in row]
        pp = [p[i] for i in row]
        ref = skm.f1_score(yy, pp, labels=list(CLASSES), average=None, zero_division=0)
        present = [c in yy or c in pp for c in CLASSES]
        np.testing.assert_allclose(f1_row[present], ref[present], atol=TOL)
        assert np.all(np.isnan(f1_row[~np.asarray(present)]))
        np.testing.assert_array_equal(support_row, [yy.count(c) for c in CLASSES])
