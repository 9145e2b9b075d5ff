"""``slicerank bench model``: which training recipe turns each strategy's labels into the
better CNN (issue 11), measured on held-out phantom scans across cohorts and seeds.

For each cohort seed it draws the demo's data offline — a 40-scan labelled cohort and a
20-scan held-out one — and the demo's labels at the demo's equal-time budget: one single
label per image from three simulated raters (one-at-a-time), and the ``bayes`` engine's
ranked batches plus boundary questions from the same raters (ranking consensus, exported
like ``consensus.json``). Then it trains every recipe variant (``cpu-small`` with some fields
changed) on a scan-grouped 90:10 split and scores the ensemble per slice and stack-decoded.
No Label Studio: the labels are what the demo's services would produce, minus timing noise.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

#: The variants compared by default: source[:field=value...] over the cpu-small preset.
DEFAULT_VARIANTS = (
    "classify:head=softmax:decision=argmax",
    "ranking:head=softmax:decision=argmax",
    "classify",
    "ranking",
    "ranking:position_weight=0.3",
    "ranking:position_weight=1",
    "ranking:soft_targets=1",
)


def simulate_labels(media: Path, seed: int) -> tuple[dict[str, str], dict[str, Any]]:
    """The demo's two label sets for the cohort at ``media``: one-at-a-time labels and the
    ranking consensus document, at equal labelling time."""
    from ranking_scheduler import RankingEngine
    from ranking_scheduler.simulator.raters import (
        SECONDS_PER_BATCH,
        SECONDS_PER_LABEL,
        RaterPanel,
        RaterParams,
    )
    from ranking_scheduler.simulator.simulate import read_cohort
    from slicerank_base import CLASSES

    cohort = read_cohort(media / "manifest.csv")
    panel = RaterPanel.from_positions(cohort.positions, 3, seed, RaterParams(cuts=cohort.cuts))
    raters = panel.raters
    budget_s = len(cohort.ids) * SECONDS_PER_LABEL
    single = {i: raters[j % 3].classify(i) for j, i in enumerate(cohort.ids)}
    engine = RankingEngine(cohort.ids, strategy="bayes", seed=seed)
    batches = answers = 0

    def spent(extra_batches: int = 0, extra_labels: int = 0) -> float:
        return (batches + extra_batches) * SECONDS_PER_BATCH + (
            answers + extra_labels
        ) * SECONDS_PER_LABEL

    def ask(final: bool = False) -> bool:
        nonlocal answers
        q = engine.next_boundary_query(final=final)
        if q is None:
            return False
        engine.submit_boundary(q, raters[answers % 3].classify(q))
        answers += 1
        return True

    while spent(extra_batches=1) <= budget_s:
        rater = raters[batches % 3]
        batch = engine.next_batch(rater.name)
        if not batch:
            break
        engine.submit(rater.name, rater.rank(batch))
        batches += 1
        if batches % 8 == 0:  # boundary questions paced while ranking goes on
            ask()
    while spent(extra_labels=1) <= budget_s and ask(final=True):
        pass
    scores, classes, probs = engine.scores(), engine.classes(), engine.class_probabilities()
    document = {
        "model_version": "ranking-consensus",
        "thresholds": engine.thresholds(),
        "images": [
            {
                "image_id": i,
                "score_mean": scores[i][0],
                "score_sd": scores[i][1],
                "class": classes[i],
                **{f"p_{c}": probs[i][k] for k, c in enumerate(CLASSES)},
            }
            for i in engine.ranking()
        ],  # fmt: skip
        "batches": batches,
        "boundary_labels": answers,
    }
    return single, document


def parse_variant(text: str):
    """``source[:field=value...]`` → (label source, cpu-small config with those fields)."""
    from ml_backend.config import CPU_SMALL

    source, *options = text.split(":")
    if source not in ("classify", "ranking"):
        raise ValueError(f"variant {text!r}: the source must be 'classify' or 'ranking'")
    changes: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        if not hasattr(CPU_SMALL, key) or not value:
            raise ValueError(f"variant {text!r}: {option!r} is not FIELD=VALUE of TrainConfig")
        kind = type(getattr(CPU_SMALL, key))
        changes[key] = value in ("1", "true") if kind is bool else kind(value)
    return source, CPU_SMALL.replace(**changes)


def run_cohort(root: Path, seed: int, variants: list[str], n_seeds: int) -> list[dict[str, Any]]:
    """Every variant on cohort ``seed`` (drawn under ``root``): held-out metrics per variant."""
    import numpy as np

    from cmr_ingest.manifest import read_manifest
    from cmr_ingest.synth import generate_cohort
    from ml_backend.data import build_dataset
    from ml_backend.labels import LabelledImage, labels_from_consensus
    from ml_backend.splits import grouped_stratified_split, read_manifest_stacks
    from ml_backend.stack import decode_scans
    from ml_backend.train import classification_metrics, run_protocol

    media, held_out = root / f"cohort-{seed}", root / f"held-out-{seed}"
    if not (media / "manifest.csv").exists():
        generate_cohort(40, media, seed=seed)
        generate_cohort(20, held_out, seed=seed + 1000)
    truth = {
        str(r["image_id"]): str(r["true_class"]) for r in read_manifest(media / "manifest.csv")
    }
    single, document = simulate_labels(media, seed)
    sets = {
        "classify": [LabelledImage(i, c) for i, c in single.items()],
        "ranking": labels_from_consensus(document, soft=True),
    }
    label_acc = {
        k: float(np.mean([x.label == truth[x.image_id] for x in v])) for k, v in sets.items()
    }
    test_rows = read_manifest(held_out / "manifest.csv")
    test_labels = [LabelledImage(str(r["image_id"]), str(r["true_class"])) for r in test_rows]
    stacks, test_stacks = read_manifest_stacks(media), read_manifest_stacks(held_out)
    out = []
    for text in variants:
        source, config = parse_variant(text)
        config = config.replace(seeds=tuple(range(n_seeds)), split=(0.9, 0.1, 0.0))
        labels = sets[source]
        data = build_dataset(labels, media, config)
        tr, va, _ = grouped_stratified_split(
            [x.label for x in labels], [stacks[x.image_id][0] for x in labels], config.split, 0
        )
        test = build_dataset(test_labels, held_out, config)
        t0 = time.perf_counter()
        result = run_protocol(config, data.subset(tr), data.subset(va), test, "cpu")
        ens = result.ensemble_metrics
        probs = {i: ens["probs"][k] for k, i in enumerate(test.image_ids)}
        decoded, _ = decode_scans(probs, test_stacks)
        y = test.targets.numpy()
        stacked = classification_metrics(y, np.eye(3)[[decoded[i] for i in test.image_ids]])
        out.append({
            "variant": text, "cohort": seed, "label_accuracy": label_acc[source],
            "seed_accuracy_mean": result.summary()["test"]["accuracy"]["mean"],
            "accuracy": ens["accuracy"], "macro_f1": ens["f1_macro"], "roc_auc": ens["roc_auc"],
            "min_class_f1": min(ens["f1_per_class"].values()),
            "stack_accuracy": stacked["accuracy"], "stack_macro_f1": stacked["f1_macro"],
            "train_s": round(time.perf_counter() - t0, 1),
            "batches": document["batches"], "boundary_labels": document["boundary_labels"],
        })  # fmt: skip
    return out


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over cohorts per variant (and the worst class F1 seen)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["variant"], []).append(row)
    keys = ("label_accuracy", "seed_accuracy_mean", "accuracy", "macro_f1", "stack_accuracy")
    return [
        {"variant": v, "cohorts": [r["cohort"] for r in rs],
         **{k: statistics.fmean(r[k] for r in rs) for k in keys},
         "min_class_f1": min(r["min_class_f1"] for r in rs)}
        for v, rs in by.items()
    ]  # fmt: skip


def main(args) -> int:
    from tqdm import tqdm

    from slicerank_base.jsonout import write_json

    variants = args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS)
    for text in variants:
        parse_variant(text)  # bad input fails before minutes of work
    cohorts = [int(c) for c in args.cohorts.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slicerank-bench-model-") as tmp:
        root = Path(args.data) if args.data else Path(tmp)
        for seed in tqdm(cohorts, desc="cohorts", unit="cohort"):
            rows += run_cohort(root, seed, variants, args.seeds)
            if args.json:
                write_json(args.json, {"rows": rows, "summary": summarise(rows)})
    for s in summarise(rows):
        print(json.dumps(s))
    if args.json:
        write_json(args.json, {"rows": rows, "summary": summarise(rows)})
    return 0
