"""The cut finder: where the two class cuts lie on the ranking, and what to ask next.

``CutFinder`` keeps the absolute (boundary) answers, the questions still pending and the
forgotten ones, and the budget. On request it lays each cut's posterior over the current list
of placed images (``boundary.py``: probabilistic bisection with a lapse and an uncertain
width), turns it into a score on the posterior's axis, says whether each cut is settled, and
picks the next image to ask about. It reads the posterior (``posterior.py``) and nothing else
of the engine; the task chooser and the strategies read its cuts.

Cuts are handed out as a dict: ``m`` (images on the list), ``seen_order`` (their indices, most
basal first) and, per cut name in ``boundary.CUTS``, ``posterior``, ``position``, ``score``,
``sd`` and ``answered``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import ndtri

from ranking_scheduler.engine import boundary as bnd
from ranking_scheduler.engine.bayes import PRIOR_VAR
from ranking_scheduler.engine.posterior import Posterior

BOUNDARY_PACE = 1.0
"""While ranking goes on, boundary questions asked <= budget x pace x share of images seen."""
QUERY_WINDOW = 0.05
"""Boundary questions go to an image within this fraction of the list of the cut's estimate."""
QUERY_WIDTH = 0.02
"""Assumed expert disagreement about a cut (fraction of the list) when choosing what to ask."""
MAX_PENDING = 4
"""Boundary questions left unanswered beyond this many are forgotten (the oldest first)."""
STACK_CUT_EVERY = 4
"""With stacks: batches between refreshes of the cuts that batch choice uses."""
MAX_CUT_LABELS = 96
"""Labels a cut's posterior is computed from at most: those nearest the cuts (by rank on the
list, around where the cuts were last found). ``single`` and ``hybrid`` collect thousands of
labels, most of them about slices far from either cut, whose answers the bisection already
agrees with; computing with all of them cost O(labels) per refresh, per label."""
LABEL_CUT_EVERY = 4
"""Labels between refreshes of the cuts that task choice uses, with stacks or once there are more
labels than ``MAX_CUT_LABELS`` (fresh reports always recompute)."""


class CutFinder:
    """The two cuts of a pool whose scores ``posterior`` holds.

    ``mix`` is the class-mix prior (3 fractions), ``budget`` the absolute labels to ask for in
    all, ``error_rate`` the assumed lapse rate of an answer, ``pace`` the pacing of questions
    while ranking goes on (``next_query``). Validated by the engine.
    """

    def __init__(
        self,
        posterior: Posterior,
        *,
        mix: tuple[float, float, float],
        budget: int,
        error_rate: float,
        pace: float,
    ) -> None:
        self._post = posterior
        self._mix = mix
        self.budget = budget
        self._err = error_rate
        self._pace = pace
        self.labels: list[tuple[int, str]] = []
        """Answers so far: (image index, class), in the order given."""
        self.pending: dict[int, str] = {}
        """Questions asked and not answered: image index -> the cut it was asked for."""
        self.forgotten: set[int] = set()
        """Questions dropped from ``pending`` unanswered (they still count against the budget)."""
        self._cache: dict[bool, tuple[tuple[int, int], Any]] = {}
        self._label_cuts: tuple[tuple[int, int], Any] | None = None

    # ----------------------------------------------------------------- the cuts
    def cuts(self, *, fresh: bool) -> dict[str, Any]:
        """Each cut's posterior on the seen list, its position and its score."""
        post = self._post
        n = post.n
        # Batch selection may reuse cuts a few batches old on big pools (the sort is O(n log n));
        # everything that reports uses fresh ones.
        step = 1 if fresh else max(1, n // 5000)
        if not fresh and post.layout is not None:
            # With stacks most of the pool is on the list at once: refreshing the selection's
            # cuts every few batches keeps a batch's cost down, and they barely move meanwhile.
            step = max(step, STACK_CUT_EVERY)
        n_labels = len(self.labels)
        if not fresh and (n_labels > MAX_CUT_LABELS or post.layout is not None):
            n_labels //= LABEL_CUT_EVERY
        key = (post.batches // step, n_labels)
        cached = self._cache.get(fresh)
        if cached is not None and cached[0] == key:
            return cached[1]
        mean, sd = post.score_arrays()
        order = post.order()
        seen_order = order[post.placed()[order]]
        m = int(seen_order.size)
        centers = (self._mix[0], self._mix[0] + self._mix[1])
        cuts: dict[str, Any] = {}
        if m < bnd.MIN_SEEN:
            for name, q in zip(bnd.CUTS, centers, strict=True):
                if post.glicko:
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
            self._cache[fresh] = (key, result)
            return result
        rank_of = np.full(n, -1, dtype=np.int64)
        rank_of[seen_order] = np.arange(m)
        labelled = [(i, int(rank_of[i]), c) for i, c in self.labels if rank_of[i] >= 0]
        all_ranks = [r for _, r, _ in labelled]
        if len(labelled) > MAX_CUT_LABELS:
            labelled = self._nearest_labels(labelled, m)
        ranks = [r for _, r, _ in labelled]
        sides = [bnd.answer_sides(c) for _, _, c in labelled]
        seen_mean = mean[seen_order]
        base = {"m": m, "seen_order": seen_order, "neg_seen_mean": -seen_mean}
        label_sd = self.rank_sd(base, np.array([i for i, _, _ in labelled], dtype=np.int64)) / m
        prev_pos = 0
        for j, (name, q) in enumerate(zip(bnd.CUTS, centers, strict=True)):
            cut_post = bnd.cut_posterior(
                m,
                ranks,
                [s[j] for s in sides],
                prior_center=q,
                error_rate=self._err,
                widths=bnd.WIDTHS,
                label_sd=label_sd,
            )
            pos = max(cut_post.median, prev_pos)  # the apical cut cannot precede the basal one
            prev_pos = pos
            lo, hi = cut_post.interval(0.9)
            score = _score_at(seen_mean, pos)
            spread = abs(_score_at(seen_mean, lo) - _score_at(seen_mean, hi)) / 3.29
            cuts[name] = {"posterior": cut_post, "position": pos, "score": score, "sd": spread}
        # Each answer counts for the cut it lies nearest to now: derived from the labels alone,
        # so the count survives a rebuild from the log.
        near_apical = [
            abs(r - cuts["lv_apical"]["position"]) < abs(r - cuts["basal_lv"]["position"])
            for r in all_ranks
        ]
        cuts["lv_apical"]["answered"] = int(sum(near_apical))
        cuts["basal_lv"]["answered"] = len(all_ranks) - int(sum(near_apical))
        result = {**base, **cuts}
        self._cache[fresh] = (key, result)
        return result

    def _nearest_labels(self, labelled: list, m: int) -> list:
        """The ``MAX_CUT_LABELS`` labels nearest the cuts, in their original order. Where the
        cuts lie is estimated from the labels alone (for each cut, the list position that the
        fewest answers contradict), so the choice depends on the state, not on the calls
        before it (a rebuilt engine chooses the same)."""
        ranks = np.array([r for _, r, _ in labelled])
        order = np.argsort(ranks, kind="stable")
        at = []
        for j in range(2):
            basal = np.array([bnd.answer_sides(c)[j] for _, _, c in labelled])[order]
            # Cut after k labels: the first k should be basal, the rest not.
            wrong = np.concatenate([[0], np.cumsum(~basal)]) + np.concatenate(
                [np.cumsum(basal[::-1])[::-1], [0]]
            )
            k = int(np.argmin(wrong))
            at.append(float(ranks[order[k - 1]] if k > 0 else 0) / max(m, 1))
        dist = [min(abs(r / m - a) for a in at) for r in ranks]
        keep = set(np.argsort(dist, kind="stable")[:MAX_CUT_LABELS].tolist())
        return [x for k, x in enumerate(labelled) if k in keep]

    def label_cuts(self) -> dict[str, Any]:
        """The cuts a single label is weighed against: fresh, refreshed every
        ``LABEL_CUT_EVERY`` labels (with stacks or many labels) or ``STACK_CUT_EVERY`` batches
        with stacks. Asked for only when a label arrives, so a log replayed into a new engine
        weighs every label against the same cuts as the live engine did."""
        post = self._post
        many = post.layout is not None or len(self.labels) > MAX_CUT_LABELS
        every = LABEL_CUT_EVERY if many else 1
        step = STACK_CUT_EVERY if post.layout is not None else 1
        key = (post.batches // step, len(self.labels) // every)
        if self._label_cuts is None or self._label_cuts[0] != key:
            self._label_cuts = (key, self.cuts(fresh=True))
        return self._label_cuts[1]

    def asked(self, cuts: Mapping[str, Any], name: str) -> int:
        """Answers nearest to cut ``name`` plus the questions still pending for it."""
        return cuts[name]["answered"] + sum(1 for c in self.pending.values() if c == name)

    def settled(self, cuts: Mapping[str, Any], name: str, *, with_pending: bool) -> bool:
        """Enough answers for this cut, and its posterior is concentrated (``boundary.py``)."""
        tol = bnd.settle_tolerance(cuts["m"])
        n = self.asked(cuts, name) if with_pending else cuts[name]["answered"]
        concentrated = cuts[name]["posterior"].mass_near_median(tol) >= bnd.SETTLE_MASS
        return n >= bnd.MIN_LABELS_PER_CUT and concentrated

    def cut_to_ask(self, cuts: Mapping[str, Any]) -> str | None:
        """The cut the next question should go to: one short of its minimum answers first
        (fewest first), else the least concentrated unsettled one."""
        tol = bnd.settle_tolerance(cuts["m"])
        short = [c for c in bnd.CUTS if self.asked(cuts, c) < bnd.MIN_LABELS_PER_CUT]
        if short:
            return min(short, key=lambda c: (self.asked(cuts, c), bnd.CUTS.index(c)))
        open_cuts = [c for c in bnd.CUTS if not self.settled(cuts, c, with_pending=True)]
        if not open_cuts:
            return None
        return min(open_cuts, key=lambda c: cuts[c]["posterior"].mass_near_median(tol))

    def rank_sd(self, cuts: Mapping[str, Any], images: np.ndarray) -> np.ndarray:
        """Sd of each image's place on the list of seen images, in ranks: how many seen images
        score within one sd of it on the fuller side (at the ends of the list one side is
        cut short, and the image is no better placed for that)."""
        mean, sd = self._post.score_arrays()
        neg = cuts["neg_seen_mean"]  # ascending: the list is sorted by descending score
        lo = np.searchsorted(neg, -(mean[images] + sd[images]), side="left")
        mid = np.searchsorted(neg, -mean[images], side="left")
        hi = np.searchsorted(neg, -(mean[images] - sd[images]), side="right")
        return np.maximum(mid - lo, hi - mid).astype(float)

    # ----------------------------------------------------------------- questions and answers
    def next_query(self, *, final: bool) -> int | None:
        """The image to ask about next (recorded as pending), or ``None``; see
        ``RankingEngine.next_boundary_query``."""
        post = self._post
        asked = len(self.labels) + len(self.pending) + len(self.forgotten)
        if asked >= self.budget:
            return None
        if not final and self._pace:
            seen_share = float((post.views > 0).mean())
            if post.layout is not None:
                # With stacks a few views place a whole scan and most slices far from the cuts
                # are never shown: pace by views per image instead of the share seen.
                seen_share = min(1.0, float(post.views.sum()) / post.n)
            if asked >= math.ceil(self.budget * seen_share * self._pace):
                return None
        cuts = self.cuts(fresh=True)
        if cuts["m"] < bnd.MIN_SEEN:
            return None
        m = cuts["m"]
        best = self.cut_to_ask(cuts)
        if best is None:
            return None
        seen_order = cuts["seen_order"]
        asked = {i for i, _ in self.labels} | set(self.pending) | self.forgotten
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
        rank_sd = self.rank_sd(cuts, images)
        info = bnd.query_information(np.abs(ranks + 0.5 - pos), np.hypot(QUERY_WIDTH * m, rank_sd))
        image = int(images[int(np.argmax(info))])
        if len(self.pending) >= MAX_PENDING:
            self.forgotten.add(self.pending.pop(next(iter(self.pending))))
        self.pending[image] = best
        return image

    def restore_pending(self, i: int) -> None:
        """Count a question about image ``i`` asked before a rebuild as pending."""
        if i in self.pending or any(j == i for j, _ in self.labels):
            return
        cuts = self.cuts(fresh=True)
        name = bnd.CUTS[0]
        if cuts["m"] >= bnd.MIN_SEEN:
            placed = self._post.placed()[i]
            rank = int(np.flatnonzero(cuts["seen_order"] == i)[0]) if placed else 0
            name = min(bnd.CUTS, key=lambda c: abs(rank - cuts[c]["position"]))
        self.pending[i] = name

    def add_label(self, i: int, cls: str) -> None:
        """Record an absolute answer (validated) about image ``i``."""
        self.labels.append((i, cls))
        self.pending.pop(i, None)
        self.forgotten.discard(i)

    # ----------------------------------------------------------------- reports
    def status(self) -> dict[str, dict[str, Any]]:
        """Per cut: state, queries, pending, labels, estimate, interval (see
        ``RankingEngine.boundary_status``)."""
        cuts = self.cuts(fresh=True)
        spent = len(self.labels) >= self.budget
        out = {}
        for name in bnd.CUTS:
            c = cuts[name]
            cut_post = c["posterior"]
            if cut_post is None:
                state, interval = "waiting", None
            else:
                interval = list(cut_post.interval(0.9))
                if self.settled(cuts, name, with_pending=False):
                    state = "settled"
                elif spent:
                    state = "budget_spent"
                else:
                    state = "searching"
            out[name] = {
                "state": state,
                "queries": self.asked(cuts, name),
                "pending": sum(1 for v in self.pending.values() if v == name),
                "labels": len(self.labels),
                "estimate": self._post.position_of(c["score"]) if cut_post is not None else None,
                "interval": interval,
            }
        return out

    def thresholds(self) -> dict[str, dict[str, Any]]:
        """Each cut's position in the ranking, score, sd and the answers so far."""
        cuts = self.cuts(fresh=True)
        return {
            name: {
                "position": self._post.position_of(cuts[name]["score"]),
                "score": float(cuts[name]["score"]),
                "sd": float(cuts[name]["sd"]),
                "labels": len(self.labels),
            }
            for name in bnd.CUTS
        }


def cut_scores(cuts: Mapping[str, Any]) -> tuple[float, float]:
    """The (basal/lv, lv/apical) cut scores of ``cuts``."""
    return cuts["basal_lv"]["score"], cuts["lv_apical"]["score"]


def cut_sds(cuts: Mapping[str, Any]) -> tuple[float, float]:
    """The (basal/lv, lv/apical) cut sds of ``cuts``."""
    return cuts["basal_lv"]["sd"], cuts["lv_apical"]["sd"]


def _score_at(seen_mean: np.ndarray, pos: int) -> float:
    """The score of a cut at list position ``pos`` (between ranks pos-1 and pos)."""
    m = seen_mean.size
    if pos <= 0:
        return float(seen_mean[0]) + 1e-9
    if pos >= m:
        return float(seen_mean[-1]) - 1e-9
    return float(seen_mean[pos - 1] + seen_mean[pos]) / 2.0
