"""Finding the two class cuts on the ordinal list by probabilistic bisection.

The study "probed" the finished ranking for the inflection points between ``too_basal`` and
``lv`` and between ``lv`` and ``too_apical``. We do it with as few absolute labels as we can:
each cut is a position ``k`` on the ordinal list of *seen* images (``k`` images lie on the
basal side of it), with a posterior over the ``m + 1`` possible positions. Asking an expert to
classify the image at rank ``r`` tells which side of each cut it lies on, but only noisily:
near a cut experts disagree, and any answer can be a lapse. The response model (see
``cut_posterior``) is a lapse plus a probit whose width is itself uncertain, so one wrong
answer bends the posterior instead of breaking it (probabilistic bisection: Horstein's scheme,
analysed by Waeber, Frazier & Henderson 2013, "Bisection search with noisy responses"). The
next question goes to the image at the posterior median of the less settled cut.

Labels are stored per image, not per rank: the ranking keeps changing while batches arrive,
so the posteriors are recomputed on the current list whenever they are needed (O(m + labels)
with a difference array). Answers may come late, out of order, or never: a question is only
*pending* until answered, and the finder never depends on an answer arriving.

The prior over each cut mixes a uniform part with a normal bump at the class mix the study
reports (Figure 1: 665 / 2,413 / 245 of 3,323 images one-image-at-a-time), so a few questions
settle a typical cohort while a cohort with a different mix is still found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

CUTS = ("basal_lv", "lv_apical")
"""Names of the two cuts: between too_basal|lv and between lv|too_apical."""
STUDY_CLASS_MIX = (665 / 3323, 2413 / 3323, 245 / 3323)
"""The study's one-image-at-a-time class mix (too_basal, lv, too_apical)."""
ERROR_RATE = 0.03
"""Assumed chance that an absolute answer has nothing to do with the image (a lapse)."""
WIDTHS = (0.0, 0.005, 0.01, 0.02, 0.04)
"""Candidate widths (fractions of the list) of the zone where experts disagree about a cut."""
PRIOR_WEIGHT = 0.5
"""Share of the cut prior in the normal bump at the class-mix quantile (rest uniform)."""
PRIOR_SD = 0.08
"""Sd of that bump, as a fraction of the list."""
MAX_LABELS = 40
"""Absolute labels the finder asks for in total (answered plus pending)."""
SETTLE_MASS = 0.9
"""A cut is settled when this much posterior mass lies within ``tolerance`` ranks of its median."""
SETTLE_FRACTION = 0.01
"""That tolerance as a fraction of the list (at least ``SETTLE_MIN`` ranks)."""
SETTLE_MIN = 2
"""Smallest tolerance in ranks."""
MIN_LABELS_PER_CUT = 8
"""Answers a cut needs before it can count as settled: a few answers about images near the end
of the list can otherwise pin a cut against the list's edge that more answers would move."""
MIN_SEEN = 16
"""Seen images needed before the first question (too short a list says nothing)."""


_PROBIT_REACH = 8.5
"""Beyond this many widths from an answer's rank its probit is 0 or 1 to double precision."""


@dataclass(frozen=True)
class CutPosterior:
    """One cut's posterior on the current list: probabilities over positions 0..m."""

    probs: np.ndarray

    @property
    def median(self) -> int:
        """Posterior median position (number of list images on the basal side)."""
        return int(np.searchsorted(np.cumsum(self.probs), 0.5))

    def interval(self, mass: float = 0.9) -> tuple[int, int]:
        """Central credible interval of positions holding ``mass``."""
        c = np.cumsum(self.probs)
        lo = int(np.searchsorted(c, (1 - mass) / 2))
        hi = int(np.searchsorted(c, 1 - (1 - mass) / 2))
        return lo, min(hi, len(self.probs) - 1)

    def mass_near_median(self, tol: int) -> float:
        """Posterior mass within ``tol`` positions of the median."""
        med = self.median
        return float(self.probs[max(0, med - tol) : med + tol + 1].sum())


def cut_posterior(
    m: int,
    labelled_ranks: Sequence[int],
    basal_side: Sequence[bool],
    *,
    prior_center: float,
    error_rate: float = ERROR_RATE,
    widths: Sequence[float] = WIDTHS,
    prior_weight: float = PRIOR_WEIGHT,
    prior_sd: float = PRIOR_SD,
    label_sd: Sequence[float] | None = None,
) -> CutPosterior:
    """Posterior over a cut's position on a list of ``m`` images.

    The chance that an expert puts the image at rank ``r`` on the basal side of a cut at
    position ``k`` is ``e + (1 - 2e) Phi((k - r - 1/2) / (w m))``: a lapse ``e`` plus a probit
    of the distance in list fractions with width ``w``. ``w = 0`` is the classic step
    (Horstein); the posterior averages over ``widths`` with equal weight, so consistent
    answers pin the cut exactly while answers that disagree near the cut (experts do, there:
    inter-rater kappa 0.77) widen it instead of sending it astray.

    Parameters
    ----------
    m
        Length of the ordinal list (most basal first).
    labelled_ranks
        0-based rank of each labelled image on the list.
    basal_side
        For each labelled image, whether its answer puts it on the basal side of this cut.
    prior_center
        Where the prior bump sits, as a fraction of the list (the class-mix quantile).
    label_sd
        For each labelled image, the sd of its own place on the list (fraction of the list).
        An image seen once may sit hundreds of ranks away from where the ranking has it now,
        so its answer is a probit of width ``sqrt(w^2 + sd^2)`` around the cut: a label on an
        uncertain image bends the posterior gently, one on a well-placed image pins it.
    """
    pos = np.arange(m + 1, dtype=float)
    frac = pos / max(m, 1)
    bump = np.exp(-0.5 * ((frac - prior_center) / prior_sd) ** 2)
    prior = (1 - prior_weight) / (m + 1) + prior_weight * bump / bump.sum()
    if not len(labelled_ranks):
        return CutPosterior(prior / prior.sum())
    extra = [0.0] * len(labelled_ranks) if label_sd is None else list(label_sd)
    if len(extra) != len(labelled_ranks):
        raise ValueError(f"label_sd: {len(extra)} values for {len(labelled_ranks)} labelled images")
    log_hit = math.log(1 - error_rate)
    log_miss = math.log(error_rate)
    logs = []
    for w in widths:
        # Far from an answer's rank its probit is 0 or 1 to double precision: there it adds a
        # constant on each side (a difference array), and only the window around the rank is
        # computed point by point.
        step = np.zeros(m + 2)
        loglik = np.zeros(m + 1)
        for r, basal, s in zip(labelled_ranks, basal_side, extra, strict=True):
            width = math.hypot(w, s) * max(m, 1)
            half = _PROBIT_REACH * width
            lo = max(0, min(m + 1, math.ceil(r + 0.5 - half)))
            hi = max(lo, min(m + 1, math.floor(r + 0.5 + half) + 1))
            if width <= 0:
                lo = hi = min(m + 1, r + 1)  # a step: positions > r are on the basal side
            # Left of the window p_basal = 0, right of it 1.
            left, right = (log_miss, log_hit) if basal else (log_hit, log_miss)
            step[0] += left
            step[lo] -= left
            step[hi] += right
            if hi > lo:
                p_basal = ndtr((pos[lo:hi] - r - 0.5) / width)
                p = error_rate + (1 - 2 * error_rate) * (p_basal if basal else 1.0 - p_basal)
                loglik[lo:hi] += np.log(p)
        loglik += np.cumsum(step)[: m + 1]
        logs.append(loglik)
    stacked = np.vstack(logs)
    top = stacked.max(axis=0)
    # log-sum-exp over the widths (equal prior weight), without scipy's per-call overhead.
    log_post = np.log(prior) + top + np.log(np.exp(stacked - top).sum(axis=0))
    log_post -= log_post.max()
    p = np.exp(log_post)
    return CutPosterior(p / p.sum())


def settle_tolerance(m: int) -> int:
    """How close to its median (in ranks) a cut's posterior mass must lie on a list of ``m``."""
    return max(SETTLE_MIN, int(SETTLE_FRACTION * m))


def query_information(distance: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Fisher information about a cut from one answer about an image at ``distance`` from it.

    The answer is a probit of ``width`` (the experts' disagreement and the image's own place
    uncertainty together, same units as ``distance``): ``phi(z)^2 / (Phi(z)(1 - Phi(z)) w^2)``
    with ``z = distance / width``. Near the cut and well placed is best; an image hundreds of
    ranks from where the ranking has it is worth little wherever it sits.
    """
    w = np.maximum(np.asarray(width, dtype=float), 1e-9)
    z = np.asarray(distance, dtype=float) / w
    p = np.clip(ndtr(z), 1e-12, 1 - 1e-12)
    dens = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return dens * dens / (p * (1 - p) * w * w)


def answer_sides(cls: str) -> tuple[bool, bool]:
    """Whether an absolute class lies on the basal side of (basal_lv, lv_apical)."""
    return cls == "too_basal", cls != "too_apical"
