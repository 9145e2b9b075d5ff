"""The ``Predictions`` value object: one model's (or rater's, or strategy's) output per image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from slicerank_base import CLASSES

__all__ = ["PROBABILITY_TOLERANCE", "Predictions", "check_same_images"]

#: How far a row of class probabilities may sum from 1 (CSV files round their numbers).
PROBABILITY_TOLERANCE = 1e-3


def check_same_images(
    expected: set[str], got: set[str], source: str, reference: str = "truth"
) -> None:
    """Raise ``ValueError`` naming ``source`` unless it covers exactly the ``reference`` images."""
    missing = sorted(expected - got)
    extra = sorted(got - expected)
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} image_id(s) of the {reference} missing, e.g. {missing[:3]}")
    if extra:
        parts.append(f"{len(extra)} image_id(s) not in the {reference}, e.g. {extra[:3]}")
    raise ValueError(f"{source}: image ids do not match the {reference}: " + "; ".join(parts))


@dataclass(frozen=True)
class Predictions:
    """Predicted class per ``image_id`` and, for a model, its three class probabilities.

    ``labels`` maps image id → class name (one of ``slicerank.CLASSES``). ``probabilities``,
    when given, maps the same ids → ``(p_too_basal, p_lv, p_too_apical)`` summing to one;
    label-only predictions (raters, labelling strategies) leave it ``None`` and the report
    then omits ROC AUC instead of inventing scores. The constructor validates everything and
    names ``source`` (a file or model name) in its errors.
    """

    labels: Mapping[str, str]
    probabilities: Mapping[str, tuple[float, float, float]] | None = None
    source: str = field(default="predictions", compare=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError(f"{self.source}: no predictions")
        for image_id, label in self.labels.items():
            if label not in CLASSES:
                raise ValueError(
                    f"{self.source}: image {image_id!r} has unknown class {label!r}; "
                    f"expected one of {list(CLASSES)}"
                )
        if self.probabilities is None:
            return
        check_same_images(set(self.labels), set(self.probabilities), self.source, "labels")
        for image_id, row in self.probabilities.items():
            p = np.asarray(row, dtype=float)
            if p.shape != (len(CLASSES),) or not np.all(np.isfinite(p)):
                raise ValueError(
                    f"{self.source}: image {image_id!r} needs {len(CLASSES)} finite probabilities "
                    f"({', '.join('p_' + c for c in CLASSES)}), got {row!r}"
                )
            if np.any(p < 0) or np.any(p > 1):
                raise ValueError(
                    f"{self.source}: image {image_id!r} has a probability outside [0, 1]: {row!r}"
                )
            if abs(p.sum() - 1) > PROBABILITY_TOLERANCE:
                raise ValueError(
                    f"{self.source}: image {image_id!r} probabilities sum to {p.sum():.6g}, not 1 "
                    f"(tolerance {PROBABILITY_TOLERANCE})"
                )

    @classmethod
    def from_labels(cls, labels: Mapping[str, str], *, source: str = "predictions") -> Predictions:
        """Label-only predictions (a rater or a labelling strategy)."""
        return cls(labels=dict(labels), probabilities=None, source=source)

    @classmethod
    def from_probabilities(
        cls,
        probabilities: Mapping[str, Sequence[float]],
        *,
        labels: Mapping[str, str] | None = None,
        source: str = "predictions",
    ) -> Predictions:
        """A model's class probabilities; the label is the most probable class unless given."""
        probs = {k: tuple(float(x) for x in v) for k, v in probabilities.items()}
        if labels is None:
            # An argmax over a malformed row would hide the real problem: check the lengths first.
            for image_id, row in probs.items():
                if len(row) != len(CLASSES):
                    raise ValueError(
                        f"{source}: image {image_id!r} needs {len(CLASSES)} probabilities, got {row!r}"
                    )
            labels = {k: CLASSES[int(np.argmax(v))] for k, v in probs.items()}
        return cls(labels=dict(labels), probabilities=probs, source=source)

    @property
    def has_probabilities(self) -> bool:
        """Whether class probabilities (and so ROC curves and AUC) are available."""
        return self.probabilities is not None

    def labels_for(self, image_ids: Sequence[str]) -> list[str]:
        """Predicted classes in the order of ``image_ids``."""
        return [self.labels[i] for i in image_ids]

    def probability_matrix(self, image_ids: Sequence[str]) -> np.ndarray:
        """``(len(image_ids), 3)`` array of class probabilities; raises if there are none."""
        if self.probabilities is None:
            raise ValueError(f"{self.source}: label-only predictions have no probabilities")
        return np.asarray([self.probabilities[i] for i in image_ids], dtype=float)
