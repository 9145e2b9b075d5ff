"""Limits before work (issue 21, item 3): image sizes checked from the header before decoding,
decompression-bomb warnings as errors, no unbounded scaling, capped /predict requests and
request bodies, and one bad image that neither breaks /predict nor a training job."""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.images import blank_png
from ml_backend.config import get_preset
from ml_backend.data import build_dataset
from ml_backend.labels import LabelledImage
from ml_backend.media import ImageRefError
from ml_backend.server import create_app
from ml_backend.settings import BackendSettings
from ml_backend.transforms import ImageRefusedError, load_grayscale, prepare_image
from tests.ml_backend.synthdata import classify_task, make_media_root
from tests.ml_backend.test_security import AUTH, png_bytes
from tests.ml_backend.test_server import register_model

STUDY = get_preset("study")


@pytest.mark.parametrize(
    "size, mode, reason",
    [
        ((2, 60000), "L", "30000.0 times longer"),  # the 2×60,000 PNG
        ((13000, 13000), "RGBA", "decompression bomb"),  # 657 KB, 169 M pixels
        ((4097, 4096), "L", "larger than 16777216 pixels"),
        ((4096, 1000), "L", "4.1 times longer"),
    ],
)
def test_image_size_is_refused_from_the_header_before_decoding(tmp_path, size, mode, reason):
    path = tmp_path / "x.png"
    path.write_bytes(blank_png(*size, mode))
    with pytest.raises(ImageRefusedError, match=reason):
        load_grayscale(path)
    # The header alone decides: the same header over a cut-off body is refused the same way.
    data = path.read_bytes()
    cut = data[:33] + data[-12:]  # signature + IHDR, IEND (no pixel data at all)
    with pytest.raises(ImageRefusedError, match=reason):
        load_grayscale(io.BytesIO(cut))


def test_the_decompression_bomb_warning_is_an_error(tmp_path, monkeypatch):
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that, and decodes anyway.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(size=50))  # 2,500 pixels
    with pytest.raises(ImageRefusedError, match="decompression bomb"):
        load_grayscale(path)


def test_other_formats_are_not_decoded(tmp_path):
    path = tmp_path / "x.tif"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    with pytest.raises(OSError):
        load_grayscale(path)


def test_prepare_image_bounds_the_long_side_before_scaling():
    # Scaled up to a 256 short side this would be 256 × 230,400 pixels.
    with pytest.raises(ImageRefusedError, match="long side"):
        prepare_image(np.zeros((3000, 2), np.uint8), STUDY)
    assert prepare_image(np.zeros((300, 200), np.uint8), STUDY).shape == (256, 256)


@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    rows = make_media_root(root, n_per_class=2, size=64)
    (root / "img" / "bomb.png").write_bytes(blank_png(2, 60000))
    # In a scan with others: decoding that scan reads it from the media root too.
    with (root / "manifest.csv").open("a") as fh:
        fh.write("bomb,s0,99,6,img/bomb.png,lv\n")
    register_model(tmp_path / "models")
    return root, rows


def client_for(tmp_path, root, **kw) -> TestClient:
    settings = BackendSettings(model_dir=tmp_path / "models", media_root=root,
                               basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1], **kw)  # fmt: skip
    return TestClient(create_app(settings))


def test_one_bad_image_does_not_break_predict(tmp_path, media):
    root, rows = media
    bomb = {"id": 7, "data": {"image": "/data/local-files/?d=img/bomb.png", "image_id": "bomb"}}
    tasks = [classify_task(1, rows[0]), bomb, classify_task(2, rows[1])]
    r = client_for(tmp_path, root).post("/predict", json={"tasks": tasks}, auth=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["results"]) == 3 and out["results"][1] == []  # no prediction for it
    assert out["results"][0]["result"] and out["results"][2]["result"]
    (skip,) = out["skipped"]
    assert skip["task"] == 7 and "times longer than it is wide" in skip["reason"]
    # Alone, it is refused as a request with its reason.
    r = client_for(tmp_path, root).post("/predict", json={"tasks": [bomb]}, auth=AUTH)
    assert r.status_code == 422 and "task 7" in r.json()["detail"]


def test_predict_caps_the_tasks_per_request(tmp_path, media):
    root, rows = media
    client = client_for(tmp_path, root, predict_max_tasks=3)
    tasks = [classify_task(i, rows[0]) for i in range(4)]
    r = client.post("/predict", json={"tasks": tasks}, auth=AUTH)
    assert r.status_code == 413 and "at most 3" in r.json()["detail"]
    assert client.post("/predict", json={"tasks": tasks[:3]}, auth=AUTH).status_code == 200


def test_limits_come_from_the_environment():
    s = BackendSettings.from_env({"SLICERANK_PREDICT_MAX_TASKS": "50",
                                  "SLICERANK_BACKEND_MAX_BODY_MB": "2"})  # fmt: skip
    assert s.predict_max_tasks == 50 and s.max_body_bytes == 2 * 1024 * 1024
    with pytest.raises(ValueError, match="SLICERANK_PREDICT_MAX_TASKS"):
        BackendSettings.from_env({"SLICERANK_PREDICT_MAX_TASKS": "0"})


@pytest.fixture
def live_backend(tmp_path, media):
    """The backend on a real socket (uvicorn), with a 64 KB body cap."""
    root, _ = media
    settings = BackendSettings(model_dir=tmp_path / "models", media_root=root,
                               basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1],
                               max_body_bytes=64 * 1024)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def _raw(port: int, head: str, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


@pytest.mark.parametrize("path", ["/predict", "/setup", "/webhook", "/train", "/job_status"])
def test_every_endpoint_refuses_a_large_body_from_its_content_length(live_backend, path):
    # Only the headers are sent: the answer comes before any of the gigabyte does, and
    # without credentials too (nothing is read for anyone).
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000000000\r\n\r\n")  # fmt: skip
    answer = _raw(live_backend, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request body too large" in answer


def test_a_body_without_length_is_cut_off_while_it_streams(live_backend):
    import httpx

    sent = []

    def body():
        for _ in range(1000):  # 8 MB in 8 KB pieces, chunked (no Content-Length)
            sent.append(1)
            yield b" " * 8192

    with httpx.Client(timeout=30) as http:
        try:
            r = http.post(f"http://127.0.0.1:{live_backend}/predict", content=body(), auth=AUTH,
                          headers={"Content-Type": "application/json"})  # fmt: skip
            status = r.status_code
            assert "request body too large" in r.json()["detail"]
        except httpx.TransportError:
            status = 413  # the server may close before the client finishes sending
    assert status == 413
    # A body under the cap is read as usual.
    r = httpx.post(f"http://127.0.0.1:{live_backend}/setup", json={}, auth=AUTH, timeout=30)
    assert r.status_code == 200


def test_one_bad_image_does_not_stop_training(tmp_path, media):
    root, rows = media
    labels = [LabelledImage(r["image_id"], r["true_class"]) for r in rows]
    labels.append(LabelledImage("bomb", "lv", None, "img/bomb.png"))
    labels.append(LabelledImage("out", "lv", None, "../outside.png"))
    with pytest.raises(ImageRefError):  # strict unless asked to skip
        build_dataset(labels, root, STUDY)
    skipped: list[dict] = []
    data = build_dataset(labels, root, STUDY, skipped=skipped)
    assert data.image_ids == [r["image_id"] for r in rows]
    assert [s["image_id"] for s in skipped] == ["out", "bomb"]
    assert "times longer" in skipped[1]["reason"] and "refused" in skipped[0]["reason"]


def test_a_training_job_skips_a_bad_task_and_says_so(tmp_path, monkeypatch):
    from ml_backend.jobs import TrainRequest, train_job
    from ml_backend.registry import ModelRegistry

    root = tmp_path / "m2"
    rows = make_media_root(root, n_per_class=6, size=48)
    (root / "img" / "bomb.png").write_bytes(blank_png(2, 60000))
    tasks = [classify_task(i + 1, r, label=r["true_class"]) for i, r in enumerate(rows)]
    tasks.append({"id": 99, "data": {"image": "/data/local-files/?d=img/bomb.png",
                                     "image_id": "bomb"},
                  "annotations": [dict(tasks[0]["annotations"][0], id=5000)]})  # fmt: skip
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    monkeypatch.setenv("SLICERANK_WORKER_ROOTS", str(tmp_path))
    request = TrainRequest(labels_path=str(export), preset="cpu-small", media_root=str(root),
                           model_dir=str(tmp_path / "models2"), device="cpu", epochs=1,
                           seeds=(0,), write_predictions=False)  # fmt: skip
    out = train_job(request.to_dict())
    source = ModelRegistry(tmp_path / "models2").get(out["model_version"]).read_json("label_source")
    assert source["n_skipped"] == 1 and source["n_labels"] == len(rows)
    assert source["skipped_images"][0]["image_id"] == "bomb"
