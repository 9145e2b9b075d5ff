"""Start and stop a real local Label Studio (used by the tests and the demo).

``LabelStudioServer`` runs ``label-studio start`` in its own process group with a temporary
data directory and SQLite, a known user and legacy API token, local-file serving from a media
root, and the two SSRF guards of 1.23 switched off so that a scheduler and an ML backend on
127.0.0.1 can be reached. It waits for ``/health`` and for the token to be accepted.

The admin password and the API token reach Label Studio through its environment
(``LABEL_STUDIO_PASSWORD``, ``LABEL_STUDIO_USER_TOKEN``), never its command line: any local
user can read another's command line in ``ps``, but not its environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ls_config.local_files import LocalFiles

log = logging.getLogger(__name__)

DEFAULT_USERNAME = "lead@slicerank.local"
"""Login (an e-mail address, as Label Studio requires) of the user the server is created with."""

STARTUP_TIMEOUT_S = 240.0
"""Fresh SQLite migrations take ~25 s on an idle 2-core machine; several times that when shared."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (bind to port 0 and let the OS choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def label_studio_executable() -> str:
    """The ``label-studio`` console script of this Python environment (or on PATH)."""
    beside = Path(sys.executable).with_name("label-studio")
    if beside.exists():
        return str(beside)
    found = shutil.which("label-studio")
    if not found:
        raise FileNotFoundError(
            "label-studio is not installed: install the 'server' extra (pip install -e '.[server]')"
        )
    return found


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Before exec: ask the kernel for SIGTERM when the parent dies (Linux; elsewhere a no-op),
    so a demo or test run that is killed hard leaves no Label Studio behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def popen_dying_with_parent(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``Popen(cmd)`` in its own session (so stopping its group reaches every helper it forks)
    that also ends when this process dies, even by SIGKILL. Linux ties this to the thread that
    calls it: call it from one that lives as long as the child (the main thread)."""
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
        **kwargs,
    )


class LabelStudioServer:
    """A local Label Studio process with a known user and API token.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``document_root`` (default:
    the parent of ``media_root``) becomes ``LOCAL_FILES_DOCUMENT_ROOT``; Label Studio 1.23 wants a
    Local Files storage strictly below it, which the media root then is. Provision the projects
    with the same :attr:`local_files` so that task URLs match (see ``ls_config.local_files``).
    ``open_signup``: anyone who reaches the server may create an account (tests that sign up
    simulated raters); off, only the admin (or the API) adds users.
    """

    def __init__(
        self,
        media_root: str | os.PathLike,
        *,
        document_root: str | os.PathLike | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        data_dir: str | os.PathLike | None = None,
        username: str = DEFAULT_USERNAME,
        password: str | None = None,
        api_key: str | None = None,
        log_path: str | os.PathLike | None = None,
        extra_env: dict[str, str] | None = None,
        open_signup: bool = False,
    ) -> None:
        self.local_files = LocalFiles.below(media_root, document_root)
        self.media_root = self.local_files.media_root
        self.document_root = self.local_files.document_root
        self.open_signup = open_signup
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="slicerank-ls-")).resolve()
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        # DRF tokens are 40 characters; Label Studio stores --user-token as the key.
        self.api_key = api_key or secrets.token_hex(20)
        self.log_path = Path(log_path) if log_path else self.data_dir / "label-studio.log"
        self.extra_env = dict(extra_env or {})
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    def environment(self) -> dict[str, str]:
        """The environment the Label Studio process runs with."""
        env = dict(os.environ)
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                **self.local_files.environment(),
                # The first user: read by `label-studio start` (kept off its command line).
                "LABEL_STUDIO_USERNAME": self.username,
                "LABEL_STUDIO_PASSWORD": self.password,
                "LABEL_STUDIO_USER_TOKEN": self.api_key,
                # 1.23 refuses ML backends and webhooks on 127.0.0.1 unless these are off.
                "ML_BLOCK_LOCAL_IP": "false",
                "SSRF_PROTECTION_ENABLED": "false",
                "DJANGO_DB": "sqlite",
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false" if self.open_signup else "true",
                "COLLECT_ANALYTICS": "false",
                # Label Studio sends server and browser errors to its vendor's Sentry by
                # default: error reports can carry task data, so none leave this machine.
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "PYTHONUNBUFFERED": "1",
                # Webhooks synchronously in the request, never queued to a stray Redis.
                "DJANGO_SETTINGS_MODULE": "ls_config.ls_settings",
            }
        )
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        """``label-studio start``: no password or token here (they go in :meth:`environment`)."""
        return [
            label_studio_executable(),
            "start",
            "--no-browser",
            "--internal-host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--database",
            str(self.data_dir / "label_studio.sqlite3"),
            "--enable-legacy-api-token",
            "--log-level",
            "WARNING",
        ]

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> LabelStudioServer:
        """Start the server and wait until it answers with the API token; returns ``self``."""
        if self._proc is not None:
            raise RuntimeError(f"Label Studio at {self.url} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        log.info("starting Label Studio on %s (data %s)", self.url, self.data_dir)
        self._proc = popen_dying_with_parent(
            cmd, env=self.environment(), stdout=self._log_file, stderr=subprocess.STDOUT
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Token {self.api_key}"}
        last = "no answer yet"
        with httpx.Client(timeout=5.0) as http:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"Label Studio exited with {self._proc.returncode} before it was ready; "
                        f"see {self.log_path}:\n{self._log_tail()}"
                    )
                try:
                    health = http.get(f"{self.url}/health")
                    if health.status_code == 200:
                        me = http.get(f"{self.url}/api/current-user/whoami", headers=headers)
                        if me.status_code == 200:
                            return
                        last = f"whoami answered {me.status_code}"
                    else:
                        last = f"/health answered {health.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}"
                time.sleep(0.5)
        raise TimeoutError(
            f"Label Studio at {self.url} was not ready after {timeout:.0f} s ({last}); "
            f"see {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def client(self):
        """A ``label_studio_sdk.LabelStudio`` client logged in with the API token."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.api_key)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL) and remove a temp data dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_data_dir and proc is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
