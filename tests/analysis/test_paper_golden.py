"""Golden tests: the study's Table 4 (and its P value) recomputed from its Table 3.

Zaman et al. 2023 print each model's LV vs not-LV confusion matrix (Table 3) and, from it,
recall, precision and accuracy with 95% CIs and McNemar's P (Table 4). The numbers live in
``data/zaman2023_tables.json``; every printed figure is reproduced to two decimals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis.evaluation import evaluate
from analysis.intervals import clopper_pearson_interval, proportion_interval, wilson_interval
from analysis.mcnemar import mcnemar_range_from_marginals, mcnemar_test
from analysis.metrics import BinaryTable
from analysis.predictions import Predictions

DATA = json.loads((Path(__file__).parent / "data" / "zaman2023_tables.json").read_text())
MODELS = {m["name"]: m for m in DATA["models"]}

#: The paper rounds to two decimals.
DECIMALS = 2


def _ratios(table: BinaryTable) -> dict[str, tuple[int, int]]:
    """(successes, trials) behind each Table 4 column, by the mapping the report documents."""
    return {
        "recall": (table.tp, table.tp + table.fp),  # PPV of LV
        "precision": (table.tn, table.tn + table.fn),  # NPV of LV
        "accuracy": (table.correct, table.n),
    }


def _rounded(k: int, n: int, interval) -> list[float]:
    low, high = interval(k, n)
    return [round(k / n, DECIMALS), round(low, DECIMALS), round(high, DECIMALS)]


@pytest.mark.parametrize("name", list(MODELS))
def test_table4_reproduced_from_table3_with_clopper_pearson(name):
    model = MODELS[name]
    table = BinaryTable(**model["table3"])
    assert table.n == 333
    for column, (k, n) in _ratios(table).items():
        assert _rounded(k, n, clopper_pearson_interval) == model["table4"][column], column
    assert round(table.paper_recall, DECIMALS) == model["table4"]["recall"][0]
    assert round(table.paper_precision, DECIMALS) == model["table4"]["precision"][0]
    assert round(table.accuracy, DECIMALS) == model["table4"]["accuracy"][0]


@pytest.mark.parametrize("name", list(MODELS))
def test_textbook_recall_and_precision_do_not_match_table4(name):
    """Why the mapping matters: the textbook LV recall/precision give other numbers."""
    model = MODELS[name]
    table = BinaryTable(**model["table3"])
    assert round(table.sensitivity, DECIMALS) != model["table4"]["recall"][0]
    assert round(table.ppv, DECIMALS) != model["table4"]["precision"][0]


def test_wilson_misses_some_table4_bounds_but_matches_table2():
    """Table 4 is Clopper–Pearson; Table 2's LV-accuracy CIs are Wilson-like (0.82–0.89)."""
    misses = 0
    for model in MODELS.values():
        for column, (k, n) in _ratios(BinaryTable(**model["table3"])).items():
            misses += _rounded(k, n, wilson_interval) != model["table4"][column]
    assert misses > 0
    for name, expected in DATA["table2_lv_accuracy"].items():
        if name == "desc":
            continue
        table = BinaryTable(**MODELS[name]["table3"])
        assert _rounded(table.correct, table.n, wilson_interval) == expected
    ranking = BinaryTable(**MODELS["multiple-image-ranking"]["table3"])
    assert (
        _rounded(ranking.correct, ranking.n, clopper_pearson_interval)
        != DATA["table2_lv_accuracy"]["multiple-image-ranking"]
    )


def _labels_from_table(table: BinaryTable) -> tuple[dict[str, str], dict[str, str]]:
    truth, pred = {}, {}
    cells = [
        ("lv", "lv", table.tp),
        ("lv", "too_basal", table.fn),
        ("too_basal", "lv", table.fp),
        ("too_basal", "too_basal", table.tn),
    ]
    i = 0
    for t, p, count in cells:
        for _ in range(count):
            truth[f"img{i:04d}"], pred[f"img{i:04d}"] = t, p
            i += 1
    return truth, pred


@pytest.mark.parametrize("name", list(MODELS))
def test_evaluate_reproduces_table4_end_to_end(name):
    model = MODELS[name]
    truth, pred = _labels_from_table(BinaryTable(**model["table3"]))
    summary = evaluate(truth, {name: Predictions.from_labels(pred)}, n_boot=50)
    binary = summary["models"][name]["binary"]
    assert {k: binary[k] for k in ("tp", "fn", "fp", "tn")} == model["table3"]
    for column, key in (
        ("recall", "paper_recall"),
        ("precision", "paper_precision"),
        ("accuracy", "accuracy"),
    ):
        got = binary[key]
        assert [round(got[f], DECIMALS) for f in ("value", "low", "high")] == model["table4"][
            column
        ]


def test_published_mcnemar_p_is_not_a_paired_test_of_table3_accuracies():
    """Any pairing of the two models consistent with Table 3 gives P < 0.001, never 0.02."""
    a = BinaryTable(**MODELS["one-image-at-a-time"]["table3"])
    b = BinaryTable(**MODELS["multiple-image-ranking"]["table3"])
    for exact in (True, False):
        smallest, largest = mcnemar_range_from_marginals(a.correct, b.correct, a.n, exact=exact)
        assert largest.pvalue < 1e-3
        assert (largest.b, largest.c) == (46, 93)
        assert smallest.pvalue <= largest.pvalue


def test_published_p_matches_mcnemar_on_the_false_positive_cells():
    """The only Table 3 cell pair we found that yields 0.02: FP counts 18 vs 6 used as b, c."""
    a = BinaryTable(**MODELS["one-image-at-a-time"]["table3"])
    b = BinaryTable(**MODELS["multiple-image-ranking"]["table3"])
    target = MODELS["multiple-image-ranking"]["mcnemar_p_vs_first"]
    assert round(mcnemar_test(a.fp, b.fp).pvalue, DECIMALS) == target  # exact: 0.0227
    assert round(mcnemar_test(a.fp, b.fp, exact=False).pvalue, DECIMALS) == target  # 0.0247
    for cell in ("tp", "fn", "tn"):
        assert round(mcnemar_test(getattr(a, cell), getattr(b, cell)).pvalue, DECIMALS) != target


def test_proportion_interval_dispatch():
    assert proportion_interval(73, 148) == clopper_pearson_interval(73, 148)
    assert proportion_interval(73, 148, method="wilson") == wilson_interval(73, 148)
    with pytest.raises(ValueError, match="unknown interval method"):
        proportion_interval(1, 2, method="wald")


#: Slack for an average of two-decimal per-class figures against a two-decimal overall figure,
#: with the test set's class shares approximated by the whole dataset's (stratified split).
AVERAGE_TOL = 0.015


@pytest.mark.parametrize("name", list(MODELS))
def test_table2_overall_auc_and_f1_are_support_weighted_averages(name):
    """Why the report prints weighted averages beside macro ones: the study's overall figures
    match the support-weighted mean of its per-class figures, not the unweighted one."""
    data = DATA["table2_overall"]
    weights = np.asarray(data["class_counts"], dtype=float)
    for metric in ("auc", "f1"):
        per_class = np.asarray(data[name][metric])
        printed = data[name][f"{metric}_overall"]
        weighted = float(np.average(per_class, weights=weights))
        macro = float(per_class.mean())
        assert abs(weighted - printed) <= AVERAGE_TOL, (metric, weighted, printed)
        assert abs(weighted - printed) < abs(macro - printed), (metric, macro, printed)
