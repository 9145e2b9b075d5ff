"""The strategies: small policies over the posterior, the cut finder and the task chooser.

A strategy says which rating model the posterior holds, which options it takes, how it picks
a batch, when it stops and how many batches it expects still to need. Everything else (views,
open batches, cuts, questions, classes) is shared and lives in the parts:

* ``paper``: the study's heuristic, Glicko-2 per image (``glicko.py``): the least-seen, most
  volatile images first; stops when every image has ``target_views`` views.
* ``bayes``: ranked-probit posterior with per-rater noise (``bayes.py``); batches from the
  task chooser (the images whose class is most uncertain, plus settled anchors next to the
  cuts); stops when the expected number of misclassified images falls below
  ``target_misclassified * n``.
* ``random``: the ``bayes`` model fed with uniformly random batches (one slice per scan with
  stacks); stops once the total views reach ``target_views * n`` (so it spends what ``paper``
  spends at the least).

A new strategy is a new small class here and an entry in ``POLICIES``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ranking_scheduler.engine.chooser import TaskChooser
from ranking_scheduler.engine.cuts import CutFinder, cut_scores
from ranking_scheduler.engine.posterior import Posterior

TARGET_MISCLASSIFIED = 0.01
"""``bayes`` stops when expected misclassified images < this fraction of the images."""
STACK_TARGET_MISCLASSIFIED = 0.003
"""With stacks, ``bayes``'s default stop: the stack posterior shares each view among a scan's
slices as if every rater's error were fresh, so it is overconfident, and at 1% it stopped near
1,200 batches (4 h) while its accuracy was still climbing (seed 1, equal noise)."""


class Strategy:
    """A batch policy over the engine's parts (validated settings passed in by the engine).

    ``rng`` is the engine's generator: a policy that draws from it draws in a fixed order,
    so the same calls give the same batches.
    """

    GLICKO: ClassVar[bool] = False
    """Whether the posterior holds the study's Glicko-2 ratings (else the ranked probit)."""
    OPTIONS: ClassVar[frozenset[str]] = frozenset()
    """Options the engine accepts for this strategy besides the common ones."""

    def __init__(
        self,
        posterior: Posterior,
        finder: CutFinder,
        chooser: TaskChooser,
        rng: np.random.Generator,
        *,
        target_views: int,
        target_misclassified: float,
    ) -> None:
        self.posterior = posterior
        self.finder = finder
        self.chooser = chooser
        self.rng = rng
        self.target_views = target_views
        self.target_misclassified = target_misclassified

    def select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        """Up to ``batch_size`` image indices among ``available`` for ``rater``."""
        raise NotImplementedError

    def done(self) -> bool:
        """The stopping rule holds."""
        raise NotImplementedError

    def batches_left(self) -> int:
        """Batches still needed before ``done`` (called only while not done)."""
        views = int(self.posterior.views.sum())
        return math.ceil((self.target_views * self.posterior.n - views) / self.chooser.batch_size)


class PaperStrategy(Strategy):
    """``paper``: the study's heuristic (see the module docstring)."""

    GLICKO = True
    OPTIONS = frozenset({"tau", "view_slack"})

    def select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        post = self.posterior
        return list(post.model.select(self.chooser.batch_size, post.views, available, jitter))

    def done(self) -> bool:
        return bool(self.posterior.views.min() >= self.target_views)

    def batches_left(self) -> int:
        need = np.maximum(self.target_views - self.posterior.views, 0).sum()
        return math.ceil(need / self.chooser.batch_size)


class BayesStrategy(Strategy):
    """``bayes``: the task chooser's batches, stopped by the expected misclassifications."""

    OPTIONS = frozenset(
        {"target_misclassified", "n_anchors", "default_beta", "dynamics", "coverage_bonus"}
    )

    def select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        cuts = self.finder.cuts(fresh=False)
        if self.posterior.layout is not None:
            return self.chooser.stack_batch(rater, available, jitter, cuts)
        return self.chooser.bayes_batch(rater, available, jitter, cuts)

    def done(self) -> bool:
        # The cuts before the check: asking for them fills the finder's cache of the cuts that
        # batch choice uses (refreshed every few batches), so when they are asked for matters.
        cuts = self.finder.cuts(fresh=False)
        post = self.posterior
        if not post.views.any():
            return False
        mis = post.misclassified(*cut_scores(cuts))
        return bool(mis.sum() < self.target_misclassified * post.n)

    def batches_left(self) -> int:
        # Rough: every image still likelier than 5% to be misclassified needs one more view.
        mis = self.posterior.misclassified(*cut_scores(self.finder.cuts(fresh=False)))
        per_batch = max(1, self.chooser.batch_size - self.chooser.n_anchors)
        return math.ceil(int((mis > 0.05).sum()) / per_batch)


class RandomStrategy(Strategy):
    """``random``: uniformly random batches into the ``bayes`` model, stopped by total views."""

    OPTIONS = frozenset({"default_beta", "dynamics"})

    def select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        k = self.chooser.batch_size
        cand = np.flatnonzero(available)
        if self.posterior.layout is not None:
            # Random order, then at most one slice per scan.
            cand = cand[self.rng.permutation(cand.size)]
            return [int(x) for x in self.chooser.distinct_scans(cand, k)]
        take = min(k, cand.size)
        return list(self.rng.choice(cand, size=take, replace=False)) if take else []

    def done(self) -> bool:
        post = self.posterior
        return bool(post.views.sum() >= self.target_views * post.n)


POLICIES: dict[str, type[Strategy]] = {
    "paper": PaperStrategy,
    "bayes": BayesStrategy,
    "random": RandomStrategy,
}
"""Strategy name -> policy."""
STRATEGIES = tuple(POLICIES)
"""Engine strategies (the simulator adds ``one_at_a_time``, which needs no engine)."""
