"""``slicerank bench train`` (issue 23): ``--full`` cut to ``--epochs``/``--seeds`` and a time
budget, one JSON line per epoch, and ``/predict`` skipped where the serving stack is absent."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks.train import predict_step
from slicerank.cli import main


def test_full_protocol_stops_at_its_budget_and_logs_every_epoch(tmp_path):
    jsonl, out = tmp_path / "epochs.jsonl", tmp_path / "bench.json"
    rc = main(["bench", "train", "--full", "--device", "cpu", "--preset", "cpu-small",
               "--images", "60", "--epochs", "3", "--seeds", "2", "--max-seconds", "0.001",
               "--batches", "2", "--repeats", "1", "--jsonl", str(jsonl), "--json", str(out)])  # fmt: skip
    assert rc == 0
    numbers = json.loads(out.read_text())
    # The budget is spent after the first epoch: no second epoch, no second seed.
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [(x["seed"], x["epoch"]) for x in lines] == [(0, 1)]
    assert numbers["stopped_early"] and numbers["epochs_run"] == 1
    assert numbers["epochs"] == 3 and numbers["seeds"] == 2
    assert numbers["extrapolated_s"] == numbers["seconds_per_epoch"] * 70 * 10
    assert numbers["ensemble"]["n"] > 0 and numbers["bare_runs"]


def test_full_protocol_of_the_study_model_refuses_a_cpu():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        main(["bench", "train", "--full", "--device", "cpu"])


def test_predict_latency_is_optional_and_skipped_without_the_serving_stack(monkeypatch):
    assert predict_step(0) == {"skipped": "--predict-requests 0"}
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert "not installed" in predict_step(5)["skipped"]
