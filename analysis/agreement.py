"""Cohen's κ between two sets of labels on the same images, with a large-sample interval.

Used for intra-rater (one rater, two passes), inter-rater and strategy-vs-strategy agreement
(the study's Table 5 and its κ = 0.67 between the two labelling strategies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.metrics import confusion_matrix
from slicerank_base import CLASSES

__all__ = ["Kappa", "cohen_kappa", "kappa_from_table"]


@dataclass(frozen=True)
class Kappa:
    """Cohen's κ with its standard error and a normal confidence interval."""

    kappa: float
    se: float
    low: float
    high: float
    n: int
    observed_agreement: float
    expected_agreement: float


def kappa_from_table(
    table: np.ndarray | Sequence[Sequence[int]], confidence: float = 0.95
) -> Kappa:
    """Cohen's κ from a square agreement table (rater A in rows, rater B in columns).

    The standard error is the large-sample one of Fleiss, Cohen & Everitt (1969, Psychol Bull
    72:323), the ``std_kappa`` of statsmodels' ``cohens_kappa``; the interval is κ ± z·SE,
    clipped to [-1, 1]. When chance agreement is perfect (both raters always give one and the
    same class) κ is undefined and returned as NaN.
    """
    t = np.asarray(table, dtype=float)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"agreement table must be square, got shape {t.shape}")
    if np.any(t < 0):
        raise ValueError("agreement table counts must be non-negative")
    n = t.sum()
    if n == 0:
        raise ValueError("agreement table is empty")
    p = t / n
    rows = p.sum(axis=1)
    cols = p.sum(axis=0)
    po = float(np.trace(p))
    pe = float(rows @ cols)
    if np.isclose(pe, 1.0):
        nan = float("nan")
        return Kappa(nan, nan, nan, nan, int(n), po, pe)
    kappa = (po - pe) / (1 - pe)
    diag = np.diag(p)
    term_a = float(np.sum(diag * (1 - (rows + cols) * (1 - kappa)) ** 2))
    # (p_.i + p_j.)^2 for cell (i, j): column total of row-class i plus row total of column-class j.
    off = p * (cols[:, None] + rows[None, :]) ** 2
    np.fill_diagonal(off, 0.0)
    term_b = (1 - kappa) ** 2 * float(off.sum())
    term_c = (kappa - pe * (1 - kappa)) ** 2
    var = max(0.0, (term_a + term_b - term_c) / (1 - pe) ** 2 / n)
    se = float(np.sqrt(var))
    z = stats.norm.ppf(0.5 + confidence / 2)
    return Kappa(
        kappa=float(kappa),
        se=se,
        low=max(-1.0, kappa - z * se),
        high=min(1.0, kappa + z * se),
        n=int(n),
        observed_agreement=po,
        expected_agreement=pe,
    )


def cohen_kappa(
    labels_a: Sequence[str],
    labels_b: Sequence[str],
    classes: Sequence[str] = CLASSES,
    confidence: float = 0.95,
) -> Kappa:
    """Cohen's κ between two label sequences aligned image by image (see :func:`kappa_from_table`)."""
    return kappa_from_table(confusion_matrix(labels_a, labels_b, classes), confidence)
