"""Classification metrics: confusion matrices, accuracy, F1, ROC curves and ROC AUC.

Pure NumPy, no scikit-learn at run time (the tests check these against it). Labels are
class names (``slicerank.CLASSES`` by default); a confusion matrix has the truth in its rows
and the prediction in its columns, the layout of the study's Table 3 and of scikit-learn.

The study's binary view (Zaman et al. 2023, "Statistical analysis") merges ``too_basal`` and
``too_apical`` into "not in the LV"; :class:`BinaryTable` holds that 2x2 table and names its
ratios both the textbook way and the way the study's Table 4 labels them (see
:attr:`BinaryTable.paper_recall`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from slicerank_base import CLASSES

__all__ = [
    "BinaryTable",
    "accuracy",
    "class_indices",
    "confusion_matrix",
    "f1_scores",
    "macro_f1",
    "one_vs_rest_accuracy",
    "precision_recall",
    "roc_auc",
    "roc_curve",
    "weighted_f1",
]


def class_indices(labels: Sequence[str], classes: Sequence[str] = CLASSES) -> np.ndarray:
    """Map class names to their index in ``classes``; an unknown name raises ``ValueError``."""
    lookup = {name: i for i, name in enumerate(classes)}
    try:
        return np.fromiter((lookup[label] for label in labels), dtype=np.intp, count=len(labels))
    except KeyError as exc:
        raise ValueError(
            f"unknown class {exc.args[0]!r}; expected one of {list(classes)}"
        ) from None


def _paired(y_true: Sequence[str], y_pred: Sequence[str]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("no labels: metrics need at least one image")


def confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str] = CLASSES
) -> np.ndarray:
    """Counts of (truth, prediction) pairs: ``cm[i, j]`` = truth ``classes[i]``, predicted ``classes[j]``."""
    _paired(y_true, y_pred)
    k = len(classes)
    t = class_indices(y_true, classes)
    p = class_indices(y_pred, classes)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Fraction of images whose predicted class equals the true class."""
    _paired(y_true, y_pred)
    return float(np.mean([a == b for a, b in zip(y_true, y_pred, strict=True)]))


def one_vs_rest_accuracy(cm: np.ndarray, k: int) -> tuple[int, int]:
    """Correct and total counts when class ``k`` is scored against all others merged.

    This is the per-class "accuracy" of the study's Table 2: its 'in the LV' accuracy equals
    the accuracy of the binary LV vs not-LV table of Table 3.
    """
    cm = np.asarray(cm)
    n = int(cm.sum())
    tp = int(cm[k, k])
    fn = int(cm[k].sum()) - tp
    fp = int(cm[:, k].sum()) - tp
    return n - fn - fp, n


def precision_recall(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Textbook per-class precision (PPV, column-wise) and recall (sensitivity, row-wise).

    A class never predicted has precision 0, one never present has recall 0 (scikit-learn's
    ``zero_division=0``), so the values stay in [0, 1].
    """
    cm = np.asarray(cm, dtype=float)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    return precision, recall


def f1_scores(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2·TP / (2·TP + FP + FN); 0 for a class neither present nor predicted."""
    cm = np.asarray(cm, dtype=float)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 scores."""
    return float(np.mean(f1_scores(cm)))


def weighted_f1(cm: np.ndarray) -> float:
    """Per-class F1 averaged with weights equal to each class's true count (scikit-learn 'weighted').

    The study's "Overall F1" (0.75 vs 0.86) is consistent with this average, not the macro one.
    """
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    return float(np.average(f1_scores(cm), weights=support)) if support.sum() else 0.0


def _binary_inputs(y_binary: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray):
    y = np.asarray(y_binary, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D and the same length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("ROC needs at least one positive and one negative image")
    return y, s


def roc_auc(y_binary: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve, as the Mann–Whitney probability P(score+ > score-) + ½·P(tie).

    Raises ``ValueError`` when only one class is present (the AUC is undefined then).
    """
    y, s = _binary_inputs(y_binary, scores)
    ranks = rankdata(s)
    m = int(y.sum())
    n = y.size - m
    return float((ranks[y].sum() - m * (m + 1) / 2) / (m * n))


def roc_curve(
    y_binary: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold (highest first).

    Returns ``(fpr, tpr, thresholds)`` starting at (0, 0) with threshold ``+inf``, as
    scikit-learn's ``roc_curve(drop_intermediate=False)`` does.
    """
    y, s = _binary_inputs(y_binary, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # The last index of each run of equal scores: ties move the curve diagonally at once.
    distinct = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return fpr, tpr, thresholds


@dataclass(frozen=True)
class BinaryTable:
    """The study's 2x2 table for ``lv`` vs not-``lv`` (Table 3): truth in rows, prediction in columns.

    ``tp`` = truth LV, predicted LV; ``fn`` = truth LV, predicted not LV; ``fp`` = truth not LV,
    predicted LV; ``tn`` = truth not LV, predicted not LV.
    """

    tp: int
    fn: int
    fp: int
    tn: int

    def __post_init__(self) -> None:
        for name in ("tp", "fn", "fp", "tn"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(
                    f"BinaryTable.{name} must be a non-negative integer, got {value!r}"
                )
        if self.n == 0:
            raise ValueError("BinaryTable is empty: all four counts are 0")

    @classmethod
    def from_labels(
        cls, y_true: Sequence[str], y_pred: Sequence[str], positive: str = "lv"
    ) -> BinaryTable:
        """Build the table from class labels, merging every class other than ``positive``."""
        _paired(y_true, y_pred)
        t = np.asarray([label == positive for label in y_true])
        p = np.asarray([label == positive for label in y_pred])
        return cls(
            tp=int(np.sum(t & p)),
            fn=int(np.sum(t & ~p)),
            fp=int(np.sum(~t & p)),
            tn=int(np.sum(~t & ~p)),
        )

    @property
    def n(self) -> int:
        """Number of images."""
        return self.tp + self.fn + self.fp + self.tn

    def matrix(self) -> np.ndarray:
        """``[[tp, fn], [fp, tn]]``: rows truth (LV, not LV), columns prediction (LV, not LV)."""
        return np.array([[self.tp, self.fn], [self.fp, self.tn]])

    @property
    def correct(self) -> int:
        """Images whose binary prediction is right."""
        return self.tp + self.tn

    @property
    def accuracy(self) -> float:
        """(TP + TN) / n."""
        return self.correct / self.n

    @property
    def sensitivity(self) -> float:
        """Textbook recall of LV: TP / (TP + FN) (row-wise); NaN when no image is truly LV."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        """TN / (TN + FP) (row-wise); NaN when every image is truly LV."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def ppv(self) -> float:
        """Textbook precision of LV: TP / (TP + FP) (column-wise); NaN when nothing is predicted LV."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def npv(self) -> float:
        """Negative predictive value: TN / (TN + FN) (column-wise); NaN with no not-LV prediction."""
        return self.tn / (self.tn + self.fn) if self.tn + self.fn else float("nan")

    @property
    def paper_recall(self) -> float:
        """What the study's Table 4 calls "recall": the PPV of LV, TP / (TP + FP).

        From Table 3: 167 / (167 + 18) = 0.90 and 202 / (202 + 6) = 0.97, as printed; the
        textbook recall 167 / (167 + 75) = 0.69 is not.
        """
        return self.ppv

    @property
    def paper_precision(self) -> float:
        """What the study's Table 4 calls "precision": the NPV of LV, TN / (TN + FN).

        From Table 3: 73 / (73 + 75) = 0.49 and 85 / (85 + 40) = 0.68, as printed; this is the
        precision of the 'not in the LV' class.
        """
        return self.npv
