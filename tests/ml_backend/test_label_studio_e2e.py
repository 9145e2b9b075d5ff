"""End to end with a real Label Studio: register the backend (LS calls /health and /setup with
basic auth), label the Classify tasks, press "Start Training" through LS's own API (LS posts to
the backend), a real RQ worker trains and registers a version, and the new model's predictions
appear on the Classify tasks as pre-annotations; LS's own /predict round trip works too."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import uvicorn

from ml_backend.jobs import LOCK_PREFIX, wait_for_job
from ml_backend.registry import ModelRegistry
from ml_backend.server import create_app
from ml_backend.settings import BackendSettings
from tests.ls_server import write_cohort

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def backend(tmp_path, label_studio, redis_url, redis_conn):
    media = label_studio.new_media_dir()
    rows = write_cohort(media, n_scans=4, n_slices=10, size=96)
    settings = BackendSettings(
        label_studio_url=label_studio.url, label_studio_api_key=label_studio.api_key,
        redis_url=redis_url, queue_name=f"slicerank-e2e-{uuid.uuid4().hex[:8]}",
        model_dir=tmp_path / "models", media_root=media, basic_auth_user="labelstudio",
        basic_auth_pass=uuid.uuid4().hex, preset="cpu-small",
    )  # fmt: skip
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, redis_conn=redis_conn), host="127.0.0.1",
                                           port=port, log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "settings": settings, "rows": rows, "media": media}
    server.should_exit = True
    thread.join(timeout=10)


def test_start_training_in_label_studio_ends_in_predictions_on_classify_tasks(
    label_studio, backend, redis_conn, tmp_path
):
    from ls_config.provision import CLASSIFY, provision

    settings = backend["settings"]
    client = label_studio.client()
    report = provision(client, media_root=backend["media"], manifest_rows=backend["rows"], scheduler_url=None,
                       secret=None, document_root=label_studio.document_root,
                       prefix=label_studio.unique_prefix())  # fmt: skip
    pid = report.projects[CLASSIFY]
    # Registering makes LS call /health and /setup, with the backend's basic-auth credentials.
    ml = client.ml.create(project=pid, url=backend["url"], title="slicerank CNN", auth_method="BASIC_AUTH",
                          basic_auth_user=settings.basic_auth_user, basic_auth_pass=settings.basic_auth_pass,
                          is_interactive=False, auto_update=True)  # fmt: skip
    assert client.ml.get(ml.id).state == "CO"  # connected: /setup accepted the Classify config

    truth = {r["image_id"]: r["true_class"] for r in backend["rows"]}
    tasks = list(client.tasks.list(project=pid, page_size=100))
    assert len(tasks) == len(truth)
    for task in tasks:
        client.annotations.create(task.id, result=[{
            "from_name": "slice_class", "to_name": "image", "type": "choices",
            "value": {"choices": [truth[task.data["image_id"]]]},
        }], lead_time=2.0)  # fmt: skip

    client.ml.train(ml.id)  # what "Start Training" in the model settings does
    held = redis_conn.get(LOCK_PREFIX + f"project:{pid}")
    assert held is not None, "Label Studio's training call did not reach the backend"
    job_id = json.loads(held)["job_id"]

    env = {**os.environ, "REDIS_URL": settings.redis_url, "SLICERANK_QUEUE": settings.queue_name,
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key,
           "MODEL_DIR": str(settings.model_dir), "SLICERANK_MEDIA_ROOT": str(settings.media_root)}  # fmt: skip
    log = tmp_path / "worker.log"
    with log.open("w") as fh:
        worker = subprocess.Popen([sys.executable, "-m", "slicerank", "worker", "--burst"], env=env,
                                  stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
        summary = wait_for_job(redis_conn, job_id, poll_s=0.5, timeout_s=240)
        worker.wait(timeout=60)
    assert summary["status"] == "finished", (summary, log.read_text()[-3000:])
    version = ModelRegistry(settings.model_dir).newest()
    assert summary["result"]["model_version"] == version.name
    assert summary["result"]["predictions_written"] == len(tasks)
    assert version.read_json("label_source")["n_labels"] == len(tasks)

    for task in client.tasks.list(project=pid, page_size=100, fields="all"):
        preds = [p for p in (task.predictions or []) if _get(p, "model_version") == version.name]
        assert len(preds) == 1, task.id
        (item,) = _get(preds[0], "result")
        assert item["from_name"] == "slice_class" and item["value"]["choices"][0] in truth.values()
        assert 1 / 3 <= _get(preds[0], "score") <= 1

    # LS's own round trip to /predict ("Test" in the model settings) and to /versions.
    r = client._client_wrapper.httpx_client.request(f"api/ml/{ml.id}/predict/test", method="POST",
                                                    params={"random": "true"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == 200 and body["response"][0]["model_version"] == version.name
    assert version.name in client.ml.list_model_versions(ml.id).versions


def _get(obj, key):
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)
