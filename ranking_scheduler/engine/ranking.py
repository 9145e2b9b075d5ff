"""``RankingEngine``: batches to rank, pooled ratings, the ordinal list, cuts and classes.

Pure and in memory; deterministic for a seed (the same calls in the same order give the same
batches and the same state). ``RankingEngine`` is the facade the service and the simulator
call: it validates input, keeps the open batches and hands the work to its parts, each in its
own module (the map and the import arrows are in the package docstring, ``__init__.py``):

* the posterior (``posterior.py``): evidence in, slice positions out;
* the cut finder (``cuts.py``): the two class cuts and the boundary questions;
* the task chooser (``chooser.py``): what a view is worth, and the batch worth most;
* the strategies (``strategies.py``): ``paper``, ``ranking`` (alias ``bayes``), ``single``,
  ``hybrid``, ``random`` as small policies over those parts (which model, which tasks, when to
  stop).

Two ways to ask for work: ``next_batch(rater)`` (a ranked batch, the API since wave 1) and
``next_task(rater)``, which returns a ``Task``: a batch to rank or a single slice to label,
whichever the strategy serves (``single`` never serves a batch, ``hybrid`` whichever teaches
more per second of that rater's time). Every answer (``submit`` for a batch,
``submit_boundary`` for a single label, from a task or a boundary question) is evidence about
its slices and their scans in one posterior.

Scores are on one axis where **higher means more basal** (the paper's rating direction);
``ranking()`` lists the most basal image first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranking_scheduler.engine import boundary as bnd
from ranking_scheduler.engine.chooser import COVERAGE_BONUS, N_ANCHORS, TaskChooser
from ranking_scheduler.engine.cuts import BOUNDARY_PACE, CutFinder, cut_scores, cut_sds
from ranking_scheduler.engine.posterior import Posterior
from ranking_scheduler.engine.stacks import stack_layout
from ranking_scheduler.engine.strategies import (
    POLICIES,
    STACK_TARGET_MISCLASSIFIED,
    STRATEGIES,
    TARGET_MISCLASSIFIED,
)
from slicerank_base import CLASSES

__all__ = ["STRATEGIES", "RankingEngine", "Task"]

TASK_KINDS = ("rank", "label")
"""Kinds of task: a batch to rank, a single slice to label."""


@dataclass(frozen=True)
class Task:
    """One unit of work for a rater: ``kind`` ``"rank"`` (``image_ids`` a batch, submit with
    ``submit``) or ``"label"`` (one image, submit with ``submit_boundary``)."""

    kind: str
    image_ids: tuple[str, ...]


_COMMON_OPTIONS = {"class_mix", "boundary_budget", "boundary_error_rate", "boundary_pace"}


class RankingEngine:
    """Schedules ranked batches, pools the rankings and finds the two class cuts.

    Parameters
    ----------
    image_ids
        The pool: unique, non-empty strings.
    strategy
        ``"bayes"`` (default; also called ``"ranking"``), ``"single"``, ``"hybrid"``,
        ``"paper"`` or ``"random"`` (see ``strategies.py``).
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
        ``paper``: ``tau``, ``view_slack``; ``bayes``/``ranking``/``single``/``hybrid``:
        ``target_misclassified`` (0.01; 0.003 with stacks), ``n_anchors`` (2),
        ``coverage_bonus`` (0.1), ``min_views`` (0: every image needs this many human views,
        ranked or labelled, before the engine stops; 1 = every slice seen once),
        ``persistent_share`` (share of a rater's error that persists per slice, 0 = every
        view fresh: 0.85 for ``bayes``/``ranking``/``random``, 0 for ``single``/``hybrid``;
        ``strategies.*.MODEL_DEFAULTS``), ``label_evidence`` (1: a single label moves its
        slice; 0: it only places the cuts), ``label_noise`` (0.5), ``default_beta``,
        ``dynamics``;
        ``random``: ``default_beta``, ``dynamics``, ``persistent_share``, ``label_noise``,
        ``label_evidence``.
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
        unknown = set(options) - POLICIES[strategy].OPTIONS - _COMMON_OPTIONS
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
        min_views = options.get("min_views", 0)
        if not isinstance(min_views, int) or min_views < 0:
            raise ValueError(f"min_views: must be an int >= 0, got {min_views!r}")

        self.strategy = strategy
        self.batch_size = batch_size
        self.target_views = target_views
        self.seed = seed
        self._ids = ids
        self._index = {image_id: i for i, image_id in enumerate(ids)}
        n = len(ids)
        self._n = n
        self._rng = np.random.default_rng(seed)
        self._open: dict[int, tuple[str, list[int]]] = {}
        self._next_batch_id = 0
        self._in_open = np.zeros(n, dtype=np.int32)
        self._label_open: dict[int, str] = {}
        policy = POLICIES[strategy]
        layout = stack_layout(ids, stacks) if stacks is not None else None
        model_options = {**policy.MODEL_DEFAULTS, **options}
        self._posterior = Posterior(n, glicko=policy.GLICKO, layout=layout, options=model_options)
        self._finder = CutFinder(self._posterior, mix=mix, budget=budget, error_rate=err, pace=pace)
        self._chooser = TaskChooser(
            self._posterior,
            batch_size=batch_size,
            n_anchors=n_anchors,
            coverage_bonus=bonus,
            min_views=min_views,
        )
        self._policy = policy(
            self._posterior,
            self._finder,
            self._chooser,
            self._rng,
            target_views=target_views,
            target_misclassified=target_mis,
        )

    # ----------------------------------------------------------------- read-only views
    @property
    def image_ids(self) -> list[str]:
        """The pool, in the order given."""
        return list(self._ids)

    def scores(self) -> dict[str, tuple[float, float]]:
        """``(mean, sd)`` per image on the strategy's axis (higher = more basal).

        ``paper``: Glicko rating and rating deviation (1500 / 350 at the start);
        ``bayes`` / ``random``: posterior mean and sd of the latent position (0 / 1 prior).
        """
        mean, sd = self._posterior.score_arrays()
        return {i: (float(mean[k]), float(sd[k])) for k, i in enumerate(self._ids)}

    def ranking(self) -> list[str]:
        """All images, most basal first (unseen images sit at their prior score)."""
        return [self._ids[k] for k in self._posterior.order()]

    def view_counts(self) -> dict[str, int]:
        """How many submitted rankings contained each image."""
        return {i: int(self._posterior.views[k]) for k, i in enumerate(self._ids)}

    def open_batches(self) -> list[list[str]]:
        """Batches handed out by ``next_batch`` and neither submitted nor released, oldest first."""
        return [[self._ids[k] for k in idx] for _, idx in self._open.values()]

    def rater_noise(self) -> dict[str, float]:
        """Per-rater noise. ``bayes``/``random``: perception sd on the latent axis (fitted);
        ``paper`` (which has no noise model): share of a rater's pairs that contradicted the
        ratings of two already-seen images at the time of submission."""
        return self._posterior.rater_noise()

    # ----------------------------------------------------------------- stopping rule
    def expected_misclassified(self) -> float:
        """Expected number of images whose class would change if their score were known exactly.

        Uses each image's score uncertainty against the current cut estimates; the cuts' own
        uncertainty is what boundary questions reduce and is reported by ``boundary_status``.
        """
        cuts = self._finder.cuts(fresh=True)
        return float(self._posterior.misclassified(*cut_scores(cuts)).sum())

    @property
    def done(self) -> bool:
        """The stopping rule holds: ``next_batch`` returns ``[]``."""
        return self._policy.done()

    def progress(self) -> dict[str, Any]:
        """Counts for dashboards: batches, views, open batches, boundary labels, estimates,
        why the engine stopped (``stop_reason``, None while it goes on) and any advice."""
        reason = self._policy.stop_reason()
        done = reason is not None
        post = self._posterior
        views = post.views
        left = 0 if done else self._policy.batches_left()
        return {
            "strategy": self.strategy,
            "images": self._n,
            "batches": post.batches,
            "views": int(views.sum()),
            "min_views": int(views.min()),
            "single_labels": int(post.label_views.sum()),
            "seen_images": int(post.seen().sum()),
            "open_batches": len(self._open),
            "open_questions": len(self._label_open),
            "boundary_labels": len(self._finder.labels),
            "expected_misclassified": self.expected_misclassified(),
            "estimated_batches_left": int(left),
            "done": done,
            "stop_reason": reason,
            "advice": self._policy.advice(),
        }

    def provenance(self) -> dict[str, dict[str, Any]]:
        """Where each image's class comes from: ``source`` ``"seen"`` (a person ranked or
        labelled it), ``"inferred"`` (nobody did; its scan's seen slices and the stack geometry
        place it) or ``"prior"`` (nothing about it or its scan has been seen), and
        ``ranked_by`` / ``labelled_by`` (distinct raters), ``rankings`` / ``labels`` (answers)."""
        post = self._posterior
        ranked, labelled = post.raters_of()
        seen = post.seen()
        placed = post.placed()
        out = {}
        for k, image_id in enumerate(self._ids):
            source = "seen" if seen[k] else ("inferred" if placed[k] else "prior")
            out[image_id] = {
                "source": source,
                "ranked_by": int(ranked[k]),
                "labelled_by": int(labelled[k]),
                "rankings": int(post.views[k]),
                "labels": int(post.label_views[k]),
            }
        return out

    def misreads(self, limit: int = 50) -> list[dict[str, Any]]:
        """Probable misreads for review, worst first: ``image_id``, ``rater``, ``kind``
        (``rank``: ``how_far`` is the mean number of places, of a batch, the rater put the slice
        from where the answers as a whole put it, + = more basal; ``label``: ``how_far`` is
        the probability the answers as a whole give the class the rater chose)."""
        cuts = self._finder.cuts(fresh=True)
        found = self._posterior.misreads(*cut_scores(cuts), cut_sds(cuts))
        return [
            {"image_id": self._ids[i], "rater": r, "kind": k, "how_far": round(x, 3)}
            for r, i, k, x in found[:limit]
        ]

    def record_time(self, rater: str, kind: str, seconds: float) -> None:
        """A measured answer time (Label Studio's ``lead_time``): ``kind`` ``"rank"`` or
        ``"label"``. The task chooser values tasks per second of each rater's own median."""
        _check_rater(rater)
        if kind not in TASK_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(TASK_KINDS)}")
        if not isinstance(seconds, int | float) or not 0 < float(seconds) < 86400:
            raise ValueError(f"seconds: must be a number in (0, 86400), got {seconds!r}")
        self._chooser.timer.record(rater, kind, float(seconds))

    def task_seconds(self) -> dict[str, dict[str, float]]:
        """Seconds per task kind in use for each timed rater (``*``: anyone else)."""
        return self._chooser.timer.summary()

    # ----------------------------------------------------------------- batches
    def next_batch(self, rater: str, avoid: Iterable[str] = ()) -> list[str]:
        """The next batch for ``rater`` (shuffled), recorded as open; ``[]`` once done.

        ``avoid``: images left out while enough others are free (the service passes the
        slices ranked in the last minutes, as it cannot choose which rater gets a task)."""
        _check_rater(rater)
        if self._policy.done() or "rank" not in self._policy.KINDS:
            return []
        return self._open_batch(rater, self._policy.select(rater, *self._draw(avoid)))

    def next_task(self, rater: str, avoid: Iterable[str] = ()) -> Task | None:
        """The next task for ``rater``, or ``None`` once done: a batch to rank (recorded as
        open, as ``next_batch``) or a single slice to label (recorded as an open question until
        ``submit_boundary`` or ``release_question``), as the strategy decides. ``avoid`` as
        in ``next_batch`` (for batches)."""
        _check_rater(rater)
        if self._policy.done():
            return None
        available, jitter = self._draw(avoid)
        label_free = np.ones(self._n, dtype=bool)
        label_free[list(self._label_open)] = False
        label_free[list(self._finder.pending)] = False
        kind, what = self._policy.next_kind(rater, available, label_free, jitter)
        if kind == "label":
            if what is None:
                return None
            self._label_open[int(what)] = rater
            return Task("label", (self._ids[int(what)],))
        return Task("rank", tuple(self._open_batch(rater, what)))

    def open_questions(self) -> list[str]:
        """Single questions handed out by ``next_task`` and not answered or released."""
        return [self._ids[i] for i in self._label_open]

    def restore_question(self, image_id: str) -> None:
        """Count a single question handed out before this engine was rebuilt (a restart) and
        still open as open, so it is not asked again meanwhile."""
        if not isinstance(image_id, str) or image_id not in self._index:
            raise ValueError(f"image_id: unknown image id {image_id!r}")
        i = self._index[image_id]
        if self._posterior.label_views[i] == 0 or i not in self._label_open:
            self._label_open[i] = POOL_QUESTION

    def release_question(self, image_id: str) -> None:
        """Withdraw an open single question (its task was deleted or retired unanswered)."""
        if not isinstance(image_id, str) or self._index.get(image_id) not in self._label_open:
            raise ValueError(f"image_id: {image_id!r} is not an open single question")
        del self._label_open[self._index[image_id]]

    def _draw(self, avoid: Iterable[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The images free for a batch (not in an open one; ``avoid`` left out while enough
        others are free) and the tie-breaking jitter."""
        k = self.batch_size
        available = self._in_open == 0
        avoided = [self._index[i] for i in avoid if i in self._index]
        if avoided:
            rested = available.copy()
            rested[avoided] = False
            if rested.sum() >= k:
                available = rested
        return available, self._rng.random(self._n)

    def _open_batch(self, rater: str, chosen: list[int]) -> list[str]:
        k = self.batch_size
        chosen = list(chosen)
        if len(chosen) < k:
            # Pool exhausted by open batches (or fewer scans than a batch holds): reuse images
            # that are open least often.
            jitter = self._rng.random(self._n)
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
        self._posterior.add_ranking(rater, idx)
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

    # ----------------------------------------------------------------- boundary questions
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
        image = self._finder.next_query(final=final)
        return None if image is None else self._ids[image]

    def restore_pending(self, image_id: str) -> None:
        """Count a question asked before this engine was rebuilt (a restart) and still open as
        pending, so the budget holds and the image is not asked again meanwhile."""
        if not isinstance(image_id, str) or image_id not in self._index:
            raise ValueError(f"image_id: unknown image id {image_id!r}")
        self._finder.restore_pending(self._index[image_id])

    def submit_boundary(self, image_id: str, cls: str, rater: str | None = None) -> None:
        """Record an absolute label (``too_basal``, ``lv`` or ``too_apical``) of one image: the
        answer to a boundary question or to a single-slice task, by ``rater`` (None: an
        unnamed rater). It places the cuts and is evidence about the slice and its scan."""
        if not isinstance(image_id, str) or image_id not in self._index:
            raise ValueError(f"image_id: unknown image id {image_id!r}")
        if cls not in CLASSES:
            raise ValueError(f"cls: {cls!r} is not one of {', '.join(CLASSES)}")
        if rater is not None:
            _check_rater(rater)
        i = self._index[image_id]
        cuts = self._finder.label_cuts()
        self._posterior.add_label(
            rater or UNNAMED_RATER, i, CLASSES.index(cls), cut_scores(cuts), cut_sds(cuts)
        )
        self._label_open.pop(i, None)
        self._finder.add_label(i, cls)

    def boundary_status(self) -> dict[str, dict[str, Any]]:
        """Per cut: ``state`` (waiting/searching/settled/budget_spent), ``queries`` (answers
        nearest this cut plus questions pending for it; rebuilt from the labels), ``pending``,
        ``labels`` (answers so far, both cuts), ``estimate`` (images on the basal side, in
        ``ranking()``) and ``interval`` (90% credible, on the list of seen images)."""
        return self._finder.status()

    # ----------------------------------------------------------------- thresholds and classes
    def thresholds(self) -> dict[str, dict[str, Any]]:
        """Each cut as ``{"position", "score", "sd", "labels"}``: ``position`` images of
        ``ranking()`` lie on its basal side; ``score`` is the cut on the scores' axis.
        Before any boundary label the cuts sit at the class-mix prior (``labels`` 0)."""
        return self._finder.thresholds()

    def classes(self) -> dict[str, str]:
        """Class of every image from its score and the current cut estimates."""
        cuts = self._finder.cuts(fresh=True)
        cls = self._posterior.classes(*cut_scores(cuts), cut_sds(cuts))
        return {i: CLASSES[int(c)] for i, c in zip(self._ids, cls, strict=True)}

    def class_probabilities(self) -> dict[str, tuple[float, float, float]]:
        """``(p_too_basal, p_lv, p_too_apical)`` per image, with score and cut uncertainty."""
        cuts = self._finder.cuts(fresh=True)
        p_b, p_l, p_a = self._posterior.class_probs(*cut_scores(cuts), cut_sds(cuts))
        total = p_b + p_l + p_a
        return {
            i: (float(p_b[k] / total[k]), float(p_l[k] / total[k]), float(p_a[k] / total[k]))
            for k, i in enumerate(self._ids)
        }


POOL_QUESTION = "(open question)"
"""Whom a restored open single question counts as asked of."""
UNNAMED_RATER = "(unnamed)"
"""Whose label a ``submit_boundary`` without a rater is counted as."""


def _check_rater(rater: str) -> None:
    if not isinstance(rater, str) or not rater:
        raise ValueError(f"rater: expected a non-empty string, got {rater!r}")
