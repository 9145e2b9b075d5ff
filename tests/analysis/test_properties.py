"""Property tests (hypothesis) for the metric, interval and agreement functions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.agreement import cohen_kappa
from analysis.intervals import clopper_pearson_interval, delong_interval, wilson_interval
from analysis.mcnemar import mcnemar_test
from analysis.metrics import (
    BinaryTable,
    accuracy,
    confusion_matrix,
    f1_scores,
    macro_f1,
    roc_auc,
    weighted_f1,
)
from slicerank_base import CLASSES

#: Floating-point slack for identities that hold exactly in real arithmetic.
EPS = 1e-12

label = st.sampled_from(CLASSES)


@st.composite
def paired_labels(draw, min_size=1, max_size=80):
    """Two aligned label lists and a permutation of their rows."""
    n = draw(st.integers(min_size, max_size))
    a = draw(st.lists(label, min_size=n, max_size=n))
    b = draw(st.lists(label, min_size=n, max_size=n))
    perm = draw(st.permutations(range(n)))
    return a, b, list(perm)


@st.composite
def scored(draw, max_size=60):
    """Binary labels with both classes present and (possibly tied) scores."""
    n = draw(st.integers(2, max_size))
    y = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    y[0], y[1] = True, False
    s = draw(st.lists(st.integers(-5, 5).map(float), min_size=n, max_size=n))
    perm = draw(st.permutations(range(n)))
    return np.array(y), np.array(s), np.array(perm)


SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(paired_labels())
def test_accuracy_and_f1_bounds_symmetry_and_row_order(data):
    a, b, perm = data
    acc = accuracy(a, b)
    assert 0 <= acc <= 1
    assert acc == accuracy(b, a)
    assert acc == accuracy([a[i] for i in perm], [b[i] for i in perm])
    cm = confusion_matrix(a, b)
    assert cm.sum() == len(a)
    np.testing.assert_array_equal(confusion_matrix(b, a), cm.T)
    np.testing.assert_array_equal(confusion_matrix([a[i] for i in perm], [b[i] for i in perm]), cm)
    f1 = f1_scores(cm)
    assert np.all((f1 >= 0) & (f1 <= 1))
    # F1 weighs false positives and false negatives alike, so swapping truth and prediction keeps it.
    np.testing.assert_allclose(f1_scores(cm.T), f1, atol=EPS)
    assert 0 <= macro_f1(cm) <= 1
    assert 0 <= weighted_f1(cm) <= 1 + EPS


@SETTINGS
@given(paired_labels())
def test_perfect_agreement_scores_one(data):
    a, _, _ = data
    assert accuracy(a, a) == 1
    cm = confusion_matrix(a, a)
    present = cm.sum(axis=1) > 0
    np.testing.assert_allclose(f1_scores(cm)[present], 1)
    if len(set(a)) > 1:
        assert abs(cohen_kappa(a, a).kappa - 1) < 1e-9


@SETTINGS
@given(paired_labels(min_size=2))
def test_kappa_bounds_symmetry_and_row_order(data):
    a, b, perm = data
    k = cohen_kappa(a, b)
    if np.isnan(k.kappa):
        return
    assert -1 - EPS <= k.kappa <= 1 + EPS
    assert -1 <= k.low <= k.high <= 1
    assert k.se >= 0
    swapped = cohen_kappa(b, a)
    assert abs(swapped.kappa - k.kappa) < 1e-9
    assert abs(swapped.se - k.se) < 1e-9
    shuffled = cohen_kappa([a[i] for i in perm], [b[i] for i in perm])
    assert abs(shuffled.kappa - k.kappa) < 1e-9


@SETTINGS
@given(paired_labels())
def test_binary_table_is_consistent(data):
    a, b, _ = data
    t = BinaryTable.from_labels(a, b)
    assert t.n == len(a)
    assert t.accuracy == sum((x == "lv") == (y == "lv") for x, y in zip(a, b, strict=True)) / len(a)
    for value in (t.sensitivity, t.specificity, t.ppv, t.npv):
        assert np.isnan(value) or 0 <= value <= 1
    np.testing.assert_equal(t.paper_recall, t.ppv)
    np.testing.assert_equal(t.paper_precision, t.npv)
    swapped = BinaryTable.from_labels(b, a)
    assert (swapped.fn, swapped.fp) == (t.fp, t.fn)


@SETTINGS
@given(scored())
def test_auc_bounds_symmetry_and_invariances(data):
    y, s, perm = data
    auc = roc_auc(y, s)
    assert 0 <= auc <= 1
    assert abs(roc_auc(y, -s) - (1 - auc)) < 1e-9
    assert abs(roc_auc(~y, s) - (1 - auc)) < 1e-9
    assert abs(roc_auc(y[perm], s[perm]) - auc) < 1e-12
    # Any strictly increasing transform of the scores leaves the ranking, and so the AUC, alone.
    assert abs(roc_auc(y, np.exp(s / 3) + 7) - auc) < 1e-12
    value, low, high = delong_interval(y, s)
    assert abs(value - auc) < 1e-12
    assert 0 <= low <= value <= high <= 1


@SETTINGS
@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_proportion_intervals_contain_the_estimate(kn):
    k, n = kn
    for interval in (wilson_interval, clopper_pearson_interval):
        low, high = interval(k, n)
        assert 0 <= low <= k / n <= high <= 1
    low, high = clopper_pearson_interval(k, n)
    assert (k == 0) == (low == 0) and (k == n) == (high == 1)


@SETTINGS
@given(st.integers(0, 200), st.integers(0, 200))
def test_mcnemar_symmetric_and_bounded(b, c):
    for exact in (True, False):
        r = mcnemar_test(b, c, exact=exact)
        assert 0 <= r.pvalue <= 1
        assert abs(mcnemar_test(c, b, exact=exact).pvalue - r.pvalue) < 1e-12
    if b == c:
        assert mcnemar_test(b, c, exact=True).pvalue == 1.0
