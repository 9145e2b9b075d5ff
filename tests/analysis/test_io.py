"""Reading truth / prediction CSVs and curve JSON: good files load, bad ones name file and line."""

from __future__ import annotations

import json

import pytest

from analysis.io import (
    AnalysisInputError,
    check_prediction_ids,
    parse_prediction_spec,
    read_curves,
    read_predictions,
    read_truth,
)
from analysis.predictions import Predictions


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_truth_and_both_prediction_kinds(tmp_path):
    truth = read_truth(
        _write(tmp_path, "t.csv", "image_id,label\na,lv\nb, Too_Basal \nc,too_apical\n")
    )
    assert truth == {"a": "lv", "b": "too_basal", "c": "too_apical"}
    probs = read_predictions(
        _write(
            tmp_path,
            "p.csv",
            "image_id,p_too_basal,p_lv,p_too_apical\na,0.1,0.8,0.1\nb,0.6,0.3,0.1\nc,0.2,0.2,0.6\n",
        )
    )
    assert probs.has_probabilities
    assert probs.labels == {"a": "lv", "b": "too_basal", "c": "too_apical"}
    assert probs.probabilities["a"] == (0.1, 0.8, 0.1)
    labels = read_predictions(
        _write(tmp_path, "l.csv", "label,image_id\nlv,a\nlv,b\ntoo_apical,c\n")
    )
    assert not labels.has_probabilities and labels.labels["b"] == "lv"
    both = read_predictions(
        _write(
            tmp_path,
            "b.csv",
            "image_id,label,p_too_basal,p_lv,p_too_apical\na,too_basal,0.4,0.5,0.1\n",
        )
    )
    assert both.labels["a"] == "too_basal"  # an explicit label wins over the argmax


def test_reads_the_schedulers_consensus_csv(tmp_path):
    """consensus.csv (docs/INTERFACES.md) has ``class`` and probabilities; its class is kept."""
    text = (
        "image_id,rank,score_mean,score_sd,views,class,p_too_basal,p_lv,p_too_apical\n"
        "a,1,2.1,0.3,3,too_basal,0.45,0.5,0.05\n"
        "b,2,0.1,0.2,4,lv,0.1,0.8,0.1\n"
    )
    pred = read_predictions(_write(tmp_path, "consensus.csv", text))
    assert pred.labels == {"a": "too_basal", "b": "lv"}
    assert pred.probabilities["a"] == (0.45, 0.5, 0.05)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image_id,lab\na,lv\n", r"t\.csv: missing column\(s\) label"),
        ("image_id,label\na,lv\nb,heart\n", r"t\.csv, line 3: unknown class 'heart'"),
        (
            "image_id,label\na,lv\na,lv\n",
            r"t\.csv, line 3: duplicate image_id 'a' \(first on line 2\)",
        ),
        ("image_id,label\n,lv\n", r"t\.csv, line 2: empty image_id"),
        ("image_id,label\n", r"t\.csv: no rows"),
        ("", r"t\.csv: empty file"),
    ],
)
def test_truth_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(AnalysisInputError, match=message):
        read_truth(_write(tmp_path, "t.csv", text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "image_id,p_too_basal,p_lv,p_too_apical\na,0.5,0.4,0.3\n",
            r"p\.csv, line 2: probabilities sum to 1\.2, not 1",
        ),
        (
            "image_id,p_too_basal,p_lv,p_too_apical\na,0.5,x,0.5\n",
            r"p\.csv, line 2: p_lv is 'x', not a number",
        ),
        (
            "image_id,p_too_basal,p_lv,p_too_apical\na,1.5,-0.5,0\n",
            r"line 2: p_too_basal = 1\.5 is not a probability",
        ),
        (
            "image_id,p_too_basal,p_lv\na,0.5,0.5\n",
            r"p\.csv: has p_too_basal, p_lv but is missing p_too_apical",
        ),
        ("image_id,score\na,0.5\n", r"p\.csv: needs a label column or the columns p_too_basal"),
        ("id,label\na,lv\n", r"p\.csv: missing column image_id"),
        ("image_id,label\na,lv\nb,LV?\n", r"p\.csv, line 3: unknown class 'LV\?'"),
    ],
)
def test_prediction_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(AnalysisInputError, match=message):
        read_predictions(_write(tmp_path, "p.csv", text))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(AnalysisInputError, match="nope.csv: cannot open"):
        read_truth(tmp_path / "nope.csv")


def test_ids_that_do_not_match_are_listed():
    truth = {"a": "lv", "b": "lv", "c": "too_basal"}
    pred = Predictions.from_labels({"a": "lv", "b": "lv", "z": "lv"}, source="p.csv")
    with pytest.raises(
        AnalysisInputError,
        match=r"cnn \(p\.csv\): .*1 image_id\(s\) of the truth missing, e\.g\. \['c'\]; 1 image_id\(s\) not in the truth, e\.g\. \['z'\]",
    ):
        check_prediction_ids(truth, pred, "cnn")


def test_prediction_object_validates_in_memory_input():
    with pytest.raises(ValueError, match="unknown class 'apex'"):
        Predictions.from_labels({"a": "apex"}, source="demo")
    with pytest.raises(ValueError, match="probabilities sum to 0.9"):
        Predictions.from_probabilities({"a": [0.3, 0.3, 0.3]}, source="demo")
    with pytest.raises(ValueError, match="needs 3 probabilities"):
        Predictions.from_probabilities({"a": [0.5, 0.5]}, source="demo")


def test_parse_prediction_spec():
    name, path = parse_prediction_spec("ranking=out/preds.csv")
    assert (name, str(path)) == ("ranking", "out/preds.csv")
    assert parse_prediction_spec("dir/model_a.csv")[0] == "model_a"
    with pytest.raises(AnalysisInputError, match="expected NAME=FILE.csv"):
        parse_prediction_spec("=x.csv")


def _run(strategy, seed, hours):
    return {
        "strategy": strategy,
        "seed": seed,
        "curve": [
            {
                "batches": i,
                "views": i * 8,
                "hours": h,
                "boundary_labels": 0,
                "accuracy": 0.5 + h / 20,
                "macro_f1": 0.5,
                "kendall_tau": 0.3,
            }
            for i, h in enumerate(hours)
        ],
        "final": {"accuracy": 0.5 + hours[-1] / 20},
    }


def test_read_curves_accepts_lists_wrappers_and_single_runs(tmp_path):
    a = _write(tmp_path, "a.json", json.dumps([_run("paper", 0, [0, 1]), _run("bayes", 0, [0, 2])]))
    b = _write(tmp_path, "b.json", json.dumps({"runs": [_run("paper", 1, [0, 1.5])]}))
    c = _write(tmp_path, "c.json", json.dumps(_run("bayes", 1, [0, 3])))
    runs = read_curves([a, b, c])
    assert [(r["strategy"], r["seed"]) for r in runs] == [
        ("paper", 0),
        ("bayes", 0),
        ("paper", 1),
        ("bayes", 1),
    ]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", r"c\.json: not valid JSON"),
        (
            json.dumps([{"strategy": "x"}]),
            r"c\.json, run 0: a run needs the keys strategy and curve",
        ),
        (json.dumps([{"strategy": "x", "curve": []}]), r"run 0: curve must be a non-empty list"),
        (
            json.dumps([{"strategy": "x", "curve": [{"hours": 1}]}]),
            r"run 0, point 0: missing accuracy",
        ),
        (
            json.dumps([{"strategy": "x", "curve": [{"hours": "1", "accuracy": 0.5}]}]),
            r"point 0: hours = '1' is not a number",
        ),
        (json.dumps(3), r"c\.json: expected a list of runs"),
    ],
)
def test_bad_curve_files_are_named(tmp_path, doc, message):
    with pytest.raises(AnalysisInputError, match=message):
        read_curves([_write(tmp_path, "c.json", doc)])
