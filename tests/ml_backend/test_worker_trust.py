"""A training worker trusts nothing a queued job says (issue 21, item 2): it runs only
``ml_backend.jobs.train_job``, reads and writes only under its own roots, and talks only to
its own Label Studio. Real Redis, real RQ workers (burst), real HTTP servers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rq import Callback, Queue
from rq.job import Job

from ml_backend.jobs import (
    SERIALIZER,
    JobPathError,
    TrainRequest,
    confine_request,
    run_worker,
    train_job,
)
from tests.ml_backend.synthdata import classify_task, make_media_root
from tests.ml_backend.test_security import http_server  # noqa: F401 - a fixture


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """A file that appears when a job's command runs or the canary module is imported."""
    path = tmp_path / "marker"
    monkeypatch.setenv("SLICERANK_TEST_IMPORT_MARKER", str(path))
    sys.modules.pop("tests.ml_backend.import_canary", None)
    yield path
    sys.modules.pop("tests.ml_backend.import_canary", None)


@pytest.mark.integration
def test_a_worker_runs_no_function_but_the_training_job(redis_conn, tmp_path, marker):
    queue_name = "slicerank-test-only-our-job"
    # What anyone who reaches Redis can queue, with the serializer the workers read.
    queue = Queue(queue_name, connection=redis_conn, serializer=SERIALIZER)
    touch = f"touch {tmp_path / 'os-system-ran'}"
    jobs = [
        queue.enqueue("os.system", touch),
        queue.enqueue("subprocess.check_call", ["touch", str(tmp_path / "subprocess-ran")]),
        queue.enqueue("tests.ml_backend.import_canary.run"),
        # Our function, with a callback RQ would import on success or failure.
        queue.enqueue(
            "ml_backend.jobs.train_job",
            {"labels_path": "x"},
            on_failure=Callback("tests.ml_backend.import_canary.run"),
            on_success=Callback("tests.ml_backend.import_canary.run"),
        ),  # fmt: skip
        queue.enqueue("ml_backend.jobs.train_job", {"labels_path": "x"}, "extra"),
    ]
    run_worker(redis_conn, queue_name, burst=True)
    assert not (tmp_path / "os-system-ran").exists(), "a job naming os.system ran"
    assert not (tmp_path / "subprocess-ran").exists()
    assert not marker.exists(), "the worker imported a module a job named"
    for job in jobs:
        job = Job.fetch(job.id, connection=redis_conn, serializer=SERIALIZER)
        assert job.get_status(refresh=True) == "failed"
        error = job.latest_result().exc_string
        assert "RefusedJobError" in error, error
    assert (
        "workers run only ml_backend.jobs.train_job"
        in Job.fetch(jobs[0].id, connection=redis_conn, serializer=SERIALIZER)
        .latest_result()
        .exc_string
    )


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A worker environment: its model dir and media root, and a folder outside both."""
    media, models, outside = tmp_path / "media", tmp_path / "models", tmp_path / "outside"
    rows = make_media_root(media, n_per_class=2, size=48)
    outside.mkdir()
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "SLICERANK_WORKER_ROOTS",
                 "SLICERANK_CONSENSUS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(models))
    monkeypatch.setenv("SLICERANK_MEDIA_ROOT", str(media))
    return {"media": media, "models": models, "outside": outside, "rows": rows}


def test_every_path_a_job_names_lies_under_the_workers_roots(roots):
    r = roots
    export = r["outside"] / "export.json"
    export.write_text(json.dumps([classify_task(1, r["rows"][0], label="lv")]))
    (r["media"] / "link").symlink_to(r["outside"])
    base = {"model_dir": str(r["models"]), "media_root": str(r["media"]), "device": "cpu",
            "labels_path": str(r["media"] / "manifest.csv"), "write_predictions": False}  # fmt: skip
    bad = [
        {"labels_path": str(export)},  # a file outside every root
        {"labels_path": "/etc/passwd"},
        {"labels_path": str(r["media"] / "link" / "export.json")},  # out through a symlink
        {"labels_path": str(r["media"] / ".." / "outside" / "export.json")},
        {"consensus_path": str(export), "label_source": "ranking", "labels_path": None},
        {"model_dir": str(r["outside"] / "models")},  # would write a model there
        {"model_dir": str(r["media"] / "link")},
        {"media_root": str(r["outside"])},
        {"media_root": "/"},
    ]
    for change in bad:
        with pytest.raises(JobPathError, match="outside the worker's roots") as err:
            train_job({**base, **change})
        assert "SLICERANK_WORKER_ROOTS" in str(err.value)
    assert list(r["outside"].iterdir()) == [export], "a refused job wrote something"
    # SLICERANK_WORKER_ROOTS adds a root; paths are used resolved.
    request = TrainRequest(labels_path=str(r["media"] / "link" / "export.json"),
                           model_dir=str(r["outside"] / "models"))  # fmt: skip
    confined = confine_request(request, [r["outside"]])
    assert confined.labels_path == str(export.resolve())


def test_the_worker_never_uses_a_label_studio_url_from_the_job(roots, http_server, monkeypatch):  # noqa: F811
    r = roots
    attacker, ls = http_server(), http_server()
    job = {"project_id": 3, "label_studio_url": attacker.url, "media_root": str(r["media"]),
           "model_dir": str(r["models"]), "device": "cpu"}  # fmt: skip
    # Without a LABEL_STUDIO_URL of its own the worker refuses; it never falls back to the job's.
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "worker-token")
    with pytest.raises(ValueError, match="no LABEL_STUDIO_URL"):
        train_job(job)
    assert attacker.requests == [] and ls.requests == []
    # With its own URL it goes there (the recording server has no project: any failure).
    monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
    with pytest.raises(Exception):  # noqa: B017
        train_job(job)
    assert attacker.requests == []
    assert ls.requests and all(auth == "Token worker-token" for _, auth in ls.requests)


def test_a_request_with_unknown_fields_is_refused():
    with pytest.raises(ValueError, match="unknown field"):
        TrainRequest.from_dict({"project_id": 1, "shell": "rm -rf /"})
    # The URL field of requests queued by earlier versions is dropped, not used.
    assert TrainRequest.from_dict({"project_id": 1, "label_studio_url": "http://x"}).project_id == 1


@pytest.mark.integration
def test_the_worker_command_refuses_a_job_naming_os_system(redis_url, redis_conn, tmp_path):
    # The real `slicerank worker --burst` process, as deployed.
    queue_name = "slicerank-test-worker-cli-only-our-job"
    queue = Queue(queue_name, connection=redis_conn, serializer=SERIALIZER)
    job = queue.enqueue("os.system", f"touch {tmp_path / 'ran'}")
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "SLICERANK_QUEUE": queue_name,
           "MODEL_DIR": str(tmp_path / "models"), "HOME": str(tmp_path)}  # fmt: skip
    import os

    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-m", "slicerank", "worker", "--burst"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "ran").exists()
    assert Job.fetch(job.id, connection=redis_conn, serializer=SERIALIZER).get_status() == "failed"


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("epochs", 10**9, "epochs"),
        ("epochs", 0, "epochs"),
        ("epochs", "70", "epochs"),
        ("seeds", list(range(1000)), "seeds"),
        ("seeds", [], "seeds"),
        ("seeds", [-1], "seeds"),
        ("preset", "../../etc", "preset"),
        ("device", "cuda; rm -rf /", "device"),
    ],
)
def test_a_request_from_redis_is_bounded_before_any_work(field, value, says):
    """Whoever can write to Redis cannot make a worker train forever or on a made-up device."""
    base = {"labels_path": "/x/export.json", "epochs": 3, "seeds": [0, 1], "preset": "cpu-small"}
    TrainRequest.from_dict(base)  # the bounds let an ordinary request through
    with pytest.raises(ValueError, match=says):
        TrainRequest.from_dict({**base, field: value})
