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
* ``ranking``: ``bayes`` by its product name (the study's method, done well).
* ``single``: one slice at a time, the scheduler choosing each next slice where a label teaches
  most (with stacks: about the whole stack), into the same posterior; no batches.
* ``hybrid``: whichever teaches more per second of the asking rater's own time, a batch or a
  single question (``TaskChooser.best_label`` against the batch ``select`` would build).

Every probit strategy also stops once it has spent twice the clinician time the paper
heuristic would, four times over (``MAX_SECONDS_PER_IMAGE`` at the prior task times): a small pilot cohort, or
raters whose errors persist, may never bring the expected misclassifications under the target,
and a scheduler that never stops is worse than one that says why it stopped
(``stop_reason``). ``min_views`` (every image seen at least that often) holds before any stop
but the cap.

A new strategy is a new small class here and an entry in ``POLICIES``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar

import numpy as np

from ranking_scheduler.engine.chooser import PRIOR_SECONDS, TaskChooser
from ranking_scheduler.engine.cuts import CutFinder, cut_scores
from ranking_scheduler.engine.posterior import FRESHEST_RATER, Posterior

TARGET_MISCLASSIFIED = 0.01
"""``bayes`` stops when expected misclassified images < this fraction of the images."""
STACK_TARGET_MISCLASSIFIED = 0.003
"""With stacks, ``bayes``'s default stop: the stack posterior shares each view among a scan's
slices as if every rater's error were fresh, so it is overconfident, and at 1% it stopped near
1,200 batches (4 h) while its accuracy was still climbing (seed 1, equal noise)."""
MAX_SECONDS_PER_IMAGE = 4 * 3 * PRIOR_SECONDS["rank"] / 8
"""The probit strategies stop at this much clinician time per image (at the prior task times):
four times what the paper heuristic spends (3 views of every image in batches of 8)."""
MIN_GAIN_PER_HOUR = 6.0
"""The probit strategies stop once the best task they could serve next is expected to put right
fewer than this many misclassified slices per clinician hour (its value per second at the prior
task times, x 3600): with persistent errors the expected misclassifications level off above a
small cohort's target, and another hour then buys almost nothing."""
GAIN_EVERY = 4
"""Answers between evaluations of the diminishing-returns rule (it costs two task valuations)."""
ADVICE_WINDOW = 32
"""``ranking`` compares its batch with the best single question every ``ADVICE_EVERY`` batches
and advises ``hybrid`` when questions won most of the last this many comparisons."""
ADVICE_EVERY = 4


class Strategy:
    """A batch policy over the engine's parts (validated settings passed in by the engine).

    ``rng`` is the engine's generator: a policy that draws from it draws in a fixed order,
    so the same calls give the same batches.
    """

    GLICKO: ClassVar[bool] = False
    """Whether the posterior holds the study's Glicko-2 ratings (else the ranked probit)."""
    OPTIONS: ClassVar[frozenset[str]] = frozenset()
    """Options the engine accepts for this strategy besides the common ones."""
    MODEL_DEFAULTS: ClassVar[dict[str, float]] = {}
    """The rating model's settings this strategy runs with unless an option says otherwise."""

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

    KINDS: ClassVar[tuple[str, ...]] = ("rank",)
    """Task kinds the strategy serves: ``rank`` (batches), ``label`` (single questions)."""

    def select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        """Up to ``batch_size`` image indices among ``available`` for ``rater``."""
        raise NotImplementedError

    def next_kind(
        self, rater: str, available: np.ndarray, label_free: np.ndarray, jitter: np.ndarray
    ) -> tuple[str, Any]:
        """The task to serve ``rater``: ``("rank", image indices)`` or ``("label", index)``."""
        return "rank", self.select(rater, available, jitter)

    def done(self) -> bool:
        """The stopping rule holds."""
        return self.stop_reason() is not None

    def stop_reason(self) -> str | None:
        """Why the strategy stopped, or None while it goes on."""
        raise NotImplementedError

    def advice(self) -> str | None:
        """A recommendation to the project lead, or None."""
        return None

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

    def stop_reason(self) -> str | None:
        if self.posterior.views.min() >= self.target_views:
            return f"every image has {self.target_views} views"
        return None

    def batches_left(self) -> int:
        need = np.maximum(self.target_views - self.posterior.views, 0).sum()
        return math.ceil(need / self.chooser.batch_size)


class BayesStrategy(Strategy):
    """``bayes``/``ranking``: the task chooser's batches, stopped by the expected
    misclassifications (or the time cap)."""

    # Persistent errors modelled and boundary answers as evidence (the wave-3 model). Counting
    # every view as fresh did better on tuning seeds with the stop rule off (3,323 slices, 2 h,
    # equal noise: 0.944 / 0.936 against 0.906 / 0.916), but with the stop rule on the more
    # confident posterior stopped `ranking` after a fraction of the time: held out, level at
    # equal noise and 0.6-1.2 points lower at 1.5; on 490-slice tuning cohorts 0.949 / 0.953
    # against 0.956 / 0.961 (docs/bench/engine.md). `single` and `hybrid` count views as fresh.
    MODEL_DEFAULTS: ClassVar[dict[str, float]] = {"persistent_share": 0.85}
    OPTIONS = frozenset(
        {
            "label_evidence",
            "target_misclassified",
            "n_anchors",
            "default_beta",
            "dynamics",
            "coverage_bonus",
            "persistent_share",
            "label_noise",
            "min_views",
        }
    )

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._wins: deque[bool] = deque(maxlen=ADVICE_WINDOW)
        self._gain: tuple[int, float] | None = None

    def gain_per_hour(self) -> float:
        """Misclassified slices the best next task is expected to put right per clinician hour
        (prior task times; the kinds this strategy serves); no random tie-breaks. Brought up to
        date once per ``GAIN_EVERY`` answers, when first asked for: replaying a log costs
        nothing, and a rebuilt engine evaluates it at the current state (so it may stop up to
        ``GAIN_EVERY - 1`` answers apart from the live one, never differently otherwise)."""
        post = self.posterior
        key = (post.batches + int(post.label_views.sum())) // GAIN_EVERY
        if self._gain is not None and self._gain[0] == key:
            return self._gain[1]
        cuts = self.finder.cuts(fresh=False)
        zero = np.zeros(post.n)
        every = np.ones(post.n, dtype=bool)
        rates = [0.0]
        # Valued for the rater who has read each slice least: a task is worth serving if some
        # rater can still teach something (with persistence modelled and the value for whoever
        # comes, a slice every rater had seen once looked worthless: a study-sized pool stopped
        # at 0.915 after 0.8 h).
        if "label" in self.KINDS:
            _, value = self.chooser.best_label(FRESHEST_RATER, every, zero, cuts)
            rates.append(value / PRIOR_SECONDS["label"])
        if "rank" in self.KINDS:
            value = self.chooser.best_batch_value(cuts, FRESHEST_RATER)
            rates.append(value / PRIOR_SECONDS["rank"])
        rate = max(rates) * 3600
        self._gain = (key, rate)
        return rate

    def select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        cuts = self.finder.cuts(fresh=False)
        if self.posterior.layout is not None:
            return self.chooser.stack_batch(rater, available, jitter, cuts)
        return self.chooser.bayes_batch(rater, available, jitter, cuts)

    def next_kind(
        self, rater: str, available: np.ndarray, label_free: np.ndarray, jitter: np.ndarray
    ) -> tuple[str, Any]:
        batch = self.select(rater, available, jitter)
        if self.posterior.batches % ADVICE_EVERY == 0 and self.posterior.views.any():
            # Would a single question have taught more per second? (advice only)
            _, label_value = self.chooser.best_label(
                rater, label_free, jitter, self.finder.cuts(fresh=False)
            )
            timer = self.chooser.timer
            self._wins.append(
                label_value / timer.seconds(rater, "label")
                > self.chooser.last_value / timer.seconds(rater, "rank")
            )
        return "rank", batch

    def advice(self) -> str | None:
        wins = sum(self._wins)
        if len(self._wins) >= ADVICE_WINDOW // 2 and wins > len(self._wins) / 2:
            return (
                f"single questions would have taught more per second than the batch in {wins} "
                f"of the last {len(self._wins)} comparisons: on this pool consider the "
                "`hybrid` strategy (or `single`)"
            )
        return None

    def spent_seconds(self) -> float:
        """Clinician time spent so far at the prior task times."""
        post = self.posterior
        return (
            post.batches * PRIOR_SECONDS["rank"]
            + int(post.label_views.sum()) * PRIOR_SECONDS["label"]
        )

    def stop_reason(self) -> str | None:
        # The cuts before the check: asking for them fills the finder's cache of the cuts that
        # batch choice uses (refreshed every few batches), so when they are asked for matters.
        cuts = self.finder.cuts(fresh=False)
        post = self.posterior
        if self.spent_seconds() >= MAX_SECONDS_PER_IMAGE * post.n:
            return "time cap: four times the paper heuristic's clinician time spent"
        if not post.seen().any():
            return None
        if self.chooser.short_of_views().any():
            return None
        mis = post.misclassified(*cut_scores(cuts))
        if mis.sum() < self.target_misclassified * post.n:
            return (
                f"expected misclassified images {mis.sum():.1f} below the target "
                f"{self.target_misclassified:.2%} of {post.n}"
            )
        if post.batches + post.label_views.sum() >= 2 * self.chooser.batch_size:
            gain = self.gain_per_hour()
            if gain < MIN_GAIN_PER_HOUR:
                return (
                    f"diminishing returns: the best next task would put right {gain:.1f} "
                    f"misclassified images per clinician hour (< {MIN_GAIN_PER_HOUR:g}); "
                    f"expected misclassified now {mis.sum():.1f} of {post.n}"
                )
        return None

    def batches_left(self) -> int:
        # Rough: every image still likelier than 5% to be misclassified needs one more view.
        mis = self.posterior.misclassified(*cut_scores(self.finder.cuts(fresh=False)))
        per_batch = max(1, self.chooser.batch_size - self.chooser.n_anchors)
        need = int(((mis > 0.05) | self.chooser.short_of_views()).sum())
        return math.ceil(need / per_batch)


class SingleStrategy(BayesStrategy):
    """``single``: one slice at a time where a label teaches most; never a batch."""

    # Labels are all it has: each one is evidence about its slice and its scan.
    MODEL_DEFAULTS: ClassVar[dict[str, float]] = {}

    KINDS = ("label",)

    def select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        return []

    def next_kind(
        self, rater: str, available: np.ndarray, label_free: np.ndarray, jitter: np.ndarray
    ) -> tuple[str, Any]:
        image, _ = self.chooser.best_label(rater, label_free, jitter, self.finder.cuts(fresh=False))
        return "label", image

    def advice(self) -> str | None:
        return None

    def batches_left(self) -> int:
        return 0


class HybridStrategy(BayesStrategy):
    """``hybrid``: a batch or a single question, whichever is worth more per second."""

    KINDS = ("rank", "label")
    # Its labels must teach the slices (else a question could only place the cuts).
    MODEL_DEFAULTS: ClassVar[dict[str, float]] = {}

    def next_kind(
        self, rater: str, available: np.ndarray, label_free: np.ndarray, jitter: np.ndarray
    ) -> tuple[str, Any]:
        cuts = self.finder.cuts(fresh=False)
        image, label_value = self.chooser.best_label(rater, label_free, jitter, cuts)
        batch = self.select(rater, available, jitter)
        timer = self.chooser.timer
        rank_s, label_s = timer.seconds(rater, "rank"), timer.seconds(rater, "label")
        batch_rate, label_rate = self.chooser.last_value / rank_s, label_value / label_s
        # On a tie (both worth nothing more, say) the quicker task: the rater's time is the cost.
        quicker = label_rate == batch_rate and label_s < rank_s
        if image is not None and (len(batch) < 2 or label_rate > batch_rate or quicker):
            return "label", image
        return "rank", batch

    def advice(self) -> str | None:
        return None


class RandomStrategy(Strategy):
    """``random``: uniformly random batches into the ``bayes`` model, stopped by total views."""

    MODEL_DEFAULTS: ClassVar[dict[str, float]] = BayesStrategy.MODEL_DEFAULTS
    OPTIONS = frozenset(
        {
            "default_beta",
            "dynamics",
            "persistent_share",
            "label_noise",
            "label_evidence",
        }
    )

    def select(self, rater: str, available: np.ndarray, jitter: np.ndarray) -> list[int]:
        k = self.chooser.batch_size
        cand = np.flatnonzero(available)
        if self.posterior.layout is not None:
            # Random order, then at most one slice per scan.
            cand = cand[self.rng.permutation(cand.size)]
            return [int(x) for x in self.chooser.distinct_scans(cand, k)]
        take = min(k, cand.size)
        return list(self.rng.choice(cand, size=take, replace=False)) if take else []

    def stop_reason(self) -> str | None:
        post = self.posterior
        if post.views.sum() >= self.target_views * post.n:
            return f"{self.target_views} views per image spent"
        return None


POLICIES: dict[str, type[Strategy]] = {
    "paper": PaperStrategy,
    "bayes": BayesStrategy,
    "random": RandomStrategy,
    "ranking": BayesStrategy,
    "single": SingleStrategy,
    "hybrid": HybridStrategy,
}
"""Strategy name -> policy (``bayes`` and ``ranking`` are one policy under two names)."""
STRATEGIES = tuple(POLICIES)
"""Engine strategies (the simulator adds ``one_at_a_time``, the study's random order)."""
