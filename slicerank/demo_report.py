"""Demo stage: the held-out predictions, the analysis reports and the headline table."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def predict_testset(
    testset: Path, model_dir: Path, versions: dict[str, str], device: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """Ground truth and each model's class probabilities on the held-out cohort."""
    import numpy as np

    from analysis.predictions import Predictions
    from cmr_ingest.manifest import read_manifest
    from ml_backend.predictor import Predictor
    from ml_backend.registry import ModelRegistry
    from ml_backend.transforms import load_grayscale
    from slicerank_base import CLASSES

    rows = read_manifest(testset / "manifest.csv")
    truth = {str(r["image_id"]): str(r["true_class"]) for r in rows}
    images = [load_grayscale(testset / r["path"]) for r in rows]
    registry = ModelRegistry(model_dir)
    predictions = {}
    for name, version in versions.items():
        predictor = Predictor.from_version(registry.get(version), device=device)
        out = _predict_images(predictor, images)
        probs = {}
        labels = {}
        for row, pred in zip(rows, out, strict=True):
            p = np.asarray([pred["probabilities"][c] for c in CLASSES], dtype=float)
            p = p / p.sum()  # float32 softmax can miss 1 by a few ulps
            probs[str(row["image_id"])] = tuple(float(x) for x in p)
            labels[str(row["image_id"])] = CLASSES[int(p.argmax())]
        predictions[name] = Predictions(labels, probs, source=f"model {version}")
    from analysis.report import STACK_SUFFIX

    # Beside each model, its predictions decoded per scan into monotone stacks (base → apex).
    stacks = {str(r["image_id"]): (str(r["scan_id"]), int(r["slice_index"])) for r in rows}
    for name in list(predictions):
        predictions[name + STACK_SUFFIX] = stack_decoded(predictions[name], stacks)
    return truth, predictions


def _predict_images(predictor, images: list) -> list[dict[str, Any]]:
    """``predictor.predict_images`` with the CPU thread count its recipe asks for (a busy
    2-core machine runs the small model far faster on one thread), restored afterwards."""
    import torch

    threads = predictor.config.cpu_threads if predictor.device.type == "cpu" else 0
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return predictor.predict_images(images)
    finally:
        torch.set_num_threads(previous)


def stack_decoded(pred, stacks: dict[str, tuple[str, int]]):
    """``pred`` decoded scan by scan (:func:`ml_backend.stack.decode_scans`): labels of the
    most probable monotone sequence, probabilities the constrained marginals."""
    from analysis.predictions import Predictions
    from ml_backend.stack import decode_scans
    from slicerank_base import CLASSES

    labels, marginals = decode_scans(pred.probabilities, stacks)
    return Predictions(
        {i: CLASSES[k] for i, k in labels.items()},
        {i: tuple(float(x) for x in m / m.sum()) for i, m in marginals.items()},
        source=f"{pred.source}, stack-decoded",
    )


def write_prediction_csvs(folder: Path, truth: dict[str, str], predictions: dict) -> dict[str, str]:
    """``truth.csv`` and one ``<name>.csv`` per model, in ``slicerank analyze``'s format."""
    import csv

    from slicerank_base import CLASSES

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    with open(folder / "truth.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "label"])
        writer.writerows(sorted(truth.items()))
    paths["truth"] = str(folder / "truth.csv")
    for name, pred in predictions.items():
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image_id", "label", *(f"p_{c}" for c in CLASSES)])
            for image_id in sorted(truth):
                writer.writerow([image_id, pred.labels[image_id], *pred.probabilities[image_id]])
        paths[name] = str(path)
    return paths


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The report's headline numbers: accuracy and LV recall per model, McNemar's P."""
    models = {}
    for name, model in summary["models"].items():
        overall = model["overall"]
        models[name] = {
            "accuracy": overall["accuracy"],
            "macro_f1": overall.get("macro_f1"),
            "f1_per_class": {c: v["f1"]["value"] for c, v in model["per_class"].items()},
            "binary": {
                k: model["binary"].get(k)
                for k in (
                    "accuracy",
                    "sensitivity",
                    "specificity",
                    "paper_recall",
                    "paper_precision",
                )
            },
        }
    comparisons = [
        {
            "model": c["model"],
            "reference": c["reference"],
            "mcnemar_binary_p": c["mcnemar_binary"]["pvalue"],
            "mcnemar_3class_p": c["mcnemar_3class"]["pvalue"],
        }
        for c in summary["comparisons"]
    ]
    return {"n_images": summary["n_images"], "models": models, "comparisons": comparisons}


def test_scans(testset: Path) -> dict[str, str]:
    """``image_id → scan_id`` of the held-out cohort (the clusters of its bootstrap)."""
    from cmr_ingest.manifest import read_manifest

    return {str(r["image_id"]): str(r["scan_id"]) for r in read_manifest(testset / "manifest.csv")}


def lead_lines(
    summary: dict[str, Any], premise: float, label_headline: dict[str, Any] | None = None
) -> list[str]:
    """The few plain lines that open the demo's report, for a project lead: under which
    premise, which labels and which model came out ahead and by how much (CI, P), and what
    one run cannot show."""
    from ranking_scheduler.simulator.raters import premise_name

    lines = [
        f"Premise: {premise_name(premise)}. Both arms had the same cohort, the same simulated "
        "raters, the same labelling time, each scan's geometry and an active chooser (ranking: "
        "the scheduler; one at a time: the stack-aware labeller), and trained on the same scans "
        "with the same recipe."
    ]
    models = ((label_headline or {}).get("headline") or {}).get("models") or {}
    single, ranking = models.get("one-at-a-time labels"), models.get("ranking consensus")
    if single and ranking:
        a, b = ranking["accuracy"]["value"], single["accuracy"]["value"]
        ahead = "ranking consensus" if a > b else "one-at-a-time" if b > a else "neither"
        lines.append(
            f"Labels (against the truth on the {label_headline['images_compared']} labelled "
            f"slices): ranking consensus {a:.3f}, one-at-a-time {b:.3f}; {ahead} ahead"
            + (f" by {abs(a - b):.3f}." if a != b else ".")
        )
    clustered = summary.get("clustered") or {}
    diff = next((c for c in clustered.get("comparisons", []) if c["model"] == "ranking"), None)
    if diff:
        acc = clustered["models"]
        d = diff["accuracy_difference"]
        ahead = "the ranking-trained model" if d["value"] > 0 else (
            "the one-at-a-time-trained model" if d["value"] < 0 else "neither model"
        )  # fmt: skip
        lines.append(
            f"Models (held-out: {clustered['n_clusters']} scans, {summary['n_images']} slices): "
            f"ranking-trained {acc['ranking']['accuracy']['value']:.3f}, one-at-a-time-trained "
            f"{acc[diff['reference']]['accuracy']['value']:.3f}; {ahead} ahead by "
            f"{abs(d['value']):.3f} (ranking minus one-at-a-time {d['value']:+.3f}, 95% CI "
            f"{d['low']:+.3f} to {d['high']:+.3f}, bootstrap P = {d['pvalue']:.2g}; bootstrap "
            "over scans)."
        )
        half = (d["high"] - d["low"]) / 2
        lines.append(
            f"What this run cannot show: a difference smaller than about {half:.3f} is within "
            "this run's noise (one cohort, one panel, one training); the spread across runs "
            "needs `slicerank bench demo --runs N`; the phantom and the simulated raters stand "
            "in for real scans and clinicians, so nothing here measures either."
        )
    return lines


def stage_analysis(
    truth,
    predictions,
    report_dir: Path,
    seed: int,
    *,
    premise: float = 1.0,
    clusters: dict[str, str] | None = None,
    label_headline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the held-out report (Markdown + HTML + plots) and return its headline numbers.

    ``clusters`` (image → scan) adds the scan-clustered bootstrap; the report opens with
    :func:`lead_lines` under ``premise``.
    """  # fmt: skip
    from analysis.report import build_report
    from ranking_scheduler.simulator.raters import premise_name

    result = build_report(
        truth,
        predictions,
        report_dir,
        seed=seed,
        title="slicerank demo: ranking-trained vs one-at-a-time-trained model (held-out set, "
        f"{premise_name(premise)})",
        clusters=clusters,
        lead=lambda summary: lead_lines(summary, premise, label_headline),
    )
    head = headline(result.summary)
    head["premise"] = premise
    head["clustered"] = result.summary.get("clustered")
    head["lead"] = result.summary.get("lead")
    return {
        "markdown": str(result.markdown),
        "html": str(result.html),
        "figures": [str(f) for f in result.figures],
        "headline": head,
    }


def stage_label_report(
    single: Path, consensus: Path, manifest: Path, report_dir: Path, seed: int
) -> dict[str, Any]:
    """Both strategies' labels on the labelled cohort against its ground truth: the classes
    each arm's chooser decoded for every slice (what each model trains on)."""
    from analysis.predictions import Predictions
    from analysis.report import build_report
    from cmr_ingest.manifest import read_manifest
    from ml_backend.labels import read_consensus

    truth_all = {str(r["image_id"]): str(r["true_class"]) for r in read_manifest(manifest)}
    sets = {
        "one-at-a-time labels": {x.image_id: x.label for x in read_consensus(single)},
        "ranking consensus": {x.image_id: x.label for x in read_consensus(consensus)},
    }
    # Both strategies are compared on the images both labelled.
    common = set(truth_all).intersection(*sets.values())
    if not common:
        return {"skipped": "no image carries labels from both strategies"}
    truth = {i: truth_all[i] for i in common}
    preds = {
        name: Predictions.from_labels({i: labels[i] for i in common}, source=name)
        for name, labels in sets.items()
    }
    result = build_report(
        truth, preds, report_dir, seed=seed,
        title="slicerank demo: the two labelling strategies against the ground truth",
    )  # fmt: skip
    return {
        "markdown": str(result.markdown),
        "html": str(result.html),
        "images_compared": len(common),
        "labelled": {name: len(labels) for name, labels in sets.items()},
        "headline": headline(result.summary),
    }


def print_headline(out, head: dict[str, Any], *, premise: float = 1.0) -> None:
    """The lead's lines, then the held-out table: accuracy per model and McNemar's P."""
    from ranking_scheduler.simulator.raters import premise_name

    out("")
    for line in head.get("lead") or []:
        out(f"* {line}")
    out("")
    out(f"held-out synthetic test set: {head['n_images']} images; {premise_name(premise)}")
    out(f"{'model trained on':<30} {'accuracy (95% CI)':<24} {'LV-vs-not accuracy':<20}")
    for name, m in head["models"].items():
        acc = m["accuracy"]
        b = m["binary"]["accuracy"]
        out(
            f"{name:<30} {acc['value']:.3f} ({acc['low']:.3f}-{acc['high']:.3f})     "
            f"{b['value']:.3f}"
        )
    for c in head["comparisons"]:
        out(
            f"McNemar {c['model']} vs {c['reference']}: P = {c['mcnemar_binary_p']:.3g} "
            f"(LV vs not), {c['mcnemar_3class_p']:.3g} (3 classes)"
        )
