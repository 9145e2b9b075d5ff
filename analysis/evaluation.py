"""Every number of the report, computed from the truth and the predictions (pure, no I/O).

:func:`evaluate` returns a JSON-ready dict; :mod:`analysis.report` renders it. The layout
follows the study (Zaman et al. 2023): Table 2 (per-class and overall accuracy, ROC AUC, F1),
Table 3 (LV vs not-LV confusion matrices), Table 4 (the study's recall and precision,
accuracy, McNemar's P against the reference model) and Table 5 (class counts and Cohen's κ).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from analysis.agreement import Kappa, cohen_kappa
from analysis.intervals import (
    delong_interval,
    delong_test,
    percentile_interval,
    proportion_interval,
    resample_counts,
    resampled_auc,
)
from analysis.mcnemar import McNemar, mcnemar_from_correct
from analysis.metrics import (
    BinaryTable,
    class_indices,
    confusion_matrix,
    f1_scores,
    macro_f1,
    one_vs_rest_accuracy,
    precision_recall,
    weighted_f1,
)
from analysis.predictions import Predictions, check_same_images
from slicerank_base import CLASSES

__all__ = ["TRUTH_NAME", "evaluate", "json_safe", "summarise_curves"]

#: How the ground truth is named in agreement tables.
TRUTH_NAME = "truth"


def json_safe(obj: Any) -> Any:
    """Replace NaN and infinities (undefined statistics) by ``None`` so the dict is strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _ci(value: float, low: float, high: float, **extra: Any) -> dict[str, Any]:
    return {"value": float(value), "low": float(low), "high": float(high), **extra}


def _prop(k: int, n: int, method: str, confidence: float) -> dict[str, Any] | None:
    if n == 0:
        return None
    low, high = proportion_interval(k, n, method=method, confidence=confidence)
    return _ci(k / n, low, high, k=int(k), n=int(n))


#: Resamples are drawn in chunks of about this many (resample, image) cells, so memory stays
#: near 100 MB whatever the cohort size (the whole study's 3,323 images included).
BOOT_CHUNK_CELLS = 2_000_000


def _boot_model(
    t: np.ndarray, p: np.ndarray, scores: np.ndarray | None, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-resample statistics of one model from image multiplicities ``counts`` (n_boot, n).

    Returns per-class F1 (NaN where a class is absent from both truth and prediction), per-class
    true counts, and per-class one-vs-rest AUC (NaN where undefined; ``None`` without scores),
    each ``(n_boot, k)``.
    """
    k = len(CLASSES)
    # Each resample's confusion matrix is its multiplicities summed per (truth, prediction) cell.
    cells = np.zeros((t.size, k * k))
    cells[np.arange(t.size), t * k + p] = 1.0
    cm = (counts @ cells).reshape(-1, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    denom = cm.sum(axis=1) + support
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    auc = None
    if scores is not None:
        auc = np.column_stack([resampled_auc(t == c, scores[:, c], counts) for c in range(k)])
    return f1, support, auc


def _bootstrap(
    t: np.ndarray,
    models: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Bootstrap every model on the same resampled images, chunk by chunk."""
    n = t.size
    chunk = max(1, min(n_boot, BOOT_CHUNK_CELLS // n))
    parts: dict[str, list] = {name: [] for name in models}
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        counts = resample_counts(rng.integers(0, n, size=(size, n)), n).astype(float)
        for name, (p, scores) in models.items():
            parts[name].append(_boot_model(t, p, scores, counts))
        done += size
    out = {}
    for name, chunks in parts.items():
        f1 = np.concatenate([c[0] for c in chunks])
        support = np.concatenate([c[1] for c in chunks])
        auc = None if chunks[0][2] is None else np.concatenate([c[2] for c in chunks])
        out[name] = (f1, support, auc)
    return out


def _kappa_dict(kappa: Kappa) -> dict[str, Any]:
    return _ci(kappa.kappa, kappa.low, kappa.high, se=kappa.se, n=kappa.n)


def _mcnemar_dict(result: McNemar) -> dict[str, Any]:
    return {
        "b": result.b,
        "c": result.c,
        "statistic": result.statistic,
        "pvalue": result.pvalue,
        "method": result.method,
    }


def _evaluate_model(
    y_true: list[str],
    ids: list[str],
    pred: Predictions,
    boot: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    method: str,
    confidence: float,
) -> dict[str, Any]:
    y_pred = pred.labels_for(ids)
    t = class_indices(y_true)
    cm = confusion_matrix(y_true, y_pred)
    support = cm.sum(axis=1)
    f1 = f1_scores(cm)
    precision, recall = precision_recall(cm)
    boot_f1, boot_support, boot_auc = boot
    n_images = len(ids)
    # Absent classes count as F1 = 0, as in the point estimate (metrics.f1_scores).
    macro_boot = np.nan_to_num(boot_f1, nan=0.0).mean(axis=1)
    weighted_boot = (np.nan_to_num(boot_f1, nan=0.0) * boot_support).sum(axis=1) / n_images

    scores = pred.probability_matrix(ids) if pred.has_probabilities else None

    per_class: dict[str, Any] = {}
    aucs: list[float] = []
    for c, name in enumerate(CLASSES):
        k, n = one_vs_rest_accuracy(cm, c)
        auc = None
        if scores is not None and 0 < support[c] < len(ids):
            value, low, high = delong_interval(t == c, scores[:, c], confidence)
            auc = _ci(value, low, high, method="DeLong")
            aucs.append(value)
        f1_low, f1_high = percentile_interval(boot_f1[:, c], confidence)
        per_class[name] = {
            "support": int(support[c]),
            "predicted": int(cm[:, c].sum()),
            "accuracy": _prop(k, n, method, confidence),
            "f1": _ci(f1[c], f1_low, f1_high),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "auc": auc,
        }

    overall: dict[str, Any] = {
        "accuracy": _prop(int(np.trace(cm)), int(cm.sum()), method, confidence),
        "macro_f1": _ci(macro_f1(cm), *percentile_interval(macro_boot, confidence)),
        "weighted_f1": _ci(weighted_f1(cm), *percentile_interval(weighted_boot, confidence)),
        "macro_auc": None,
        "weighted_auc": None,
    }
    if boot_auc is not None and len(aucs) == len(CLASSES):
        weights = support / support.sum()
        macro_b = boot_auc.mean(axis=1)  # NaN if a class vanished from that resample
        weighted_b = (boot_auc * (boot_support / n_images)).sum(axis=1)
        overall["macro_auc"] = _ci(float(np.mean(aucs)), *percentile_interval(macro_b, confidence))
        overall["weighted_auc"] = _ci(
            float(np.dot(weights, aucs)), *percentile_interval(weighted_b, confidence)
        )

    table = BinaryTable.from_labels(y_true, y_pred, positive="lv")
    binary = {
        "tp": table.tp,
        "fn": table.fn,
        "fp": table.fp,
        "tn": table.tn,
        "paper_recall": _prop(table.tp, table.tp + table.fp, method, confidence),
        "paper_precision": _prop(table.tn, table.tn + table.fn, method, confidence),
        "accuracy": _prop(table.correct, table.n, method, confidence),
        "sensitivity": _prop(table.tp, table.tp + table.fn, method, confidence),
        "specificity": _prop(table.tn, table.tn + table.fp, method, confidence),
    }
    return {
        "source": pred.source,
        "has_probabilities": pred.has_probabilities,
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
        "overall": overall,
        "binary": binary,
    }


def evaluate(
    truth: Mapping[str, str],
    predictions: Mapping[str, Predictions],
    *,
    seed: int = 0,
    n_boot: int = 2000,
    confidence: float = 0.95,
    proportion_method: str = "clopper-pearson",
    reference: str | None = None,
    clusters: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Compute every table of the report; returns a JSON-ready dict.

    ``clusters`` (image id → scan id), when given, adds ``clustered``: each model's accuracy
    and each comparison's paired accuracy difference with a bootstrap that resamples scans
    (:func:`~analysis.intervals.cluster_bootstrap`), the intervals to quote when test slices
    cluster in scans.

    ``truth`` maps image id → class; every entry of ``predictions`` (name → :class:`Predictions`)
    must cover exactly those ids, or ``ValueError`` names the model and the mismatch.
    McNemar's and DeLong's tests compare each model with ``reference`` (default: the first
    model, as the study compares against 'one-image-at-a-time'). Bootstrap intervals draw
    ``n_boot`` resamples from ``numpy.random.default_rng(seed)``; the same resampled images
    serve every model, so their intervals are paired.
    """
    if not truth:
        raise ValueError("truth is empty")
    if not predictions:
        raise ValueError("no predictions to evaluate")
    bad = sorted({label for label in truth.values() if label not in CLASSES})
    if bad:
        raise ValueError(f"truth has unknown class(es) {bad}; expected {list(CLASSES)}")
    if TRUTH_NAME in predictions:
        raise ValueError(
            f"a prediction set may not be called {TRUTH_NAME!r}: that name is the ground truth"
        )
    for name, pred in predictions.items():
        check_same_images(set(truth), set(pred.labels), f"{name} ({pred.source})")
    reference = reference if reference is not None else next(iter(predictions))
    if reference not in predictions:
        raise ValueError(f"reference model {reference!r} is not among {list(predictions)}")

    ids = sorted(truth)
    y_true = [truth[i] for i in ids]
    rng = np.random.default_rng(seed)
    t = class_indices(y_true)
    encoded = {
        name: (
            class_indices(pred.labels_for(ids)),
            pred.probability_matrix(ids) if pred.has_probabilities else None,
        )
        for name, pred in predictions.items()
    }
    boot = _bootstrap(t, encoded, n_boot, rng)

    models = {
        name: _evaluate_model(y_true, ids, pred, boot[name], proportion_method, confidence)
        for name, pred in predictions.items()
    }

    notes: list[str] = []
    for name, pred in predictions.items():
        if not pred.has_probabilities:
            notes.append(
                f"{name}: label-only predictions (no class probabilities), so ROC curves and "
                "ROC AUC are omitted rather than computed from hard labels."
            )
    for cls in CLASSES:
        n_cls = sum(1 for y in y_true if y == cls)
        if n_cls in (0, len(y_true)):
            notes.append(
                f"class {cls}: {n_cls} of {len(y_true)} true images, so its ROC AUC is undefined."
            )

    y_true_lv = np.asarray([y == "lv" for y in y_true])
    ref_pred = predictions[reference]
    comparisons = []
    for name, pred in predictions.items():
        if name == reference:
            continue
        ref_labels = ref_pred.labels_for(ids)
        labels = pred.labels_for(ids)
        ref_bin = (np.asarray(ref_labels) == "lv") == y_true_lv
        bin_ = (np.asarray(labels) == "lv") == y_true_lv
        entry: dict[str, Any] = {
            "model": name,
            "reference": reference,
            "mcnemar_binary": _mcnemar_dict(mcnemar_from_correct(ref_bin, bin_)),
            "mcnemar_3class": _mcnemar_dict(
                mcnemar_from_correct(
                    np.asarray(ref_labels) == np.asarray(y_true),
                    np.asarray(labels) == np.asarray(y_true),
                )
            ),
            "delong": None,
        }
        if pred.has_probabilities and ref_pred.has_probabilities:
            ref_scores = ref_pred.probability_matrix(ids)
            scores = pred.probability_matrix(ids)
            delong = {}
            for c, cls in enumerate(CLASSES):
                positives = np.asarray(y_true) == cls
                if 0 < positives.sum() < len(ids):
                    test = delong_test(positives, ref_scores[:, c], scores[:, c])
                    delong[cls] = {
                        "auc_reference": test.auc_a,
                        "auc": test.auc_b,
                        "z": test.z,
                        "pvalue": test.pvalue,
                    }
            entry["delong"] = delong
        comparisons.append(entry)

    clustered = (
        _clustered(ids, y_true, predictions, reference, clusters, seed, n_boot, confidence)
        if clusters is not None
        else None
    )
    label_sets = {TRUTH_NAME: y_true} | {
        name: pred.labels_for(ids) for name, pred in predictions.items()
    }
    agreement = [
        {
            "a": a,
            "b": b,
            "kappa": _kappa_dict(cohen_kappa(label_sets[a], label_sets[b], confidence=confidence)),
        }
        for a, b in combinations(label_sets, 2)
    ]
    counts = {
        name: {cls: sum(1 for y in labels if y == cls) for cls in CLASSES}
        for name, labels in label_sets.items()
    }
    return json_safe(
        {
            "n_images": len(ids),
            "classes": list(CLASSES),
            "reference": reference,
            "settings": {
                "confidence": confidence,
                "proportion_interval": proportion_method,
                "auc_interval": "DeLong (per class); percentile bootstrap (macro and weighted averages)",
                "f1_interval": "percentile bootstrap",
                "kappa_interval": "Fleiss-Cohen-Everitt large-sample SE, normal",
                "n_boot": n_boot,
                "seed": seed,
            },
            "class_counts": counts,
            "models": models,
            "comparisons": comparisons,
            "agreement": agreement,
            "clustered": clustered,
            "notes": notes,
        }
    )


#: How the report names the scan-clustered bootstrap.
CLUSTERED_METHOD = "percentile bootstrap resampling scans (clusters), ratio estimator"


def _clustered(ids, y_true, predictions, reference, clusters, seed, n_boot, confidence):
    """Accuracy per model and paired differences against ``reference``, resampling scans."""
    from analysis.intervals import cluster_bootstrap

    missing = [i for i in ids if i not in clusters]
    if missing:
        raise ValueError(f"clusters: no scan id for {len(missing)} image(s), e.g. {missing[:3]}")
    groups = [str(clusters[i]) for i in ids]
    truth = np.asarray(y_true)
    correct = {
        name: (np.asarray(pred.labels_for(ids)) == truth).astype(float)
        for name, pred in predictions.items()
    }

    def boot(values) -> dict[str, Any]:
        # The same seed for every statistic: the same scans are drawn for every model.
        b = cluster_bootstrap(
            values, groups, rng=np.random.default_rng([seed, 31]), n_boot=n_boot,
            confidence=confidence,
        )  # fmt: skip
        return {"value": b.value, "low": b.low, "high": b.high, "pvalue": b.pvalue}

    models = {}
    for name, c in correct.items():
        acc = boot(c)
        del acc["pvalue"]  # "accuracy is 0" is no question worth a P value
        models[name] = {"accuracy": acc}
    comparisons = [
        {"model": name, "reference": reference,
         "accuracy_difference": boot(correct[name] - correct[reference])}
        for name in predictions if name != reference
    ]  # fmt: skip
    return {
        "method": CLUSTERED_METHOD,
        "n_clusters": len(set(groups)),
        "models": models,
        "comparisons": comparisons,
    }


def summarise_curves(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per strategy: seeds, and the final accuracy and hours across seeds (mean, min, max)."""
    by_strategy: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_strategy.setdefault(str(run["strategy"]), []).append(run)
    summary: dict[str, Any] = {}
    for strategy, group in by_strategy.items():
        finals = [run.get("final") or run["curve"][-1] for run in group]
        acc = np.asarray(
            [
                f.get("accuracy", run["curve"][-1]["accuracy"])
                for f, run in zip(finals, group, strict=True)
            ],
            dtype=float,
        )
        hours = np.asarray(
            [
                f.get("hours", run["curve"][-1]["hours"])
                for f, run in zip(finals, group, strict=True)
            ],
            dtype=float,
        )
        summary[strategy] = {
            "runs": len(group),
            "seeds": sorted({run.get("seed") for run in group}, key=str),
            "final_accuracy": {
                "mean": float(acc.mean()),
                "min": float(acc.min()),
                "max": float(acc.max()),
            },
            "final_hours": {
                "mean": float(hours.mean()),
                "min": float(hours.min()),
                "max": float(hours.max()),
            },
        }
    return summary
