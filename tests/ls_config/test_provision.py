"""Provisioning against a real Label Studio: projects, storage, webhooks, tasks; idempotent."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.etree import ElementTree

import httpx
import pytest

from ls_config.provision import (
    CLASSIFY,
    KINDS,
    SECRET_HEADER,
    label_config,
    local_file_url,
    project_title,
    provision,
)
from tests.ls_server import write_cohort


def test_label_configs_parse_and_name_the_contract_tags():
    rank = ElementTree.fromstring(label_config("Rank"))
    assert rank.find(".//List").attrib == {
        "name": "slices",
        "value": "$images",
        "title": rank.find(".//List").attrib["title"],
    }
    assert rank.find(".//Ranker").attrib == {"name": "order", "toName": "slices"}
    # The grid the scheduler fills (data.grid), the typed order it reads, the view buttons.
    assert rank.find(".//HyperText").attrib["value"] == "$grid"
    assert rank.find(".//TextArea").attrib["name"] == "typed"
    hotkeys = [c.attrib["hotkey"] for c in rank.iter("Choice")]
    assert sorted(hotkeys) == list("1234567")
    assert {c.attrib["name"] for c in rank.iter("Choices")} == {"window", "zoom"}
    for kind in (CLASSIFY, "Boundary"):
        root = ElementTree.fromstring(label_config(kind))
        image = root.find(".//Image").attrib
        for control in ("zoomControl", "brightnessControl", "contrastControl"):
            assert image[control] == "true", (kind, control)
        choices = root.find(".//Choices")
        assert choices.attrib["name"] == "slice_class"
        assert [c.attrib["value"] for c in choices] == ["too_basal", "lv", "too_apical"]
        assert [c.attrib["hotkey"] for c in choices] == ["1", "2", "3"]


def test_local_file_url_is_relative_to_the_document_root(tmp_path):
    media = tmp_path / "media"
    assert local_file_url("a/b c.png", media, tmp_path) == "/data/local-files/?d=media/a/b%20c.png"
    with pytest.raises(ValueError, match="not inside the Label Studio document root"):
        local_file_url("a.png", tmp_path, media)


class _HealthyBackend(BaseHTTPRequestHandler):
    """Answers Label Studio's health check the way an ML backend does (the real backend has its
    own end-to-end test); provisioning only needs it to be reachable."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        body = json.dumps({"status": "UP", "model_class": "test"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def backend_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthyBackend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.integration
def test_provision_refuses_an_unreachable_backend_clearly(label_studio):
    media = label_studio.new_media_dir()
    rows = write_cohort(media, n_scans=1, n_slices=3)
    with pytest.raises(ValueError, match="could not register the ML backend http://127.0.0.1:9"):
        provision(
            label_studio.client(),
            media_root=media,
            manifest_rows=rows,
            scheduler_url=None,
            secret=None,
            backend_url="http://127.0.0.1:9",
            document_root=label_studio.document_root,
            prefix=label_studio.unique_prefix(),
        )


@pytest.mark.integration
def test_provision_creates_everything_once(label_studio, backend_url):
    client = label_studio.client()
    media = label_studio.new_media_dir()
    rows = write_cohort(media, n_scans=3, n_slices=6)
    prefix = label_studio.unique_prefix()
    kwargs = dict(
        media_root=media,
        manifest_rows=rows,
        scheduler_url="http://127.0.0.1:9/",
        secret="s3cret-value",
        backend_url=backend_url,
        document_root=label_studio.document_root,
        prefix=prefix,
        seed=3,
    )
    first = provision(client, **kwargs)
    assert set(first.projects) == set(KINDS)
    assert first.classify_tasks_imported == len(rows)
    assert not any("s3cret-value" in a for a in first.actions)

    second = provision(client, **kwargs)
    assert second.actions == [] and second.projects == first.projects

    pid = first.projects[CLASSIFY]
    assert client.projects.get(pid).title == project_title(CLASSIFY, prefix)
    tasks = list(client.tasks.list(project=pid, page_size=100))
    assert sorted(t.data["image_id"] for t in tasks) == sorted(r["image_id"] for r in rows)
    # Shuffled: the import order is not the manifest (scan, slice) order.
    assert [t.data["image_id"] for t in tasks] != [r["image_id"] for r in rows]
    hooks = list(client.webhooks.list(project=first.projects["Rank"]))
    assert [h.url for h in hooks] == ["http://127.0.0.1:9/webhook"]
    assert hooks[0].headers == {SECRET_HEADER: "s3cret-value"}
    # Deleting tasks sends only TASKS_DELETED: the scheduler must hear it.
    assert "TASKS_DELETED" in hooks[0].actions
    assert [b.url for b in client.ml.list(project=pid)] == [backend_url]

    # The image really is served to a logged-in client through the Local Files storage.
    url = label_studio.url + tasks[0].data["image"]
    got = httpx.get(url, headers={"Authorization": f"Token {label_studio.api_key}"})
    assert got.status_code == 200 and got.content[:8] == b"\x89PNG\r\n\x1a\n"

    # A changed setting (the secret) is updated in place, not duplicated.
    third = provision(client, **{**kwargs, "secret": "other"})
    assert len(third.actions) == 2 and all("updated webhook" in a for a in third.actions)
    hooks = list(client.webhooks.list(project=first.projects["Rank"]))
    assert len(hooks) == 1 and hooks[0].headers == {SECRET_HEADER: "other"}


@pytest.mark.integration
def test_provision_cli_reports_changes_as_json(label_studio, tmp_path):
    media = label_studio.new_media_dir()
    write_cohort(media, n_scans=1, n_slices=5)
    out = tmp_path / "p.json"
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.api_key,
        "SCHEDULER_WEBHOOK_SECRET": "cli-secret",
        "PATH": "/usr/bin:/bin",
    }
    cmd = [sys.executable, "-m", "slicerank.cli", "provision", "--media-root", str(media)]
    cmd += ["--document-root", str(label_studio.document_root), "--prefix"]
    cmd += [label_studio.unique_prefix(), "--scheduler-url", "http://127.0.0.1:9"]
    for expect_changed in (True, False):
        done = subprocess.run(cmd + ["--json", str(out)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "cli-secret" not in done.stdout + done.stderr
        summary = json.loads(out.read_text())
        assert summary["changed"] is expect_changed
    assert summary["classify_tasks_imported"] == 0

    bad = subprocess.run(cmd[:4] + [str(media / "nope")], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "manifest" in bad.stderr
