"""The task chooser: what one more view of an image is worth, and the batch worth most.

``TaskChooser`` values a view of an image by the expected drop in misclassified images it
brings (preposterior analysis against the current cuts; with stacks, along the whole stack
through the scan's posterior covariance), and builds the ``bayes`` batch from those values:
the most valuable images drawn from one group where possible (a local sort near one cut),
plus settled anchors next to the cuts, and with stacks one slice per scan. It reads the
posterior (``posterior.py``) and the cuts it is handed (the cut finder's dict, ``cuts.py``);
it keeps no state of its own beyond its settings and the measured task times.

A view's worth depends on who looks: a rater's second look at a slice repeats most of the
first one's error (``bayes.BayesModel.repeat_gain``), so the same image is worth less from a
rater who has seen it. A single label is valued the same way, as a reading of the slice's
position with the noise of a probit at the cut (``label_reading_var``). ``TaskTimer`` turns
values into values per second of the asking rater's own measured time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy.special import ndtr

from ranking_scheduler.engine import boundary as bnd
from ranking_scheduler.engine.posterior import Posterior, misclassification

N_ANCHORS = 2
"""Settled images placed next to the cuts in each ``bayes`` batch."""
CANDIDATES = 256
"""Seen and unseen images each scored per ``bayes`` batch (the rest are ranked out by risk)."""
COVERAGE_BONUS = 0.1
"""Added to the value of a first view of an unseen image (see ``bayes_batch``)."""
PRIOR_SECONDS = {"rank": 11.4, "label": 5.4}
"""Seconds a ranked batch of 8 and a single label take until enough are measured (the study:
5 h bought 1,575 batches or 3,323 labels; the clinician-time study of the bench)."""
MIN_TIMED = 5
"""Measured answers of a kind a rater needs before their own median replaces the pooled one
(and the pool needs before its median replaces the prior)."""
MIN_VIEWS_BONUS = 1.0
"""Added to the value of a view of an image still short of ``min_views`` views (it comes first)."""
STACK_CANDIDATES = 128
"""With stacks: images scored per ``bayes`` batch (the most at risk, each valued for its stack)."""

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(8)
_GH_W = _GH_W / _GH_W.sum()

Cuts = Mapping[str, Any]


def _expected_after(
    mu: np.ndarray, move: np.ndarray, new_sd: np.ndarray, c1: float, c2: float
) -> np.ndarray:
    """Expected misclassification probability after one reading: the mean moves by
    ``N(0, move^2)`` (8-point Gauss-Hermite quadrature) and the sd becomes ``new_sd``. All
    nodes in one vectorised call (the call overhead was most of a task's cost), summed node by
    node in the order the loop it replaces used, so the values are bit for bit the same."""
    nodes = mu[None] + move[None] * _GH_X.reshape((-1,) + (1,) * mu.ndim)
    p = misclassification(nodes, np.broadcast_to(new_sd, nodes.shape), c1, c2)
    after = np.zeros_like(mu)
    for k, w in enumerate(_GH_W):
        after += w * p[k]
    return after


class TaskTimer:
    """Seconds a rater spends on a task of each kind: the median of their own measured times
    once they have ``MIN_TIMED``, else the median over all raters once there are that many,
    else the prior (``PRIOR_SECONDS``)."""

    def __init__(self) -> None:
        self._times: dict[str, dict[str, list[float]]] = {"rank": {}, "label": {}}

    def record(self, rater: str, kind: str, seconds: float) -> None:
        """One measured answer (validated by the engine)."""
        self._times[kind].setdefault(rater, []).append(float(seconds))

    def seconds(self, rater: str, kind: str) -> float:
        """The time ``rater`` is expected to spend on one task of ``kind``."""
        own = self._times[kind].get(rater, [])
        if len(own) >= MIN_TIMED:
            return float(np.median(own))
        pooled = [t for ts in self._times[kind].values() for t in ts]
        if len(pooled) >= MIN_TIMED:
            return float(np.median(pooled))
        return PRIOR_SECONDS[kind]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per kind: the seconds in use for each rater measured so far (and ``*`` pooled)."""
        out: dict[str, dict[str, float]] = {}
        for kind, by_rater in self._times.items():
            out[kind] = {r: self.seconds(r, kind) for r in sorted(by_rater)}
            out[kind]["*"] = self.seconds("", kind)
        return out


class TaskChooser:
    """Batch and question choice over ``posterior`` for batches of ``batch_size`` holding
    ``n_anchors`` anchors, a first view of an image (or scan) worth ``coverage_bonus`` more,
    every image owed ``min_views`` views."""

    def __init__(
        self,
        posterior: Posterior,
        *,
        batch_size: int,
        n_anchors: int,
        coverage_bonus: float,
        min_views: int = 0,
    ) -> None:
        self._post = posterior
        self.batch_size = batch_size
        self.n_anchors = n_anchors
        self.coverage_bonus = coverage_bonus
        self.min_views = min_views
        self.timer = TaskTimer()
        self.last_value = 0.0
        """Expected drop in misclassified images of the last batch built (its own picks)."""

    def short_of_views(self) -> np.ndarray:
        """Images with fewer than ``min_views`` human views (rankings and labels)."""
        post = self._post
        return (post.views + post.label_views) < self.min_views

    def _reading_var(self, rater: str, cand: np.ndarray, kind: str, cuts: Cuts) -> np.ndarray:
        """Variance of one more reading of each candidate's position by ``rater``."""
        model = self._post.model
        if kind == "rank":
            base = 2.0 * model.mean_beta() ** 2
        else:
            base = self.label_reading_var(rater, cuts)
        return model.repeat_gain(rater, cand, base)

    def label_reading_var(self, rater: str, cuts: Cuts) -> float:
        """A single label as a reading of the slice's position: a probit of variance ``w2``
        carries at most ``2 / (pi w2)`` of Fisher information (at the cut), so it is worth a
        Gaussian reading of variance ``pi w2 / 2`` where it matters."""
        cut_var = float(np.mean([cuts[c]["sd"] ** 2 for c in bnd.CUTS]))
        return 0.5 * np.pi * self._post.model.label_var(rater, cut_var)

    def _misclassified(self, cuts: Cuts) -> np.ndarray:
        return self._post.misclassified(cuts["basal_lv"]["score"], cuts["lv_apical"]["score"])

    def distinct_scans(self, order: np.ndarray, take: int, exclude: Iterable[int] = ()) -> list:
        """The first ``take`` images of ``order`` from scans not yet used (nor in ``exclude``)."""
        scan_of = self._post.layout.scan_of
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

    # ----------------------------------------------------------------- batches
    def bayes_batch(
        self, rater: str, available: np.ndarray, jitter: np.ndarray, cuts: Cuts
    ) -> list[int]:
        """The ``bayes`` batch without stacks: the images whose next view is worth most."""
        post = self._post
        seen = post.views > 0
        n_seen = int(seen.sum())
        n_anchor = self.n_anchors if n_seen >= 2 * self.batch_size else 0
        n_new = self.batch_size - n_anchor
        cand = np.flatnonzero(available)
        if cand.size == 0:
            return []
        # Candidates: the seen images most at risk of misclassification plus a random handful of
        # unseen ones (all unseen images look alike), scored by the value of one more view.
        mis = self._misclassified(cuts)
        pool = CANDIDATES
        seen_c = cand[seen[cand]]
        if seen_c.size > pool:
            seen_c = seen_c[np.argpartition(-mis[seen_c], pool - 1)[:pool]]
        unseen_c = cand[~seen[cand]]
        if unseen_c.size > pool:
            unseen_c = unseen_c[np.argpartition(jitter[unseen_c], pool - 1)[:pool]]
        cand = np.concatenate([seen_c, unseen_c])
        # A rater's errors persist: their repeat view of an image is worth less.
        value = self.view_value(cand, cuts, self._reading_var(rater, cand, "rank", cuts))
        value = value + jitter[cand] * 1e-9
        # A first view is worth more than the one-step preposterior says: an image nobody has
        # seen can only be guessed from the class mix (wrong for 27% of a study-like cohort),
        # and once placed it can be refined where it matters. Without the bonus, a run stopped
        # early (a budget) left up to 17% of the images unseen on some seeds, which decided
        # whether it beat `paper`; 0.1 was chosen on seeds 0-19 (0.05 and 0.2 did worse).
        value = value + (~seen[cand]) * self.coverage_bonus
        value = value + self.short_of_views()[cand] * MIN_VIEWS_BONUS
        take = min(n_new, cand.size)
        chosen = self.group_pick(cand, value, seen, cuts, take)
        self.last_value = float(value[np.isin(cand, chosen)].sum())
        if n_anchor:
            chosen += self.anchors(chosen, n_anchor, available & seen, cuts)
        if len(chosen) < self.batch_size:
            mask = available.copy()
            mask[chosen] = False
            rest = np.flatnonzero(mask)
            extra = rest[np.argsort(-mis[rest], kind="stable")[: self.batch_size - len(chosen)]]
            chosen += [int(x) for x in extra]
        return chosen

    def stack_batch(
        self, rater: str, available: np.ndarray, jitter: np.ndarray, cuts: Cuts
    ) -> list[int]:
        """The ``bayes`` batch with stacks: the images whose view teaches their stacks most,
        one per scan (raters see 8 slices of 8 different scans), near one cut where possible,
        plus anchors from yet other scans."""
        post = self._post
        placed = post.placed()
        n_anchor = self.n_anchors if int((post.views > 0).sum()) >= 2 * self.batch_size else 0
        n_new = self.batch_size - n_anchor
        cand = np.flatnonzero(available)
        if cand.size == 0:
            return []
        mis = self._misclassified(cuts)
        short = self.short_of_views()
        if cand.size > STACK_CANDIDATES:
            # Most at risk first; the risk already includes what the neighbours have taught.
            key = mis[cand] + short[cand] * MIN_VIEWS_BONUS + jitter[cand] * 1e-9
            cand = cand[np.argpartition(-key, STACK_CANDIDATES - 1)[:STACK_CANDIDATES]]
        # A rater's errors persist: their repeat view of an image is worth less.
        reading = self._reading_var(rater, cand, "rank", cuts)
        value = self.stack_view_value(cand, cuts, reading) + jitter[cand] * 1e-9
        # The first view of a scan places its whole stack (see bayes_batch on the bonus).
        value = value + (~placed[cand]) * self.coverage_bonus + short[cand] * MIN_VIEWS_BONUS
        mean, sd = post.score_arrays()
        z = np.vstack([np.abs(mean[cand] - cuts[c]["score"]) / sd[cand] for c in bnd.CUTS])
        group = np.where(placed[cand], np.argmin(z, axis=0), 2)
        order = np.argsort(-value, kind="stable")
        best, best_sum = [], -1.0
        for g in (0, 1, 2):
            picks = self.distinct_scans(cand[order[group[order] == g]], n_new)
            total = float(value[np.isin(cand, picks)].sum())
            if picks and total > best_sum:
                best, best_sum = picks, total
        chosen = best
        self.last_value = float(value[np.isin(cand, chosen)].sum())
        if len(chosen) < n_new:
            chosen += self.distinct_scans(cand[order], n_new - len(chosen), exclude=chosen)
        if n_anchor:
            chosen += self.anchors(chosen, n_anchor, available & (post.views > 0), cuts)
        if len(chosen) < self.batch_size:
            rest = np.flatnonzero(available)
            rest = rest[np.argsort(-mis[rest], kind="stable")]
            chosen += self.distinct_scans(rest, self.batch_size - len(chosen), exclude=chosen)
        return chosen

    # ----------------------------------------------------------------- values of a view
    def best_batch_value(self, cuts: Cuts, rater: str = "") -> float:
        """What the most valuable batch is worth, roughly: the best one-view values of
        ``batch_size - n_anchors`` images (from distinct scans with stacks), for ``rater`` (by
        default whichever rater comes: one who has read an image most often,
        ``BayesModel.answers_of``); no random tie-breaks (the stopping rule uses it)."""
        post = self._post
        mis = self._misclassified(cuts)
        limit = STACK_CANDIDATES if post.layout is not None else CANDIDATES
        key = mis + self.short_of_views() * MIN_VIEWS_BONUS
        cand = np.arange(post.n)
        if post.n > limit:
            cand = np.sort(np.argpartition(-key, limit - 1)[:limit])
        reading = self._reading_var(rater, cand, "rank", cuts)
        if post.layout is not None:
            value = self.stack_view_value(cand, cuts, reading)
        else:
            value = self.view_value(cand, cuts, reading)
        value = value + (~post.placed()[cand]) * self.coverage_bonus
        order = cand[np.argsort(-value, kind="stable")]
        take = self.batch_size - self.n_anchors
        picks = self.distinct_scans(order, take) if post.layout is not None else order[:take]
        return float(value[np.isin(cand, picks)].sum())

    def best_label(
        self, rater: str, available: np.ndarray, jitter: np.ndarray, cuts: Cuts
    ) -> tuple[int | None, float]:
        """The image whose single label by ``rater`` is worth most, and that worth (expected
        drop in misclassified images, for its whole stack with stacks); ``(None, 0)`` when no
        image is ``available``."""
        post = self._post
        cand = np.flatnonzero(available)
        if cand.size == 0:
            return None, 0.0
        mis = self._misclassified(cuts)
        short = self.short_of_views()
        limit = STACK_CANDIDATES if post.layout is not None else CANDIDATES
        if cand.size > limit:
            key = mis[cand] + short[cand] * MIN_VIEWS_BONUS + jitter[cand] * 1e-9
            cand = cand[np.argpartition(-key, limit - 1)[:limit]]
        reading = self._reading_var(rater, cand, "label", cuts)
        if post.layout is not None:
            value = self.stack_view_value(cand, cuts, reading)
        else:
            value = self.view_value(cand, cuts, reading)
        value = value + (~post.placed()[cand]) * self.coverage_bonus + short[cand] * MIN_VIEWS_BONUS
        k = int(np.argmax(value + jitter[cand] * 1e-9))
        return int(cand[k]), float(value[k])

    def view_value(
        self, cand: np.ndarray, cuts: Cuts, reading_var: np.ndarray | float | None = None
    ) -> np.ndarray:
        """Expected drop in misclassification probability from one more view of each image.

        Preposterior analysis: one view is treated as a noisy reading of the latent position
        with variance ``2 beta^2`` (the image's and its neighbours' perception noise), so the
        posterior sd shrinks to ``s'`` and the mean moves by ``N(0, s^2 - s'^2)``; the
        expectation over that move uses 8-point Gauss-Hermite quadrature.
        """
        mean, sd = self._post.score_arrays()
        mu, var = mean[cand], sd[cand] ** 2
        if reading_var is None:
            reading_var = 2.0 * self._post.model.mean_beta() ** 2
        new_var = 1.0 / (1.0 / var + 1.0 / reading_var)
        move = np.sqrt(np.maximum(var - new_var, 0.0))
        c1, c2 = cuts["basal_lv"]["score"], cuts["lv_apical"]["score"]

        now = misclassification(mu, np.sqrt(var), c1, c2)
        return now - _expected_after(mu, move, np.sqrt(new_var), c1, c2)

    def stack_view_value(
        self, cand: np.ndarray, cuts: Cuts, reading_var: np.ndarray | float | None = None
    ) -> np.ndarray:
        """Expected drop in misclassified slices of each candidate's whole stack from one view.

        As ``view_value``, with the view a reading of variance ``2 beta^2`` of the candidate's
        latent position, but propagated through its scan's posterior covariance: slice ``j``
        of the stack moves by ``N(0, c_ij^2 / (v_i + 2 beta^2))`` and its variance shrinks by
        as much (a rank-one Gaussian update), so a view is worth what it settles along the
        stack, not just about itself.
        """
        mean, sd = self._post.score_arrays()
        var = sd * sd
        model = self._post.model
        if reading_var is None:
            reading_var = 2.0 * model.mean_beta() ** 2
        reading = np.broadcast_to(np.asarray(reading_var, dtype=float), cand.shape)
        rows = model.cov_rows[cand]
        mates = model.mates[cand]
        move_var = rows * rows / (var[cand] + reading)[:, None]
        mu_j, var_j = mean[mates], var[mates]
        move_var = np.minimum(move_var, var_j * (1 - 1e-9))
        new_sd = np.sqrt(var_j - move_var)
        move = np.sqrt(move_var)
        c1, c2 = cuts["basal_lv"]["score"], cuts["lv_apical"]["score"]

        now = misclassification(mu_j, np.sqrt(var_j), c1, c2)
        return (now - _expected_after(mu_j, move, new_sd, c1, c2)).sum(axis=1)

    # ----------------------------------------------------------------- batch parts
    def group_pick(
        self, cand: np.ndarray, value: np.ndarray, seen: np.ndarray, cuts: Cuts, take: int
    ) -> list[int]:
        """The ``take`` most valuable candidates, drawn from one group where possible.

        Groups: unseen images, and seen images by the cut they are most uncertain about. A
        batch of images near the same cut is a local sort there: every one of its 28 pairs is
        informative, where a mixed batch spends most pairs on comparisons whose outcome is
        already known.
        """
        mean, sd = self._post.score_arrays()
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

    def anchors(self, chosen: list[int], n_anchor: int, pool: np.ndarray, cuts: Cuts) -> list[int]:
        """Settled images next to the cuts the chosen images are most uncertain about."""
        mean, sd = self._post.score_arrays()
        layout = self._post.layout
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
        if layout is not None:
            # One slice per scan: no anchor from a scan already in the batch.
            mask &= ~np.isin(layout.scan_of, layout.scan_of[idx])
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
            if layout is not None:
                mask &= layout.scan_of != layout.scan_of[best]
        return out
