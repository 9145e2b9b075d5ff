"""The study's heuristic (``strategy="paper"``): Glicko-2 ratings from ranked batches.

Zaman et al. (2023, J Med Artif Intell, doi:10.21037/jmai-22-55) describe their platform as
keeping, per image, a *rating* (1,500 at the start, 0 very apical .. 3,000 very basal), a
*view count*, a *volatility* and the *ranking* derived from the ratings, updated after every
submitted batch of eight, showing unseen / little-seen images first and then volatile ones,
until every image has been seen at least three times. The rating maths is Glicko-2
(Glickman, "Example of the Glicko-2 system", 2013), implemented here from that note.

Choices the paper leaves open, and what we do (also in ``docs/guide/ranking.md``):

* **Outcomes from a batch.** A ranking of 8 gives its 28 pairwise outcomes: the image placed
  more basal *wins* against every image placed after it (1 point), so basal images climb
  towards 3,000 as the paper says. No draws.
* **Rating period.** One submitted batch is one Glicko-2 rating period: every image in the
  batch plays its 7 games simultaneously against the *pre-batch* ratings of the others.
* **No RD inflation for idle images.** Glicko-2 lets the deviation of a player who does not
  play grow each period; a slice's anatomy does not change over time, so images outside the
  batch are left untouched (this also keeps the update O(batch)).
* **System constant** ``tau = 0.5`` (Glickman's example value), initial RD 350, initial
  volatility 0.06, convergence tolerance 1e-6.
* **Range.** Ratings are clipped to [0, 3000] after each update (the paper's stated range).
* **Volatility.** The paper calls volatility a 0..1 *agreement* that starts at 0 yet also says
  high volatility means disagreement; the two readings conflict. We use Glicko-2's volatility
  (sigma), which rises when results surprise the rating, and prioritise *high* sigma.
* **Priority.** "Unseen or much fewer views than others first, then high volatility": images
  whose view count is within ``view_slack`` (default 1) of the least-viewed available image
  form the front bucket; inside a bucket higher volatility goes first; remaining ties are
  broken by the engine's seeded RNG.
* **Stop** when every image has at least ``target_views`` views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SCALE = 173.7178
"""Glicko-2's factor between the Glicko rating scale and its internal scale."""
INITIAL_RATING = 1500.0
"""Rating every image starts at (the paper: 1,500)."""
INITIAL_RD = 350.0
"""Initial rating deviation (Glicko-2's default)."""
INITIAL_VOLATILITY = 0.06
"""Initial volatility (Glicko-2's default)."""
TAU = 0.5
"""System constant constraining volatility changes (Glickman's worked example)."""
RATING_MIN, RATING_MAX = 0.0, 3000.0
"""The paper's rating range (0 very apical, 3,000 very basal)."""
EPSILON = 1e-6
"""Convergence tolerance of the volatility iteration."""


def _g(phi: float) -> float:
    return 1.0 / math.sqrt(1.0 + 3.0 * phi * phi / (math.pi * math.pi))


def glicko2_update(
    rating: float,
    rd: float,
    volatility: float,
    opponents: Sequence[tuple[float, float]],
    outcomes: Sequence[float],
    *,
    tau: float = TAU,
) -> tuple[float, float, float]:
    """One Glicko-2 rating period for one player (Glickman 2013, steps 1-8).

    Parameters
    ----------
    rating, rd, volatility
        The player's values before the period, on the Glicko scale (1500 / 350 / 0.06).
    opponents
        ``(rating, rd)`` of each opponent before the period.
    outcomes
        1.0 win, 0.5 draw, 0.0 loss, one per opponent.
    tau
        The system constant.

    Returns
    -------
    (rating, rd, volatility) after the period (no clipping here).
    """
    if len(opponents) != len(outcomes):
        raise ValueError(f"outcomes: {len(outcomes)} given for {len(opponents)} opponents")
    mu = (rating - INITIAL_RATING) / SCALE
    phi = rd / SCALE
    if not opponents:
        phi_star = math.sqrt(phi * phi + volatility * volatility)
        return rating, phi_star * SCALE, volatility
    v_inv = 0.0
    delta_sum = 0.0
    for (r_j, rd_j), s in zip(opponents, outcomes, strict=True):
        mu_j = (r_j - INITIAL_RATING) / SCALE
        g_j = _g(rd_j / SCALE)
        e = 1.0 / (1.0 + math.exp(-g_j * (mu - mu_j)))
        v_inv += g_j * g_j * e * (1.0 - e)
        delta_sum += g_j * (s - e)
    v = 1.0 / v_inv
    delta = v * delta_sum

    # Step 5: new volatility by the Illinois variant of regula falsi.
    a = math.log(volatility * volatility)
    phi2 = phi * phi

    def f(x: float) -> float:
        ex = math.exp(x)
        return ex * (delta * delta - phi2 - v - ex) / (2.0 * (phi2 + v + ex) ** 2) - (x - a) / (
            tau * tau
        )

    big_a = a
    if delta * delta > phi2 + v:
        big_b = math.log(delta * delta - phi2 - v)
    else:
        k = 1
        while f(a - k * tau) < 0:
            k += 1
        big_b = a - k * tau
    f_a, f_b = f(big_a), f(big_b)
    for _ in range(100):
        if abs(big_b - big_a) <= EPSILON:
            break
        big_c = big_a + (big_a - big_b) * f_a / (f_b - f_a)
        f_c = f(big_c)
        if f_c * f_b <= 0:
            big_a, f_a = big_b, f_b
        else:
            f_a /= 2.0
        big_b, f_b = big_c, f_c
    new_vol = math.exp(big_a / 2.0)

    phi_star = math.sqrt(phi2 + new_vol * new_vol)
    new_phi = 1.0 / math.sqrt(1.0 / (phi_star * phi_star) + 1.0 / v)
    new_mu = mu + new_phi * new_phi * delta_sum
    return new_mu * SCALE + INITIAL_RATING, new_phi * SCALE, new_vol


class PaperModel:
    """Per-image Glicko-2 state and the study's batch priority (see the module docstring)."""

    def __init__(self, n: int, *, tau: float = TAU, view_slack: int = 1) -> None:
        if view_slack < 0:
            raise ValueError(f"view_slack: must be >= 0, got {view_slack}")
        self.tau = tau
        self.view_slack = view_slack
        self.rating = np.full(n, INITIAL_RATING)
        self.rd = np.full(n, INITIAL_RD)
        self.volatility = np.full(n, INITIAL_VOLATILITY)

    def update(self, order: Sequence[int]) -> None:
        """Apply one ranked batch (image indices, most basal first) as one rating period."""
        idx = list(order)
        before = [(float(self.rating[i]), float(self.rd[i])) for i in idx]
        vols = [float(self.volatility[i]) for i in idx]
        results = []
        for pos, _i in enumerate(idx):
            opponents = [before[q] for q in range(len(idx)) if q != pos]
            # Placed earlier = more basal = wins (rating towards 3,000).
            outcomes = [1.0 if pos < q else 0.0 for q in range(len(idx)) if q != pos]
            results.append(
                glicko2_update(
                    before[pos][0], before[pos][1], vols[pos], opponents, outcomes, tau=self.tau
                )
            )
        for i, (r, rd, vol) in zip(idx, results, strict=True):
            self.rating[i] = min(RATING_MAX, max(RATING_MIN, r))
            self.rd[i] = rd
            self.volatility[i] = vol

    def select(
        self, k: int, views: np.ndarray, available: np.ndarray, jitter: np.ndarray
    ) -> np.ndarray:
        """Up to ``k`` available image indices, best first: low-view bucket, then volatility."""
        cand = np.flatnonzero(available)
        if cand.size == 0 or k <= 0:
            return cand[:0]
        v = views[cand]
        bucket = np.maximum(v - v.min() - self.view_slack, 0).astype(float)
        # One composite key (bucket dominates, then volatility, then the seeded jitter) so that
        # a partial sort finds the k best in O(n) even at 100,000 images.
        vol = np.minimum(self.volatility[cand], 999.0)
        key = bucket * 1e4 - vol + jitter[cand] * 1e-9
        part = np.argpartition(key, k - 1)[:k] if cand.size > k else np.arange(cand.size)
        part = part[np.argsort(key[part], kind="stable")]
        return cand[part]
