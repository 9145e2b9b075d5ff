"""Figures of the report, drawn with matplotlib's Agg backend (no display needed).

Each function takes plain data, writes one PNG and returns its path; the ``Figure`` object is
created without pyplot so nothing global is touched and nothing leaks between calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.metrics import roc_curve
from slicerank_base import CLASSES

__all__ = ["plot_confusion", "plot_label_efficiency", "plot_roc"]

#: Dots per inch of every PNG.
DPI = 110


def _figure(width: float, height: float):
    # Import here: matplotlib is only needed when a report is drawn.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=DPI, format="png")
    return target


def plot_roc(
    y_true: Sequence[str],
    scores: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    aucs: Mapping[str, Mapping[str, float | None]] | None = None,
) -> Path:
    """One-vs-rest ROC curves, one panel per class and one line per model (the study's Figure 5).

    ``scores`` maps model name → ``(n, 3)`` class probabilities aligned with ``y_true``;
    ``aucs`` (model → class → AUC) labels the legend when given.
    """
    if not scores:
        raise ValueError("plot_roc needs at least one model with probabilities")
    y = np.asarray(y_true)
    fig = _figure(4.2 * len(CLASSES), 4.2)
    axes = fig.subplots(1, len(CLASSES))
    for c, (ax, cls) in enumerate(zip(axes, CLASSES, strict=True)):
        positives = y == cls
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        if positives.all() or not positives.any():
            ax.text(0.5, 0.5, "undefined:\none class only", ha="center", va="center")
        else:
            for name, s in scores.items():
                fpr, tpr, _ = roc_curve(positives, np.asarray(s)[:, c])
                auc = (aucs or {}).get(name, {}).get(cls)
                label = f"{name} (AUC {auc:.2f})" if auc is not None else name
                ax.plot(fpr, tpr, linewidth=1.6, label=label)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{cls} vs rest")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
    return _save(fig, path)


def _matrix_panel(ax, matrix: np.ndarray, labels: Sequence[str], title: str) -> None:
    matrix = np.asarray(matrix)
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, int(matrix.max())))
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(int(value)),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
        )
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(title)


def plot_confusion(
    name: str,
    matrix: np.ndarray | Sequence[Sequence[int]],
    binary: np.ndarray | Sequence[Sequence[int]],
    path: str | os.PathLike[str],
) -> Path:
    """A model's three-class confusion matrix beside its LV vs not-LV table (truth in rows)."""
    fig = _figure(8.6, 4.0)
    ax3, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    _matrix_panel(ax3, np.asarray(matrix), list(CLASSES), f"{name}: three classes")
    _matrix_panel(ax2, np.asarray(binary), ["lv", "not lv"], f"{name}: LV vs not LV")
    return _save(fig, path)


def plot_label_efficiency(
    runs: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    metric: str = "accuracy",
    grid_points: int = 60,
) -> Path:
    """Accuracy (or another curve ``metric``) against labelling hours, one colour per strategy.

    Thin lines are the individual seeds; the thick line is their mean and the band their
    minimum–maximum, both over the hours every seed of that strategy reached (a run that met
    its stopping rule early is not extended, which would pretend labels were bought).
    """
    if not runs:
        raise ValueError("plot_label_efficiency needs at least one run")
    fig = _figure(7.0, 4.4)
    ax = fig.subplots()
    by_strategy: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_strategy.setdefault(str(run["strategy"]), []).append(run)
    colours = [f"C{i}" for i in range(10)]
    for i, (strategy, group) in enumerate(sorted(by_strategy.items())):
        colour = colours[i % len(colours)]
        curves = []
        for run in group:
            points = sorted(
                (p for p in run["curve"] if p.get(metric) is not None),
                key=lambda p: float(p["hours"]),
            )
            hours = np.asarray([float(p["hours"]) for p in points])
            values = np.asarray([float(p[metric]) for p in points])
            if hours.size:
                curves.append((hours, values))
                ax.plot(hours, values, color=colour, alpha=0.25, linewidth=0.8)
        if not curves:
            continue
        start = max(h[0] for h, _ in curves)
        end = min(h[-1] for h, _ in curves)
        label = f"{strategy} ({len(curves)} seed{'s' if len(curves) != 1 else ''})"
        if len(curves) > 1 and end > start:
            grid = np.linspace(start, end, grid_points)
            stacked = np.vstack([np.interp(grid, h, v) for h, v in curves])
            ax.fill_between(grid, stacked.min(axis=0), stacked.max(axis=0), color=colour, alpha=0.2)
            ax.plot(grid, stacked.mean(axis=0), color=colour, linewidth=2.2, label=label)
        else:
            hours, values = curves[0]
            ax.plot(
                hours,
                values,
                color=colour,
                linewidth=2.2,
                label=label,
                marker="." if hours.size < 3 else None,
            )
    ax.set_xlabel("labelling hours")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"Label efficiency: {metric.replace('_', ' ')} vs labelling time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
