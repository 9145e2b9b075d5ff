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

**Errors that persist.** A rater misreads a slice the same way every time they see it: the
perception is ``p = s_i + u_ri + e`` with ``u_ri ~ N(0, share beta_r^2)`` drawn once per
(rater, image) and kept, and ``e ~ N(0, (1 - share) beta_r^2)`` fresh per view (a Thurstonian
random effect; Johnson & Kuhn 2013 on Thurstonian models for ranks). A rater's answers about one
image share their ``u``: ``k`` of them read the position with variance
``(1 - share) beta_r^2 / k + share beta_r^2``, never below ``share beta_r^2``. So the ``k``-th
answer's message counts for only what it adds (``repeat_weight``: a fractional likelihood, 8%
of a first view for a second look at share 0.85): a second view of a slice by the same rater
teaches it little, another rater's view as much as the first did, and a first view exactly what
it did without persistence. ``share = 0`` is the model without it, and the default
(``PERSISTENT_SHARE``: measured, modelling persistence cost accuracy). (Keeping a Gaussian per
``u_ri`` and splitting each message between ``s`` and ``u`` drops their correlation, which
makes a repeat view look *more* informative; subtracting a rater's earlier message from the
cavity diverged with the dynamics floor.)

**Single labels.** An absolute class label is ordered-probit evidence about the same position:
rater ``r`` reports ``too_basal`` when ``s_i + u_ri + e'`` lies above the basal cut plus the
rater's own offset ``o_r1`` (their personal notion of where the base ends), ``too_apical`` below
the apical cut plus ``o_r2``, ``lv`` between. Each bound is one probit factor with a lapse,
absorbed by assumed-density filtering into ``s_i`` (and so, with stacks, its whole scan),
``u_ri`` and the rater's cut offset (``add_label``). With ``label_evidence`` off a label is
only counted: the cut finder places the cuts from it, the positions come from rankings alone.
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
PERSISTENT_SHARE = 0.0
"""Share of a rater's perception variance assumed to persist per (rater, image). The simulated
raters' true share is about 0.86 (their intra-rater kappa 0.90 against inter-rater 0.77), and
the model with 0.85 was built for them; measured, it did worse than counting every view as
fresh: at 3,323 slices, 2 h of clinician time, equal noise, tuning seeds 1 and 2, `ranking`
0.906 / 0.916 at 0.85 against 0.916 / - at 0 (0.925 at 0.5), `hybrid` 0.939 / 0.938 (0.85,
repeats undiscounted) against 0.941 / 0.947 at 0. On held-out seed 1000 `ranking` at 0.85 settled
at 0.923 after 5 h where the engine before the model reached 0.949. With the stop rule on,
though, `ranking` did better with the model (it stopped later), so `ranking` runs with 0.85
(``strategies.BayesStrategy.MODEL_DEFAULTS``) and `single`/`hybrid` with this default."""
LABEL_NOISE = 0.5
"""Sd of a single label's noise about where a slice lies against a cut, as a multiple of the
rater's ranking noise (``beta`` counts the noise of both images of a pair and of the whole
ranking's chain; a label is one reading against one cut). Chosen on tuning seeds 1-3 of a
400-slice stack cohort, labels only at 0.25 h: 0.35, 0.5, 0.8, 1.25 gave 0.88, 0.90-0.92, 0.905,
0.89."""
CUT_OFFSET_SD = 0.05
"""Prior sd of a rater's personal offset of each class cut (latent units)."""
LABEL_LAPSE = 0.03
"""Chance that a single label has nothing to do with the image."""
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


def probit_step(
    m: float, v: float, sign: float, sigma2: float, lapse: float
) -> tuple[float, float]:
    """Moments of ``t ~ N(m, v)`` after observing ``sign * (t + noise) > 0`` with
    ``noise ~ N(0, sigma2)`` and a lapse (the observation is a coin toss with chance
    ``lapse``): the probit step of assumed-density filtering. Returns ``(alpha, gamma)`` with the
    new mean ``m + v alpha`` and variance ``v - v^2 gamma``."""
    s = math.sqrt(v + sigma2)
    z = sign * m / s
    cdf = 0.5 * math.erfc(-z / math.sqrt(2.0))
    big_z = lapse + (1.0 - 2.0 * lapse) * cdf
    pdf = math.exp(-0.5 * z * z) / _SQRT2PI
    alpha = sign * (1.0 - 2.0 * lapse) * pdf / (s * max(big_z, 1e-300))
    gamma = alpha * (alpha + m / (s * s))
    return alpha, min(max(gamma, 0.0), 1.0 / max(v, 1e-300))


FRESHEST_RATER = "(freshest)"
"""Whom ``BayesModel.answers_of`` counts as the rater with the fewest answers about each image."""


class BayesModel:
    """Per-image Gaussian posterior, per-rater noise and persistent (rater, image) offsets,
    per-rater cut offsets, and the online ranking and label updates."""

    def __init__(
        self,
        n: int,
        *,
        default_beta: float = DEFAULT_BETA,
        dynamics: float = DYNAMICS,
        persistent_share: float = PERSISTENT_SHARE,
        label_noise: float = LABEL_NOISE,
        label_evidence: float = 1.0,
    ):
        if default_beta <= 0:
            raise ValueError(f"default_beta: must be > 0, got {default_beta}")
        if dynamics < 0:
            raise ValueError(f"dynamics: must be >= 0, got {dynamics}")
        if not 0 <= persistent_share < 1:
            raise ValueError(f"persistent_share: must be in [0, 1), got {persistent_share}")
        if label_noise <= 0:
            raise ValueError(f"label_noise: must be > 0, got {label_noise}")
        self.label_evidence = bool(label_evidence)
        """Whether a single label moves its slice's position (else it only counts as an answer
        and, through the cut finder, places the cuts)."""
        self.n = n
        self.mu = np.zeros(n)
        self.var = np.full(n, PRIOR_VAR)
        self.default_beta = default_beta
        self.dynamics = dynamics
        self.share = persistent_share
        self._weights: dict[int, float] = {}
        self.label_noise = label_noise
        self.beta: dict[str, float] = {}
        self._pairs: dict[str, deque[tuple[float, float]]] = {}
        self._submissions = 0
        # Per rater, per image: how many answers of that rater about that image so far.
        self._answers: dict[str, np.ndarray] = {}
        self.cut_offsets: dict[str, np.ndarray] = {}
        """Per rater: mean and variance of their offsets of the two cuts ``[m1, m2, v1, v2]``."""

    # ----------------------------------------------------------------- persistent offsets
    def repeat_weight(self, k: np.ndarray | int) -> np.ndarray:
        """Share of a first answer's information that a rater's ``k``-th answer about the same
        image brings (1 for ``k = 1``). Their ``k`` readings of ``s + u`` average the fresh
        noise but keep the one ``u``: together they read ``s`` with variance
        ``(1 - share) beta^2 / k + share beta^2``, and the ``k``-th adds the difference."""
        k = np.maximum(np.asarray(k, dtype=float), 1.0)
        fresh, u = 1.0 - self.share, self.share

        def pi(j: np.ndarray) -> np.ndarray:
            return np.where(j > 0, 1.0 / (fresh / np.maximum(j, 1.0) + u), 0.0)

        return (pi(k) - pi(k - 1.0)) / pi(np.ones_like(k))

    def _repeat_weight_of(self, k: int) -> float:
        """``repeat_weight(k)`` for one count, memoised: a log replay asks for it once per
        repeat view, and the array version costs more than the update it scales."""
        w = self._weights.get(k)
        if w is None:
            w = self._weights[k] = float(self.repeat_weight(k))
        return w

    def answers_of(self, rater: str, idx: np.ndarray) -> np.ndarray:
        """How many answers ``rater`` has given about each image of ``idx``. A rater who never
        answered (the service's pooled rater: Label Studio hands a task to whoever comes)
        counts as the one who answered each image most: the task may well reach them.
        ``FRESHEST_RATER`` counts as the one who answered each image least: whether a task is
        worth serving at all (the stopping rule) depends on the best rater to serve it to."""
        seen = self._answers.get(rater)
        if seen is not None:
            return seen[idx]
        if not self._answers:
            return np.zeros(len(idx), dtype=np.int64)
        pick = np.min if rater == FRESHEST_RATER else np.max
        return pick([a[idx] for a in self._answers.values()], axis=0)

    def repeat_gain(self, rater: str, idx: np.ndarray, reading_var: float) -> np.ndarray:
        """Effective variance of ``rater``'s next reading of each image of ``idx``, given that a
        fresh rater's has ``reading_var``: larger the more this rater has already read it,
        because their persistent offset comes back with every view."""
        if self.share <= 0:
            return np.full(len(idx), reading_var)
        return reading_var / self.repeat_weight(self.answers_of(rater, idx) + 1)

    def _temper(
        self, rater: str, idx: Sequence[int], mu, var, new_mu, new_var
    ) -> tuple[list[float], list[float]]:
        """Scale each image's message by ``repeat_weight`` of this rater's answer count (a
        fractional likelihood: a repeat answer counts for what it adds), and count it."""
        counts = self._answers.setdefault(rater, np.zeros(self.n, dtype=np.int64))
        out_mu, out_var = list(new_mu), list(new_var)
        for k, i in enumerate(idx):
            counts[i] += 1
            if self.share <= 0 or counts[i] == 1:
                continue
            w = self._repeat_weight_of(int(counts[i]))
            d_pi = 1.0 / new_var[k] - 1.0 / var[k]
            d_tau = new_mu[k] / new_var[k] - mu[k] / var[k]
            pi = 1.0 / var[k] + w * d_pi
            out_var[k] = 1.0 / pi
            out_mu[k] = (mu[k] / var[k] + w * d_tau) / pi
        return out_mu, out_var

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
        new_mu, new_var = self._temper(rater, idx, mu, var, new_mu, new_var)
        self._apply(idx, mu, var, new_mu, new_var)
        self._submissions += 1
        if self._submissions % REFIT_EVERY == 0:
            self._refit()

    # ----------------------------------------------------------------- single labels
    def label_var(self, rater: str, cut_var: float = 0.0) -> float:
        """Noise variance of ``rater``'s single label about where an image lies against a cut
        (their label noise, the cut's uncertainty and their cut offset's)."""
        offs = self.cut_offsets.get(rater)
        o_var = CUT_OFFSET_SD**2 if offs is None else float(offs[2:].mean())
        return (self.label_noise * self.beta_of(rater)) ** 2 + cut_var + o_var

    def add_label(
        self, i: int, rater: str, cls: int, cuts: tuple[float, float], cut_var: float
    ) -> None:
        """Absorb ``rater``'s absolute class ``cls`` (0 too_basal, 1 lv, 2 too_apical) of image
        ``i`` given the cut scores ``cuts`` (basal/lv, lv/apical) and their variance: one probit
        factor (with a lapse) per bound of the class, on ``s_i`` minus the rater's cut offset
        (see the module docstring), counted as a repeat where the rater answered about ``i`` before
        (``_temper``)."""
        if not self.label_evidence:
            counts = self._answers.setdefault(rater, np.zeros(self.n, dtype=np.int64))
            counts[i] += 1
            return
        mu, var = self._cavity([i])
        m0, v0 = mu[0], var[0]
        offs = self.cut_offsets.setdefault(
            rater, np.array([0.0, 0.0, CUT_OFFSET_SD**2, CUT_OFFSET_SD**2])
        )
        sigma2 = (self.label_noise * self.beta_of(rater)) ** 2 + cut_var
        # too_basal: s > c1 + o1; lv: s < c1 + o1 and s > c2 + o2; too_apical: s < c2 + o2.
        bounds = {0: [(0, 1.0)], 1: [(0, -1.0), (1, 1.0)], 2: [(1, -1.0)]}[cls]
        m_s, v_s = m0, v0
        for j, sign in bounds:
            m_t = m_s - offs[j] - cuts[j]
            o_v = offs[2 + j]
            alpha, gamma = probit_step(m_t, v_s + o_v, sign, sigma2, LABEL_LAPSE)
            m_s, v_s = m_s + v_s * alpha, max(v_s - v_s * v_s * gamma, 1e-9)
            offs[j], offs[2 + j] = offs[j] - o_v * alpha, max(o_v - o_v * o_v * gamma, 1e-9)
        m1, v1 = self._temper(rater, [i], [m0], [v0], [m_s], [v_s])
        self._apply([i], [m0], [v0], m1, v1)

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
