"""McNemar's test of two classifiers scored on the same images (McNemar 1947; Dietterich 1998).

Only the discordant images count: ``b`` = right under model A and wrong under B, ``c`` = wrong
under A and right under B. With few discordant images (``b + c`` below
:data:`EXACT_BELOW`) the exact two-sided binomial test is used, otherwise the chi-square
statistic with Edwards' continuity correction ``(|b - c| - 1)^2 / (b + c)`` on 1 d.f. — the
same numbers as statsmodels' ``mcnemar(table, exact=True)`` / ``exact=False, correction=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "EXACT_BELOW",
    "McNemar",
    "mcnemar_from_correct",
    "mcnemar_range_from_marginals",
    "mcnemar_test",
]

#: Use the exact binomial test when fewer discordant pairs than this (a common rule of thumb:
#: the chi-square approximation is poor below about 25).
EXACT_BELOW = 25


@dataclass(frozen=True)
class McNemar:
    """Result of McNemar's test: discordant counts, statistic, P value and the method used."""

    b: int
    c: int
    statistic: float
    pvalue: float
    method: str  # "exact binomial" or "chi-square, continuity-corrected"


def mcnemar_test(b: int, c: int, *, exact: bool | None = None) -> McNemar:
    """McNemar's test from the discordant counts ``b`` and ``c``.

    ``exact=None`` picks the exact test when ``b + c < EXACT_BELOW``. With no discordant pair
    the models cannot be told apart and P = 1. The exact statistic is ``min(b, c)``.
    """
    for name, value in (("b", b), ("c", c)):
        if int(value) != value or value < 0:
            raise ValueError(f"McNemar count {name} must be a non-negative integer, got {value!r}")
    b, c = int(b), int(c)
    n = b + c
    if exact is None:
        exact = n < EXACT_BELOW
    if exact:
        k = min(b, c)
        p = 1.0 if n == 0 else min(1.0, 2.0 * float(stats.binom.cdf(k, n, 0.5)))
        return McNemar(b, c, float(k), p, "exact binomial")
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, "chi-square, continuity-corrected")
    stat = (abs(b - c) - 1) ** 2 / n
    return McNemar(
        b, c, float(stat), float(stats.chi2.sf(stat, 1)), "chi-square, continuity-corrected"
    )


def mcnemar_from_correct(
    correct_a: Sequence[bool] | np.ndarray,
    correct_b: Sequence[bool] | np.ndarray,
    *,
    exact: bool | None = None,
) -> McNemar:
    """McNemar's test from per-image correctness of two models on the same images, same order."""
    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    if a.shape != bb.shape or a.ndim != 1:
        raise ValueError(
            f"correctness vectors must be 1-D and aligned, got {a.shape} and {bb.shape}"
        )
    return mcnemar_test(int(np.sum(a & ~bb)), int(np.sum(~a & bb)), exact=exact)


def mcnemar_range_from_marginals(
    correct_a: int, correct_b: int, n: int, *, exact: bool | None = None
) -> tuple[McNemar, McNemar]:
    """The most and least significant McNemar results consistent with two accuracies.

    A paper that prints only each model's confusion matrix (as the study's Table 3 does) fixes
    how many images each model gets right, ``correct_a`` and ``correct_b`` out of ``n``, but
    not which: the discordant counts satisfy ``c - b = correct_b - correct_a`` with
    ``b <= min(correct_a, n - correct_b)``. This enumerates every such pairing and returns
    ``(smallest P, largest P)`` so a published P value can be checked for consistency.
    """
    for name, value in (("correct_a", correct_a), ("correct_b", correct_b)):
        if int(value) != value or not 0 <= value <= n:
            raise ValueError(f"{name} must be an integer in [0, n={n}], got {value!r}")
    d = int(correct_b) - int(correct_a)
    b_low = max(0, -d)
    b_high = min(int(correct_a), n - int(correct_b))
    results = [mcnemar_test(b, b + d, exact=exact) for b in range(b_low, b_high + 1)]
    results.sort(key=lambda r: r.pvalue)
    return results[0], results[-1]
