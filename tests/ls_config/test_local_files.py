"""One place for Label Studio's document root and the task URLs (``ls_config.local_files``),
and the local server's command line (no secrets on it)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import unquote

import pytest

from ls_config.local_files import URL_PREFIX, LocalFiles
from ls_config.server import LabelStudioServer


def served_path(files_env: dict[str, str], url: str) -> Path:
    """The file Label Studio reads for a task URL: DOCUMENT_ROOT / the ``d`` parameter."""
    assert url.startswith(URL_PREFIX), url
    return Path(files_env["LOCAL_FILES_DOCUMENT_ROOT"]) / unquote(url[len(URL_PREFIX) :])


def test_urls_resolve_to_the_file_under_the_document_root(tmp_path):
    media = tmp_path / "data" / "media"
    (media / "images").mkdir(parents=True)
    (media / "images" / "a b.png").write_bytes(b"png")
    files = LocalFiles.below(media)
    assert files.document_root == tmp_path / "data"  # default: the media root's parent
    url = files.url("images/a b.png")
    assert url == "/data/local-files/?d=media/images/a%20b.png"
    assert served_path(files.environment(), url).read_bytes() == b"png"
    # A deeper document root gives longer URLs that still reach the same file.
    deep = LocalFiles.below(media, tmp_path)
    assert deep.url("images/a b.png").endswith("d=data/media/images/a%20b.png")
    assert served_path(deep.environment(), deep.url("images/a b.png")).exists()


def test_bad_roots_are_named_in_the_error(tmp_path):
    media = tmp_path / "media"
    with pytest.raises(ValueError, match=f"media root {tmp_path} is not inside .* {media}"):
        LocalFiles.below(tmp_path, media)
    with pytest.raises(ValueError, match="is the Label Studio document root itself"):
        LocalFiles.below(media, media)


def test_the_server_serves_the_folder_the_urls_point_into(tmp_path):
    media = tmp_path / "files" / "media"
    server = LabelStudioServer(media, document_root=tmp_path / "files", data_dir=tmp_path / "d")
    env = server.environment()
    assert env["LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path / "files")
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path / "files")
    assert served_path(env, server.local_files.url("x.png")) == media / "x.png"


def test_secrets_go_through_the_environment_and_signup_is_closed_by_default(tmp_path):
    server = LabelStudioServer(tmp_path / "media", data_dir=tmp_path / "d", password="pw-secret-1")
    cmd = " ".join(server.command())
    env = server.environment()
    assert "pw-secret-1" not in cmd and server.api_key not in cmd
    assert env["LABEL_STUDIO_PASSWORD"] == "pw-secret-1"
    assert env["LABEL_STUDIO_USER_TOKEN"] == server.api_key
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    opened = LabelStudioServer(tmp_path / "media", data_dir=tmp_path / "d", open_signup=True)
    assert opened.environment()["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "false"


def test_no_error_report_leaves_the_machine(tmp_path, monkeypatch):
    """Label Studio's default Sentry DSNs are cleared, even if the caller's shell sets them."""
    monkeypatch.setenv("SENTRY_DSN", "https://key@example.invalid/1")
    env = LabelStudioServer(tmp_path / "media", data_dir=tmp_path / "d").environment()
    assert env["SENTRY_DSN"] == "" and env["FRONTEND_SENTRY_DSN"] == ""


def test_label_studio_dies_with_the_process_that_started_it(tmp_path):
    """A demo or test run killed with SIGKILL leaves no Label Studio behind (the launcher's
    Popen, tried on ``sleep`` instead of Label Studio)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from ls_config.server import popen_dying_with_parent\n"
         "child = popen_dying_with_parent(['sleep', '600'])\n"
         f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
         "time.sleep(600)"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the parent never started its child"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert os.getpgid(child) == child  # its own session and group
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(child), "the child outlived its killed parent"
    finally:
        parent.kill()
        if pid_file.exists() and pid_file.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
