"""Stack geometry: a per-scan Gaussian-process prior over the latent positions of its slices.

Within a scan the anatomy rises monotonically from base to apex, so the slices of one stack
are not independent: one view of a slice says a lot about its neighbours. ``StackModel``
keeps the ranked-probit model of ``bayes.py`` (same EP update of a whole ranking, same rater
noise) but replaces the independent ``N(0, 1)`` prior of each image by one Gaussian prior per
scan over its slices' latent positions ``s`` (higher = more basal), in ``u``, the position
along the stack in units of the pool's typical slice spacing:

    s(u) = a + b (u - u_c) + h(u) + e,
    a ~ N(0, SD_LEVEL^2),  b ~ N(SLOPE, SD_SLOPE^2),  h ~ GP(0, SD_WARP^2 exp(-du^2 / 2 WARP_LEN^2)),
    e ~ N(0, SD_SLICE^2) per slice,

a scan-specific trend (level and slope) plus a smooth scan-specific bend (``h``: the rise is
not linear, and scans differ) plus a small per-slice part. ``u_c`` is the scan's mean ``u``.
The trend's mean slope is negative (apical slices score lower); its spread and the bend let a
scan's rise differ from the typical one, so the data, not the prior, decide where its
boundaries fall. A monotone constraint would be exact but not Gaussian; the ordering within a
scan is imposed where it matters, on the classes (``monotone_classes``).

Each ranking is still one ranked-probit factor over the 8 images it holds (8 different scans,
so their current marginals are independent and ``ranking_update`` applies unchanged): its
Gaussian message to each image is stored as a *site* (precision, precision x mean), and every
scan touched gets its exact Gaussian posterior from its prior and all its sites (Rasmussen &
Williams 2006, ch. 3: the GP classification site form). This is assumed-density filtering, like
``BayesModel``: replaying a log in the same order gives the same state exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ranking_scheduler.engine.bayes import DEFAULT_BETA, DYNAMICS, BayesModel

SLOPE = -0.28
"""Mean rise of the latent position per typical slice spacing (basal slices score higher)."""
SD_SLOPE = 0.1
"""Sd of a scan's slope around ``SLOPE`` (scans differ in heart size and coverage)."""
SD_LEVEL = 0.5
"""Sd of a scan's level at its middle slice (where along the heart the stack is centred)."""
SD_WARP = 0.2
"""Sd of the smooth scan-specific bend of the rise."""
WARP_LEN = 5.0
"""Length scale of the bend, in typical slice spacings."""
SD_SLICE = 0.1
"""Sd of the per-slice part (keeps every prior covariance well conditioned)."""


@dataclass(frozen=True)
class StackLayout:
    """The pool's scans: for each scan the image indices sorted base to apex and their ``u``.

    Images without geometry are scans of one slice (their prior is the independent one).
    """

    groups: list[np.ndarray]
    u: list[np.ndarray]
    scan_of: np.ndarray
    """Scan index of each image."""
    slot_of: np.ndarray
    """Place of each image within its scan (0 = most basal)."""
    width: int
    """Slices in the largest scan."""

    @property
    def n_scans(self) -> int:
        """Number of scans (images without geometry count one each)."""
        return len(self.groups)

    def padded(self) -> np.ndarray:
        """``(n_scans, width)`` image indices, base to apex, padded with -1."""
        out = np.full((self.n_scans, self.width), -1, dtype=np.int64)
        for s, g in enumerate(self.groups):
            out[s, : g.size] = g
        return out


def stack_layout(ids: Sequence[str], stacks: Mapping[str, tuple[str, float]]) -> StackLayout:
    """Validate ``stacks`` (image id -> ``(scan_id, z mm)``, z increasing base to apex) and lay
    the pool out by scan. Images of ``ids`` missing from ``stacks`` stand alone.

    Raises ``ValueError`` naming the image for an unknown id, a malformed entry, a z that is not
    a finite number, or two slices of one scan at the same z.
    """
    if not isinstance(stacks, Mapping):
        raise ValueError(f"stacks: expected a mapping image id -> (scan_id, z), got {stacks!r}")
    index = {image_id: k for k, image_id in enumerate(ids)}
    unknown = [i for i in stacks if i not in index]
    if unknown:
        raise ValueError(f"stacks: image ids not in the pool: {sorted(map(str, unknown))[:5]!r}")
    by_scan: dict[str, list[tuple[float, int]]] = {}
    for image_id, entry in stacks.items():
        if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 2:
            raise ValueError(f"stacks[{image_id!r}]: expected (scan_id, z), got {entry!r}")
        scan_id, z = entry
        if not isinstance(scan_id, str) or not scan_id:
            raise ValueError(f"stacks[{image_id!r}]: scan_id must be a non-empty string")
        try:
            zf = float(z)
        except (TypeError, ValueError):
            raise ValueError(f"stacks[{image_id!r}]: z {z!r} is not a number") from None
        if not np.isfinite(zf):
            raise ValueError(f"stacks[{image_id!r}]: z {z!r} is not finite")
        by_scan.setdefault(scan_id, []).append((zf, index[image_id]))
    spacings = []
    for scan_id, members in by_scan.items():
        members.sort()
        zs = [z for z, _ in members]
        for a, b in zip(zs, zs[1:], strict=False):
            if b - a <= 0:
                raise ValueError(f"stacks: scan {scan_id!r} has two slices at z = {a}")
            spacings.append(b - a)
    # One unit = the pool's typical gap between neighbouring slices, so the prior does not
    # depend on whether z comes in mm or in slice indices.
    unit = float(np.median(spacings)) if spacings else 1.0
    groups: list[np.ndarray] = []
    us: list[np.ndarray] = []
    for scan_id in sorted(by_scan):
        members = by_scan[scan_id]
        groups.append(np.array([k for _, k in members], dtype=np.int64))
        us.append(np.array([z for z, _ in members]) / unit)
    alone = sorted(set(range(len(ids))) - {int(k) for g in groups for k in g})
    for k in alone:
        groups.append(np.array([k], dtype=np.int64))
        us.append(np.zeros(1))
    scan_of = np.empty(len(ids), dtype=np.int64)
    slot_of = np.empty(len(ids), dtype=np.int64)
    for s, g in enumerate(groups):
        scan_of[g] = s
        slot_of[g] = np.arange(g.size)
    width = max(g.size for g in groups)
    return StackLayout(groups, us, scan_of, slot_of, width)


def scan_prior(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prior mean and covariance of one scan's latent positions at stack positions ``u``."""
    if u.size == 1:
        return np.zeros(1), np.ones((1, 1))
    d = u - u.mean()
    mean = SLOPE * d
    diff = u[:, None] - u[None, :]
    cov = (
        SD_LEVEL**2
        + SD_SLOPE**2 * np.outer(d, d)
        + SD_WARP**2 * np.exp(-0.5 * (diff / WARP_LEN) ** 2)
        + SD_SLICE**2 * np.eye(u.size)
    )
    return mean, cov


class StackModel(BayesModel):
    """``BayesModel`` with one Gaussian-process prior per scan (see the module docstring).

    ``mu``/``var`` hold each image's marginal posterior, as in ``BayesModel``; ``cov_rows[i]``
    holds image ``i``'s row of its scan's posterior covariance (slots of its scan, zero
    padded) and ``mates[i]`` the images of those slots (padded with ``i`` itself), so the value
    of a view to the whole stack is a vectorised computation
    (``chooser.TaskChooser.stack_view_value``).
    """

    def __init__(
        self,
        layout: StackLayout,
        *,
        default_beta: float = DEFAULT_BETA,
        dynamics: float = DYNAMICS,
        **kw: float,
    ) -> None:
        n = int(layout.scan_of.size)
        super().__init__(n, default_beta=default_beta, dynamics=dynamics, **kw)
        self.layout = layout
        self.site_pi = np.zeros(n)
        self.site_tau = np.zeros(n)
        self.prior_var = np.ones(n)
        self._prior_mean: list[np.ndarray] = []
        self._prior_prec: list[np.ndarray] = []
        self._prior_h: list[np.ndarray] = []
        self.cov_rows = np.zeros((n, layout.width))
        self.mates = np.repeat(np.arange(n)[:, None], layout.width, axis=1)
        for g, u in zip(layout.groups, layout.u, strict=True):
            mean, cov = scan_prior(u)
            prec = np.linalg.inv(cov)
            self._prior_mean.append(mean)
            self._prior_prec.append(prec)
            self._prior_h.append(prec @ mean)
            self.prior_var[g] = np.diag(cov)
            self.mates[g, : g.size] = g[None, :]
            self.mu[g] = mean
            self.var[g] = np.diag(cov)
            self.cov_rows[g, : g.size] = cov

    def _cavity(self, idx: Sequence[int]) -> tuple[list[float], list[float]]:
        return (
            [float(self.mu[i]) for i in idx],
            [min(float(self.prior_var[i]), float(self.var[i]) + self.dynamics) for i in idx],
        )

    def _apply(
        self,
        idx: Sequence[int],
        mu: Sequence[float],
        var: Sequence[float],
        new_mu: Sequence[float],
        new_var: Sequence[float],
    ) -> None:
        # The ranking's message to each image is what it added to the cavity; it becomes a site.
        for i, m, v, m2, v2 in zip(idx, mu, var, new_mu, new_var, strict=True):
            self.site_pi[i] += max(1.0 / v2 - 1.0 / v, 0.0)
            self.site_tau[i] += m2 / v2 - m / v
        self._refresh(sorted({int(self.layout.scan_of[i]) for i in idx}))

    def _refresh(self, scans: list[int]) -> None:
        """Exact Gaussian posterior of each scan of ``scans`` from its prior and its sites.

        The scans' precision matrices are inverted in one call (a batch touches up to 8 scans,
        and 8 small inversions cost mostly their call overhead): each is padded to the widest
        with the identity, and the inverse of a block-diagonal matrix is its blocks' inverses,
        the same numbers as inverting each alone."""
        groups = [self.layout.groups[s] for s in scans]
        width = max(g.size for g in groups)
        prec = np.broadcast_to(np.eye(width), (len(scans), width, width)).copy()
        for k, (s, g) in enumerate(zip(scans, groups, strict=True)):
            prec[k, : g.size, : g.size] = self._prior_prec[s] + np.diag(self.site_pi[g])
        covs = np.linalg.inv(prec)
        for k, (s, g) in enumerate(zip(scans, groups, strict=True)):
            cov = covs[k, : g.size, : g.size]
            mean = cov @ (self._prior_h[s] + self.site_tau[g])
            self.mu[g] = mean
            self.var[g] = np.diag(cov)
            self.cov_rows[g, : g.size] = cov


def monotone_classes(log_p: np.ndarray, padded: np.ndarray) -> np.ndarray:
    """The most probable class sequence along each scan that never steps back.

    ``log_p`` is ``(n, 3)`` per-image log probabilities of (too_basal, lv, too_apical);
    ``padded`` the ``(n_scans, width)`` image indices base to apex (-1 padding). Returns the
    class index (0, 1, 2) of every image such that along every scan the classes are
    non-decreasing (too_basal... lv... too_apical): Viterbi over three ordered states, all
    scans at once.
    """
    n_scans, width = padded.shape
    valid = padded >= 0
    lp = np.where(valid[:, :, None], log_p[np.where(valid, padded, 0)], 0.0)
    score = np.empty((n_scans, width, 3))
    back = np.zeros((n_scans, width, 3), dtype=np.int64)
    score[:, 0] = lp[:, 0]
    for k in range(1, width):
        prev = score[:, k - 1]
        # State c may follow any state <= c: running maximum over the previous states.
        best = np.maximum.accumulate(prev, axis=1)
        arg = np.zeros((n_scans, 3), dtype=np.int64)
        arg[:, 1] = np.where(prev[:, 1] >= prev[:, 0], 1, 0)
        arg[:, 2] = np.where(prev[:, 2] >= best[:, 1], 2, arg[:, 1])
        score[:, k] = best + lp[:, k]
        back[:, k] = arg
    out = np.zeros(log_p.shape[0], dtype=np.int64)
    state = np.argmax(score[:, -1], axis=1)
    for k in range(width - 1, -1, -1):
        cols = padded[:, k]
        ok = cols >= 0
        out[cols[ok]] = state[ok]
        state = back[np.arange(n_scans), k, state]
    return out
