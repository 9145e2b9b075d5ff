"""``slicerank bench analysis``: how long the statistics and the report take on synthetic data."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from analysis.predictions import Predictions
from slicerank_base import CLASSES

__all__ = ["run_bench", "synthetic_cohort"]

#: Class shares of the study's dataset (665 / 2,413 / 245 of 3,323 images).
STUDY_CLASS_SHARES = (0.200, 0.726, 0.074)


def synthetic_cohort(
    n_images: int, *, rng: np.random.Generator
) -> tuple[dict[str, str], dict[str, Predictions]]:
    """Truth plus two probabilistic models (weak, strong) and a label-only rater, for timing."""
    ids = [f"img{i:06d}" for i in range(n_images)]
    t = rng.choice(len(CLASSES), size=n_images, p=STUDY_CLASS_SHARES)
    truth = {i: CLASSES[k] for i, k in zip(ids, t, strict=True)}

    def model(noise: float) -> Predictions:
        logits = rng.normal(size=(n_images, len(CLASSES))) * noise
        logits[np.arange(n_images), t] += 1.5
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return Predictions.from_probabilities(
            dict(zip(ids, p.tolist(), strict=True)), source="synthetic"
        )

    flip = rng.random(n_images) < 0.15
    rater = {
        i: CLASSES[int(rng.integers(len(CLASSES)))] if f else truth[i]
        for i, f in zip(ids, flip, strict=True)
    }
    preds = {
        "weak": model(1.5),
        "strong": model(0.8),
        "rater": Predictions.from_labels(rater, source="synthetic"),
    }
    return truth, preds


def _time_bootstrap_auc(
    truth: dict[str, str], pred: Predictions, n_boot: int, repeats: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Median seconds of the LV bootstrap AUCs: weighted one-sort method vs ranking each resample.

    The baseline is what the package did first (``scipy.stats.rankdata`` along each resample);
    both must give the same numbers, which is checked here as well as in the tests.
    """
    from scipy.stats import rankdata

    from analysis.intervals import resample_counts, resampled_auc

    ids = sorted(truth)
    y = np.asarray([truth[i] == "lv" for i in ids])
    s = pred.probability_matrix(ids)[:, 1]
    idx = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    fast, slow = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        a = resampled_auc(y, s, resample_counts(idx, len(ids)))
        fast.append(time.perf_counter() - start)
        start = time.perf_counter()
        ranks = rankdata(s[idx], axis=1)
        pos = y[idx]
        m = pos.sum(axis=1)
        b = ((ranks * pos).sum(axis=1) - m * (m + 1) / 2) / (m * (len(ids) - m))
        slow.append(time.perf_counter() - start)
        if not np.allclose(a, b, equal_nan=True):
            raise AssertionError("bootstrap AUC methods disagree")
    return float(np.median(fast)), float(np.median(slow))


def run_bench(
    sizes: list[int], *, n_boot: int = 2000, repeats: int = 3, seed: int = 0
) -> list[dict[str, Any]]:
    """Median seconds for :func:`evaluate` and for :func:`build_report` at each cohort size."""
    from analysis.evaluation import evaluate
    from analysis.report import build_report

    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        truth, preds = synthetic_cohort(n, rng=rng)
        evaluate_s, report_s = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            evaluate(truth, preds, n_boot=n_boot, seed=seed)
            evaluate_s.append(time.perf_counter() - start)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                build_report(truth, preds, Path(tmp), n_boot=n_boot, seed=seed)
                report_s.append(time.perf_counter() - start)
        auc_fast, auc_rank = _time_bootstrap_auc(truth, preds["strong"], n_boot, repeats, rng)
        rows.append(
            {
                "n_images": n,
                "bootstrap_auc_weighted_s_median": auc_fast,
                "bootstrap_auc_rankdata_s_median": auc_rank,
                "models": len(preds),
                "n_boot": n_boot,
                "repeats": repeats,
                "evaluate_s_median": float(np.median(evaluate_s)),
                "build_report_s_median": float(np.median(report_s)),
            }
        )
    return rows


def main(args) -> int:
    """Handler of ``slicerank bench analysis``."""
    from slicerank_base.jsonout import write_json

    rows = run_bench(args.sizes, n_boot=args.n_boot, repeats=args.repeats, seed=args.seed)
    for row in rows:
        print(
            f"{row['n_images']:>7} images x {row['models']} label sets, {row['n_boot']} resamples: "
            f"evaluate {row['evaluate_s_median']:.2f} s, full report {row['build_report_s_median']:.2f} s; "
            f"bootstrap LV AUC {row['bootstrap_auc_weighted_s_median']:.3f} s "
            f"(per-resample ranking: {row['bootstrap_auc_rankdata_s_median']:.3f} s)"
        )
    if args.json:
        write_json(args.json, {"benchmark": "analysis", "results": rows})
    return 0
