"""Training through a real Redis and real RQ workers (``slicerank worker`` subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch
from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

from ml_backend.jobs import (
    SERIALIZER,
    TrainRequest,
    enqueue_training,
    job_summary,
    train_job,
    wait_for_job,
)
from ml_backend.registry import ModelRegistry
from ml_backend.server import create_app
from ml_backend.settings import BackendSettings
from tests.ml_backend.synthdata import classify_task, make_media_root

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def setup(tmp_path, redis_url, redis_conn, monkeypatch):
    # The worker (in-process or a subprocess inheriting this environment) reads jobs' files
    # only under its roots.
    monkeypatch.setenv("SLICERANK_WORKER_ROOTS", str(tmp_path))
    media = tmp_path / "media"
    rows = make_media_root(media, n_per_class=12)
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps([classify_task(i + 1, r, label=r["true_class"]) for i, r in enumerate(rows)])
    )
    queue = f"slicerank-test-{uuid.uuid4().hex[:8]}"
    return {"media": media, "rows": rows, "export": export, "queue": queue, "models": tmp_path / "models",
            "redis_url": redis_url, "conn": redis_conn, "tmp": tmp_path}  # fmt: skip


def request(s, **kw) -> TrainRequest:
    base = dict(labels_path=str(s["export"]), preset="cpu-small", media_root=str(s["media"]),
                model_dir=str(s["models"]), device="cpu", epochs=2, seeds=(0,), write_predictions=False)  # fmt: skip
    base.update(kw)
    return TrainRequest(**base)


def start_worker(s, *, burst: bool = True) -> subprocess.Popen:
    env = {
        **os.environ,
        "REDIS_URL": s["redis_url"],
        "SLICERANK_QUEUE": s["queue"],
        "OMP_NUM_THREADS": "2",
    }
    cmd = [sys.executable, "-m", "slicerank", "worker"] + (["--burst"] if burst else [])
    log = open(s["tmp"] / f"worker-{uuid.uuid4().hex[:6]}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for_epoch(conn, job_id: str, timeout: float = 90) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        meta = Job.fetch(job_id, connection=conn, serializer=SERIALIZER).get_meta(refresh=True)
        if meta.get("epoch", 0) >= 1:
            return meta
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never finished an epoch: {meta}")


def test_worker_trains_registers_and_the_backend_serves_the_new_version(setup):
    s = setup
    queued = enqueue_training(s["conn"], request(s, seeds=(0, 1)), queue_name=s["queue"])
    assert queued.created
    worker = start_worker(s)
    seen: list[dict] = []
    summary = wait_for_job(
        s["conn"], queued.job_id, poll_s=0.2, timeout_s=180, on_progress=seen.append
    )
    assert worker.wait(timeout=30) == 0
    assert summary["status"] == "finished", summary
    assert "started" in {x["status"] for x in seen}
    version = ModelRegistry(s["models"]).newest()
    assert summary["result"]["model_version"] == version.name == "v0001-classify"
    splits = version.read_json("splits")
    # Split by scan: 4 scans of 9 slices, one each for validation and test.
    assert [len(splits[k]) for k in ("train", "val", "test")] == [18, 9, 9]
    assert splits["grouped_by"] == "scan"
    assert sorted(sum(splits["scans"].values(), [])) == ["s0", "s1", "s2", "s3"]
    assert [len(splits["scans"][k]) for k in ("train", "val", "test")] == [2, 1, 1]
    scan_of = {r["image_id"]: r["scan_id"] for r in s["rows"]}
    for name in ("train", "val", "test"):
        assert {scan_of[i] for i in splits[name]} == set(splits["scans"][name])
    metrics = version.read_json("metrics")
    assert [m["seed"] for m in metrics["seeds"]] == [0, 1] and len(metrics["history"]) == 4
    assert metrics["selected_seed"] in (0, 1)
    meta = summary["meta"]
    assert meta["stage"] == "done" and meta["epoch"] == 2 and meta["n_train"] == 18
    ckpt = torch.load(version.checkpoint, map_location="cpu", weights_only=True)
    assert set(ckpt) == {
        "model", "optimizer", "epoch", "config", "models", "seeds", "decision_bias"
    }  # fmt: skip
    # Both seeds are kept: the served model is their ensemble.
    assert ckpt["config"]["name"] == "cpu-small" and ckpt["seeds"] == [0, 1]
    assert len(ckpt["models"]) == 2 and len(ckpt["decision_bias"]) == 3
    assert set(metrics["ensemble"]) >= {"accuracy", "f1_macro", "f1_per_class"}
    assert version.read_json("label_source")["class_counts"] == {
        "too_basal": 12,
        "lv": 12,
        "too_apical": 12,
    }
    # The backend picks the new version up without a restart.
    client = TestClient(
        create_app(BackendSettings(model_dir=s["models"], media_root=s["media"], dev_no_auth=True))
    )
    task = classify_task(99, s["rows"][0])
    out = client.post("/predict", json={"tasks": [task]}).json()
    assert out["results"][0]["model_version"] == version.name


def test_no_labels_and_a_missing_image_end_as_clear_failed_jobs(setup):
    s = setup
    empty = s["tmp"] / "empty.json"
    empty.write_text(json.dumps([classify_task(1, s["rows"][0])]))  # a task, no annotation
    no_labels = enqueue_training(
        s["conn"], request(s, labels_path=str(empty)), queue_name=s["queue"]
    )
    (s["media"] / s["rows"][5]["path"]).unlink()
    missing = enqueue_training(s["conn"], request(s), queue_name=s["queue"])
    worker = start_worker(s)
    assert worker.wait(timeout=120) == 0
    a = job_summary(s["conn"], no_labels.job_id)
    assert (
        a["status"] == "failed" and "NoLabelsError: no labels for source 'classify'" in a["error"]
    )
    b = job_summary(s["conn"], missing.job_id)
    assert b["status"] == "failed" and s["rows"][5]["image_id"] in b["error"]
    assert b["meta"]["stage"] == "failed" and "MissingImageError" in b["meta"]["error"]
    assert ModelRegistry(s["models"]).versions() == []
    # The failed job released its project: a new request is accepted.
    assert enqueue_training(s["conn"], request(s), queue_name=s["queue"]).created


def test_a_killed_work_horse_fails_the_job_and_registers_nothing(setup):
    s = setup
    queued = enqueue_training(s["conn"], request(s, epochs=500), queue_name=s["queue"])
    worker = start_worker(s)
    try:
        meta = wait_for_epoch(s["conn"], queued.job_id)
        again = enqueue_training(s["conn"], request(s, epochs=500), queue_name=s["queue"])
        assert not again.created and again.job_id == queued.job_id and again.status == "started"
        os.kill(meta["pid"], signal.SIGKILL)  # as the kernel's OOM killer would
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    summary = job_summary(s["conn"], queued.job_id)
    assert (
        summary["status"] == "failed" and "Work-horse terminated unexpectedly" in summary["error"]
    )
    assert not (s["models"]).exists() or not any(s["models"].iterdir())
    assert enqueue_training(s["conn"], request(s), queue_name=s["queue"]).created


def test_a_killed_worker_is_caught_by_rq_abandoned_job_cleanup(setup):
    s = setup
    queued = enqueue_training(s["conn"], request(s, epochs=500), queue_name=s["queue"])
    worker = start_worker(s, burst=False)
    try:
        meta = wait_for_epoch(s["conn"], queued.job_id)
        # The whole machine goes away: the worker first (so it cannot see its horse die and
        # report it), then the horse.
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        os.kill(meta["pid"], signal.SIGKILL)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert job_summary(s["conn"], queued.job_id)["status"] == "started"  # nobody knows yet
    # RQ gives up on a job whose heartbeat lapsed (monitoring interval + 60 s); let that pass.
    StartedJobRegistry(
        queue=Queue(s["queue"], connection=s["conn"], serializer=SERIALIZER)
    ).cleanup(timestamp=time.time() + 600)
    summary = job_summary(s["conn"], queued.job_id)
    assert summary["status"] == "failed" and "AbandonedJobError" in summary["error"]
    assert ModelRegistry(s["models"]).versions() == []
    assert enqueue_training(s["conn"], request(s), queue_name=s["queue"]).created


def test_cuda_out_of_memory_becomes_a_clear_error(setup, monkeypatch):
    # A CPU machine cannot run out of GPU memory: inject the exception torch raises.
    import ml_backend.train as train_mod

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod, "run_protocol", oom)
    with pytest.raises(RuntimeError, match="CUDA out of memory on cpu training preset 'cpu-small'"):
        train_job(request(setup).to_dict())
    assert ModelRegistry(setup["models"]).versions() == []


def test_ranking_consensus_with_soft_targets_trains_and_registers(setup):
    # The job function called directly (outside a worker): ranking labels from consensus.json.
    s = setup
    images = []
    for i, r in enumerate(s["rows"]):
        p = {"too_basal": [0.8, 0.2, 0.0], "lv": [0.1, 0.8, 0.1], "too_apical": [0.0, 0.3, 0.7]}[
            r["true_class"]
        ]
        images.append({"image_id": r["image_id"], "rank": i + 1, "score_mean": 0.0, "score_sd": 0.1,
                       "views": 3, "class": r["true_class"], "p_too_basal": p[0], "p_lv": p[1],
                       "p_too_apical": p[2]})  # fmt: skip
    consensus = s["tmp"] / "consensus.json"
    consensus.write_text(
        json.dumps({"model_version": "ranking-consensus", "thresholds": {}, "images": images})
    )
    req = request(s, label_source="ranking", labels_path=None, consensus_path=str(consensus),
                  soft_targets=True, epochs=1)  # fmt: skip
    out = train_job(req.to_dict())
    version = ModelRegistry(s["models"]).get(out["model_version"])
    assert version.name == "v0001-ranking"
    assert version.read_json("config")["soft_targets"] is True
    assert version.read_json("label_source")["consensus_path"] == str(consensus)


def test_auto_preset_and_device_are_decided_by_the_worker(setup, monkeypatch):
    import ml_backend.train as train_mod

    seen = {}

    def capture(config, train, val, test, device, **kwargs):
        seen.update(preset=config.name, device=str(device), crop=train.images.shape[-1])
        raise RuntimeError("stop here")

    monkeypatch.setattr(train_mod, "run_protocol", capture)
    monkeypatch.setenv("SLICERANK_DEVICE", "cpu")  # the worker's own setting
    with pytest.raises(RuntimeError, match="stop here"):
        train_job(request(setup, preset="auto", device="auto").to_dict())
    # No CUDA here: the study recipe on the CPU, images framed at the study's 256 px.
    assert seen == {"preset": "study", "device": "cpu", "crop": 256}
