"""The posterior: evidence in, slice positions out.

``Posterior`` holds everything the answers have taught: the rating model (the study's
Glicko-2 ratings, ``glicko.py``, for ``paper``; the ranked-probit posterior, ``bayes.py``, for
``bayes`` and ``random``, with one Gaussian-process prior per scan, ``stacks.py``, when the
stacks are known), how often each image and each scan has been shown, and to whom. Out come
each image's score (mean and sd on one axis, higher = more basal), the list order, and, for
two cut scores, each image's class probabilities, its probability of being misclassified and
the classes themselves (never stepping back along a stack).

Single labels (boundary questions and single-slice tasks) are evidence about the same positions
(``add_label``: an ordered probit against the current cuts, with the rater's own cut offsets
and persistent offsets, ``bayes.py``); the study's Glicko ratings (``paper``) take rankings
only. Every image's provenance (who ranked it, who labelled it, or inferred from its scan)
comes from the counts kept here.

It knows nothing of batches, of how the cuts are found, or of strategies: the cut finder
(``cuts.py``), the task chooser (``chooser.py``) and the strategies read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import ndtr

# Re-exported: the strategies name the rater a stopping rule values tasks for, and reach the
# rating models only through this module.
from ranking_scheduler.engine.bayes import FRESHEST_RATER as FRESHEST_RATER
from ranking_scheduler.engine.bayes import BayesModel
from ranking_scheduler.engine.glicko import PaperModel
from ranking_scheduler.engine.stacks import StackLayout, StackModel, monotone_classes

MISREAD_PLACES = 2.5
"""A rater who placed a slice this many places (of a batch) from where the posterior puts it,
on average over their views of it, probably misread it."""
MISREAD_P = 0.05
"""A single label whose class the posterior gives less than this probability is a probable
misread."""


def misclassification(m: np.ndarray, s: np.ndarray, c1: float, c2: float) -> np.ndarray:
    """Probability that the most probable class of a position ``N(m, s^2)`` is wrong, given
    the cuts ``c1`` (basal/lv) and ``c2`` (lv/apical) on the score axis (higher = more basal)."""
    p_b = ndtr((m - c1) / s)
    p_a = ndtr((c2 - m) / s)
    p_l = np.clip(1.0 - p_b - p_a, 0.0, 1.0)
    return 1.0 - np.maximum(np.maximum(p_b, p_l), p_a)


class Posterior:
    """The rating model and the view counts of a pool of ``n`` images.

    ``glicko`` picks the study's Glicko-2 ratings (``tau``, ``view_slack`` from ``options``);
    otherwise the ranked-probit posterior (``default_beta``, ``dynamics``), per scan when a
    ``layout`` is given. Other keys of ``options`` are ignored.
    """

    def __init__(
        self,
        n: int,
        *,
        glicko: bool,
        layout: StackLayout | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        options = options or {}
        self.n = n
        self.glicko = glicko
        self.layout = layout
        self.views = np.zeros(n, dtype=np.int64)
        """Submitted rankings that contained each image."""
        self.batches = 0
        """Submitted rankings."""
        self.rater_seen: dict[str, np.ndarray] = {}
        """Per rater, the images they have ranked."""
        self.label_views = np.zeros(n, dtype=np.int64)
        """Single labels of each image (boundary answers and single-slice answers)."""
        self.rater_labelled: dict[str, np.ndarray] = {}
        """Per rater, the images they have labelled."""
        self.history: list[tuple[str, str, tuple[int, ...]]] = []
        """Every answer: ``("rank", rater, images most basal first)`` or ``("label", rater,
        (image, class))``, for the misread review."""
        self._discord: dict[str, list[int]] = {}
        if layout is not None:
            self.padded = layout.padded()
            self.scan_views = np.zeros(layout.n_scans, dtype=np.int64)
        self.model: PaperModel | BayesModel
        if glicko:
            self.model = PaperModel(
                n,
                tau=float(options.get("tau", 0.5)),
                view_slack=int(options.get("view_slack", 1)),
            )
        else:
            keys = (
                "default_beta",
                "dynamics",
                "persistent_share",
                "label_noise",
                "label_evidence",
            )
            kw = {k: float(options[k]) for k in keys if k in options}
            self.model = StackModel(layout, **kw) if layout is not None else BayesModel(n, **kw)

    # ----------------------------------------------------------------- evidence in
    def add_ranking(self, rater: str, idx: list[int]) -> None:
        """Absorb ``rater``'s ranking of the images ``idx`` (most basal first); validated."""
        if self.glicko:
            self._record_discord(rater, idx)
            self.model.update(idx)
        else:
            self.model.update(idx, rater)
        self.views[idx] += 1
        if self.layout is not None:
            np.add.at(self.scan_views, self.layout.scan_of[idx], 1)
        self.rater_seen.setdefault(rater, np.zeros(self.n, dtype=bool))[idx] = True
        self.batches += 1
        self.history.append(("rank", rater, tuple(int(i) for i in idx)))

    def add_label(
        self, rater: str, i: int, cls: int, cuts: tuple[float, float], cut_sd: Sequence[float]
    ) -> None:
        """Absorb ``rater``'s single label ``cls`` (class index) of image ``i`` against the cut
        scores ``cuts`` with sds ``cut_sd``; validated. Glicko ratings take no labels."""
        if not self.glicko:
            cut_var = float(np.mean(np.square(cut_sd)))
            self.model.add_label(i, rater, cls, cuts, cut_var)
        self.label_views[i] += 1
        if self.layout is not None and not self.glicko:
            self.scan_views[self.layout.scan_of[i]] += 1
        self.rater_labelled.setdefault(rater, np.zeros(self.n, dtype=bool))[i] = True
        self.history.append(("label", rater, (int(i), int(cls))))

    def _record_discord(self, rater: str, idx: list[int]) -> None:
        rating = self.model.rating
        seen = self.views[idx] > 0
        d = t = 0
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if seen[a] and seen[b] and rating[idx[a]] != rating[idx[b]]:
                    t += 1
                    d += int(rating[idx[a]] < rating[idx[b]])
        acc = self._discord.setdefault(rater, [0, 0])
        acc[0] += d
        acc[1] += t

    # ----------------------------------------------------------------- positions out
    def score_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Each image's score mean and sd (Glicko rating and deviation, or the latent
        position's posterior mean and sd)."""
        if self.glicko:
            return self.model.rating, self.model.rd
        return self.model.mu, np.sqrt(self.model.var)

    def order(self) -> np.ndarray:
        """Image indices, most basal first (ties by index)."""
        mean, _ = self.score_arrays()
        return np.lexsort((np.arange(self.n), -mean))

    def seen(self) -> np.ndarray:
        """Images a person has looked at: ranked, or (probit models) labelled."""
        if self.glicko:
            return self.views > 0
        return (self.views > 0) | (self.label_views > 0)

    def placed(self) -> np.ndarray:
        """Images the answers have placed: seen, or (with stacks) in a scan with a seen slice,
        whose position the stack prior carries over from its neighbours."""
        seen = self.seen()
        if self.layout is None:
            return seen
        return seen | (self.scan_views[self.layout.scan_of] > 0)

    def position_of(self, score: float) -> int:
        """How many images score above ``score`` (a cut's place in the ranking)."""
        mean, _ = self.score_arrays()
        return int((mean > score).sum())

    def class_probs(
        self, c1: float, c2: float, cut_sd: Sequence[float] = (0.0, 0.0)
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(p_too_basal, p_lv, p_too_apical)`` of every image for the cut scores ``c1``
        (basal/lv) and ``c2`` (lv/apical), each cut with the uncertainty ``cut_sd``."""
        mean, sd = self.score_arrays()
        var = sd * sd
        s1 = np.sqrt(var + cut_sd[0] ** 2)
        s2 = np.sqrt(var + cut_sd[1] ** 2)
        p_b = ndtr((mean - c1) / s1)
        p_a = ndtr((c2 - mean) / s2)
        p_l = np.clip(1.0 - p_b - p_a, 0.0, 1.0)
        return p_b, p_l, p_a

    def misclassified(self, c1: float, c2: float) -> np.ndarray:
        """Each image's probability that its most probable class (cuts taken as exact) is
        wrong."""
        p_b, p_l, p_a = self.class_probs(c1, c2)
        return 1.0 - np.maximum(np.maximum(p_b, p_l), p_a)

    def classes(self, c1: float, c2: float, cut_sd: Sequence[float]) -> np.ndarray:
        """Class index (0 too_basal, 1 lv, 2 too_apical) of every image: by its score, or with
        stacks the most probable sequence along each stack that never steps back."""
        mean, _ = self.score_arrays()
        cls = np.where(mean > c1, 0, np.where(mean < c2, 2, 1))
        if self.layout is not None:
            # Along a stack the classes read too_basal... lv... too_apical: the most probable
            # such sequence (the cut uncertainty included), not each slice on its own.
            probs = np.column_stack(self.class_probs(c1, c2, cut_sd))
            cls = monotone_classes(np.log(np.clip(probs, 1e-12, 1.0)), self.padded)
        return cls

    def raters_of(self) -> tuple[np.ndarray, np.ndarray]:
        """How many raters ranked each image, and how many labelled it."""
        ranked = np.zeros(self.n, dtype=np.int64)
        for seen in self.rater_seen.values():
            ranked += seen
        labelled = np.zeros(self.n, dtype=np.int64)
        for seen in self.rater_labelled.values():
            labelled += seen
        return ranked, labelled

    def misreads(
        self, c1: float, c2: float, cut_sd: Sequence[float]
    ) -> list[tuple[str, int, str, float]]:
        """Probable misreads, ``(rater, image, kind, how far)`` worst first: a rater whose
        placements of a slice in their batches sit on average ``MISREAD_PLACES`` or more from
        where the posterior now puts it among the same images (``kind`` ``"rank"``, how far in
        places, + = placed more basal), or whose single label the posterior now gives less than
        ``MISREAD_P`` (``"label"``, how far = that probability). A misread persists (the same
        rater sees the slice the same way), so it shows as a consistent displacement."""
        mean, _ = self.score_arrays()
        shift: dict[tuple[str, int], list[float]] = {}
        bad_labels = []
        probs = None
        for kind, rater, what in self.history:
            if kind == "rank":
                idx = np.asarray(what)
                expected = np.argsort(np.argsort(-mean[idx], kind="stable"), kind="stable")
                for place, (i, e) in enumerate(zip(idx, expected, strict=True)):
                    shift.setdefault((rater, int(i)), []).append(float(e - place))
            else:
                if probs is None:
                    probs = np.column_stack(self.class_probs(c1, c2, cut_sd))
                i, cls = what
                if probs[i, cls] < MISREAD_P:
                    bad_labels.append((rater, i, "label", float(probs[i, cls])))
        out = [
            (rater, i, "rank", float(np.mean(d)))
            for (rater, i), d in shift.items()
            if abs(np.mean(d)) >= MISREAD_PLACES
        ]
        out.sort(key=lambda r: (-abs(r[3]), r[0], r[1]))
        bad_labels.sort(key=lambda r: (r[3], r[0], r[1]))
        return out + bad_labels

    def rater_noise(self) -> dict[str, float]:
        """Per-rater noise. Probit: perception sd on the latent axis (fitted); Glicko (which has
        no noise model): share of a rater's pairs that contradicted the ratings of two
        already-seen images at the time of submission."""
        if not self.glicko:
            return self.model.rater_noise()
        return {r: (d / t if t else 0.0) for r, (d, t) in sorted(self._discord.items())}
