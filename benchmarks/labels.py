"""``slicerank bench labels``: does label quality move the model? (dose-response, issue 19)

On one phantom cohort it trains the CNN on labels with controlled damage, at several training
sizes, and scores each model against the truth of held-out scans, beside the best possible
classifier for the same labels:

* ``clean``: the true classes;
* ``noise``: zero-mean noise near the cuts, independent of the image: the class of the true
  position plus ``N(0, NOISE_SD)`` (``NOISE_SD`` matches the calibrated raters' total sd, so
  the flip rate is about that of ``image``);
* ``shift``: the basal cut moved apically by ``SHIFT`` (a systematic error everyone shares);
* ``image``: image-tied ambiguity: one label per slice from the calibrated image-grounded
  raters (``PHANTOM_PARAMS``, raters in turn), who see each slice's apparent position with
  its scan's reading difficulty, as the CNN sees its pixels.

The best possible classifier for a label set sees what the image shows (each slice's
apparent position, ``cmr_ingest.synth.slice_perception``) and places the two cuts that
agree best with the labels; its test accuracy is the ceiling those labels allow. Training
slices are whole scans taken in a seeded order until the size is reached; the validation
scans (``ml_backend.splits.validation_scans``) and the held-out scans are the same for
every row. The table and plot go to ``--out`` (docs/bench/labels.md holds a run).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

DAMAGES = ("clean", "noise", "shift", "image")
#: Sd (position units) of the image-independent noise; about one third of a slice gap.
NOISE_SD = 0.0255
#: How far (position units) the shifted basal cut moves apically: about half a slice gap.
SHIFT = 0.025
#: Slices per scan of the phantom, on average (for sizing the cohort).
SLICES_PER_SCAN = 12


def damaged_labels(damage: str, ids, truth_pos, apparent, difficulty, cuts, seed: int):
    """``image_id → class`` for ``ids`` under ``damage`` (see the module docstring)."""
    import numpy as np

    from ranking_scheduler.simulator.raters import PHANTOM_PARAMS, RaterPanel, true_class

    if damage == "clean":
        return {i: true_class(truth_pos[i], cuts) for i in ids}
    if damage == "noise":
        rng = np.random.default_rng([seed, 51])
        return {i: true_class(truth_pos[i] + NOISE_SD * rng.standard_normal(), cuts) for i in ids}
    if damage == "shift":
        return {i: true_class(truth_pos[i], (cuts[0] + SHIFT, cuts[1])) for i in ids}
    if damage == "image":
        from dataclasses import replace

        params = replace(PHANTOM_PARAMS, cuts=cuts)
        panel = RaterPanel.from_positions(
            {i: apparent[i] for i in ids}, 3, seed, params, {i: difficulty[i] for i in ids}
        )
        return {i: panel.raters[k % 3].classify(i) for k, i in enumerate(ids)}
    raise ValueError(f"damage {damage!r} is not one of {', '.join(DAMAGES)}")


def best_cuts(x: dict[str, float], labels: dict[str, str]) -> tuple[float, float]:
    """The two cuts on ``x`` that agree best with ``labels`` (each cut on its own: too_basal
    vs the rest, too_apical vs the rest), midway between neighbouring slices."""
    import numpy as np

    ids = sorted(x, key=x.get)
    xs = np.array([x[i] for i in ids])
    out = []
    for cls, below in (("too_basal", True), ("too_apical", False)):
        y = np.array([labels[i] == cls for i in ids])
        # Errors when the cut sits before slice k: class-members above (or below) it.
        if below:
            errs = np.r_[0, np.cumsum(~y)] + np.r_[np.cumsum(y[::-1])[::-1], 0]
        else:
            errs = np.r_[0, np.cumsum(y)] + np.r_[np.cumsum(~y[::-1])[::-1], 0]
        k = int(np.argmin(errs))
        lo = xs[k - 1] if k > 0 else xs[0] - 1e-3
        hi = xs[k] if k < len(xs) else xs[-1] + 1e-3
        out.append(float((lo + hi) / 2))
    return out[0], out[1]


def run(
    root: Path,
    *,
    sizes,
    damages,
    preset: str,
    epochs: int,
    n_seeds: int,
    test_scans: int,
    cohort_seed: int,
    progress=None,
) -> dict[str, Any]:
    """Every (damage, size) row: label accuracy, CNN test accuracy, best possible accuracy."""  # fmt: skip
    import numpy as np

    from cmr_ingest import phantom
    from cmr_ingest.manifest import read_manifest
    from cmr_ingest.synth import generate_cohort, slice_perception
    from ml_backend.config import get_preset
    from ml_backend.data import build_dataset
    from ml_backend.labels import LabelledImage
    from ml_backend.splits import validation_scans
    from ml_backend.train import run_protocol
    from ranking_scheduler.simulator.raters import true_class

    cuts = phantom.POSITION_CUTS
    n_pool = math.ceil(max(sizes) / SLICES_PER_SCAN / 0.85) + 2
    pool_dir, test_dir = (
        root / f"pool-{cohort_seed}-{n_pool}",
        root / f"test-{cohort_seed}-{test_scans}",
    )
    for folder, n, seed in (
        (pool_dir, n_pool, cohort_seed),
        (test_dir, test_scans, cohort_seed + 1000),
    ):
        if not (folder / "manifest.csv").exists():
            generate_cohort(n, folder, seed=seed)
    rows = read_manifest(pool_dir / "manifest.csv")
    test_rows = read_manifest(test_dir / "manifest.csv")
    seen = slice_perception(n_pool, cohort_seed) | slice_perception(test_scans, cohort_seed + 1000)
    apparent = {i: a for i, (a, _) in seen.items()}
    difficulty = {i: d for i, (_, d) in seen.items()}
    truth_pos = {str(r["image_id"]): float(r["position"]) for r in rows + test_rows}
    scan_of = {str(r["image_id"]): str(r["scan_id"]) for r in rows}
    val = set(validation_scans(scan_of.values(), cohort_seed))
    order = [
        s
        for s in np.random.default_rng([cohort_seed, 61]).permutation(sorted(set(scan_of.values())))
        if s not in val
    ]
    by_scan: dict[str, list[str]] = {}
    for i, s in scan_of.items():
        by_scan.setdefault(s, []).append(i)
    val_ids = sorted(i for i in scan_of if scan_of[i] in val)
    test_ids = sorted(str(r["image_id"]) for r in test_rows)
    test_truth = {i: true_class(truth_pos[i], cuts) for i in test_ids}
    config = get_preset(preset).replace(epochs=epochs, seeds=tuple(range(n_seeds)))
    test_set = build_dataset([LabelledImage(i, test_truth[i]) for i in test_ids], test_dir, config)
    out = []
    for damage in damages:
        labels = damaged_labels(
            damage, sorted(scan_of), truth_pos, apparent, difficulty, cuts, cohort_seed
        )
        for size in sizes:
            train_ids: list[str] = []
            for s in order:
                if len(train_ids) >= size:
                    break
                train_ids += sorted(by_scan[s])
            c = best_cuts({i: apparent[i] for i in train_ids}, labels)
            best = float(np.mean([
                true_class(apparent[i], c) == test_truth[i] for i in test_ids
            ]))  # fmt: skip
            t0 = time.perf_counter()
            train = build_dataset(
                [LabelledImage(i, labels[i]) for i in train_ids], pool_dir, config
            )
            valid = build_dataset([LabelledImage(i, labels[i]) for i in val_ids], pool_dir, config)
            result = run_protocol(config, train, valid, test_set, "cpu")
            row = {
                "damage": damage, "size": size, "n_train": len(train_ids),
                "label_accuracy": float(np.mean([labels[i] == true_class(truth_pos[i], cuts) for i in train_ids])),
                "cnn_accuracy": float(result.ensemble_metrics["accuracy"]),
                "best_accuracy": best, "best_cuts": c,
                "train_s": round(time.perf_counter() - t0, 1),
            }  # fmt: skip
            out.append(row)
            if progress is not None:
                progress(row)
    return {
        "rows": out, "cuts": list(cuts), "preset": config.name, "epochs": epochs,
        "training_seeds": n_seeds, "cohort_seed": cohort_seed, "pool_scans": n_pool,
        "validation_scans": len(val), "validation_slices": len(val_ids),
        "test_scans": test_scans, "test_slices": len(test_ids),
        "noise_sd": NOISE_SD, "shift": SHIFT,
    }  # fmt: skip


def table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| damage | training slices | label accuracy | CNN accuracy (held-out) "
        "| best possible for these labels | gap (best − CNN) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['damage']} | {r['n_train']} | {r['label_accuracy']:.3f} | "
            f"{r['cnn_accuracy']:.3f} | {r['best_accuracy']:.3f} | "
            f"{r['best_accuracy'] - r['cnn_accuracy']:+.3f} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """CNN accuracy against training size per damage (solid), beside the best possible
    classifier for the same labels (dashed, same colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, damage in enumerate(dict.fromkeys(r["damage"] for r in result["rows"])):
        rows = sorted(
            (r for r in result["rows"] if r["damage"] == damage), key=lambda r: r["n_train"]
        )
        n = [r["n_train"] for r in rows]
        colour = f"C{k}"
        ax.plot(n, [r["cnn_accuracy"] for r in rows], "o-", color=colour, label=f"{damage}: CNN")
        ax.plot(n, [r["best_accuracy"] for r in rows], "s--", color=colour, alpha=0.7,
                label=f"{damage}: best possible")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training slices")
    ax.set_ylabel(f"held-out accuracy ({result['test_slices']} slices)")
    ax.set_title(f"Label damage vs model ({result['preset']}, {result['epochs']} epochs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args) -> int:
    from slicerank_base.jsonout import write_json

    sizes = sorted({int(s) for s in args.sizes.split(",")})
    damages = args.damages.split(",")
    bad = [d for d in damages if d not in DAMAGES]
    if bad or not sizes or min(sizes) < 20:
        print(f"error: --damages {bad} not in {DAMAGES}, or --sizes below 20", flush=True)
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slicerank-bench-labels-") as tmp:
        root = Path(args.data) if args.data else Path(tmp)
        result = run(
            root, sizes=sizes, damages=damages, preset=args.preset, epochs=args.epochs,
            n_seeds=args.seeds, test_scans=args.test_scans, cohort_seed=args.cohort_seed,
            progress=lambda row: print(json.dumps(row), flush=True),
        )  # fmt: skip
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(table(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "labels.md").write_text(table(result) + "\n")
        plot(result, out / "labels_dose_response.png")
    if args.json:
        write_json(args.json, result)
    return 0
