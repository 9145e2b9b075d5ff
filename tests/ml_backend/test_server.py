"""The ML-backend HTTP contract with the payloads Label Studio 1.23 sends (FastAPI TestClient)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from ml_backend.config import CPU_SMALL
from ml_backend.model import build_model
from ml_backend.registry import ModelRegistry
from ml_backend.server import create_app
from ml_backend.settings import BackendSettings
from slicerank_base import CLASSES
from tests.ml_backend.synthdata import classify_task, make_media_root

CLASSIFY_XML = (Path(__file__).resolve().parents[2] / "ls_config" / "classify.xml").read_text()
AUTH = ("labelstudio", "s3cret-pass")


def register_model(model_dir: Path) -> str:
    """Register a cpu-small model (fixed random weights) and return its version name."""
    torch.manual_seed(0)
    model = build_model(CPU_SMALL)
    version = ModelRegistry(model_dir).register(
        checkpoint={"model": model.state_dict(), "optimizer": None, "epoch": 1, "config": CPU_SMALL.to_dict()},
        config=CPU_SMALL.to_dict(), label_source={"source": "classify"}, splits={}, metrics={"test": {}},
    )  # fmt: skip
    return version.name


@pytest.fixture
def media(tmp_path):
    rows = make_media_root(tmp_path / "media", n_per_class=2)
    return tmp_path / "media", rows


def make_client(tmp_path, media_root, **kw) -> TestClient:
    settings = BackendSettings(model_dir=tmp_path / "models", media_root=media_root,
                               basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1], **kw)  # fmt: skip
    return TestClient(create_app(settings, redis_conn=kw.pop("redis", None)))


def predict_body(tasks):
    # What LS's MLApi._prep_prediction_req sends.
    return {"tasks": tasks, "project": "3.1764208800", "label_config": CLASSIFY_XML,
            "params": {"login": None, "password": None, "context": None}}  # fmt: skip


def test_health_is_open_everything_else_needs_basic_auth(tmp_path, media, redis_conn):
    settings = BackendSettings(model_dir=tmp_path / "models", media_root=media[0],
                               basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1])  # fmt: skip
    client = TestClient(create_app(settings, redis_conn=redis_conn))
    assert client.get("/health").json() == {"status": "UP", "model_class": "SliceClassifier"}
    assert client.post("/setup", json={"schema": CLASSIFY_XML}).status_code == 401
    assert (
        client.post("/setup", json={"schema": CLASSIFY_XML}, auth=(AUTH[0], "wrong")).status_code
        == 401
    )
    assert client.get("/versions", auth=AUTH).status_code == 200


def test_setup_with_the_real_classify_config(tmp_path, media):
    client = make_client(tmp_path, media[0])
    body = {"project": "3.1764208800", "schema": CLASSIFY_XML, "hostname": "http://localhost:8080",
            "access_token": "abc", "extra_params": None}  # fmt: skip
    r = client.post("/setup", json=body, auth=AUTH)
    assert r.status_code == 200 and r.json()["model_version"] == ""
    name = register_model(tmp_path / "models")
    assert client.post("/setup", json=body, auth=AUTH).json()["model_version"] == name


def test_setup_rejects_a_config_without_the_class_choice(tmp_path, media):
    client = make_client(tmp_path, media[0])
    no_choices = '<View><Image name="image" value="$image"/></View>'
    r = client.post("/setup", json={"schema": no_choices}, auth=AUTH)
    assert r.status_code == 400 and 'add <Choices name="slice_class"' in r.json()["detail"]
    missing = CLASSIFY_XML.replace('<Choice value="too_apical" hotkey="3" html="Too apical"/>', "")
    r = client.post("/setup", json={"schema": missing}, auth=AUTH)
    assert r.status_code == 400 and "too_apical" in r.json()["detail"]


def test_predict_without_a_model_says_so_and_invents_nothing(tmp_path, media):
    client = make_client(tmp_path, media[0])
    tasks = [classify_task(1, media[1][0])]
    r = client.post("/predict", json=predict_body(tasks), auth=AUTH)
    assert r.status_code == 200
    assert r.json()["results"] == [] and "no trained model yet" in r.json()["message"]


def test_predict_returns_one_choice_per_task_with_probability_and_version(tmp_path, media):
    root, rows = media
    name = register_model(tmp_path / "models")
    client = make_client(tmp_path, root)
    # As Label Studio stores them: ids, data with the local-files URL, no annotations.
    tasks = [
        {**classify_task(10 + i, r), "annotations": [], "predictions": []}
        for i, r in enumerate(rows)
    ]
    r = client.post("/predict", json=predict_body(tasks), auth=AUTH)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(tasks)
    for res in results:
        assert res["model_version"] == name
        (item,) = res["result"]
        assert (item["from_name"], item["to_name"], item["type"]) == (
            "slice_class",
            "image",
            "choices",
        )
        (choice,) = item["value"]["choices"]
        assert choice in CLASSES
        probs = res["probabilities"]
        assert sum(probs.values()) == pytest.approx(1, abs=1e-5)
        assert probs[choice] == res["score"]
        # The manifest knows every slice's scan: each is decoded with its whole stack, so
        # the choice is the monotone sequence's (not always the single most probable class).
        assert res["decoding"] == "stack"
        assert sum(res["per_slice_probabilities"].values()) == pytest.approx(1, abs=1e-5)
    by_scan: dict[str, list[tuple[int, int]]] = {}
    for row, res in zip(rows, results, strict=True):
        choice = CLASSES.index(res["result"][0]["value"]["choices"][0])
        by_scan.setdefault(row["scan_id"], []).append((row["slice_index"], choice))
    for stack in by_scan.values():
        classes = [c for _, c in sorted(stack)]
        assert classes == sorted(classes), by_scan
    # The same image gives the same answer whether sent alone or in a batch.
    alone = client.post("/predict", json=predict_body(tasks[:1]), auth=AUTH).json()["results"][0]
    assert alone["score"] == pytest.approx(results[0]["score"], abs=1e-5)


def test_predict_with_a_missing_image_is_a_clear_error(tmp_path, media):
    root, rows = media
    register_model(tmp_path / "models")
    (root / rows[0]["path"]).unlink()
    client = make_client(tmp_path, root, label_studio_url="")
    r = client.post("/predict", json=predict_body([classify_task(7, rows[0])]), auth=AUTH)
    assert r.status_code == 422 and "task 7" in r.json()["detail"]


def test_versions_lists_newest_first(tmp_path, media):
    first = register_model(tmp_path / "models")
    second = register_model(tmp_path / "models")
    client = make_client(tmp_path, media[0])
    body = client.get("/versions", auth=AUTH).json()
    assert body["versions"] == [second, first]


@pytest.mark.integration
def test_start_training_webhook_enqueues_once_per_project(tmp_path, media, redis_conn):
    settings = BackendSettings(model_dir=tmp_path / "models", media_root=media[0],
                               queue_name="slicerank-test-webhook", preset="cpu-small",
                               dev_no_auth=True)  # fmt: skip
    client = TestClient(create_app(settings, redis_conn=redis_conn))
    # LS 1.23 posts the serialized project (WEBHOOK_SERIALIZERS['project']).
    event = {"action": "START_TRAINING", "project": {"id": 42, "title": "slicerank Classify",
                                                     "label_config": CLASSIFY_XML}}  # fmt: skip
    first = client.post("/webhook", json=event)
    assert first.status_code == 201 and first.json()["created"] is True
    second = client.post("/webhook", json=event)
    assert second.status_code == 200 and second.json()["created"] is False
    assert (
        second.json()["job"] == first.json()["job"] and "already queued" in second.json()["message"]
    )
    # The older /train path (project as "<id>.<timestamp>") is the same request.
    legacy = client.post(
        "/train", json={"annotations": [], "project": "42.1764208800", "label_config": CLASSIFY_XML}
    )
    assert legacy.json()["job"] == first.json()["job"]
    from rq import Queue

    assert Queue("slicerank-test-webhook", connection=redis_conn).count == 1
    other = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 42}})
    assert other.json()["status"] == "ignored"
    status = client.post("/job_status", json={"job": first.json()["job"]}).json()
    assert status["status"] == "queued" and status["meta"]["stage"] == "queued"
