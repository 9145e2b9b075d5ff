"""The rendered report (API and ``slicerank analyze``): tables present, plots decodable images."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from analysis.predictions import Predictions
from analysis.report import build_report
from slicerank.cli import main
from slicerank_base import CLASSES

N_IMAGES = 120
#: Few resamples keep the tests fast; the intervals themselves are tested elsewhere.
N_BOOT = 200


def _cohort(seed=0):
    """Truth, a good and a weak probabilistic model, and a label-only rater, on N_IMAGES images."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:04d}" for i in range(N_IMAGES)]
    t = rng.choice(3, size=N_IMAGES, p=[0.25, 0.6, 0.15])
    truth = {i: CLASSES[k] for i, k in zip(ids, t, strict=True)}

    def model(noise):
        logits = rng.normal(size=(N_IMAGES, 3)) * noise
        logits[np.arange(N_IMAGES), t] += 1.5
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return {i: tuple(row) for i, row in zip(ids, p, strict=True)}

    rater = {i: truth[i] if rng.random() < 0.85 else CLASSES[int(rng.integers(3))] for i in ids}
    return truth, model(1.6), model(0.7), rater


def _runs():
    runs = []
    for strategy, rate in (("paper", 1.5), ("bayes", 1.0)):
        for seed in range(3):
            hours = np.linspace(0, 5 - 0.3 * seed, 8)
            acc = 0.6 + 0.3 * (1 - np.exp(-hours / rate))
            curve = [
                {
                    "batches": 10 * j,
                    "views": 80 * j,
                    "hours": float(h),
                    "boundary_labels": j,
                    "accuracy": float(a),
                    "macro_f1": float(a) - 0.05,
                    "kendall_tau": float(a) - 0.1,
                }
                for j, (h, a) in enumerate(zip(hours, acc, strict=True))
            ]
            runs.append({"strategy": strategy, "seed": seed, "curve": curve, "final": curve[-1]})
    return runs


def _assert_png(data: bytes) -> None:
    assert len(data) > 1000
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert image.size[0] > 200 and image.size[1] > 200
    # A blank canvas would be one colour; a drawn plot has many.
    assert len(image.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 10


def test_build_report_writes_tables_and_decodable_plots(tmp_path):
    truth, weak, good, rater = _cohort()
    predictions = {
        "one-at-a-time": Predictions.from_probabilities(weak, source="weak"),
        "ranking": Predictions.from_probabilities(good, source="good"),
        "rater 2": Predictions.from_labels(rater, source="rater"),
    }
    result = build_report(truth, predictions, tmp_path / "out", curves=_runs(), n_boot=N_BOOT)

    md = result.markdown.read_text()
    page = result.html.read_text()
    for heading in ("Table 2.", "Table 3.", "Table 4.", "Table 5.", "Label efficiency"):
        assert heading in md and heading in page
    assert page.count("<table>") >= 6

    # Table 3 and 4 show exactly the binary counts and ratios of the data.
    lv_truth = np.array([truth[i] == "lv" for i in sorted(truth)])
    lv_pred = np.array([good[i][1] == max(good[i]) for i in sorted(truth)])
    tp, fn = int(np.sum(lv_truth & lv_pred)), int(np.sum(lv_truth & ~lv_pred))
    fp, tn = int(np.sum(~lv_truth & lv_pred)), int(np.sum(~lv_truth & ~lv_pred))
    assert f"| ranking | Ground truth: in the LV | {tp} | {fn} |" in md
    assert f"|  | Ground truth: not in the LV | {fp} | {tn} |" in md
    table4_row = next(
        line
        for line in md.splitlines()
        if line.startswith("| ranking | ") and "(" in line and "Ground" not in line
    )
    assert table4_row.split(" | ")[1].startswith(f"{tp / (tp + fp):.2f} (")

    # The label-only rater gets no AUC, and the report says why.
    assert "— (labels only)" in md
    assert "rater 2: label-only predictions" in md
    assert result.summary["models"]["rater 2"]["per_class"]["lv"]["auc"] is None
    assert result.summary["models"]["ranking"]["per_class"]["lv"]["auc"]["value"] > 0.8

    names = sorted(p.name for p in result.figures)
    assert names == [
        "confusion-one-at-a-time.png",
        "confusion-ranking.png",
        "confusion-rater-2.png",
        "label_efficiency.png",
        "roc.png",
    ]
    for path in result.figures:
        _assert_png(path.read_bytes())
        assert f"]({path.name})" in md

    # Self-contained HTML: every figure embedded, nothing fetched from anywhere.
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(result.figures)
    for data in embedded:
        _assert_png(base64.b64decode(data))
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_report_is_reproducible_for_a_seed(tmp_path):
    truth, weak, good, _ = _cohort(seed=1)
    preds = {"a": Predictions.from_probabilities(weak), "b": Predictions.from_probabilities(good)}
    first = build_report(truth, preds, tmp_path / "1", seed=5, n_boot=N_BOOT).summary
    second = build_report(truth, preds, tmp_path / "2", seed=5, n_boot=N_BOOT).summary
    first.pop("generated"), second.pop("generated")
    assert first == second


def test_build_report_rejects_mismatched_ids(tmp_path):
    truth, weak, _, _ = _cohort()
    weak.pop(sorted(weak)[0])
    with pytest.raises(
        ValueError, match=r"cnn \(weak\.csv\): image ids do not match the truth: 1 image_id"
    ):
        build_report(
            truth, {"cnn": Predictions.from_probabilities(weak, source="weak.csv")}, tmp_path
        )


def _write_csv(path, header, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_cli_analyze_writes_report_and_json(tmp_path, capsys):
    truth, weak, good, rater = _cohort(seed=2)
    t = _write_csv(tmp_path / "truth.csv", ["image_id", "label"], sorted(truth.items()))
    header = ["image_id", "p_too_basal", "p_lv", "p_too_apical"]
    a = _write_csv(
        tmp_path / "a.csv", header, [(i, *(f"{x:.6f}" for x in p)) for i, p in weak.items()]
    )
    b = _write_csv(
        tmp_path / "b.csv", header, [(i, *(f"{x:.6f}" for x in p)) for i, p in good.items()]
    )
    r = _write_csv(tmp_path / "r.csv", ["image_id", "label"], rater.items())
    curves = tmp_path / "compare.json"
    curves.write_text(json.dumps(_runs()))
    out = tmp_path / "report"
    code = main(
        [
            "analyze",
            "--truth",
            str(t),
            "--pred",
            f"one-at-a-time={a}",
            "--pred",
            f"ranking={b}",
            "--pred",
            f"rater2={r}",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "summary.json"),
            "--curves",
            str(curves),
            "--n-boot",
            str(N_BOOT),
        ]
    )
    assert code == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert (out / "label_efficiency.png").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reference"] == "one-at-a-time"
    assert set(summary["models"]) == {"one-at-a-time", "ranking", "rater2"}
    assert summary["curves"]["paper"]["runs"] == 3
    assert [c["model"] for c in summary["comparisons"]] == ["ranking", "rater2"]
    assert "report.html" in capsys.readouterr().out


def test_cli_analyze_reports_bad_input_and_exits_2(tmp_path, capsys):
    t = _write_csv(tmp_path / "truth.csv", ["image_id", "label"], [("a", "lv"), ("b", "too_basal")])
    p = _write_csv(tmp_path / "p.csv", ["image_id", "label"], [("a", "lv"), ("c", "lv")])
    code = main(["analyze", "--truth", str(t), "--pred", f"m={p}", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "m (m (" not in err
    assert "image ids do not match the truth" in err and "['b']" in err and "['c']" in err
    assert not (tmp_path / "o" / "report.html").exists()


def test_report_with_a_class_missing_from_the_truth_marks_undefined_values(tmp_path):
    """No 'too_apical' image in the truth: its AUC is undefined, shown as n/a, JSON gets null."""
    truth, weak, good, _ = _cohort(seed=3)
    truth = {i: ("lv" if y == "too_apical" else y) for i, y in truth.items()}
    preds = {
        "a": Predictions.from_probabilities(weak),
        "b": Predictions.from_labels({i: "lv" for i in truth}),
    }
    result = build_report(truth, preds, tmp_path, n_boot=N_BOOT)
    a = result.summary["models"]["a"]
    assert a["per_class"]["too_apical"]["auc"] is None
    assert a["overall"]["macro_auc"] is None
    assert any("too_apical" in note and "undefined" in note for note in result.summary["notes"])
    # Predicting 'lv' for everything: the study's precision (NPV) has no denominator.
    assert result.summary["models"]["b"]["binary"]["paper_precision"] is None
    json.dumps(result.summary, allow_nan=False)
    assert "n/a" in result.markdown.read_text()
    for path in result.figures:
        _assert_png(path.read_bytes())


def test_cli_reads_the_real_simulate_compare_output(tmp_path, capsys):
    """Contract with ranking_scheduler: `simulate --compare` JSON feeds `analyze --curves`."""
    sim = tmp_path / "sim"
    assert main(["simulate", "--compare", "--images", "60", "--seeds", "2", "--out", str(sim)]) == 0
    truth, weak, _, _ = _cohort(seed=4)
    t = _write_csv(tmp_path / "truth.csv", ["image_id", "label"], sorted(truth.items()))
    header = ["image_id", "p_too_basal", "p_lv", "p_too_apical"]
    a = _write_csv(
        tmp_path / "a.csv", header, [(i, *(f"{x:.6f}" for x in p)) for i, p in weak.items()]
    )
    out = tmp_path / "report"
    code = main(
        [
            "analyze",
            "--truth",
            str(t),
            "--pred",
            f"cnn={a}",
            "--out",
            str(out),
            "--curves",
            str(sim / "compare.json"),
            "--json",
            str(tmp_path / "s.json"),
            "--n-boot",
            str(N_BOOT),
        ]
    )
    assert code == 0, capsys.readouterr().err
    curves = json.loads((tmp_path / "s.json").read_text())["curves"]
    assert {"one_at_a_time", "paper", "bayes", "bayes_capped"} <= set(curves)
    assert all(c["runs"] == 2 for c in curves.values())
    _assert_png((out / "label_efficiency.png").read_bytes())


def test_summary_does_not_depend_on_input_order_and_one_model_is_enough(tmp_path):
    truth, weak, _, _ = _cohort(seed=5)
    forward = build_report(
        truth, {"cnn": Predictions.from_probabilities(weak)}, tmp_path / "f", n_boot=N_BOOT
    )
    backward = build_report(
        dict(reversed(list(truth.items()))),
        {"cnn": Predictions.from_probabilities(dict(reversed(list(weak.items()))))},
        tmp_path / "b",
        n_boot=N_BOOT,
    )
    forward.summary.pop("generated"), backward.summary.pop("generated")
    assert forward.summary == backward.summary
    # With a single set there is nothing to compare it with: no P value, no pairwise κ matrix.
    assert forward.summary["comparisons"] == []
    md = forward.markdown.read_text()
    assert "Paired comparisons" not in md and "Pairwise agreement" not in md
    assert "| cnn | " in md


def test_settings_come_from_the_environment_and_flags_override_them(tmp_path, monkeypatch):
    truth, weak, _, _ = _cohort(seed=6)
    t = _write_csv(tmp_path / "truth.csv", ["image_id", "label"], sorted(truth.items()))
    header = ["image_id", "p_too_basal", "p_lv", "p_too_apical"]
    a = _write_csv(
        tmp_path / "a.csv", header, [(i, *(f"{x:.6f}" for x in p)) for i, p in weak.items()]
    )
    monkeypatch.setenv("SLICERANK_ANALYSIS_N_BOOT", "150")
    monkeypatch.setenv("SLICERANK_ANALYSIS_CONFIDENCE", "0.9")
    monkeypatch.setenv("SLICERANK_ANALYSIS_CI_METHOD", "wilson")
    args = ["analyze", "--truth", str(t), "--pred", f"cnn={a}", "--out", str(tmp_path / "o")]
    assert main([*args, "--json", str(tmp_path / "s.json"), "--seed", "7"]) == 0
    settings = json.loads((tmp_path / "s.json").read_text())["settings"]
    assert (settings["n_boot"], settings["seed"], settings["confidence"]) == (150, 7, 0.9)
    assert settings["proportion_interval"] == "wilson"
    md = (tmp_path / "o" / "report.md").read_text()
    assert "Accuracy (90% CI)" in md and "95% CI" not in md
    monkeypatch.setenv("SLICERANK_ANALYSIS_N_BOOT", "many")
    assert main(args) == 2


def test_stack_decoded_predictions_get_their_own_side_by_side_table(tmp_path):
    from analysis.report import STACK_SUFFIX

    truth, good, weak, _ = _cohort()
    ids = sorted(truth)
    # A "decoded" copy that fixes ten of the weak model's errors (as a stack decoder might).
    wrong = [i for i in ids if max(weak[i]) != weak[i][CLASSES.index(truth[i])]][:10]
    fixed = {i: (tuple(float(c == truth[i]) for c in CLASSES) if i in wrong else weak[i])
             for i in ids}  # fmt: skip
    preds = {
        "weak": Predictions.from_probabilities(weak),
        "weak" + STACK_SUFFIX: Predictions.from_probabilities(fixed),
        "good": Predictions.from_probabilities(good),
    }
    result = build_report(truth, preds, tmp_path, n_boot=N_BOOT)
    text = result.markdown.read_text()
    assert "Per-slice vs stack-decoded predictions" in text
    section = text.split("Per-slice vs stack-decoded predictions", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| weak |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    acc = result.summary["models"]["weak"]["overall"]["accuracy"]["value"]
    assert cells[1] == f"{acc:.3f}" and cells[3] == f"{10 / N_IMAGES:+.3f}"
    # No decoded partner, no table.
    plain = build_report(truth, {"good": preds["good"]}, tmp_path / "plain", n_boot=N_BOOT)
    assert "stack-decoded" not in plain.markdown.read_text()


def test_cli_analyze_with_scans_adds_a_scan_clustered_bootstrap(tmp_path, capsys):
    """``--scans`` (a manifest's image_id,scan_id): CIs and the paired difference resample whole
    scans; a scan-less truth image is refused with the file and what to pass."""
    truth, weak, good, _ = _cohort(seed=4)
    t = _write_csv(tmp_path / "truth.csv", ["image_id", "label"], sorted(truth.items()))
    header = ["image_id", "p_too_basal", "p_lv", "p_too_apical"]
    a = _write_csv(tmp_path / "a.csv", header, [(i, *p) for i, p in weak.items()])
    b = _write_csv(tmp_path / "b.csv", header, [(i, *p) for i, p in good.items()])
    ids = sorted(truth)
    rows = [(i, f"scan{k // 12:02d}", k % 12, "x.png") for k, i in enumerate(ids)]
    scans = _write_csv(
        tmp_path / "manifest.csv", ["image_id", "scan_id", "slice_index", "path"], rows
    )
    args = ["analyze", "--truth", str(t), "--pred", f"a={a}", "--pred", f"b={b}"]
    args += ["--n-boot", str(N_BOOT), "--json", str(tmp_path / "s.json")]
    assert main([*args, "--out", str(tmp_path / "o"), "--scans", str(scans)]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    clustered = summary["clustered"]
    assert clustered["n_clusters"] == N_IMAGES // 12 and "scans" in clustered["method"]
    diff = clustered["comparisons"][0]["accuracy_difference"]
    assert diff["low"] <= diff["value"] <= diff["high"]
    assert "CIs over 10 scans" in capsys.readouterr().out
    short = _write_csv(tmp_path / "short.csv", ["image_id", "scan_id"], rows[:-1])
    args_short = [*args, "--out", str(tmp_path / "o2"), "--scans", str(short)]
    assert main(args_short) == 2
    err = capsys.readouterr().err
    assert "short.csv" in err and "no scan_id for 1 of" in err and ids[-1] in err
