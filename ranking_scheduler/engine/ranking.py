"""``RankingEngine``: batches to rank, pooled ratings, the ordinal list, cuts and classes.

Pure and in memory; deterministic for a seed (the same calls in the same order give the same
batches and the same state). Three strategies share the bookkeeping here (views, open batches,
validation, thresholds) and differ in the model and in how they pick batches:

* ``paper``: the study's heuristic, Glicko-2 per image (``glicko.py``); stops when every image
  has ``target_views`` views.
* ``bayes``: ranked-probit posterior with per-rater noise (``bayes.py``); batches go to the
  images whose class is most uncertain, plus settled anchors next to the cuts; stops when the
  expected number of misclassified images falls below ``target_misclassified * n``.
* ``random``: the ``bayes`` model fed with uniformly random batches; stops once the total
  views reach ``target_views * n`` (so it spends what ``paper`` spends at the least).

Scores are on one axis where **higher means more basal** (the paper's rating direction);
``ranking()`` lists the most basal image first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from ranking_scheduler.engine import boundary as bnd
from ranking_scheduler.engine.bayes import PRIOR_VAR, BayesModel
from ranking_scheduler.engine.glicko import PaperModel
from ranking_scheduler.engine.stacks import (
    StackModel,
    monotone_classes,
    stack_layout,
)
from slicerank_base import CLASSES

STRATEGIES = ("paper", "bayes", "random")
"""Engine strategies (the simulator adds ``one_at_a_time``, which needs no engine)."""
TARGET_MISCLASSIFIED = 0.01
"""``bayes`` stops when expected misclassified images < this fraction of the images."""
N_ANCHORS = 2
"""Settled images placed next to the cuts in each ``bayes`` batch."""
CANDIDATES = 256
"""Seen and unseen images each scored per ``bayes`` batch (the rest are ranked out by risk)."""
BOUNDARY_PACE = 1.0
"""While ranking goes on, boundary questions asked <= budget x pace x share of images seen."""
COVERAGE_BONUS = 0.1
"""Added to the value of a first view of an unseen image (see ``_bayes_select``)."""
OWN_VIEW_WEIGHT = 0.6
"""Value of a view by a rater who has already ranked the image, relative to a fresh rater."""
QUERY_WINDOW = 0.05
"""Boundary questions go to an image within this fraction of the list of the cut's estimate."""
QUERY_WIDTH = 0.02
"""Assumed expert disagreement about a cut (fraction of the list) when choosing what to ask."""
MAX_PENDING = 4
"""Boundary questions left unanswered beyond this many are forgotten (the oldest first)."""
STACK_CANDIDATES = 128
"""With stacks: images scored per ``bayes`` batch (the most at risk, each valued for its stack)."""
STACK_TARGET_MISCLASSIFIED = 0.003
"""With stacks, ``bayes``'s default stop: the stack posterior shares each view among a scan's
slices as if every rater's error were fresh, so it is overconfident, and at 1% it stopped near
1,200 batches (4 h) while its accuracy was still climbing (seed 1, equal noise)."""
STACK_CUT_EVERY = 4
"""With stacks: batches between refreshes of the cuts that batch choice uses."""

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(8)
_GH_W = _GH_W / _GH_W.sum()

_OPTIONS = {
    "paper": {"tau", "view_slack"},
    "bayes": {"target_misclassified", "n_anchors", "default_beta", "dynamics", "coverage_bonus"},
    "random": {"default_beta", "dynamics"},
}
_COMMON_OPTIONS = {"class_mix", "boundary_budget", "boundary_error_rate", "boundary_pace"}


def _misclassification(m: np.ndarray, s: np.ndarray, c1: float, c2: float) -> np.ndarray:
    """Probability that the most probable class of a position ``N(m, s^2)`` is wrong, given
    the cuts ``c1`` (basal/lv) and ``c2`` (lv/apical) on the score axis (higher = more basal)."""
    p_b = ndtr((m - c1) / s)
    p_a = ndtr((c2 - m) / s)
    p_l = np.clip(1.0 - p_b - p_a, 0.0, 1.0)
    return 1.0 - np.maximum(np.maximum(p_b, p_l), p_a)


class RankingEngine:
    """Schedules ranked batches, pools the rankings and finds the two class cuts.

    Parameters
    ----------
    image_ids
        The pool: unique, non-empty strings.
    strategy
        ``"bayes"`` (default), ``"paper"`` or ``"random"``.
    batch_size
        Images per batch (the study: 8).
    target_views
        ``paper``: views every image needs before it stops; ``random``: mean views at the stop.
    seed
        Seeds the tie-breaking and random choices.
    stacks
        Optional geometry: image id -> ``(scan_id, z)``, ``z`` the slice's position along its
        stack (mm, increasing from base to apex; gaps and per-scan spacing allowed). With it
        ``bayes``/``random`` use one Gaussian-process prior per scan (``stacks.py``), ``bayes``
        values a view for what it teaches the whole stack, every batch holds 8 different
        scans, and classes never step back along a stack (for every strategy; ``paper``'s
        ratings stay the study's). Images missing from ``stacks`` stand alone.
    **options
        ``class_mix`` (3 fractions, prior for where the cuts lie; default the study's mix),
        ``boundary_budget`` (absolute labels, default 40), ``boundary_error_rate`` (lapse, 0.03),
        ``boundary_pace`` (see ``next_boundary_query``; default 1);
        ``paper``: ``tau``, ``view_slack``; ``bayes``: ``target_misclassified`` (0.01),
        ``n_anchors`` (2), ``coverage_bonus`` (0.1), ``default_beta``, ``dynamics``;
        ``random``: ``default_beta``, ``dynamics``.
    """

    def __init__(
        self,
        image_ids: Iterable[str],
        strategy: str = "bayes",
        batch_size: int = 8,
        target_views: int = 3,
        seed: int = 0,
        stacks: Mapping[str, tuple[str, float]] | None = None,
        **options: Any,
    ) -> None:
        ids = list(image_ids)
        if not ids:
            raise ValueError("image_ids: the pool is empty")
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise ValueError(f"image_ids: not non-empty strings: {bad[:5]!r}")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"image_ids: duplicates {dup!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not isinstance(batch_size, int) or not 2 <= batch_size <= len(ids):
            raise ValueError(f"batch_size: must be an int in 2..{len(ids)}, got {batch_size!r}")
        if not isinstance(target_views, int) or target_views < 1:
            raise ValueError(f"target_views: must be an int >= 1, got {target_views!r}")
        if not isinstance(seed, int):
            raise ValueError(f"seed: must be an int, got {seed!r}")
        unknown = set(options) - _OPTIONS[strategy] - _COMMON_OPTIONS
        if unknown:
            raise ValueError(f"options: {sorted(unknown)} not valid for strategy {strategy!r}")
        mix = tuple(float(x) for x in options.get("class_mix", bnd.STUDY_CLASS_MIX))
        if len(mix) != 3 or min(mix) <= 0 or abs(sum(mix) - 1) > 1e-6:
            raise ValueError(f"class_mix: need 3 positive fractions summing to 1, got {mix}")
        budget = options.get("boundary_budget", bnd.MAX_LABELS)
        if not isinstance(budget, int) or budget < 0:
            raise ValueError(f"boundary_budget: must be an int >= 0, got {budget!r}")
        err = float(options.get("boundary_error_rate", bnd.ERROR_RATE))
        if not 0 < err < 0.5:
            raise ValueError(f"boundary_error_rate: must be in (0, 0.5), got {err}")
        default_mis = TARGET_MISCLASSIFIED if stacks is None else STACK_TARGET_MISCLASSIFIED
        target_mis = float(options.get("target_misclassified", default_mis))
        if not 0 < target_mis < 1:
            raise ValueError(f"target_misclassified: must be in (0, 1), got {target_mis}")
        pace = float(options.get("boundary_pace", BOUNDARY_PACE))
        if pace < 0:
            raise ValueError(f"boundary_pace: must be >= 0 (0 = ask at once), got {pace}")
        bonus = float(options.get("coverage_bonus", COVERAGE_BONUS))
        if bonus < 0:
            raise ValueError(f"coverage_bonus: must be >= 0, got {bonus}")
        n_anchors = options.get("n_anchors", N_ANCHORS)
        if not isinstance(n_anchors, int) or not 0 <= n_anchors < batch_size:
            raise ValueError(f"n_anchors: must be an int in 0..{batch_size - 1}")

        self.strategy = strategy
        self.batch_size = batch_size
        self.target_views = target_views
        self.seed = seed
        self._ids = ids
        self._index = {image_id: i for i, image_id in enumerate(ids)}
        n = len(ids)
        self._n = n
        self._rng = np.random.default_rng(seed)
        self._views = np.zeros(n, dtype=np.int64)
        self._batches = 0
        self._open: dict[int, tuple[str, list[int]]] = {}
        self._next_batch_id = 0
        self._in_open = np.zeros(n, dtype=np.int32)
        self._mix = mix
        self._budget = budget
        self._err = err
        self._target_mis = target_mis
        self._n_anchors = n_anchors
        self._coverage_bonus = bonus
        self._labels: list[tuple[int, str]] = []
        self._pending: dict[int, str] = {}
        self._forgotten: set[int] = set()
        self._boundary_pace = pace
        self._discord: dict[str, list[int]] = {}
        self._rater_seen: dict[str, np.ndarray] = {}
        self._cut_cache: dict[bool, tuple[tuple[int, int], Any]] = {}
        self._layout = stack_layout(ids, stacks) if stacks is not None else None
        if self._layout is not None:
            self._padded = self._layout.padded()
            self._scan_views = np.zeros(self._layout.n_scans, dtype=np.int64)
        if strategy == "paper":
            self._paper = PaperModel(
                n,
                tau=float(options.get("tau", 0.5)),
                view_slack=int(options.get("view_slack", 1)),
            )
        else:
            kw = {k: float(options[k]) for k in ("default_beta", "dynamics") if k in options}
            if self._layout is not None:
                self._bayes = StackModel(self._layout, **kw)
            else:
                self._bayes = BayesModel(n, **kw)

    # ----------------------------------------------------------------- read-only views
    @property
    def image_ids(self) -> list[str]:
        """The pool, in the order given."""
        return list(self._ids)

    def _score_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.strategy == "paper":
            return self._paper.rating, self._paper.rd
        return self._bayes.mu, np.sqrt(self._bayes.var)

    def scores(self) -> dict[str, tuple[float, float]]:
        """``(mean, sd)`` per image on the strategy's axis (higher = more basal).

        ``paper``: Glicko rating and rating deviation (1500 / 350 at the start);
        ``bayes`` / ``random``: posterior mean and sd of the latent position (0 / 1 prior).
        """
        mean, sd = self._score_arrays()
        return {i: (float(mean[k]), float(sd[k])) for k, i in enumerate(self._ids)}

    def _order(self) -> np.ndarray:
        mean, _ = self._score_arrays()
        return np.lexsort((np.arange(self._n), -mean))

    def ranking(self) -> list[str]:
        """All images, most basal first (unseen images sit at their prior score)."""
        return [self._ids[k] for k in self._order()]

    def view_counts(self) -> dict[str, int]:
        """How many submitted rankings contained each image."""
        return {i: int(self._views[k]) for k, i in enumerate(self._ids)}

    def open_batches(self) -> list[list[str]]:
        """Batches handed out by ``next_batch`` and neither submitted nor released, oldest first."""
        return [[self._ids[k] for k in idx] for _, idx in self._open.values()]

    def rater_noise(self) -> dict[str, float]:
        """Per-rater noise. ``bayes``/``random``: perception sd on the latent axis (fitted);
        ``paper`` (which has no noise model): share of a rater's pairs that contradicted the
        ratings of two already-seen images at the time of submission."""
        if self.strategy != "paper":
            return self._bayes.rater_noise()
        return {r: (d / t if t else 0.0) for r, (d, t) in sorted(self._discord.items())}

    # ----------------------------------------------------------------- stopping rule
    def _class_probs(
        self, cuts: dict[str, Any], with_cut_sd: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, sd = self._score_arrays()
        c1, c2 = cuts["basal_lv"]["score"], cuts["lv_apical"]["score"]
        var = sd * sd
        s1 = np.sqrt(var + (cuts["basal_lv"]["sd"] ** 2 if with_cut_sd else 0.0))
        s2 = np.sqrt(var + (cuts["lv_apical"]["sd"] ** 2 if with_cut_sd else 0.0))
        p_b = ndtr((mean - c1) / s1)
        p_a = ndtr((c2 - mean) / s2)
        p_l = np.clip(1.0 - p_b - p_a, 0.0, 1.0)
        return p_b, p_l, p_a

    def _misclassification(self, cuts: dict[str, Any]) -> np.ndarray:
        p_b, p_l, p_a = self._class_probs(cuts, with_cut_sd=False)
        return 1.0 - np.maximum(np.maximum(p_b, p_l), p_a)

    def expected_misclassified(self) -> float:
        """Expected number of images whose class would change if their score were known exactly.

        Uses each image's score uncertainty against the current cut estimates; the cuts' own
        uncertainty is what boundary questions reduce and is reported by ``boundary_status``.
        """
        return float(self._misclassification(self._cuts(fresh=True)).sum())

    def _is_done(self, cuts: dict[str, Any] | None = None) -> bool:
        if self.strategy == "paper":
            return bool(self._views.min() >= self.target_views)
        if self.strategy == "random":
            return bool(self._views.sum() >= self.target_views * self._n)
        cuts = cuts if cuts is not None else self._cuts(fresh=False)
        if not self._views.any():
            return False
        return bool(self._misclassification(cuts).sum() < self._target_mis * self._n)

    @property
    def done(self) -> bool:
        """The stopping rule holds: ``next_batch`` returns ``[]``."""
        return self._is_done()

    def progress(self) -> dict[str, Any]:
        """Counts for dashboards: batches, views, open batches, boundary labels, estimates."""
        done = self._is_done()
        views = int(self._views.sum())
        if done:
            left = 0
        elif self.strategy == "paper":
            need = np.maximum(self.target_views - self._views, 0).sum()
            left = math.ceil(need / self.batch_size)
        elif self.strategy == "random":
            left = math.ceil((self.target_views * self._n - views) / self.batch_size)
        else:
            # Rough: every image still likelier than 5% to be misclassified needs one more view.
            mis = self._misclassification(self._cuts(fresh=False))
            per_batch = max(1, self.batch_size - self._n_anchors)
            left = math.ceil(int((mis > 0.05).sum()) / per_batch)
        return {
            "strategy": self.strategy,
            "images": self._n,
            "batches": self._batches,
            "views": views,
            "min_views": int(self._views.min()),
            "open_batches": len(self._open),
            "boundary_labels": len(self._labels),
            "expected_misclassified": self.expected_misclassified(),
            "estimated_batches_left": int(left),
            "done": done,
        }

    # ----------------------------------------------------------------- batches
    def next_batch(self, rater: str, avoid: Iterable[str] = ()) -> list[str]:
        """The next batch for ``rater`` (shuffled), recorded as open; ``[]`` once done.

        ``avoid``: images left out while enough others are free (the service passes the
        slices ranked in the last minutes, as it cannot choose which rater gets a task)."""
        _check_rater(rater)
        if self._is_done():
            return []
        k = self.batch_size
        available = self._in_open == 0
        rest = [self._index[i] for i in avoid if i in self._index]
        if rest:
            rested = available.copy()
            rested[rest] = False
            if rested.sum() >= k:
                available = rested
        jitter = self._rng.random(self._n)
        if self.strategy == "paper":
            chosen = list(self._paper.select(k, self._views, available, jitter))
        elif self.strategy == "random":
            cand = np.flatnonzero(available)
            if self._layout is not None:
                # Random order, then at most one slice per scan.
                cand = cand[self._rng.permutation(cand.size)]
                chosen = [int(x) for x in self._distinct_scans(cand, k)]
            else:
                take = min(k, cand.size)
                chosen = list(self._rng.choice(cand, size=take, replace=False)) if take else []
        elif self._layout is not None:
            chosen = self._stack_select(rater, available, jitter)
        else:
            chosen = self._bayes_select(rater, available, jitter)
        if len(chosen) < k:
            # Pool exhausted by open batches: reuse images that are open least often.
            rest = np.ones(self._n, dtype=bool)
            rest[chosen] = False
            cand = np.flatnonzero(rest)
            key = self._in_open[cand] + jitter[cand] * 0.5
            extra = cand[np.argsort(key, kind="stable")[: k - len(chosen)]]
            chosen.extend(int(x) for x in extra)
        chosen = [int(chosen[p]) for p in self._rng.permutation(len(chosen))]
        self._open[self._next_batch_id] = (rater, chosen)
        self._next_batch_id += 1
        self._in_open[chosen] += 1
        return [self._ids[i] for i in chosen]

    def _bayes_select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        cuts = self._cuts(fresh=False)
        seen = self._views > 0
        n_seen = int(seen.sum())
        n_anchor = self._n_anchors if n_seen >= 2 * self.batch_size else 0
        n_new = self.batch_size - n_anchor
        cand = np.flatnonzero(available)
        if cand.size == 0:
            return []
        # Candidates: the seen images most at risk of misclassification plus a random handful of
        # unseen ones (all unseen images look alike), scored by the value of one more view.
        mis = self._misclassification(cuts)
        pool = CANDIDATES
        seen_c = cand[seen[cand]]
        if seen_c.size > pool:
            seen_c = seen_c[np.argpartition(-mis[seen_c], pool - 1)[:pool]]
        unseen_c = cand[~seen[cand]]
        if unseen_c.size > pool:
            unseen_c = unseen_c[np.argpartition(jitter[unseen_c], pool - 1)[:pool]]
        cand = np.concatenate([seen_c, unseen_c])
        value = self._view_value(cand, cuts) + jitter[cand] * 1e-9
        mine = self._rater_seen.get(rater)
        if mine is not None:
            # A rater's errors are partly persistent: another rater's view is worth more.
            value = np.where(mine[cand], value * OWN_VIEW_WEIGHT, value)
        # A first view is worth more than the one-step preposterior says: an image nobody has
        # seen can only be guessed from the class mix (wrong for 27% of a study-like cohort),
        # and once placed it can be refined where it matters. Without the bonus, a run stopped
        # early (a budget) left up to 17% of the images unseen on some seeds, which decided
        # whether it beat `paper`; 0.1 was chosen on seeds 0-19 (0.05 and 0.2 did worse).
        value = value + (~seen[cand]) * self._coverage_bonus
        take = min(n_new, cand.size)
        chosen = self._group_pick(cand, value, seen, cuts, take)
        if n_anchor:
            chosen += self._anchors(chosen, n_anchor, available & seen, cuts)
        if len(chosen) < self.batch_size:
            mask = available.copy()
            mask[chosen] = False
            rest = np.flatnonzero(mask)
            extra = rest[np.argsort(-mis[rest], kind="stable")[: self.batch_size - len(chosen)]]
            chosen += [int(x) for x in extra]
        return chosen

    # ----------------------------------------------------------------- stacks
    def _placed(self) -> np.ndarray:
        """Images the ranking has placed: seen, or (with stacks) in a scan with a seen slice,
        whose position the stack prior carries over from its neighbours."""
        seen = self._views > 0
        if self._layout is None:
            return seen
        return seen | (self._scan_views[self._layout.scan_of] > 0)

    def _distinct_scans(self, order: np.ndarray, take: int, exclude: Iterable[int] = ()) -> list:
        """The first ``take`` images of ``order`` from scans not yet used (nor in ``exclude``)."""
        scan_of = self._layout.scan_of
        used = {int(scan_of[i]) for i in exclude}
        out = []
        for i in order:
            s = int(scan_of[i])
            if s not in used:
                used.add(s)
                out.append(int(i))
                if len(out) == take:
                    break
        return out

    def _stack_select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        """``bayes`` batch choice with stacks: the images whose view teaches their stacks most,
        one per scan (raters see 8 slices of 8 different scans), near one cut where possible,
        plus anchors from yet other scans."""
        cuts = self._cuts(fresh=False)
        placed = self._placed()
        n_anchor = self._n_anchors if int((self._views > 0).sum()) >= 2 * self.batch_size else 0
        n_new = self.batch_size - n_anchor
        cand = np.flatnonzero(available)
        if cand.size == 0:
            return []
        mis = self._misclassification(cuts)
        if cand.size > STACK_CANDIDATES:
            # Most at risk first; the risk already includes what the neighbours have taught.
            key = mis[cand] + jitter[cand] * 1e-9
            cand = cand[np.argpartition(-key, STACK_CANDIDATES - 1)[:STACK_CANDIDATES]]
        value = self._stack_view_value(cand, cuts) + jitter[cand] * 1e-9
        mine = self._rater_seen.get(rater)
        if mine is not None:
            # A rater's errors are partly persistent: another rater's view is worth more.
            value = np.where(mine[cand], value * OWN_VIEW_WEIGHT, value)
        # The first view of a scan places its whole stack (see _bayes_select on the bonus).
        value = value + (~placed[cand]) * self._coverage_bonus
        mean, sd = self._score_arrays()
        z = np.vstack([np.abs(mean[cand] - cuts[c]["score"]) / sd[cand] for c in bnd.CUTS])
        group = np.where(placed[cand], np.argmin(z, axis=0), 2)
        order = np.argsort(-value, kind="stable")
        best, best_sum = [], -1.0
        for g in (0, 1, 2):
            picks = self._distinct_scans(cand[order[group[order] == g]], n_new)
            total = float(value[np.isin(cand, picks)].sum())
            if picks and total > best_sum:
                best, best_sum = picks, total
        chosen = best
        if len(chosen) < n_new:
            chosen += self._distinct_scans(cand[order], n_new - len(chosen), exclude=chosen)
        if n_anchor:
            chosen += self._anchors(chosen, n_anchor, available & (self._views > 0), cuts)
        if len(chosen) < self.batch_size:
            rest = np.flatnonzero(available)
            rest = rest[np.argsort(-mis[rest], kind="stable")]
            chosen += self._distinct_scans(rest, self.batch_size - len(chosen), exclude=chosen)
        return chosen

    def _stack_view_value(self, cand: np.ndarray, cuts: dict[str, Any]) -> np.ndarray:
        """Expected drop in misclassified slices of each candidate's whole stack from one view.

        As ``_view_value``, with the view a reading of variance ``2 beta^2`` of the candidate's
        latent position, but propagated through its scan's posterior covariance: slice ``j``
        of the stack moves by ``N(0, c_ij^2 / (v_i + 2 beta^2))`` and its variance shrinks by
        as much (a rank-one Gaussian update), so a view is worth what it settles along the
        stack, not just about itself.
        """
        mean, sd = self._score_arrays()
        var = sd * sd
        model = self._bayes
        beta = model.mean_beta()
        rows = model.cov_rows[cand]
        mates = model.mates[cand]
        move_var = rows * rows / (var[cand][:, None] + 2.0 * beta * beta)
        mu_j, var_j = mean[mates], var[mates]
        move_var = np.minimum(move_var, var_j * (1 - 1e-9))
        new_sd = np.sqrt(var_j - move_var)
        move = np.sqrt(move_var)
        c1, c2 = cuts["basal_lv"]["score"], cuts["lv_apical"]["score"]

        def mis(m: np.ndarray, s: np.ndarray) -> np.ndarray:
            return _misclassification(m, s, c1, c2)

        now = mis(mu_j, np.sqrt(var_j))
        after = np.zeros_like(mu_j)
        for x, w in zip(_GH_X, _GH_W, strict=True):
            after += w * mis(mu_j + move * x, new_sd)
        return (now - after).sum(axis=1)

    def _group_pick(
        self, cand: np.ndarray, value: np.ndarray, seen: np.ndarray, cuts: dict[str, Any], take: int
    ) -> list[int]:
        """The ``take`` most valuable candidates, drawn from one group where possible.

        Groups: unseen images, and seen images by the cut they are most uncertain about. A
        batch of images near the same cut is a local sort there: every one of its 28 pairs is
        informative, where a mixed batch spends most pairs on comparisons whose outcome is
        already known.
        """
        mean, sd = self._score_arrays()
        z = np.vstack([np.abs(mean[cand] - cuts[c]["score"]) / sd[cand] for c in bnd.CUTS])
        group = np.where(seen[cand], np.argmin(z, axis=0), 2)
        order = np.argsort(-value, kind="stable")
        best_group, best_sum = None, -1.0
        for g in (0, 1, 2):
            top = order[group[order] == g][:take]
            total = float(value[top].sum())
            if top.size and total > best_sum:
                best_group, best_sum = g, total
        first = order[group[order] == best_group][:take]
        rest = order[group[order] != best_group][: take - first.size]
        return [int(cand[k]) for k in np.concatenate([first, rest])]

    def _view_value(self, cand: np.ndarray, cuts: dict[str, Any]) -> np.ndarray:
        """Expected drop in misclassification probability from one more view of each image.

        Preposterior analysis: one view is treated as a noisy reading of the latent position
        with variance ``2 beta^2`` (the image's and its neighbours' perception noise), so the
        posterior sd shrinks to ``s'`` and the mean moves by ``N(0, s^2 - s'^2)``; the
        expectation over that move uses 8-point Gauss-Hermite quadrature.
        """
        mean, sd = self._score_arrays()
        mu, var = mean[cand], sd[cand] ** 2
        beta = self._bayes.mean_beta()
        new_var = 1.0 / (1.0 / var + 1.0 / (2.0 * beta * beta))
        move = np.sqrt(np.maximum(var - new_var, 0.0))
        c1, c2 = cuts["basal_lv"]["score"], cuts["lv_apical"]["score"]

        def mis(m: np.ndarray, s: np.ndarray) -> np.ndarray:
            return _misclassification(m, s, c1, c2)

        now = mis(mu, np.sqrt(var))
        new_sd = np.sqrt(new_var)
        after = np.zeros_like(mu)
        for x, w in zip(_GH_X, _GH_W, strict=True):
            after += w * mis(mu + move * x, new_sd)
        return now - after

    def _anchors(
        self, chosen: list[int], n_anchor: int, pool: np.ndarray, cuts: dict[str, Any]
    ) -> list[int]:
        """Settled images next to the cuts the chosen images are most uncertain about."""
        mean, sd = self._score_arrays()
        idx = np.asarray(chosen)
        weights = []
        for name in bnd.CUTS:
            z = (mean[idx] - cuts[name]["score"]) / sd[idx]
            p = ndtr(z)
            weights.append(float(np.minimum(p, 1 - p).sum()))
        w1, w2 = weights
        total = w1 + w2
        if total <= 0:
            plan = ["basal_lv", "lv_apical"]
        else:
            n1 = int(round(n_anchor * w1 / total))
            plan = ["basal_lv"] * n1 + ["lv_apical"] * (n_anchor - n1)
        mask = pool.copy()
        mask[idx] = False
        if self._layout is not None:
            # One slice per scan: no anchor from a scan already in the batch.
            mask &= ~np.isin(self._layout.scan_of, self._layout.scan_of[idx])
        out: list[int] = []
        for name in plan:
            cand = np.flatnonzero(mask)
            if cand.size == 0:
                break
            # Near the cut and settled; alternate sides so two anchors bracket it.
            side = 1.0 if plan[: len(out) + 1].count(name) % 2 else -1.0
            off = mean[cand] - cuts[name]["score"]
            cost = np.abs(off) + 2.0 * sd[cand] + np.where(off * side >= 0, 0.0, 0.05)
            best = int(cand[int(np.argmin(cost))])
            out.append(best)
            mask[best] = False
            if self._layout is not None:
                mask &= self._layout.scan_of != self._layout.scan_of[best]
        return out

    def submit(self, rater: str, ordered: Sequence[str], *, require_open: bool = True) -> None:
        """Record ``rater``'s ranking of a batch, most basal first.

        With ``require_open`` the ids must be exactly an open batch (handed to any rater),
        which then closes; replaying a log passes ``require_open=False``. Invalid input
        raises ``ValueError`` and changes nothing.
        """
        _check_rater(rater)
        idx = self._validate_ids(ordered, "ordered")
        batch_id = None
        if require_open:
            batch_id = self._find_open(idx)
            if batch_id is None:
                raise ValueError(
                    f"ordered: {sorted(ordered)!r} is not an open batch "
                    f"(ask next_batch first, or replay with require_open=False)"
                )
        # Validated: from here on nothing can fail half-way.
        if self.strategy == "paper":
            self._record_discord(rater, idx)
            self._paper.update(idx)
        else:
            self._bayes.update(idx, rater)
        self._views[idx] += 1
        if self._layout is not None:
            np.add.at(self._scan_views, self._layout.scan_of[idx], 1)
        if self.strategy == "bayes":
            self._rater_seen.setdefault(rater, np.zeros(self._n, dtype=bool))[idx] = True
        self._batches += 1
        if batch_id is not None:
            self._close(batch_id)

    def release(self, ids: Sequence[str]) -> None:
        """Close an open batch without a result (e.g. its task was deleted)."""
        idx = self._validate_ids(ids, "ids")
        batch_id = self._find_open(idx)
        if batch_id is None:
            raise ValueError(f"ids: {sorted(ids)!r} is not an open batch")
        self._close(batch_id)

    def _validate_ids(self, ids: Sequence[str], name: str) -> list[int]:
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise ValueError(f"{name}: expected a list of image ids, got {type(ids).__name__}")
        if len(ids) < 2:
            raise ValueError(f"{name}: a ranking needs at least 2 images, got {len(ids)}")
        unknown = [i for i in ids if not isinstance(i, str) or i not in self._index]
        if unknown:
            raise ValueError(f"{name}: unknown image ids {unknown[:5]!r}")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if list(ids).count(i) > 1})
            raise ValueError(f"{name}: duplicate image ids {dup!r}")
        return [self._index[i] for i in ids]

    def _find_open(self, idx: list[int]) -> int | None:
        want = set(idx)
        for batch_id, (_, members) in self._open.items():
            if len(members) == len(idx) and set(members) == want:
                return batch_id
        return None

    def _close(self, batch_id: int) -> None:
        _, members = self._open.pop(batch_id)
        self._in_open[members] -= 1

    def _record_discord(self, rater: str, idx: list[int]) -> None:
        rating = self._paper.rating
        seen = self._views[idx] > 0
        d = t = 0
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if seen[a] and seen[b] and rating[idx[a]] != rating[idx[b]]:
                    t += 1
                    d += int(rating[idx[a]] < rating[idx[b]])
        acc = self._discord.setdefault(rater, [0, 0])
        acc[0] += d
        acc[1] += t

    # ----------------------------------------------------------------- thresholds
    def _cuts(self, *, fresh: bool) -> dict[str, Any]:
        """Each cut's posterior on the seen list, its position and its score."""
        # Batch selection may reuse cuts a few batches old on big pools (the sort is O(n log n));
        # everything that reports uses fresh ones.
        step = 1 if fresh else max(1, self._n // 5000)
        if not fresh and self._layout is not None:
            # With stacks most of the pool is on the list at once: refreshing the selection's
            # cuts every few batches keeps a batch's cost down, and they barely move meanwhile.
            step = max(step, STACK_CUT_EVERY)
        key = (self._batches // step, len(self._labels))
        cached = self._cut_cache.get(fresh)
        if cached is not None and cached[0] == key:
            return cached[1]
        mean, sd = self._score_arrays()
        order = self._order()
        seen_order = order[self._placed()[order]]
        m = int(seen_order.size)
        centers = (self._mix[0], self._mix[0] + self._mix[1])
        cuts: dict[str, Any] = {}
        if m < bnd.MIN_SEEN:
            for name, q in zip(bnd.CUTS, centers, strict=True):
                if self.strategy == "paper":
                    score = float(np.quantile(mean, 1 - q))
                    csd = float(sd.mean())
                else:
                    score = float(ndtri(1 - q) * math.sqrt(PRIOR_VAR))
                    csd = 0.0
                cuts[name] = {
                    "posterior": None,
                    "position": None,
                    "score": score,
                    "sd": csd,
                    "answered": 0,
                }
            result = {"m": m, "seen_order": seen_order, **cuts}
            self._cut_cache[fresh] = (key, result)
            return result
        rank_of = np.full(self._n, -1, dtype=np.int64)
        rank_of[seen_order] = np.arange(m)
        labelled = [(i, int(rank_of[i]), c) for i, c in self._labels if rank_of[i] >= 0]
        ranks = [r for _, r, _ in labelled]
        sides = [bnd.answer_sides(c) for _, _, c in labelled]
        seen_mean = mean[seen_order]
        base = {"m": m, "seen_order": seen_order, "neg_seen_mean": -seen_mean}
        label_sd = self._rank_sd(base, np.array([i for i, _, _ in labelled], dtype=np.int64)) / m
        prev_pos = 0
        for j, (name, q) in enumerate(zip(bnd.CUTS, centers, strict=True)):
            post = bnd.cut_posterior(
                m,
                ranks,
                [s[j] for s in sides],
                prior_center=q,
                error_rate=self._err,
                widths=bnd.WIDTHS,
                label_sd=label_sd,
            )
            pos = max(post.median, prev_pos)  # the apical cut cannot precede the basal one
            prev_pos = pos
            lo, hi = post.interval(0.9)
            score = _score_at(seen_mean, pos)
            spread = abs(_score_at(seen_mean, lo) - _score_at(seen_mean, hi)) / 3.29
            cuts[name] = {"posterior": post, "position": pos, "score": score, "sd": spread}
        # Each answer counts for the cut it lies nearest to now: derived from the labels alone,
        # so the count survives a rebuild from the log.
        near_apical = [
            abs(r - cuts["lv_apical"]["position"]) < abs(r - cuts["basal_lv"]["position"])
            for r in ranks
        ]
        cuts["lv_apical"]["answered"] = int(sum(near_apical))
        cuts["basal_lv"]["answered"] = len(ranks) - int(sum(near_apical))
        result = {**base, **cuts}
        self._cut_cache[fresh] = (key, result)
        return result

    def _asked(self, cuts: dict[str, Any], name: str) -> int:
        """Answers nearest to cut ``name`` plus the questions still pending for it."""
        return cuts[name]["answered"] + sum(1 for c in self._pending.values() if c == name)

    def _settled(self, cuts: dict[str, Any], name: str, *, with_pending: bool) -> bool:
        """Enough answers for this cut, and its posterior is concentrated (``boundary.py``)."""
        tol = bnd.settle_tolerance(cuts["m"])
        n = self._asked(cuts, name) if with_pending else cuts[name]["answered"]
        concentrated = cuts[name]["posterior"].mass_near_median(tol) >= bnd.SETTLE_MASS
        return n >= bnd.MIN_LABELS_PER_CUT and concentrated

    def _cut_to_ask(self, cuts: dict[str, Any]) -> str | None:
        """The cut the next question should go to: one short of its minimum answers first
        (fewest first), else the least concentrated unsettled one."""
        tol = bnd.settle_tolerance(cuts["m"])
        short = [c for c in bnd.CUTS if self._asked(cuts, c) < bnd.MIN_LABELS_PER_CUT]
        if short:
            return min(short, key=lambda c: (self._asked(cuts, c), bnd.CUTS.index(c)))
        open_cuts = [c for c in bnd.CUTS if not self._settled(cuts, c, with_pending=True)]
        if not open_cuts:
            return None
        return min(open_cuts, key=lambda c: cuts[c]["posterior"].mass_near_median(tol))

    def _rank_sd(self, cuts: dict[str, Any], images: np.ndarray) -> np.ndarray:
        """Sd of each image's place on the list of seen images, in ranks: how many seen images
        score within one sd of it on the fuller side (at the ends of the list one side is
        cut short, and the image is no better placed for that)."""
        mean, sd = self._score_arrays()
        neg = cuts["neg_seen_mean"]  # ascending: the list is sorted by descending score
        lo = np.searchsorted(neg, -(mean[images] + sd[images]), side="left")
        mid = np.searchsorted(neg, -mean[images], side="left")
        hi = np.searchsorted(neg, -(mean[images] - sd[images]), side="right")
        return np.maximum(mid - lo, hi - mid).astype(float)

    def next_boundary_query(self, *, final: bool = False) -> str | None:
        """An image to label absolutely for threshold finding, or ``None``.

        ``None`` when both cuts are settled, the label budget is spent, or too few images have
        been seen to bisect. While ranking goes on (``final=False``) questions are paced: at
        most ``boundary_budget x boundary_pace x`` (share of images seen) asked so far, because
        answers about images the ranking has barely placed say little, and a service that asks
        whenever it may would otherwise spend the budget in the first few dozen batches. Pass
        ``final=True`` once no more batches will come (the engine is done, or the run's own
        budget is spent) to use the rest. May be called at any time; each returned image counts
        as pending until ``submit_boundary``. Beyond ``MAX_PENDING`` unanswered questions the oldest one
        is forgotten (its cut may be asked about again), but it still counts against the budget
        until it is answered: a forgotten question can be answered late, and the budget holds.
        """
        asked = len(self._labels) + len(self._pending) + len(self._forgotten)
        if asked >= self._budget:
            return None
        if not final and self._boundary_pace:
            seen_share = float((self._views > 0).mean())
            if self._layout is not None:
                # With stacks a few views place a whole scan and most slices far from the cuts
                # are never shown: pace by views per image instead of the share seen.
                seen_share = min(1.0, float(self._views.sum()) / self._n)
            if asked >= math.ceil(self._budget * seen_share * self._boundary_pace):
                return None
        cuts = self._cuts(fresh=True)
        if cuts["m"] < bnd.MIN_SEEN:
            return None
        m = cuts["m"]
        best = self._cut_to_ask(cuts)
        if best is None:
            return None
        seen_order = cuts["seen_order"]
        asked = {i for i, _ in self._labels} | set(self._pending) | self._forgotten
        pos = cuts[best]["position"]
        # The unasked image near the cut whose answer says most about it: close to the cut and
        # well placed on the list (an answer about an image whose own rank is uncertain says
        # little about where the cut lies).
        half = max(bnd.SETTLE_MIN, int(QUERY_WINDOW * m))
        for lo, hi in ((max(0, pos - half), min(m, pos + half)), (0, m)):  # the window, else all
            ranks = np.arange(lo, hi)
            images = seen_order[ranks]
            fresh = np.array([int(i) not in asked for i in images], dtype=bool)
            ranks, images = ranks[fresh], images[fresh]
            if images.size:
                break
        else:
            return None
        rank_sd = self._rank_sd(cuts, images)
        info = bnd.query_information(np.abs(ranks + 0.5 - pos), np.hypot(QUERY_WIDTH * m, rank_sd))
        image = int(images[int(np.argmax(info))])
        if len(self._pending) >= MAX_PENDING:
            self._forgotten.add(self._pending.pop(next(iter(self._pending))))
        self._pending[image] = best
        return self._ids[image]

    def restore_pending(self, image_id: str) -> None:
        """Count a question asked before this engine was rebuilt (a restart) and still open as
        pending, so the budget holds and the image is not asked again meanwhile."""
        if not isinstance(image_id, str) or image_id not in self._index:
            raise ValueError(f"image_id: unknown image id {image_id!r}")
        i = self._index[image_id]
        if i in self._pending or any(j == i for j, _ in self._labels):
            return
        cuts = self._cuts(fresh=True)
        name = bnd.CUTS[0]
        if cuts["m"] >= bnd.MIN_SEEN:
            placed = self._placed()[i]
            rank = int(np.flatnonzero(cuts["seen_order"] == i)[0]) if placed else 0
            name = min(bnd.CUTS, key=lambda c: abs(rank - cuts[c]["position"]))
        self._pending[i] = name

    def submit_boundary(self, image_id: str, cls: str) -> None:
        """Record an absolute label (``too_basal``, ``lv`` or ``too_apical``) of one image."""
        if not isinstance(image_id, str) or image_id not in self._index:
            raise ValueError(f"image_id: unknown image id {image_id!r}")
        if cls not in CLASSES:
            raise ValueError(f"cls: {cls!r} is not one of {', '.join(CLASSES)}")
        i = self._index[image_id]
        self._labels.append((i, cls))
        self._pending.pop(i, None)
        self._forgotten.discard(i)

    def boundary_status(self) -> dict[str, dict[str, Any]]:
        """Per cut: ``state`` (waiting/searching/settled/budget_spent), ``queries`` (answers
        nearest this cut plus questions pending for it; rebuilt from the labels), ``pending``,
        ``labels`` (answers so far, both cuts), ``estimate`` (images on the basal side, in
        ``ranking()``) and ``interval`` (90% credible, on the list of seen images)."""
        cuts = self._cuts(fresh=True)
        spent = len(self._labels) >= self._budget
        out = {}
        for name in bnd.CUTS:
            c = cuts[name]
            post = c["posterior"]
            if post is None:
                state, interval = "waiting", None
            else:
                interval = list(post.interval(0.9))
                if self._settled(cuts, name, with_pending=False):
                    state = "settled"
                elif spent:
                    state = "budget_spent"
                else:
                    state = "searching"
            out[name] = {
                "state": state,
                "queries": self._asked(cuts, name),
                "pending": sum(1 for v in self._pending.values() if v == name),
                "labels": len(self._labels),
                "estimate": self._position_in_ranking(c["score"]) if post is not None else None,
                "interval": interval,
            }
        return out

    def _position_in_ranking(self, score: float) -> int:
        mean, _ = self._score_arrays()
        return int((mean > score).sum())

    def thresholds(self) -> dict[str, dict[str, Any]]:
        """Each cut as ``{"position", "score", "sd", "labels"}``: ``position`` images of
        ``ranking()`` lie on its basal side; ``score`` is the cut on the scores' axis.
        Before any boundary label the cuts sit at the class-mix prior (``labels`` 0)."""
        cuts = self._cuts(fresh=True)
        return {
            name: {
                "position": self._position_in_ranking(cuts[name]["score"]),
                "score": float(cuts[name]["score"]),
                "sd": float(cuts[name]["sd"]),
                "labels": len(self._labels),
            }
            for name in bnd.CUTS
        }

    def classes(self) -> dict[str, str]:
        """Class of every image from its score and the current cut estimates."""
        cuts = self._cuts(fresh=True)
        mean, _ = self._score_arrays()
        c1, c2 = cuts["basal_lv"]["score"], cuts["lv_apical"]["score"]
        cls = np.where(mean > c1, 0, np.where(mean < c2, 2, 1))
        if self._layout is not None:
            # Along a stack the classes read too_basal... lv... too_apical: the most probable
            # such sequence (the cut uncertainty included), not each slice on its own.
            probs = np.column_stack(self._class_probs(cuts, with_cut_sd=True))
            cls = monotone_classes(np.log(np.clip(probs, 1e-12, 1.0)), self._padded)
        return {i: CLASSES[int(c)] for i, c in zip(self._ids, cls, strict=True)}

    def class_probabilities(self) -> dict[str, tuple[float, float, float]]:
        """``(p_too_basal, p_lv, p_too_apical)`` per image, with score and cut uncertainty."""
        p_b, p_l, p_a = self._class_probs(self._cuts(fresh=True), with_cut_sd=True)
        total = p_b + p_l + p_a
        return {
            i: (float(p_b[k] / total[k]), float(p_l[k] / total[k]), float(p_a[k] / total[k]))
            for k, i in enumerate(self._ids)
        }


def _score_at(seen_mean: np.ndarray, pos: int) -> float:
    """The score of a cut at list position ``pos`` (between ranks pos-1 and pos)."""
    m = seen_mean.size
    if pos <= 0:
        return float(seen_mean[0]) + 1e-9
    if pos >= m:
        return float(seen_mean[-1]) - 1e-9
    return float(seen_mean[pos - 1] + seen_mean[pos]) / 2.0


def _check_rater(rater: str) -> None:
    if not isinstance(rater, str) or not rater:
        raise ValueError(f"rater: expected a non-empty string, got {rater!r}")
