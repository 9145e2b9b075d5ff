"""The fair baseline with stacks: one-image-at-a-time labelling that knows each scan's geometry.

Along a stack the classes read too_basal... lv... too_apical, so a scan's classes are two
transition points: ``t1`` slices are too_basal and slices ``t2`` onwards too_apical
(``0 <= t1 <= t2 <= n``). ``StackLabeller`` keeps each scan's posterior over ``(t1, t2)`` from
the absolute labels so far, decodes the classes with the same monotone decoding the engine
uses (``stacks.monotone_classes``), and asks its next label about the slice whose class is
least certain, among the slices the asking rater has not labelled yet (a rater's second
look at a slice repeats most of the first one's error).

An answer about slice ``k`` says on which side of each transition the rater saw it: basal of
``t1`` with probability ``e + (1 - 2e) Phi((t1 - k - 1/2) / w)`` (a lapse ``e`` plus a probit
of the distance in slices, width ``w``; the cut finder's response model in ``boundary.py``,
counted in slices of one stack instead of ranks of the list), and likewise for ``t2``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
from scipy.special import ndtr

from ranking_scheduler.engine.boundary import STUDY_CLASS_MIX, answer_sides
from ranking_scheduler.engine.stacks import monotone_classes, stack_layout
from slicerank_base import CLASSES

LAPSE = 0.03
"""Assumed chance that an absolute answer has nothing to do with the slice."""
WIDTH = 0.5
"""Width (in slices) of the zone around a transition where experts disagree."""
PRIOR_SD = (0.15, 0.1)
"""Sd of the prior share of too_basal / too_apical slices in a scan around the class mix."""


class StackLabeller:
    """Per-scan posteriors over the two class transitions from absolute labels."""

    def __init__(
        self,
        image_ids: Sequence[str],
        stacks: Mapping[str, tuple[str, float]],
        *,
        class_mix: Sequence[float] = STUDY_CLASS_MIX,
        seed: int = 0,
    ) -> None:
        self._ids = list(image_ids)
        self._index = {i: k for k, i in enumerate(self._ids)}
        self._layout = stack_layout(self._ids, stacks)
        self._padded = self._layout.padded()
        self._rng = np.random.default_rng([seed, 17])
        n = len(self._ids)
        self._loglik: list[tuple[np.ndarray, np.ndarray]] = []
        self._log_prior: list[np.ndarray] = []
        self.probs = np.zeros((n, 3))
        for g in self._layout.groups:
            m = g.size
            t = np.arange(m + 1) / max(m, 1)
            lp1 = -0.5 * ((t - class_mix[0]) / PRIOR_SD[0]) ** 2
            lp2 = -0.5 * ((1 - t - class_mix[2]) / PRIOR_SD[1]) ** 2
            self._log_prior.append(lp1[:, None] + lp2[None, :])
            self._loglik.append((np.zeros(m + 1), np.zeros(m + 1)))
        for s in range(self._layout.n_scans):
            self._refresh(s)
        self._asked: dict[str, set[int]] = {}
        self.labels = 0

    @property
    def image_ids(self) -> list[str]:
        """The cohort's image ids, in the order of ``probs``' rows."""
        return list(self._ids)

    def _refresh(self, s: int) -> None:
        g = self._layout.groups[s]
        m = g.size
        l1, l2 = self._loglik[s]
        joint = self._log_prior[s] + l1[:, None] + l2[None, :]
        joint = np.where(np.triu(np.ones((m + 1, m + 1), dtype=bool)), joint, -np.inf)
        p = np.exp(joint - joint.max())
        p /= p.sum()
        p1, p2 = p.sum(axis=1), p.sum(axis=0)
        k = np.arange(m)
        # Slice k is too_basal when t1 > k, too_apical when t2 <= k.
        basal = np.array([p1[j + 1 :].sum() for j in k])
        apical = np.array([p2[: j + 1].sum() for j in k])
        self.probs[g] = np.column_stack([basal, np.clip(1 - basal - apical, 0, 1), apical])

    def next_query(self, rater: str, exclude: Collection[str] = ()) -> str | None:
        """The slice whose class is least certain that ``rater`` has not labelled, or None.

        ``exclude``: slices out for an answer with another rater right now (raters working
        in parallel should not all be handed the same slice)."""
        uncertain = 1.0 - self.probs.max(axis=1) + self._rng.random(len(self._ids)) * 1e-9
        asked = set(self._asked.get(rater, set()))
        asked.update(self._index[i] for i in exclude if i in self._index)
        if asked:
            uncertain[list(asked)] = -1.0
        best = int(np.argmax(uncertain))
        return None if uncertain[best] < 0 else self._ids[best]

    def submit(self, image_id: str, rater: str, cls: str) -> None:
        """Record ``rater``'s absolute label ``cls`` of ``image_id``."""
        if image_id not in self._index:
            raise ValueError(f"image_id: unknown image id {image_id!r}")
        if cls not in CLASSES:
            raise ValueError(f"cls: {cls!r} is not one of {', '.join(CLASSES)}")
        i = self._index[image_id]
        self._asked.setdefault(rater, set()).add(i)
        s = int(self._layout.scan_of[i])
        k = int(self._layout.slot_of[i])
        m = self._layout.groups[s].size
        t = np.arange(m + 1)
        p_basal = ndtr((t - k - 0.5) / WIDTH)  # slice k lies before transition t
        for side, ll in zip(answer_sides(cls), self._loglik[s], strict=True):
            p = LAPSE + (1 - 2 * LAPSE) * (p_basal if side else 1.0 - p_basal)
            ll += np.log(p)
        self.labels += 1
        self._refresh(s)

    def classes(self) -> dict[str, str]:
        """Every slice's class, decoded monotonically along its scan."""
        cls = monotone_classes(np.log(np.clip(self.probs, 1e-12, 1.0)), self._padded)
        return {i: CLASSES[int(c)] for i, c in zip(self._ids, cls, strict=True)}


def single_labeller(
    image_ids: Sequence[str], stacks: Mapping[str, tuple[str, float]], seed: int = 0
) -> StackLabeller:
    """The one-at-a-time arm of every fair comparison (the demo, ``bench model``, the study):
    it chooses which slice each rater labels next (``next_query``), takes the answers
    (``submit``) and decodes every slice's class (``classes``, ``probs``).

    Today the stack-aware :class:`StackLabeller`; when the engine's ``single`` strategy lands
    (issue 18) this is the one place that switches to it, so both arms get the same geometry
    and the same scheduler intelligence.
    """
    return StackLabeller(image_ids, stacks, seed=seed)


def labeller_document(labeller: StackLabeller) -> dict:
    """The one-at-a-time arm's decoded classes as a ``consensus.json``-style document, so both
    arms train through the same label path (every slice of the cohort gets a class, decoded
    monotonically along its scan; ``p_*`` are the labeller's marginals)."""
    classes = labeller.classes()
    return {
        "strategy": "single",
        "labels": labeller.labels,
        "thresholds": {},
        "images": [
            {
                "image_id": i,
                "class": classes[i],
                **{f"p_{c}": float(labeller.probs[k, j]) for j, c in enumerate(CLASSES)},
            }
            for k, i in enumerate(labeller.image_ids)
        ],  # fmt: skip
    }
