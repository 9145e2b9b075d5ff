"""``slicerank bench model``: which labels make the better CNN, with fair arms (issues 11, 19).

For each cohort seed it draws the demo's data offline — a labelled cohort (``--scans``, 40)
and a held-out one (``--test-scans``; 200 gives about 2,400 test slices) — and both arms'
labels at equal labelling time from the same image-grounded raters under a named premise
(``--premise``; 1.0 equal noise, 1.5 the study's):

* one at a time: ``single_labeller`` (stack-aware active labelling) chooses each label and
  decodes every slice's class along its scan;
* ranking: the ``bayes`` engine with the scans' geometry, ranked batches plus boundary
  questions, its consensus classes.

Both arms train the same recipe on the same scans (one split by scan, drawn before any
label: ``validation_scans``), every labelled slice apart from the validation scans. Each
model is scored per slice and stack-decoded; the paired difference carries a bootstrap over
held-out scans, and across cohorts the summary gives the mean and sd of the paired
difference and the cohorts needed to detect one point. No Label Studio: the labels are what
the demo's services would produce, minus timing noise. Reporting seeds
(``benchmarks.seeds``) run only the frozen recipe.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

#: The variants compared by default: the frozen recipe, one per arm.
DEFAULT_VARIANTS = ("classify", "ranking")


def simulate_labels(
    media: Path, seed: int, *, premise: float = 1.0, scans: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both arms' consensus documents for the cohort at ``media`` at equal labelling time:
    (one at a time, ranking). ``scans``: the phantom cohort's size, for image-grounded
    raters (``make_panel``); without it, raters see true positions."""
    from ranking_scheduler import RankingEngine
    from ranking_scheduler.simulator.raters import SECONDS_PER_BATCH, SECONDS_PER_LABEL
    from ranking_scheduler.simulator.simulate import read_cohort
    from ranking_scheduler.simulator.stack_labels import labeller_document, single_labeller
    from slicerank.demo_raters import make_panel
    from slicerank_base import CLASSES

    cohort = read_cohort(media / "manifest.csv")
    stacks = cohort.stacks or {}
    raters = make_panel(media / "manifest.csv", 3, seed, premise=premise, scans=scans).raters
    budget_s = len(cohort.ids) * SECONDS_PER_LABEL
    labeller = single_labeller(sorted(stacks) or cohort.ids, stacks, seed=seed)
    for j in range(len(cohort.ids)):
        rater = raters[j % 3]
        image_id = labeller.next_query(rater.name)
        if image_id is None:
            break
        labeller.submit(image_id, rater.name, rater.classify(image_id))
    single = labeller_document(labeller)
    engine = RankingEngine(cohort.ids, strategy="bayes", seed=seed, stacks=stacks or None)
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


def recipe_fingerprint(config) -> str:
    """A short hash of a training config: the frozen recipe is recognisable in every row."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_cohort(
    root: Path,
    seed: int,
    variants: list[str],
    n_seeds: int | None,
    *,
    premise: float = 1.0,
    scans: int = 40,
    test_scans: int = 20,
) -> list[dict[str, Any]]:
    """Every variant on cohort ``seed`` (drawn under ``root``): held-out metrics per variant,
    and each ranking variant's paired difference against the one-at-a-time variant with the
    same options (scan-clustered bootstrap)."""  # fmt: skip
    import numpy as np

    from analysis.intervals import cluster_bootstrap
    from cmr_ingest.manifest import read_manifest
    from cmr_ingest.synth import generate_cohort
    from ml_backend.data import build_dataset
    from ml_backend.labels import LabelledImage, labels_from_consensus
    from ml_backend.splits import read_manifest_stacks, split_by_validation_scans, validation_scans
    from ml_backend.stack import decode_scans
    from ml_backend.train import classification_metrics, run_protocol

    media, held_out = root / f"cohort-{seed}-{scans}", root / f"held-out-{seed}-{test_scans}"
    if not (media / "manifest.csv").exists():
        generate_cohort(scans, media, seed=seed)
    if not (held_out / "manifest.csv").exists():
        generate_cohort(test_scans, held_out, seed=seed + 1000)
    truth = {
        str(r["image_id"]): str(r["true_class"]) for r in read_manifest(media / "manifest.csv")
    }
    stacks, test_stacks = read_manifest_stacks(media), read_manifest_stacks(held_out)
    # One split by scan for both arms, drawn before either has a label.
    val_scans = validation_scans({s for s, _ in stacks.values()}, seed)
    single, document = simulate_labels(media, seed, premise=premise, scans=scans)
    sets = {
        "classify": labels_from_consensus(single),
        "ranking": labels_from_consensus(document),
    }
    label_acc = {
        k: float(np.mean([x.label == truth[x.image_id] for x in v])) for k, v in sets.items()
    }
    test_rows = read_manifest(held_out / "manifest.csv")
    test_labels = [LabelledImage(str(r["image_id"]), str(r["true_class"])) for r in test_rows]
    out = []
    correct: dict[str, np.ndarray] = {}
    for text in variants:
        source, config = parse_variant(text)
        changes: dict[str, Any] = {}
        if n_seeds is not None:
            changes["seeds"] = tuple(range(n_seeds))
        config = config.replace(**changes)
        labels = sets[source]
        data = build_dataset(labels, media, config)
        tr, va, _ = split_by_validation_scans([stacks[x.image_id][0] for x in labels], val_scans)
        test = build_dataset(test_labels, held_out, config)
        t0 = time.perf_counter()
        result = run_protocol(config, data.subset(tr), data.subset(va), test, "cpu")
        ens = result.ensemble_metrics
        probs = {i: ens["probs"][k] for k, i in enumerate(test.image_ids)}
        decoded, _ = decode_scans(probs, test_stacks)
        y = test.targets.numpy()
        stacked = classification_metrics(y, np.eye(3)[[decoded[i] for i in test.image_ids]])
        correct[text] = (np.asarray(ens["probs"]).argmax(1) == y).astype(float)
        out.append({
            "variant": text, "cohort": seed, "premise": premise,
            "recipe": recipe_fingerprint(config), "label_accuracy": label_acc[source],
            "seed_accuracy_mean": result.summary()["test"]["accuracy"]["mean"],
            "accuracy": ens["accuracy"], "macro_f1": ens["f1_macro"], "roc_auc": ens["roc_auc"],
            "min_class_f1": min(ens["f1_per_class"].values()),
            "stack_accuracy": stacked["accuracy"], "stack_macro_f1": stacked["f1_macro"],
            "train_s": round(time.perf_counter() - t0, 1),
            "n_train": len(tr), "n_val": len(va), "validation_scans": list(val_scans),
            "test_scans": test_scans, "test_slices": len(test_labels),
            "batches": document["batches"], "boundary_labels": document["boundary_labels"],
            "single_labels": single["labels"],
        })  # fmt: skip
    groups = [test_stacks[i][0] for i in test.image_ids]
    for row in out:
        source, _, options = row["variant"].partition(":")
        partner = ":".join(["classify", options]) if options else "classify"
        if source == "ranking" and partner in correct:
            b = cluster_bootstrap(
                correct[row["variant"]] - correct[partner], groups,
                rng=np.random.default_rng([seed, 71]),
            )  # fmt: skip
            row["paired_vs"] = partner
            row["paired_difference"] = {
                "value": b.value, "low": b.low, "high": b.high, "pvalue": b.pvalue,
                "bootstrap": f"over {b.n_clusters} held-out scans",
            }  # fmt: skip
    return out


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over cohorts per variant (and the worst class F1 seen); for ranking variants the
    paired difference's mean and sd across cohorts and the cohorts needed to detect 1 point."""
    from analysis.intervals import runs_to_detect

    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["variant"], []).append(row)
    keys = ("label_accuracy", "seed_accuracy_mean", "accuracy", "macro_f1", "stack_accuracy")
    out = []
    for v, rs in by.items():
        entry = {
            "variant": v, "cohorts": [r["cohort"] for r in rs], "premise": rs[0]["premise"],
            **{k: statistics.fmean(r[k] for r in rs) for k in keys},
            "min_class_f1": min(r["min_class_f1"] for r in rs),
        }  # fmt: skip
        diffs = [r["paired_difference"]["value"] for r in rs if "paired_difference" in r]
        if diffs:
            sd = statistics.stdev(diffs) if len(diffs) > 1 else None
            entry["paired_difference"] = {
                "vs": rs[0]["paired_vs"], "mean": statistics.fmean(diffs), "sd": sd,
                "runs_to_detect_1_point": runs_to_detect(sd) if sd is not None else None,
                # The sd is itself estimated from this many cohorts: with few, treat the
                # runs needed as a rough guide.
                "sd_from_cohorts": len(diffs),
            }  # fmt: skip
        out.append(entry)
    return out


def main(args) -> int:
    from tqdm import tqdm

    from benchmarks.seeds import FROZEN_RECIPE, check_reporting, parse_seeds
    from slicerank_base.jsonout import write_json

    variants = args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS)
    for text in variants:
        parse_variant(text)  # bad input fails before minutes of work
    cohorts = parse_seeds(args.cohorts)
    try:
        check_reporting(
            cohorts, what="bench model",
            recipe_changed=tuple(variants) != FROZEN_RECIPE["variants"] or args.seeds is not None,
        )  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    rows: list[dict[str, Any]] = []
    kw = {"premise": args.premise, "scans": args.scans, "test_scans": args.test_scans}
    with tempfile.TemporaryDirectory(prefix="slicerank-bench-model-") as tmp:
        root = Path(args.data) if args.data else Path(tmp)
        for seed in tqdm(cohorts, desc="cohorts", unit="cohort"):
            rows += run_cohort(root, seed, variants, args.seeds, **kw)
            if args.json:
                write_json(args.json, {"rows": rows, "summary": summarise(rows)})
    for s in summarise(rows):
        print(json.dumps(s))
    if args.json:
        write_json(args.json, {"rows": rows, "summary": summarise(rows)})
    return 0
