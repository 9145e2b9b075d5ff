"""Settings from the environment and the ``slicerank train`` command (real Redis, no worker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_backend.settings import BackendSettings
from slicerank.cli import main
from tests.ml_backend.synthdata import classify_task, make_media_root


def test_settings_from_env_with_defaults_and_clear_errors():
    s = BackendSettings.from_env({})
    assert (s.model_dir, s.queue_name, s.media_root, s.preset) == (
        Path("runs/models"),
        "slicerank-train",
        None,
        "auto",
    )
    s = BackendSettings.from_env({
        "LABEL_STUDIO_URL": "http://ls:8080/", "LABEL_STUDIO_API_KEY": "tok", "MODEL_DIR": "/m",
        "SLICERANK_MEDIA_ROOT": "/media", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p",
        "SLICERANK_LABEL_SOURCE": "ranking", "SLICERANK_JOB_TIMEOUT": "60",
    })  # fmt: skip
    assert (
        s.label_studio_url == "http://ls:8080" and s.model_dir == Path("/m") and s.job_timeout == 60
    )
    assert "tok" not in repr(s) and "'p'" not in repr(s)  # secrets stay out of logs
    with pytest.raises(ValueError, match="SLICERANK_LABEL_SOURCE='votes'"):
        BackendSettings.from_env({"SLICERANK_LABEL_SOURCE": "votes"})
    with pytest.raises(ValueError, match="SLICERANK_JOB_TIMEOUT='soon'"):
        BackendSettings.from_env({"SLICERANK_JOB_TIMEOUT": "soon"})


@pytest.mark.integration
def test_train_command_enqueues_once_and_writes_json(
    tmp_path, redis_url, redis_conn, monkeypatch, capsys
):
    rows = make_media_root(tmp_path / "media", n_per_class=2)
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps([classify_task(i, r, label=r["true_class"]) for i, r in enumerate(rows)])
    )
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("SLICERANK_QUEUE", "slicerank-test-cli")
    args = ["train", "--labels", str(export), "--preset", "cpu-small", "--media-root", str(tmp_path / "media"),
            "--model-dir", str(tmp_path / "models"), "--epochs", "1", "--json", str(tmp_path / "out.json")]  # fmt: skip
    assert main(args) == 0
    first = json.loads((tmp_path / "out.json").read_text())
    assert first["created"] is True and first["status"] == "queued"
    assert main(args) == 0
    second = json.loads((tmp_path / "out.json").read_text())
    assert second["created"] is False and second["job_id"] == first["job_id"]
    assert "already queued" in capsys.readouterr().out
    from rq import Queue
    from rq.job import Job

    from ml_backend.jobs import SERIALIZER

    job = Job.fetch(first["job_id"], connection=redis_conn, serializer=SERIALIZER)
    assert job.args[0]["epochs"] == 1 and job.args[0]["labels_path"] == str(export.resolve())
    assert Queue("slicerank-test-cli", connection=redis_conn).count == 1


def test_train_command_needs_a_label_origin(capsys):
    assert main(["train", "--label-source", "classify"]) == 2
    assert "needs a project id, a labels export file or a consensus file" in capsys.readouterr().err
