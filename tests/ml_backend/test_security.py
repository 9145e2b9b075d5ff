"""Security holes of the ML backend, each shown closed (issue 15): confined image paths, no
fetches from anywhere but Label Studio, auth on by default, strict project ids, a warning for a
Redis without password. Real HTTP servers stand in for Label Studio and for an attacker's host."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ml_backend.data import read_manifest_paths, resolve_image_paths
from ml_backend.labels import LabelledImage
from ml_backend.media import ImageRefError, check_relative, confine, label_studio_url_for
from ml_backend.server import create_app, parse_project_id
from ml_backend.settings import AuthConfigError, BackendSettings
from tests.ml_backend.synthdata import classify_task, make_media_root
from tests.ml_backend.test_server import register_model

AUTH = ("labelstudio", "s3cret-pass")


def png_bytes(value: int = 200, size: int = 64) -> bytes:
    """A small grayscale PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


@dataclass
class RecordingServer:
    """A real HTTP server on 127.0.0.1 that records every request and serves ``files``."""

    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""

    def handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                outer.requests.append((self.path, self.headers.get("Authorization")))
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.end_headers()
                    return
                body = outer.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def http_server() -> Iterator[callable]:
    """Start recording servers on demand; all are shut down after the test."""
    servers = []

    def start(**kw) -> RecordingServer:
        rec = RecordingServer(**kw)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), rec.handler())
        rec.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return rec

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


#: Every path opened in this process while a :class:`Canary` watches.
_OPENED: list[str] = []
#: How many canaries watch now (nothing is recorded while none does).
_WATCHING = [0]


def _record_opens(event: str, args: tuple) -> None:
    # Python's audit hook sees every open() (builtins, io, os.open) in every thread, on any
    # file system: unlike access times, it cannot be switched off by a mount option. It only
    # records; paths are resolved later, outside the hook.
    if _WATCHING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_record_opens)


@dataclass
class Canary:
    """A secret image outside the media root; :meth:`untouched` says whether anything in this
    process opened it (directly or through a symlink) since it was made."""

    path: Path
    start: int = 0

    @staticmethod
    def make(folder: Path) -> Canary:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "secret.png"
        path.write_bytes(png_bytes(17))
        _WATCHING[0] += 1
        return Canary(path, len(_OPENED))

    def stop(self) -> None:
        """Stop watching (the record is dropped once no canary watches)."""
        _WATCHING[0] -= 1
        if not _WATCHING[0]:
            _OPENED.clear()

    def untouched(self) -> bool:
        """Whether no open() since :meth:`make` named the canary or a link to it."""
        target = os.path.realpath(self.path)
        return not any(os.path.realpath(p) == target for p in _OPENED[self.start :])


def test_the_canary_sees_a_read_through_a_symlink(tmp_path):
    canary = Canary.make(tmp_path / "outside")
    (tmp_path / "link.png").symlink_to(canary.path)
    (tmp_path / "other.png").write_bytes(b"x")
    (tmp_path / "other.png").read_bytes()
    assert canary.untouched()
    with Image.open(tmp_path / "link.png") as img:
        img.size  # noqa: B018 - the header read is what counts
    assert not canary.untouched()
    canary.stop()


@pytest.fixture
def env(tmp_path):
    """A media root with a registered model, a canary outside it and a symlink to the canary."""
    root = tmp_path / "media"
    rows = make_media_root(root, n_per_class=1, size=64)
    canary = Canary.make(tmp_path / "outside")
    (root / "img" / "link.png").symlink_to(canary.path)
    register_model(tmp_path / "models")
    yield {"root": root, "rows": rows, "canary": canary, "tmp": tmp_path}
    canary.stop()


def client_for(env, **kw) -> TestClient:
    settings = BackendSettings(model_dir=env["tmp"] / "models", media_root=env["root"],
                               basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1], **kw)  # fmt: skip
    return TestClient(create_app(settings))


def task_with(ref, task_id=5, image_id="no-such-id") -> dict:
    return {"id": task_id, "data": {"image": ref, "image_id": image_id}}


# -- 1. path traversal ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, reason",
    [
        ("/data/local-files/?d=../outside/secret.png", "'..'"),
        ("/data/local-files/?d=media/../../outside/secret.png", "'..'"),
        ("/data/local-files/?d=img/../../outside/secret.png", "'..'"),
        ("/data/local-files/?d=%2Fetc%2Fpasswd", "absolute"),
        ("/data/local-files/?d=img/lv000.png&d=../outside/secret.png", "'..'"),
        ("/data/local-files/?d=img/link.png", "symlink"),
        ("/data/local-files/?d=media/img/link.png", "symlink"),
        ("/data/local-files/?d=img%00/x.png", "NUL"),
    ],
)
def test_predict_refuses_paths_out_of_the_media_root_and_reads_nothing(env, ref, reason):
    canary = env["canary"]  # tmp/outside/secret.png beside tmp/media
    r = client_for(env).post("/predict", json={"tasks": [task_with(ref, 31)]}, auth=AUTH)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "task 31" in detail and reason in detail
    assert canary.untouched()


def test_predict_still_serves_images_inside_the_media_root(env):
    rows = env["rows"]
    tasks = [classify_task(1, rows[0]), classify_task(2, rows[1], prefix="media/")]
    tasks[1]["data"]["image_id"] = "unknown"  # found by its path alone
    r = client_for(env, label_studio_url="").post("/predict", json={"tasks": tasks}, auth=AUTH)
    assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_training_refuses_task_paths_out_of_the_media_root(env):
    root = env["root"]
    manifest = read_manifest_paths(root)
    rel = os.path.relpath(env["canary"].path, root)
    for hint in (rel, "img/link.png", str(env["canary"].path)):
        with pytest.raises(ImageRefError, match="refused"):
            resolve_image_paths([LabelledImage("x", "lv", None, hint)], root, manifest)
    # A manifest row cannot lead out either (it names the row, not the file).
    with pytest.raises(ImageRefError, match="manifest path"):
        resolve_image_paths([LabelledImage("x", "lv")], root, {"x": "img/link.png"})
    ok = resolve_image_paths([LabelledImage("x", "lv", None, "media/img/lv000.png")], root, {})
    assert ok == [(root / "img" / "lv000.png").resolve()]


def test_path_checks_are_lexical_first_then_resolved(tmp_path):
    for bad in ("", "/etc/passwd", "a/../../b", "..", "a\\..\\b", "a\x00b", "C:/x"):
        with pytest.raises(ValueError):
            check_relative(bad)
    assert check_relative("a/./b.png") == "a/b.png"
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="symlink"):
        confine(tmp_path / "root", "out/secret")


# -- 2. server-side request forgery --------------------------------------------------------------


def test_predict_never_contacts_a_foreign_host(env, http_server):
    attacker = http_server(files={"/x.png": png_bytes()})
    ls = http_server()
    client = client_for(env, label_studio_url=ls.url, label_studio_api_key="ls-admin-token")
    host, port = attacker.url.rsplit(":", 1)
    refs = [
        f"{attacker.url}/x.png",
        f"{ls.url}@127.0.0.1:{port}/x.png",  # user-info trick
        f"//127.0.0.1:{port}/x.png",
        f"{host}:{port}/data/local-files/?d=img/nothing.png",
        "file:///etc/passwd",
        "s3://bucket/x.png",
        "gopher://127.0.0.1/x",
        "x.png",
    ]
    for i, ref in enumerate(refs):
        r = client.post("/predict", json={"tasks": [task_with(ref, 100 + i)]}, auth=AUTH)
        assert r.status_code == 400, (ref, r.text)
        assert f"task {100 + i}" in r.json()["detail"]
    assert attacker.requests == [] and ls.requests == []


def test_predict_fetches_from_label_studio_with_the_key_sent_only_there(env, http_server):
    attacker = http_server(files={"/x.png": png_bytes()})
    ls = http_server(
        files={"/data/upload/1/a.png": png_bytes(90)},
        redirects={"/data/upload/1/moved.png": f"{attacker.url}/x.png"},
    )
    client = client_for(env, label_studio_url=ls.url, label_studio_api_key="ls-admin-token")
    tasks = [task_with("/data/upload/1/a.png", 1), task_with(f"{ls.url}/data/upload/1/a.png", 2)]
    r = client.post("/predict", json={"tasks": tasks}, auth=AUTH)
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert ls.requests == [("/data/upload/1/a.png", "Token ls-admin-token")] * 2
    # A redirect away from Label Studio is not followed.
    r = client.post(
        "/predict", json={"tasks": [task_with("/data/upload/1/moved.png", 3)]}, auth=AUTH
    )
    assert r.status_code == 422 and "task 3" in r.json()["detail"] and "302" in r.json()["detail"]
    assert attacker.requests == []


def test_url_rules():
    base = "https://ls.example.org"
    assert label_studio_url_for("/data/upload/1/a.png", base) == f"{base}/data/upload/1/a.png"
    assert label_studio_url_for(f"{base}:443/x", base) == f"{base}:443/x"
    for ref in ("http://ls.example.org/x", "https://ls.example.org.evil.net/x",
                "https://evil.net/x", "https://ls.example.org:8443/x"):  # fmt: skip
        with pytest.raises(ValueError):
            label_studio_url_for(ref, base)


# -- 3. auth on by default -----------------------------------------------------------------------


def test_backend_refuses_to_start_without_credentials(env, tmp_path):
    base = {"model_dir": tmp_path / "models", "media_root": env["root"]}
    with pytest.raises(AuthConfigError, match="--dev-no-auth"):
        create_app(BackendSettings(**base))
    with pytest.raises(AuthConfigError, match="empty"):
        create_app(BackendSettings(**base, basic_auth_user="ls", basic_auth_pass=""))
    with pytest.raises(AuthConfigError, match="empty"):
        create_app(BackendSettings(**base, basic_auth_user="ls", basic_auth_pass="  "))
    with pytest.raises(AuthConfigError, match="BASIC_AUTH_USER"):
        create_app(BackendSettings(**base, basic_auth_pass="pw"))
    dev = TestClient(create_app(BackendSettings(**base, dev_no_auth=True)))
    assert dev.get("/versions").status_code == 200
    # The development flag does not switch off credentials that are set.
    both = TestClient(create_app(BackendSettings(**base, dev_no_auth=True, basic_auth_user="u",
                                                 basic_auth_pass="p")))  # fmt: skip
    assert both.get("/versions").status_code == 401


def test_cli_backend_exits_without_credentials(monkeypatch, capsys):
    from slicerank.cli import main

    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "SLICERANK_BACKEND_DEV_NO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    assert main(["backend", "--port", "1"]) == 2
    assert "BASIC_AUTH_USER and BASIC_AUTH_PASS" in capsys.readouterr().err
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "")
    assert main(["backend", "--port", "1"]) == 2
    assert "BASIC_AUTH_PASS is empty" in capsys.readouterr().err


def test_docs_and_schema_need_auth(env):
    client = client_for(env)
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(path).status_code in (401, 404), path
    assert client.get("/docs").status_code == 401
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/openapi.json", auth=("labelstudio", "wrong")).status_code == 401
    schema = client.get("/openapi.json", auth=AUTH)
    assert schema.status_code == 200 and "/predict" in schema.json()["paths"]
    docs = client.get("/docs", auth=AUTH)
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_wrong_user_or_password_of_any_length_is_refused(env):
    client = client_for(env)
    for auth in (("labelstudio", ""), ("", AUTH[1]), ("labelstudio", AUTH[1] + "x"),
                 ("labelstudio", AUTH[1][:-1]), ("LabelStudio", AUTH[1]), ("x" * 5000, "y")):  # fmt: skip
        assert client.get("/versions", auth=auth).status_code == 401, auth
    assert client.get("/versions", auth=AUTH).status_code == 200


# -- 4. trust boundaries -------------------------------------------------------------------------


@pytest.mark.parametrize("project", [True, -3, 0, 10**20, [1], {"id": [2]}, "1e5", "٣", 2.5e12])
def test_project_ids_are_strict(project):
    with pytest.raises(ValueError, match="not a Label Studio project id"):
        parse_project_id(project)


def test_project_ids_in_label_studio_forms():
    assert parse_project_id("3.1764208800") == 3
    assert parse_project_id({"id": 42, "title": "x"}) == 42
    assert parse_project_id(7) == 7 and parse_project_id(None) is None


def test_redis_without_password_is_warned_about():
    from ml_backend.cli import redis_password_warning

    assert "no password" in redis_password_warning("redis://10.0.0.5:6379/0")
    assert redis_password_warning("redis://:pw@10.0.0.5:6379/0") is None
    assert redis_password_warning("rediss://user:pw@redis:6380/0") is None


@pytest.mark.integration
def test_worker_command_warns_without_a_redis_password(redis_url, monkeypatch, caplog):
    from slicerank.cli import main

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("SLICERANK_QUEUE", "slicerank-test-security-worker")
    # The command passes settings on to its jobs through these; restore them afterwards.
    monkeypatch.setenv("MODEL_DIR", os.environ.get("MODEL_DIR", "runs/models"))
    monkeypatch.setenv("SLICERANK_DEVICE", os.environ.get("SLICERANK_DEVICE", "auto"))
    with caplog.at_level(logging.WARNING, logger="ml_backend.cli"):
        assert main(["worker", "--burst"]) == 0
    assert any("REDIS_URL has no password" in r.getMessage() for r in caplog.records)


class _RunsCodeWhenUnpickled:
    """What someone who reaches Redis can store as a job argument: a pickle that makes a
    folder (standing in for any code) the moment it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.integration
def test_workers_never_unpickle_what_is_in_redis(redis_conn, tmp_path):
    from rq import Queue
    from rq.job import Job

    from ml_backend.jobs import SERIALIZER, run_worker

    queue_name = "slicerank-test-security-pickle"
    marker = tmp_path / "code-ran"
    # Queued with RQ's default (pickle) serializer, as an attacker's client would.
    evil = Queue(queue_name, connection=redis_conn).enqueue(
        "ml_backend.jobs.train_job", _RunsCodeWhenUnpickled(marker)
    )
    assert not marker.exists()
    run_worker(redis_conn, queue_name, burst=True)
    assert not marker.exists(), "the worker unpickled job data from Redis"
    job = Job.fetch(evil.id, connection=redis_conn, serializer=SERIALIZER)
    assert job.get_status(refresh=True) == "failed"


@pytest.mark.integration
def test_worker_token_of_the_label_studio_owner_is_warned_about(label_studio):
    from ml_backend.cli import owner_token_warning

    # The session's Label Studio token is the organisation owner's (the lead who set it up).
    warning = owner_token_warning(label_studio.url, label_studio.api_key)
    assert warning and "owner" in warning and "non-admin" in warning
    # Nothing to say when Label Studio cannot be asked (the worker still starts).
    assert owner_token_warning("http://127.0.0.1:1", label_studio.api_key, timeout=1) is None
    assert owner_token_warning(label_studio.url, "not-a-token") is None
