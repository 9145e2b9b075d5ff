"""docker-compose.yml brought up for real and exercised end to end (``make compose-check``).

Runs only when ``SLICERANK_COMPOSE_CHECK=1`` (scripts/compose-check.sh sets it after building
the images): it needs a container engine (Docker, or podman's Docker-compatible socket through
``DOCKER_HOST``) and several minutes. The stack runs as its own compose project with its own
ports, volumes and secrets, next to anything else on the machine, and is torn down at the end
(volumes included) unless ``SLICERANK_COMPOSE_KEEP=1``.

What it checks, in the order a lead meets it: PostgreSQL, Redis and Label Studio come up healthy
and keep their data across a restart of all three (all the CI preset runs:
``COMPOSE_CHECK_PRESET=ci``); a second, non-admin Label Studio user, signed up through the
invite link, gives the workers their token; ``provision`` creates the three projects;
rankings posted through Label Studio's API reach the scheduler (``/api/stats``), including those
posted while the scheduler container was stopped; "Start Training" (Label Studio's own call)
trains on the CPU worker while the backend container restarts, and the new model's predictions
appear on every Classify task and come from the backend's ``/predict``.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ls_config.provision import CLASSIFY, KINDS, RANK, project_title
from ls_config.webclient import LabelStudioWebUser
from slicerank.demo_raters import LabelStudioREST, choice_result, ranker_result

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
OFFLINE_IMAGES = ROOT / "docker" / "debian" / "images.env"

# Collected only by `make compose-check` (SLICERANK_COMPOSE_CHECK=1; tests/conftest.py), which
# builds the images first: `make test` does not see this file, so nothing here skips on CI.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCANS = int(os.environ.get("SLICERANK_COMPOSE_SCANS", "8"))
"""Synthetic scans in the check's media folder (about 12 slices each)."""
START_TIMEOUT_S = float(os.environ.get("SLICERANK_COMPOSE_START_TIMEOUT", "600"))
TRAIN_TIMEOUT_S = float(os.environ.get("SLICERANK_COMPOSE_TRAIN_TIMEOUT", "900"))
WORKER_EMAIL = "worker@compose-check.local"
RATER_EMAIL = "rater@compose-check.local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 2.0):
    """Call ``check`` until it returns something truthy; its last error goes in the failure."""
    deadline = time.monotonic() + timeout
    last: object = "no answer yet"
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@dataclass
class Stack:
    """One compose project: its settings, how to run compose on it, and what it has done."""

    work: Path
    env_file: Path
    env: dict[str, str]
    project: str
    http: httpx.Client
    ls: LabelStudioREST
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, check: bool = True, timeout: float = START_TIMEOUT_S):
        exe = shutil.which("docker-compose")
        cmd = [exe, "-p", self.project, "--project-directory", str(ROOT), "-f", str(COMPOSE),
               "--env-file", str(self.env_file), *args]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"docker-compose {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def url(self, service: str) -> str:
        port = {"label-studio": "LABEL_STUDIO_PORT", "scheduler": "SCHEDULER_PORT",
                "backend": "BACKEND_PORT"}[service]  # fmt: skip
        return f"http://127.0.0.1:{self.env[port]}"

    def timed(self, name: str, since: float) -> None:
        self.timings[name] = round(time.monotonic() - since, 1)

    def set_env(self, **values: str) -> None:
        self.env.update(values)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        self.env_file.chmod(0o600)


def make_media(work: Path) -> Path:
    media = work / "media"
    subprocess.run(
        [sys.executable, "-m", "slicerank", "synth", "--scans", str(SCANS), "--out", str(media),
         "--seed", "0"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # The containers run as their own users: the media folder must be readable by others.
    for path in [media, *media.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return media


def stack_env(media: Path) -> dict[str, str]:
    env = {
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "REDIS_PASSWORD": secrets.token_urlsafe(24),
        "LABEL_STUDIO_USERNAME": "lead@compose-check.local",
        "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
        "LABEL_STUDIO_API_KEY": secrets.token_hex(20),
        "SCHEDULER_WEBHOOK_SECRET": secrets.token_urlsafe(24),
        "SCHEDULER_DASHBOARD_TOKEN": secrets.token_urlsafe(24),
        "BASIC_AUTH_PASS": secrets.token_urlsafe(24),
        # Set once the worker's user exists (Label Studio must be up to make it).
        "WORKER_LABEL_STUDIO_API_KEY": "not-yet",
        "MEDIA_DIR": str(media),
        # Own ports: other stacks or services may hold the usual ones.
        "LABEL_STUDIO_PORT": str(free_port()),
        "SCHEDULER_PORT": str(free_port()),
        "BACKEND_PORT": str(free_port()),
        "REDIS_PORT": str(free_port()),
        # No GPU here: one CPU worker, and a recipe that trains in a minute.
        "GPU_WORKERS": "0",
        "CPU_WORKERS": "1",
        "SLICERANK_TRAIN_PRESET": "cpu-small",
    }
    env["LABEL_STUDIO_HOST"] = f"http://127.0.0.1:{env['LABEL_STUDIO_PORT']}"
    if os.environ.get("SLICERANK_COMPOSE_IMAGES", "offline") == "offline":
        env.update(read_env_file(OFFLINE_IMAGES))
    return env


def worker_token(stack: Stack) -> str:
    """A non-admin user's token, made as the deployment guide says: the organisation's invite
    link, sign-up, the token from the account (``GET /api/current-user/token``)."""
    invite = stack.ls._call("GET", "/api/invite")
    user = LabelStudioWebUser(stack.url("label-studio"), WORKER_EMAIL, secrets.token_urlsafe(16))
    try:
        user.signup(invite_token=invite["token"])
        resp = user.http.get("/api/current-user/token")
        resp.raise_for_status()
        return resp.json()["token"]
    finally:
        user.http.close()


@pytest.fixture(scope="module")
def base_stack(tmp_path_factory, request) -> Iterator[Stack]:
    """PostgreSQL, Redis and Label Studio up (the CI preset stops here); all down at the end."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (scripts/setup.sh installs it)")
    work = tmp_path_factory.mktemp("compose-check")
    work.chmod(0o755)
    env = stack_env(make_media(work))
    http = httpx.Client(timeout=30)
    ls = LabelStudioREST(
        http, f"http://127.0.0.1:{env['LABEL_STUDIO_PORT']}", env["LABEL_STUDIO_API_KEY"]
    )
    stack = Stack(work, work / "compose.env", {}, f"slicerank-check-{os.getpid()}", http, ls)
    stack.set_env(**env)
    try:
        t0 = time.monotonic()
        stack.compose("up", "-d", "label-studio", "redis")
        wait_label_studio(stack)
        stack.timed("label_studio_up_s", t0)
        yield stack
    finally:
        if request.session.testsfailed:
            logs = stack.compose("logs", "--no-color", "--tail", "60", check=False)
            print(logs.stdout[-20000:])
            print(stack.compose("ps", check=False).stdout)
        if os.environ.get("SLICERANK_COMPOSE_KEEP") == "1":
            print(f"kept: docker-compose -p {stack.project} --env-file {stack.env_file} ...")
        else:
            t2 = time.monotonic()
            stack.compose("down", "-v", "--remove-orphans", check=False)
            stack.timed("down_s", t2)
        print(f"compose-check timings: {json.dumps(stack.timings)}")
        http.close()


def wait_label_studio(stack: Stack) -> None:
    wait_for("Label Studio healthy", lambda: stack.http.get(stack.url("label-studio") + "/health")
             .status_code == 200, START_TIMEOUT_S)  # fmt: skip


@pytest.fixture(scope="module")
def stack(base_stack: Stack) -> Stack:
    """Everything up: the workers' token, the backend, the projects, scheduler and worker."""
    stack = base_stack
    t0 = time.monotonic()
    stack.set_env(WORKER_LABEL_STUDIO_API_KEY=worker_token(stack))
    stack.compose("up", "-d", "backend")
    stack.compose("run", "--rm", "provision")
    stack.timed("backend_and_provision_s", t0)
    stack.compose("up", "-d")
    wait_for("scheduler healthy", lambda: stack.http.get(stack.url("scheduler") + "/health")
             .status_code == 200, START_TIMEOUT_S)  # fmt: skip
    stack.timed("rest_of_stack_up_s", t0)
    return stack


def test_label_studio_postgres_and_redis_keep_their_data_across_restarts(base_stack):
    """The CI preset: the Debian images' data survives their containers' restarts."""
    stack = base_stack
    stack.ls._call("POST", "/api/projects/", json={"title": "restart check"})
    redis_cli = ("exec", "-T", "redis", "redis-cli")  # REDISCLI_AUTH is set in the container
    assert stack.compose(*redis_cli, "SET", "compose-check", "kept").stdout.strip() == "OK"
    t0 = time.monotonic()
    stack.compose("restart", "db", "redis", "label-studio")
    wait_label_studio(stack)
    stack.timed("db_redis_label_studio_restart_s", t0)
    assert "restart check" in projects_by_title(stack.ls)
    assert stack.compose(*redis_cli, "GET", "compose-check").stdout.strip() == "kept"
    # The first user was created once: a second start found it and kept its token.
    me = stack.ls._call("GET", "/api/current-user/whoami")
    assert me["email"] == stack.env["LABEL_STUDIO_USERNAME"]


def projects_by_title(ls: LabelStudioREST) -> dict[str, int]:
    projects = ls._call("GET", "/api/projects/", params={"page_size": 100})
    projects = projects["results"] if isinstance(projects, dict) else projects
    return {p["title"]: int(p["id"]) for p in projects}


def project_ids(ls: LabelStudioREST) -> dict[str, int]:
    """The provisioned projects' ids by kind (Rank, Classify, Boundary)."""
    titles = projects_by_title(ls)
    return {k: titles[project_title(k)] for k in KINDS if project_title(k) in titles}


def manifest(stack: Stack) -> dict[str, dict[str, str]]:
    with open(Path(stack.env["MEDIA_DIR"]) / "manifest.csv", newline="") as f:
        return {row["image_id"]: row for row in csv.DictReader(f)}


def scheduler_stats(stack: Stack) -> dict:
    resp = stack.http.get(
        stack.url("scheduler") + "/api/stats",
        headers={"Authorization": f"Bearer {stack.env['SCHEDULER_DASHBOARD_TOKEN']}"},
    )
    resp.raise_for_status()
    return resp.json()


def test_provision_made_the_three_projects_with_the_backend_on_classify(stack):
    ids = project_ids(stack.ls)
    assert set(ids) == set(KINDS), projects_by_title(stack.ls)
    backends = stack.ls._call("GET", "/api/ml", params={"project": ids[CLASSIFY]})
    assert backends and backends[0]["url"].rstrip("/") == "http://backend:9090", backends
    assert backends[0]["state"] == "CO", f"Label Studio cannot reach the backend: {backends[0]}"


def test_rankings_reach_the_scheduler_even_while_it_is_stopped(stack):
    ls, ids, rows = stack.ls, project_ids(stack.ls), manifest(stack)
    rater = ls.ensure_user(RATER_EMAIL, "Rater")
    open_tasks = wait_for(
        "the scheduler's first Rank tasks",
        lambda: [t for t in ls.tasks(ids[RANK]) if not t.get("total_annotations")],
        120,
    )
    assert len(open_tasks) >= 4, f"only {len(open_tasks)} open Rank tasks"

    def rank(task: dict) -> None:
        items = [item["id"] for item in task["data"]["images"]]
        order = sorted(items, key=lambda i: float(rows[i]["position"]))  # most basal first
        ls.annotate(task["id"], ranker_result(order), rater, lead_time=12.0)

    before = scheduler_stats(stack)["progress"]["batches_logged"]
    for task in open_tasks[:2]:
        rank(task)
    wait_for("2 rankings in /api/stats",
             lambda: scheduler_stats(stack)["progress"]["batches_logged"] >= before + 2, 60, 1)  # fmt: skip

    # Mid-run: the scheduler's container stops; Label Studio's webhooks for the next two
    # rankings find nobody. Started again, it reconciles with Label Studio and loses nothing.
    t0 = time.monotonic()
    stack.compose("stop", "scheduler")
    for task in open_tasks[2:4]:
        rank(task)
    stack.compose("start", "scheduler")
    stats = wait_for(
        "4 rankings in /api/stats after the scheduler's restart",
        lambda: (s := scheduler_stats(stack))["progress"]["batches_logged"] >= before + 4 and s,
        START_TIMEOUT_S,
    )
    stack.timed("scheduler_restart_to_reconciled_s", t0)
    assert stats["progress"]["batches_logged"] == before + 4
    assert stats["rejections"]["total"] == 0, stats["rejections"]
    assert any(r.get("batches", 0) >= 4 for r in stats["raters"]), stats["raters"]


def test_training_from_label_studio_puts_predictions_on_classify_tasks(stack):
    ls, ids, rows = stack.ls, project_ids(stack.ls), manifest(stack)
    rater = ls.ensure_user(RATER_EMAIL, "Rater")
    tasks = ls.tasks(ids[CLASSIFY])
    assert len(tasks) == len(rows), (len(tasks), len(rows))
    for task in tasks:
        if not task.get("total_annotations"):
            label = rows[task["data"]["image_id"]]["true_class"]
            ls.annotate(task["id"], choice_result(label), rater, lead_time=5.0)

    # "Start Training" in the Classify project's model settings: this is the button's call.
    backend = ls._call("GET", "/api/ml", params={"project": ids[CLASSIFY]})[0]
    t0 = time.monotonic()
    ls._call("POST", f"/api/ml/{backend['id']}/train", json={})
    # Mid-run: the backend restarts while the worker trains; the job lives in Redis.
    stack.compose("restart", "backend")

    def predicted() -> list[dict]:
        done = ls.tasks(ids[CLASSIFY])
        return done if all(t.get("total_predictions") for t in done) else []

    done = wait_for("predictions on every Classify task", predicted, TRAIN_TIMEOUT_S, 5)
    stack.timed("train_to_predictions_s", t0)
    predictions = ls._call("GET", "/api/predictions/", params={"task": done[0]["id"]})
    version = predictions[-1]["model_version"]
    assert version and predictions[-1]["result"], predictions[-1]

    # The restarted backend serves that model to Label Studio.
    resp = stack.http.post(
        stack.url("backend") + "/predict",
        auth=("labelstudio", stack.env["BASIC_AUTH_PASS"]),
        json={"tasks": [done[0]], "project": f"{ids[CLASSIFY]}.0",
              "label_config": ls._call("GET", f"/api/projects/{ids[CLASSIFY]}")["label_config"]},
        timeout=120,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text[:500]
    body = resp.json()
    assert body["results"] and body["results"][0]["result"], body
    assert body["results"][0]["model_version"] == version, (body["results"][0], version)
