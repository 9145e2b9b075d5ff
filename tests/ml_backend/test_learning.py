"""The recipe learns (issue 11): a few CPU epochs on a few hundred phantom slices must beat the
majority class by a wide margin on held-out phantom scans, and no class may collapse on an
imbalanced set. Correctness tests, not timed ones: they assert what the model learnt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmr_ingest.manifest import read_manifest
from cmr_ingest.synth import generate_cohort
from ml_backend.config import CPU_SMALL
from ml_backend.data import build_dataset
from ml_backend.labels import LabelledImage
from ml_backend.model import build_model
from ml_backend.splits import grouped_stratified_split
from ml_backend.train import batch_loss, run_protocol
from slicerank_base import CLASSES

pytestmark = pytest.mark.slow

#: The issue's bar for held-out phantom scans.
MIN_MACRO_F1 = 0.7
MIN_RECALL = 0.5
#: A short CPU run: enough for the phantom, seconds per epoch on two cores.
RECIPE = CPU_SMALL.replace(epochs=6, seeds=(0,), split=(0.85, 0.15, 0.0))
#: The imbalanced case as the product trains it: cpu-small's three seeds served as one ensemble,
#: the default logit-adjusted loss, ten epochs. Measured on this set (seeds 0-2, 3-5, 6-8): the
#: plain loss gave too_apical recall 0.5, 0.4, 0.6 at 6 epochs and 0.4, 0.9, 0.6 at 10; the
#: adjusted loss 0.5, 0.7, 0.6 at 6 and 0.8, 0.9, 0.8 at 10.
IMBALANCED_RECIPE = RECIPE.replace(seeds=(0, 1, 2), epochs=10)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate_cohort(26, root / "train", seed=11, workers=1)
    generate_cohort(10, root / "test", seed=12, workers=1)
    rows = read_manifest(root / "train" / "manifest.csv")
    test_rows = read_manifest(root / "test" / "manifest.csv")
    test_labels = [LabelledImage(str(r["image_id"]), str(r["true_class"])) for r in test_rows]
    return root, rows, build_dataset(test_labels, root / "test", RECIPE)


def _train(root, rows, test, config=RECIPE):
    labels = [LabelledImage(str(r["image_id"]), str(r["true_class"])) for r in rows]
    data = build_dataset(labels, root / "train", config)
    groups = [str(r["scan_id"]) for r in rows]
    tr, va, _ = grouped_stratified_split([x.label for x in labels], groups, config.split, 0)
    return run_protocol(config, data.subset(tr), data.subset(va), test, "cpu")


def test_a_few_cpu_epochs_learn_the_classes_of_held_out_scans(phantom):
    root, rows, test = phantom
    assert 250 <= len(rows) <= 400
    result = _train(root, rows, test)
    metrics = result.ensemble_metrics
    majority = np.bincount(test.targets.numpy(), minlength=3).max() / len(test)
    assert metrics["f1_macro"] >= MIN_MACRO_F1, metrics
    assert metrics["accuracy"] > majority + 0.1, (metrics["accuracy"], majority)


def test_no_class_collapses_on_a_small_imbalanced_set(phantom):
    root, rows, test = phantom
    # Keep one too_apical slice in four: about 2 % of the training slices.
    apical = [r for r in rows if r["true_class"] == "too_apical"]
    keep = {r["image_id"] for r in apical[::4]}
    rows = [r for r in rows if r["true_class"] != "too_apical" or r["image_id"] in keep]
    share = sum(r["true_class"] == "too_apical" for r in rows) / len(rows)
    assert share < 0.03
    result = _train(root, rows, test, IMBALANCED_RECIPE)
    recall = result.ensemble_metrics["recall_per_class"]
    assert all(recall[c] > MIN_RECALL for c in CLASSES), recall


def test_the_consensus_position_adds_a_regression_term_on_the_latent_position():
    torch.manual_seed(0)
    # Eval mode: no dropout, so the same batch gives the same class loss every call.
    model = build_model(CPU_SMALL).eval()
    x = torch.randn(4, 1, CPU_SMALL.crop, CPU_SMALL.crop)
    targets = torch.tensor([0, 1, 1, 2])
    positions = torch.tensor([-2.0, 0.0, float("nan"), 2.0])
    plain = batch_loss(model, x, targets)
    with_pos = batch_loss(model, x, targets, positions=positions, position_weight=1.0)
    assert float(with_pos) > float(plain)
    # Unknown positions (NaN, one-at-a-time labels) add nothing.
    unknown = torch.full((4,), float("nan"))
    assert float(batch_loss(model, x, targets, positions=unknown, position_weight=1.0)) == float(
        plain
    )
    # The position term moves the latent position, never the cut-points (they are learnt
    # from the classes alone).
    model.zero_grad()
    (with_pos - plain).backward()
    # (The class parts cancel to rounding error in the difference.)
    assert model.cuts.c1.grad is None or abs(float(model.cuts.c1.grad)) < 1e-6
    assert model.head[-1].weight.grad.abs().sum() > 0
