"""Confidence intervals: Wilson and Clopper–Pearson for proportions, DeLong and bootstrap for AUC.

Which method goes where (the report states it too):

* proportions (accuracy, the study's recall/precision, sensitivity, specificity): exact
  Clopper–Pearson by default, because it reproduces every interval of the study's Table 4
  (Wilson misses two of the twelve bounds); Wilson is available as ``method="wilson"``;
* one class's one-vs-rest ROC AUC: DeLong's variance (DeLong, DeLong & Clarke-Pearson 1988,
  Biometrics 44:837) with a normal interval clipped to [0, 1], and DeLong's paired test
  between two models scored on the same images;
* F1 scores and the averaged AUCs: a percentile bootstrap over images with an explicit
  ``numpy.random.Generator`` (no global random state);
* accuracy and paired accuracy differences when images cluster in scans (slices of one scan
  share anatomy, imaging and labels' errors, so they are not independent): a percentile
  bootstrap that resamples whole scans (:func:`cluster_bootstrap`), the ratio estimator
  (correct slices over slices drawn) in every resample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "PROPORTION_METHODS",
    "DeLongTest",
    "ClusterBootstrap",
    "bootstrap_interval",
    "clopper_pearson_interval",
    "cluster_bootstrap",
    "runs_to_detect",
    "delong_interval",
    "delong_test",
    "delong_variance",
    "percentile_interval",
    "proportion_interval",
    "resample_counts",
    "resampled_auc",
    "wilson_interval",
]

#: Names accepted by :func:`proportion_interval`.
PROPORTION_METHODS = ("clopper-pearson", "wilson")


def _check_counts(k: int, n: int, confidence: float) -> None:
    if int(n) != n or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if int(k) != k or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in [0, n={n}], got {k!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (Wilson 1927)."""
    _check_counts(k, n, confidence)
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 or k = n the bound is exactly 0 or 1; rounding would put it a hair inside.
    low = 0.0 if k == 0 else max(0.0, float(centre - half))
    high = 1.0 if k == n else min(1.0, float(centre + half))
    return low, high


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson 1934) interval from beta quantiles; 0 and 1 at the edges."""
    _check_counts(k, n, confidence)
    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def proportion_interval(
    k: int, n: int, *, method: str = "clopper-pearson", confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for a proportion by ``method`` (one of :data:`PROPORTION_METHODS`)."""
    if method == "clopper-pearson":
        return clopper_pearson_interval(k, n, confidence)
    if method == "wilson":
        return wilson_interval(k, n, confidence)
    raise ValueError(f"unknown interval method {method!r}; use one of {PROPORTION_METHODS}")


def _structural_components(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's placement values V10 (per positive) and V01 (per negative).

    Uses the midrank identity of Sun & Xu (2014, IEEE SPL 21:1389) so the cost is a sort,
    not the O(m·n) pairwise comparison of the original paper.
    """
    pos = s[y]
    neg = s[~y]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        raise ValueError("AUC needs at least one positive and one negative image")
    all_ranks = stats.rankdata(s)
    pos_ranks = stats.rankdata(pos)
    neg_ranks = stats.rankdata(neg)
    v10 = (all_ranks[y] - pos_ranks) / n
    v01 = 1.0 - (all_ranks[~y] - neg_ranks) / m
    auc = float(v10.mean())
    return auc, v10, v01


def _as_binary(y_binary, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_binary, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D and the same length")
    return y, s


def delong_variance(
    y_binary: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """AUC and its DeLong variance ``S10/m + S01/n``."""
    y, s = _as_binary(y_binary, scores)
    auc, v10, v01 = _structural_components(y, s)
    s10 = v10.var(ddof=1) if v10.size > 1 else 0.0
    s01 = v01.var(ddof=1) if v01.size > 1 else 0.0
    return auc, float(s10 / v10.size + s01 / v01.size)


def delong_interval(
    y_binary: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """``(auc, low, high)``: DeLong normal interval, clipped to [0, 1]."""
    auc, var = delong_variance(y_binary, scores)
    z = stats.norm.ppf(0.5 + confidence / 2)
    half = z * np.sqrt(var)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


@dataclass(frozen=True)
class DeLongTest:
    """Result of DeLong's paired test of two AUCs on the same images."""

    auc_a: float
    auc_b: float
    z: float
    pvalue: float


def delong_test(
    y_binary: Sequence[bool] | np.ndarray,
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
) -> DeLongTest:
    """Two-sided test that two models' AUCs on the same images are equal (DeLong et al. 1988)."""
    y, a = _as_binary(y_binary, scores_a)
    _, b = _as_binary(y_binary, scores_b)
    if a.shape != b.shape:
        raise ValueError("the two score vectors must cover the same images")
    auc_a, v10a, v01a = _structural_components(y, a)
    auc_b, v10b, v01b = _structural_components(y, b)
    s10 = np.cov(np.vstack([v10a, v10b])) if v10a.size > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01a, v01b])) if v01a.size > 1 else np.zeros((2, 2))
    contrast = np.array([1.0, -1.0])
    var = contrast @ (s10 / v10a.size + s01 / v01a.size) @ contrast
    diff = auc_a - auc_b
    if var <= 0:
        # Identical rankings (or degenerate data): no evidence of a difference.
        z = 0.0 if diff == 0 else float("inf") * np.sign(diff)
    else:
        z = float(diff / np.sqrt(var))
    pvalue = float(2 * stats.norm.sf(abs(z))) if np.isfinite(z) else 0.0
    return DeLongTest(auc_a=auc_a, auc_b=auc_b, z=z, pvalue=pvalue)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    rng: np.random.Generator,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval over ``n`` images resampled with replacement.

    ``statistic`` receives an ``(n_boot, n)`` array of resampled row indices and returns
    ``n_boot`` values (vectorised, so thousands of resamples take milliseconds); resamples
    where it is undefined (NaN, e.g. a class missing from the resample) are dropped.
    """
    if n <= 0 or n_boot <= 0:
        raise ValueError("bootstrap needs n > 0 images and n_boot > 0 resamples")
    idx = rng.integers(0, n, size=(n_boot, n))
    return percentile_interval(statistic(idx), confidence)


def percentile_interval(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Central ``confidence`` quantiles of bootstrap ``values``, ignoring NaN (undefined resamples)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = 1 - confidence
    low, high = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` images appears in each bootstrap resample: ``(n_boot, n)`` ints."""
    n_boot = idx.shape[0]
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)


def resampled_auc(
    y_binary: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    counts: np.ndarray,
) -> np.ndarray:
    """The AUC of every bootstrap resample, given as image multiplicities ``counts`` (n_boot, n).

    A resample's AUC is the Mann–Whitney statistic with each image weighted by how often it
    was drawn, so one sort of the original scores serves all resamples (no per-resample
    ranking): O(n_boot·n) instead of O(n_boot·n·log n). NaN where a resample lacks a class.
    """
    y, s = _as_binary(y_binary, scores)
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    w = np.asarray(counts)[:, order]
    pos = y[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    if starts.size == s.size:
        # No tied scores (the usual case with probabilities): integer arithmetic, and at a
        # positive's column the running count of negatives is exactly the negatives below it.
        neg_w = np.where(pos, 0, w)
        below = np.cumsum(neg_w, axis=1, dtype=np.int64)
        wins = (w[:, pos] * below[:, pos]).sum(axis=1, dtype=np.int64).astype(float)
        total = w[:, pos].sum(axis=1, dtype=np.int64) * neg_w.sum(axis=1, dtype=np.int64)
    else:
        # Pool each group of tied scores so a positive–negative tie counts one half.
        w = w.astype(float)
        pos_w = np.add.reduceat(w * pos, starts, axis=1)
        neg_w = np.add.reduceat(w * ~pos, starts, axis=1)
        neg_below = np.cumsum(neg_w, axis=1) - neg_w
        wins = np.sum(pos_w * (neg_below + 0.5 * neg_w), axis=1)
        total = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / np.maximum(total, 1), np.nan)


@dataclass(frozen=True)
class ClusterBootstrap:
    """A statistic (the mean of per-image values) and its scan-clustered bootstrap."""

    value: float
    low: float
    high: float
    #: Two-sided bootstrap P of "the mean is 0" (for paired differences): twice the smaller
    #: share of resamples at or beyond 0 on either side, at most 1.
    pvalue: float
    n_images: int
    n_clusters: int
    n_boot: int


def cluster_bootstrap(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[str],
    *,
    rng: np.random.Generator,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> ClusterBootstrap:
    """Mean of per-image ``values`` with a percentile interval that resamples whole clusters.

    ``clusters[i]`` names image ``i``'s cluster (its scan). Each resample draws as many
    clusters as there are, with replacement, and takes the ratio estimator: the sum of the
    drawn clusters' values over the number of images in them. For accuracy pass 0/1
    correctness; for a paired accuracy difference pass ``correct_a - correct_b`` per image
    (both models on the same images, so the pairing survives the resampling).
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0 or len(clusters) != v.size:
        raise ValueError(
            f"values ({v.size}) and clusters ({len(clusters)}) must be equally long and not empty"
        )
    if n_boot <= 0:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    names, which = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    sums = np.bincount(which, weights=v, minlength=names.size)
    sizes = np.bincount(which, minlength=names.size).astype(float)
    draws = rng.integers(0, names.size, size=(n_boot, names.size))
    counts = resample_counts(draws, names.size)
    boot = (counts @ sums) / (counts @ sizes)
    low, high = percentile_interval(boot, confidence)
    p = 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean()))
    return ClusterBootstrap(
        value=float(v.mean()), low=low, high=high, pvalue=min(1.0, p),
        n_images=int(v.size), n_clusters=int(names.size), n_boot=int(n_boot),
    )  # fmt: skip


def runs_to_detect(
    paired_sd: float, effect: float = 0.01, *, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """Runs needed for a two-sided paired test at ``alpha`` to find ``effect`` with ``power``,
    given the sd of the per-run paired difference: ``((z_(1-alpha/2) + z_power) sd / effect)^2``
    rounded up (the normal approximation; at least 2). None when the sd is not a number."""
    if not np.isfinite(paired_sd) or paired_sd < 0:
        return None
    if effect <= 0:
        raise ValueError(f"effect must be positive, got {effect}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return max(2, int(np.ceil((z * paired_sd / effect) ** 2)))
