"""Helpers (no tests here) for the scheduler tests: provisioned projects, the service in a thread or a
subprocess, logged-in raters. Everything talks to the real Label Studio of ``tests.ls_server``."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ls_config.provision import provision
from ls_config.server import free_port
from ls_config.webclient import LabelStudioWebUser, ranker_result
from tests.ls_server import write_cohort


@dataclass
class Setup:
    """One provisioned set of projects and the settings of a scheduler for them."""

    label_studio: object
    prefix: str
    projects: dict
    rows: list
    port: int
    secret: str
    db_url: str
    out_dir: Path
    env: dict = field(default_factory=dict)
    #: The read-only credential of the dashboard and the JSON reads (issue 15).
    dashboard_token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, **changes):
        from ranking_scheduler.service.settings import SchedulerSettings

        return SchedulerSettings.from_env(self.env).with_(**changes)


def provision_setup(label_studio, tmp_path: Path, *, n_scans=4, n_slices=8, **env) -> Setup:
    """Write a cohort, provision projects (webhooks to a free port), return the settings."""
    media = label_studio.new_media_dir()
    rows = write_cohort(media, n_scans=n_scans, n_slices=n_slices)
    port = free_port()
    secret = secrets.token_urlsafe(18)
    dashboard_token = secrets.token_urlsafe(18)
    prefix = label_studio.unique_prefix()
    report = provision(
        label_studio.client(),
        media_root=media,
        manifest_rows=rows,
        scheduler_url=f"http://127.0.0.1:{port}",
        secret=secret,
        document_root=label_studio.document_root,
        prefix=prefix,
    )
    db_url = f"sqlite:///{tmp_path / f'sched-{uuid.uuid4().hex[:6]}.db'}"
    full_env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.api_key,
        "SCHEDULER_WEBHOOK_SECRET": secret,
        "SCHEDULER_DASHBOARD_TOKEN": dashboard_token,
        "SCHEDULER_DB_URL": db_url,
        "SCHEDULER_OUT_DIR": str(tmp_path / "out"),
        "SCHEDULER_PROJECT_PREFIX": prefix,
        "SCHEDULER_RECONCILE_INTERVAL_S": "0",
        "SCHEDULER_WATCH_INTERVAL_S": "0",
        **{k: str(v) for k, v in env.items()},
    }
    return Setup(
        label_studio,
        prefix,
        report.projects,
        rows,
        port,
        secret,
        db_url,
        tmp_path / "out",
        full_env,
        dashboard_token,
    )


class InProcessScheduler:
    """The service and its FastAPI app served by uvicorn in a thread of the test process."""

    def __init__(self, setup: Setup, **settings_changes) -> None:
        from label_studio_sdk import LabelStudio

        from ranking_scheduler.service.limits import listen, make_server
        from ranking_scheduler.service.ls_adapter import LabelStudioAdapter
        from ranking_scheduler.service.service import SchedulerService
        from ranking_scheduler.service.store import SubmissionStore
        from ranking_scheduler.service.webapp import create_app

        self.setup = setup
        settings = setup.settings(**settings_changes)
        self.store = SubmissionStore(setup.db_url)
        client = LabelStudio(base_url=setup.label_studio.url, api_key=setup.label_studio.api_key)
        self.service = SchedulerService(
            settings, self.store, LabelStudioAdapter(client, setup.prefix)
        )
        # As `slicerank scheduler` does: listen first, then start, then serve with its limits.
        self.sock = listen("127.0.0.1", setup.port)
        self.service.start()
        self.server = make_server(create_app(self.service))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        wait_http(f"{setup.url}/health")
        assert self.service.wait_idle(), "the first reconciliation did not finish"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        self.service.stop()
        self.store.close()


class SubprocessScheduler:
    """``slicerank scheduler`` as a child process (so a test can kill it with SIGKILL)."""

    def __init__(self, setup: Setup, log_path: Path) -> None:
        self.setup = setup
        env = {**os.environ, **setup.env}
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "slicerank.cli", "scheduler", "--port", str(setup.port)]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_http(f"{setup.url}/health", proc=self.proc, timeout=120)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        self.log.close()


def wait_http(url: str, *, proc=None, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def make_raters(label_studio, n: int) -> list[LabelStudioWebUser]:
    """``n`` clinicians signed up through the real form (new accounts each call)."""
    raters = []
    for _ in range(n):
        email = f"clin-{uuid.uuid4().hex[:8]}@slicerank.test"
        raters.append(
            LabelStudioWebUser(label_studio.url, email, "pw-" + uuid.uuid4().hex).signup()
        )
    return raters


def true_order(task: dict, positions: dict[str, float]) -> list[str]:
    """The task's images from most basal to most apical (the phantom's truth)."""
    return sorted((item["id"] for item in task["data"]["images"]), key=positions.__getitem__)


def rank_next(rater: LabelStudioWebUser, setup: Setup, positions, *, wait_s: float = 10.0):
    """Take the next Rank task from the labelling stream and submit its true order."""
    deadline = time.monotonic() + wait_s
    while True:
        task = rater.next_task(setup.projects["Rank"])
        if task is not None:
            break
        if time.monotonic() > deadline:
            raise AssertionError("no Rank task was waiting for the rater")
        time.sleep(0.1)
    ann = rater.submit(
        task["id"], setup.projects["Rank"], ranker_result(true_order(task, positions))
    )
    return task, ann
