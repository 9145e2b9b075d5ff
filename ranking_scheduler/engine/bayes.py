"""Our model (``strategy="bayes"``): a ranked-probit posterior over one latent axis.

Each image ``i`` has a latent position ``s_i`` (higher = more basal) with a Gaussian posterior
``N(mu_i, var_i)`` (prior ``N(0, 1)``). A rater ``r`` who ranks a batch perceives
``p_i = s_i + N(0, beta_r^2)`` for each image and orders the batch by ``p``; the submitted
ranking is the event ``p_(1) > p_(2) > ... > p_(k)``. That is the Thurstonian ("ranked probit")
model of the *whole* ranking, not 28 independent pairs: the 7 adjacent constraints share the
perceived values, so the likelihood counts each image once.

The posterior after a ranking is approximated by expectation propagation on the chain of
adjacent differences, the factor-graph schedule of TrueSkill (Herbrich, Minka & Graepel 2007,
"TrueSkill: a Bayesian skill rating system", with one-player teams and no draws): a few
forward/backward sweeps of moment matching on the truncated differences, O(batch) work, then
one Gaussian message per image. This is an online (assumed-density) update, so the result
depends on the order of submissions; replaying the same log in the same order gives the same
state exactly.

Raters are pooled into one posterior; each rater's noise ``beta_r`` is estimated from how
often their placements of pairs contradict the current posterior (a one-parameter maximum
likelihood fit on a grid over the last ``RATER_WINDOW`` pairs, refitted every
``REFIT_EVERY`` submissions), and a noisier rater's rankings move the posterior less.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np
from scipy.special import log_ndtr

PRIOR_VAR = 1.0
"""Prior variance of every image's latent position."""
DEFAULT_BETA = 0.15
"""Perception noise (sd, latent units) assumed for a rater until enough data to estimate it."""
DYNAMICS = 0.005
"""Variance added before each update: a floor that keeps the posterior from over-committing
when raters' errors are partly persistent (the model assumes fresh noise per view)."""
EP_SWEEPS = 6
"""Maximum forward/backward sweeps of the chain schedule per ranking."""
EP_TOL = 1e-4
"""Sweeps stop once no message mean moves by more than this."""
RATER_WINDOW = 1500
"""Pairs per rater kept for the noise estimate."""
REFIT_EVERY = 32
"""Submissions between refits of the per-rater noise."""
MIN_PAIRS = 500
"""Pairs a rater needs before their own noise estimate replaces the default."""
BETA_GRID = np.geomspace(0.02, 2.0, 32)
"""Candidate noise levels for the per-rater fit."""
BETA_PRIOR_SD = 0.7
"""Sd of the log-normal prior (around the default) that keeps early fits from running off: while
posterior variances dwarf the rater noise the pairs say little about it."""

_SQRT2PI = math.sqrt(2.0 * math.pi)


def _v_w(t: float) -> tuple[float, float]:
    """Moments of N(0,1) truncated to x > -t: v = pdf/cdf and w = v (v + t)."""
    if t < -30.0:
        # Asymptotic pdf/cdf ratio: avoids 0/0 deep in the tail.
        v = -t - 1.0 / t
    else:
        cdf = 0.5 * math.erfc(-t / math.sqrt(2.0))
        v = math.exp(-0.5 * t * t) / _SQRT2PI / cdf
    w = v * (v + t)
    return v, min(max(w, 1e-12), 1.0 - 1e-12)


def ranking_update(
    mu: Sequence[float], var: Sequence[float], beta2: float, *, sweeps: int = EP_SWEEPS
) -> tuple[list[float], list[float]]:
    """Posterior means and variances after one ranking (most basal first) under ranked probit.

    Parameters
    ----------
    mu, var
        Prior means and variances of the ranked images, in the submitted order.
    beta2
        The rater's perception noise variance.
    sweeps
        Maximum EP sweeps over the chain of adjacent differences.
    """
    k = len(mu)
    if k < 2:
        return list(mu), list(var)
    prior_pi = [1.0 / (v + beta2) for v in var]
    prior_tau = [m * p for m, p in zip(mu, prior_pi, strict=True)]
    # Messages from difference factor j to performance j (left) and j+1 (right).
    l_pi = [0.0] * (k - 1)
    l_tau = [0.0] * (k - 1)
    r_pi = [0.0] * (k - 1)
    r_tau = [0.0] * (k - 1)
    forward = list(range(k - 1))
    backward = forward[::-1]
    for sweep in range(sweeps):
        delta = 0.0
        for j in forward if sweep % 2 == 0 else backward:
            a_pi = prior_pi[j] + (r_pi[j - 1] if j > 0 else 0.0)
            a_tau = prior_tau[j] + (r_tau[j - 1] if j > 0 else 0.0)
            b_pi = prior_pi[j + 1] + (l_pi[j + 1] if j + 1 < k - 1 else 0.0)
            b_tau = prior_tau[j + 1] + (l_tau[j + 1] if j + 1 < k - 1 else 0.0)
            ma, va = a_tau / a_pi, 1.0 / a_pi
            mb, vb = b_tau / b_pi, 1.0 / b_pi
            m = ma - mb
            v = va + vb
            s = math.sqrt(v)
            vt, wt = _v_w(m / s)
            new_m = m + s * vt
            new_v = v * (1.0 - wt)
            md_pi = 1.0 / new_v - 1.0 / v
            md_tau = new_m / new_v - m / v
            mdm, mdv = md_tau / md_pi, 1.0 / md_pi
            # p_a = d + p_b and p_b = p_a - d.
            new_l_pi = 1.0 / (mdv + vb)
            new_l_tau = (mdm + mb) * new_l_pi
            new_r_pi = 1.0 / (va + mdv)
            new_r_tau = (ma - mdm) * new_r_pi
            delta = max(
                delta,
                abs(new_l_tau / new_l_pi - (l_tau[j] / l_pi[j] if l_pi[j] else 0.0)),
                abs(new_r_tau / new_r_pi - (r_tau[j] / r_pi[j] if r_pi[j] else 0.0)),
            )
            l_pi[j], l_tau[j], r_pi[j], r_tau[j] = new_l_pi, new_l_tau, new_r_pi, new_r_tau
        if sweep > 0 and delta < EP_TOL:
            break
    out_mu, out_var = [], []
    for i in range(k):
        up_pi = (l_pi[i] if i < k - 1 else 0.0) + (r_pi[i - 1] if i > 0 else 0.0)
        up_tau = (l_tau[i] if i < k - 1 else 0.0) + (r_tau[i - 1] if i > 0 else 0.0)
        # The message reaches s_i through the perception noise: N(up_mean, up_var + beta2).
        msg_pi = up_pi / (1.0 + beta2 * up_pi)
        msg_tau = up_tau / (1.0 + beta2 * up_pi)
        post_pi = 1.0 / var[i] + msg_pi
        post_tau = mu[i] / var[i] + msg_tau
        out_mu.append(post_tau / post_pi)
        out_var.append(1.0 / post_pi)
    return out_mu, out_var


def fit_beta(
    diffs: np.ndarray,
    pair_vars: np.ndarray,
    grid: np.ndarray = BETA_GRID,
    prior_beta: float = DEFAULT_BETA,
    prior_sd: float = BETA_PRIOR_SD,
) -> float:
    """Maximum a-posteriori perception noise from placed pairs (grid search).

    ``diffs[q]`` is the posterior mean of the image placed first minus the one placed second
    (before the ranking was applied), ``pair_vars[q]`` the sum of their posterior variances.
    Under ranked probit the pair is placed that way with probability
    ``Phi(diff / sqrt(2 beta^2 + pair_var))``; the prior on ``log beta`` is normal around
    ``log prior_beta`` with sd ``prior_sd``. The pairs of one ranking are not independent, so
    this is a pseudo-likelihood.
    """
    if diffs.size == 0:
        raise ValueError("diffs: no pairs to fit the rater noise from")
    scale = np.sqrt(2.0 * grid[:, None] ** 2 + pair_vars[None, :])
    loglik = log_ndtr(diffs[None, :] / scale).sum(axis=1)
    loglik -= 0.5 * ((np.log(grid) - np.log(prior_beta)) / prior_sd) ** 2
    return float(grid[int(np.argmax(loglik))])


class BayesModel:
    """Per-image Gaussian posterior, per-rater noise, and the online ranking update."""

    def __init__(self, n: int, *, default_beta: float = DEFAULT_BETA, dynamics: float = DYNAMICS):
        if default_beta <= 0:
            raise ValueError(f"default_beta: must be > 0, got {default_beta}")
        if dynamics < 0:
            raise ValueError(f"dynamics: must be >= 0, got {dynamics}")
        self.mu = np.zeros(n)
        self.var = np.full(n, PRIOR_VAR)
        self.default_beta = default_beta
        self.dynamics = dynamics
        self.beta: dict[str, float] = {}
        self._pairs: dict[str, deque[tuple[float, float]]] = {}
        self._submissions = 0

    def beta_of(self, rater: str) -> float:
        """The current noise estimate of ``rater`` (the default for a rater not yet fitted)."""
        return self.beta.get(rater, self.default_beta)

    def mean_beta(self) -> float:
        """The average noise over raters seen so far (the default before any)."""
        return float(np.mean(list(self.beta.values()))) if self.beta else self.default_beta

    def update(self, order: Sequence[int], rater: str) -> None:
        """Apply one ranking (image indices, most basal first) submitted by ``rater``."""
        idx = list(order)
        mu, var = self._cavity(idx)
        pairs = self._pairs.setdefault(rater, deque(maxlen=RATER_WINDOW))
        # All pairs, not just adjacent ones: adjacency in the submitted order selects pairs that
        # looked close to the rater, which biases the noise estimate upwards.
        for a in range(len(idx) - 1):
            for b in range(a + 1, len(idx)):
                pairs.append((mu[a] - mu[b], var[a] + var[b]))
        beta = self.beta_of(rater)
        new_mu, new_var = ranking_update(mu, var, beta * beta)
        self._apply(idx, mu, var, new_mu, new_var)
        self._submissions += 1
        if self._submissions % REFIT_EVERY == 0:
            self._refit()

    def _cavity(self, idx: Sequence[int]) -> tuple[list[float], list[float]]:
        """Means and variances the ranking of ``idx`` updates (with the dynamics floor)."""
        return (
            [float(self.mu[i]) for i in idx],
            [min(PRIOR_VAR, float(self.var[i]) + self.dynamics) for i in idx],
        )

    def _apply(
        self,
        idx: Sequence[int],
        mu: Sequence[float],
        var: Sequence[float],
        new_mu: Sequence[float],
        new_var: Sequence[float],
    ) -> None:
        """Store the posterior of a ranking (``StackModel`` turns it into sites instead)."""
        for i, m, v in zip(idx, new_mu, new_var, strict=True):
            self.mu[i] = m
            self.var[i] = v

    def _refit(self) -> None:
        for rater, pairs in self._pairs.items():
            if len(pairs) < MIN_PAIRS:
                continue
            arr = np.asarray(pairs, dtype=float)
            self.beta[rater] = fit_beta(arr[:, 0], arr[:, 1], prior_beta=self.default_beta)

    def rater_noise(self) -> dict[str, float]:
        """Noise estimate (sd on the latent axis) for every rater who has submitted."""
        return {r: self.beta_of(r) for r in sorted(self._pairs)}
