"""Simulated experts who rank batches and classify single slices, with calibrated noise.

Each rater perceives an image's true position ``x`` (0 most basal .. 1 most apical) as

    x + lam_r * (p_sd * z_ri + v_sd * e)            (absolute judgement, one class label)
    x + lam_r * (p_sd * z_ri + v_sd * e) / h        (comparison, when ranking a batch)

* ``z_ri ~ N(0, 1)`` is *persistent*: the same rater sees the same slice the same way every time
  (drawn once per (rater, image) from the panel seed); ``e ~ N(0, 1)`` is fresh for every view.
* ``lam_r`` is the rater's noise level: evenly spaced log-normal quantiles with spread
  ``rater_spread`` (deterministic, so a 3-rater panel always has a careful, a middling and a
  looser rater).
* ``h = abs_difficulty`` is how much harder an absolute judgement is than a comparison (the
  study's premise; ``h = 1`` means no easier). It only rescales the ranking noise, so changing it
  leaves the one-at-a-time calibration intact.
* Each rater also places the two class boundaries off the true cuts by ``N(0, offset_sd)`` (one
  draw per rater and cut): this moves their absolute labels, not their rankings.
* With probability ``lapse`` a judgement is random (a uniformly random class, or a uniformly
  random perceived position for one image of a batch).

Calibration (``DEFAULT_PARAMS``): on a cohort like the study's (positions uniform, cuts at the
20% and 92.6% quantiles) one-at-a-time labels give a mean intra-rater Cohen's kappa of 0.90
(same rater, two passes) and a mean inter-rater kappa of 0.77 (two raters), the study's Table 5.
The per-view part sets the intra kappa; the persistent part and the boundary offsets set the
gap to the inter kappa (``scripts``-free: ``kappa_study`` below reproduces the numbers).

Grounded in the image (issue 19): on phantom cohorts the panel is built from what each
rendered slice *shows* rather than from its true position: ``positions`` are the slices'
apparent positions (``cmr_ingest.phantom.apparent_u``: partial volume across the slab, the
visibility of the thin apical cap against noise) and ``difficulty`` scales every rater's
noise on a slice by how hard its scan is to read (noise over contrast, blur, wall thickness;
``cmr_ingest.phantom.reading_difficulty``). Both are properties of the image, the same for
every rater and for the CNN, so a slice that looks ambiguous is ambiguous for all of them.
``PHANTOM_PARAMS`` holds the noise levels calibrated to the study's kappa on such cohorts
(``slicerank bench raters``; docs/bench/raters.md).

Premises (``PREMISES``): ``1.0`` (equal noise: an absolute judgement is as noisy as a
comparison, the neutral default of the demo) and ``1.5`` (the study's premise).

Time parity (the study): 5 hours bought 3,323 single-image labels or about 1,575 ranked batches
of eight (44,097 pairwise comparisons = 1,575 x 28).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import ndtri

from slicerank_base import CLASSES

SECONDS_PER_LABEL = 5 * 3600 / 3323
"""Labelling time of one single-image class label (5 h / 3,323 labels)."""
SECONDS_PER_BATCH = 5 * 3600 / 1575
"""Labelling time of one ranked batch of eight (5 h / 1,575 batches)."""
STUDY_CUTS = (665 / 3323, 1 - 245 / 3323)
"""True cut positions of a study-like cohort: the study's class mix as position quantiles."""


@dataclass(frozen=True)
class RaterParams:
    """Noise model of a simulated panel (see the module docstring); validated on creation."""

    persistent_sd: float = 0.033
    """Sd of the persistent per-(rater, image) error of an absolute judgement (position units)."""
    view_sd: float = 0.0132
    """Sd of the per-view error of an absolute judgement."""
    rater_spread: float = 0.25
    """Log-sd of the raters' noise levels."""
    offset_sd: float = 0.014
    """Sd of each rater's offset of each class boundary (absolute labels only)."""
    lapse: float = 0.01
    """Probability of a random judgement."""
    abs_difficulty: float = 1.5
    """How many times noisier an absolute judgement is than a comparison."""
    cuts: tuple[float, float] = field(default=STUDY_CUTS)
    """True positions of the too_basal|lv and lv|too_apical boundaries."""

    def __post_init__(self) -> None:
        for name in ("persistent_sd", "view_sd", "rater_spread", "offset_sd"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.lapse < 1:
            raise ValueError(f"lapse: must be in [0, 1), got {self.lapse}")
        if self.abs_difficulty <= 0:
            raise ValueError(f"abs_difficulty: must be > 0, got {self.abs_difficulty}")
        if not 0 < self.cuts[0] < self.cuts[1] < 1:
            raise ValueError(f"cuts: need 0 < basal cut < apical cut < 1, got {self.cuts}")


DEFAULT_PARAMS = RaterParams()
"""The calibrated defaults (uniform study-like positions, no images)."""

PHANTOM_PARAMS = RaterParams(persistent_sd=0.0237, view_sd=0.0095, offset_sd=0.014)
"""Noise levels calibrated on phantom cohorts with image-grounded perception (apparent
positions and reading difficulty): intra kappa 0.90, inter 0.77 on the 300-scan calibration
cohort, 0.90 / 0.75 on a check cohort (``slicerank bench raters``, docs/bench/raters.md).
``abs_difficulty`` (the premise) and ``cuts`` are set per run."""

PREMISES = {
    1.0: "equal noise: an absolute label is as noisy as a comparison",
    1.5: "the study's premise: an absolute label is 1.5x noisier than a comparison",
}
"""The named premises (``abs_difficulty`` values) every headline states."""


def premise_name(abs_difficulty: float) -> str:
    """How headlines name a premise: ``premise 1.0 (equal noise ...)``."""
    text = PREMISES.get(float(abs_difficulty))
    return f"premise {abs_difficulty:g}" + (f" ({text})" if text else "")


def true_class(position: float, cuts: tuple[float, float] = STUDY_CUTS) -> str:
    """The class of a true position under the given cuts."""
    if position < cuts[0]:
        return CLASSES[0]
    return CLASSES[2] if position > cuts[1] else CLASSES[1]


def cuts_from_classes(
    positions: Mapping[str, float], classes: Mapping[str, str]
) -> tuple[float, float]:
    """The cut positions that best separate labelled positions (midpoints between classes)."""
    by = {c: [positions[i] for i in positions if classes.get(i) == c] for c in CLASSES}
    if not by[CLASSES[1]]:
        raise ValueError("classes: no 'lv' image to place the cuts around")
    lv_lo, lv_hi = min(by[CLASSES[1]]), max(by[CLASSES[1]])
    c1 = (max(by[CLASSES[0]]) + lv_lo) / 2 if by[CLASSES[0]] else lv_lo - 1e-6
    c2 = (min(by[CLASSES[2]]) + lv_hi) / 2 if by[CLASSES[2]] else lv_hi + 1e-6
    return (max(c1, 1e-6), min(c2, 1 - 1e-6))


class SimulatedRater:
    """One simulated expert; see the module docstring for the noise model."""

    def __init__(
        self,
        name: str,
        positions: Mapping[str, float],
        params: RaterParams,
        level: float,
        offsets: tuple[float, float],
        seed: Sequence[int],
        difficulty: Mapping[str, float] | None = None,
    ) -> None:
        self.name = name
        self._difficulty = difficulty or {}
        self.level = level
        self.offsets = offsets
        self._positions = positions
        self._params = params
        self._seed = list(seed)
        self._rng = np.random.default_rng([*self._seed, 1])
        self._persistent: dict[str, float] = {}

    def _z(self, image_id: str) -> float:
        z = self._persistent.get(image_id)
        if z is None:
            key = zlib.crc32(image_id.encode())
            z = float(np.random.default_rng([*self._seed, 2, key]).standard_normal())
            self._persistent[image_id] = z
        return z

    def _error(self, ids: Sequence[str]) -> np.ndarray:
        p = self._params
        z = np.array([self._z(i) for i in ids])
        e = self._rng.standard_normal(len(ids))
        hard = np.array([self._difficulty.get(i, 1.0) for i in ids])
        return self.level * hard * (p.persistent_sd * z + p.view_sd * e)

    def persistent_error(self, ids: Sequence[str]) -> np.ndarray:
        """The part of this rater's absolute-judgement error on each image that no number of
        views averages away (divide by ``abs_difficulty`` for a comparison)."""
        p = self._params
        z = np.array([self._z(i) for i in ids])
        hard = np.array([self._difficulty.get(i, 1.0) for i in ids])
        return self.level * hard * p.persistent_sd * z

    def _check(self, ids: Sequence[str]) -> None:
        unknown = [i for i in ids if i not in self._positions]
        if unknown:
            raise ValueError(f"ids: unknown to this panel: {unknown[:5]!r}")

    def rank(self, ids: Sequence[str]) -> list[str]:
        """The batch ordered as this rater sees it, most basal first."""
        self._check(ids)
        x = np.array([self._positions[i] for i in ids])
        perceived = x + self._error(ids) / self._params.abs_difficulty
        lapse = self._rng.random(len(ids)) < self._params.lapse
        if lapse.any():
            perceived[lapse] = self._rng.random(int(lapse.sum()))
        return [ids[k] for k in np.argsort(perceived, kind="stable")]

    def classify(self, image_id: str) -> str:
        """This rater's absolute label of one image."""
        self._check([image_id])
        if self._rng.random() < self._params.lapse:
            return CLASSES[int(self._rng.integers(3))]
        perceived = self._positions[image_id] + float(self._error([image_id])[0])
        cuts = self._params.cuts
        return true_class(perceived, (cuts[0] + self.offsets[0], cuts[1] + self.offsets[1]))


class RaterPanel:
    """A panel of simulated raters sharing one cohort."""

    def __init__(self, raters: list[SimulatedRater], params: RaterParams) -> None:
        self.raters = raters
        self.params = params

    @classmethod
    def from_positions(
        cls,
        positions: Mapping[str, float],
        n_raters: int = 3,
        seed: int = 0,
        params: RaterParams | None = None,
        difficulty: Mapping[str, float] | None = None,
    ) -> RaterPanel:
        """A panel of ``n_raters`` (named ``r1``, ``r2``, ...) over ``positions`` (0..1):
        true positions, or on a phantom the apparent ones; ``difficulty`` (image id → noise
        multiplier, default 1) is the image's own, shared by every rater."""
        if not positions:
            raise ValueError("positions: empty")
        bad = [k for k, v in positions.items() if not 0.0 <= float(v) <= 1.0]
        if bad:
            raise ValueError(f"positions: outside 0..1 for {bad[:5]!r}")
        if not isinstance(n_raters, int) or n_raters < 1:
            raise ValueError(f"n_raters: must be an int >= 1, got {n_raters!r}")
        params = params or DEFAULT_PARAMS
        pos = {k: float(v) for k, v in positions.items()}
        if difficulty is not None:
            bad = [k for k, v in difficulty.items() if not float(v) > 0]
            if bad:
                raise ValueError(f"difficulty: must be > 0, not for {bad[:5]!r}")
        rng = np.random.default_rng([seed, 0])
        offsets = rng.normal(0.0, params.offset_sd, size=(n_raters, 2))
        q = (np.arange(n_raters) + 0.5) / n_raters
        levels = np.exp(params.rater_spread * ndtri(q)) if n_raters > 1 else np.ones(1)
        raters = [
            SimulatedRater(
                f"r{k + 1}",
                pos,
                params,
                float(levels[k]),
                (float(offsets[k, 0]), float(offsets[k, 1])),
                (seed, k + 1),
                difficulty,
            )
            for k in range(n_raters)
        ]
        return cls(raters, params)

    def with_params(self, **changes: float) -> RaterParams:
        """A copy of this panel's parameters with some fields changed."""
        return replace(self.params, **changes)


def cohens_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two label sequences over ``CLASSES``."""
    if len(a) != len(b) or not a:
        raise ValueError("a, b: need two non-empty label lists of equal length")
    k = {c: j for j, c in enumerate(CLASSES)}
    m = np.zeros((3, 3))
    for x, y in zip(a, b, strict=True):
        m[k[x], k[y]] += 1
    n = m.sum()
    po = np.trace(m) / n
    pe = float((m.sum(0) * m.sum(1)).sum()) / (n * n)
    return float((po - pe) / (1 - pe)) if pe < 1 else 1.0


def study_positions(n: int = 3323, seed: int = 0) -> dict[str, float]:
    """A study-like cohort: ``n`` positions uniform on 0..1 (so the class mix is 20/73/7)."""
    rng = np.random.default_rng([seed, 7])
    return {f"img{k:05d}": float(x) for k, x in enumerate(rng.random(n))}


def kappa_study(
    positions: Mapping[str, float],
    seeds: Sequence[int] = (0,),
    params: RaterParams | None = None,
    difficulty: Mapping[str, float] | None = None,
) -> tuple[float, float]:
    """Mean (intra, inter) Cohen's kappa of one-at-a-time labels, as the study measured them.

    Intra: each rater labels every image twice; inter: every pair of raters; averaged over
    raters, pairs and panel seeds.
    """
    ids = list(positions)
    intra, inter = [], []
    for seed in seeds:
        panel = RaterPanel.from_positions(positions, 3, seed, params, difficulty)
        passes = [[r.classify(i) for i in ids] for r in panel.raters]
        again = [[r.classify(i) for i in ids] for r in panel.raters]
        intra += [cohens_kappa(p, q) for p, q in zip(passes, again, strict=True)]
        inter += [cohens_kappa(passes[a], passes[b]) for a in range(3) for b in range(a + 1, 3)]
    return float(np.mean(intra)), float(np.mean(inter))
