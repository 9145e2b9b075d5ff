"""Every command and service that needs Label Studio, Redis or PostgreSQL, with that service
really not there (an address on 127.0.0.1 where nothing listens): a message of at most three
lines naming the variable and the address, exit 3 (2 for configuration), no traceback; the
long-running services retry with backoff and say so in their log and on /health."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from slicerank.cli import main
from slicerank_base.procs import free_port
from slicerank_base.reach import (
    EXIT_CONFIG,
    EXIT_UNREACHABLE,
    ServiceUnreachable,
    check_redis,
    redact_url,
    wait_until_reachable,
)

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "SCHEDULER_WEBHOOK_SECRET": "w" * 24,
    "SCHEDULER_DASHBOARD_TOKEN": "d" * 24,
    "LABEL_STUDIO_API_KEY": "0123456789abcdef0123456789abcdef01234567",
}


@pytest.fixture
def closed() -> str:
    """``127.0.0.1:PORT`` where nothing listens."""
    return f"127.0.0.1:{free_port()}"


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "slicerank", *args], env=full, capture_output=True, text=True,
        timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def assert_short(text: str, *names: str, max_lines: int = 3) -> None:
    lines = [x for x in text.splitlines() if x.strip()]
    assert 0 < len(lines) <= max_lines, text
    assert "Traceback" not in text
    for name in names:
        assert name in text, (name, text)


def test_provision_with_label_studio_down(tmp_path, closed, monkeypatch, capsys):
    (tmp_path / "manifest.csv").write_text(
        "image_id,scan_id,slice_index,n_slices,path\na,s,0,1,a.png\n"
    )
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://{closed}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", SECRETS["LABEL_STUDIO_API_KEY"])
    assert main(["provision", "--media-root", str(tmp_path)]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert_short(err, "LABEL_STUDIO_URL", f"http://{closed}", "Start Label Studio", max_lines=2)


def test_scheduler_with_label_studio_down_gives_up_when_told(tmp_path, closed):
    out = run_cli(["scheduler", "--port", str(free_port())], {
        **SECRETS, "LABEL_STUDIO_URL": f"http://{closed}", "SLICERANK_START_WAIT_S": "0",
        "SCHEDULER_DB_URL": f"sqlite:///{tmp_path}/log.db",
    })  # fmt: skip
    assert out.returncode == EXIT_UNREACHABLE, out.stderr
    assert_short(out.stderr, "LABEL_STUDIO_URL", f"http://{closed}")


def test_scheduler_with_postgres_down(tmp_path, closed):
    out = run_cli(["scheduler", "--port", str(free_port())], {
        **SECRETS, "LABEL_STUDIO_URL": f"http://{closed}", "SLICERANK_START_WAIT_S": "0",
        "SCHEDULER_DB_URL": f"postgresql+psycopg://slicerank:hunter2@{closed}/log",
    })  # fmt: skip
    assert out.returncode == EXIT_UNREACHABLE, out.stderr
    assert_short(out.stderr, "PostgreSQL", "SCHEDULER_DB_URL", closed)
    assert "hunter2" not in out.stderr  # the address is shown without its password


def test_scheduler_keeps_retrying_and_says_so_on_health(tmp_path, closed):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **SECRETS,
           "LABEL_STUDIO_URL": f"http://{closed}", "SCHEDULER_DB_URL": f"sqlite:///{tmp_path}/log.db"}  # fmt: skip
    env.pop("SLICERANK_START_WAIT_S", None)  # unset: retry without end
    log = tmp_path / "scheduler.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slicerank", "scheduler", "--port", str(port)],
            env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                health = (r.status_code, r.json())
                if "retrying in 2 s" in log.read_text():
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.3)
        assert health is not None and health[0] == 503, health
        assert health[1]["status"] == "STARTING"
        assert "LABEL_STUDIO_URL" in health[1]["down"]["label_studio"]
        text = log.read_text()
        assert "retrying in 1 s" in text and "retrying in 2 s" in text, text
        assert "Traceback" not in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_scheduler_health_is_degraded_while_label_studio_is_down(closed):
    from fastapi.testclient import TestClient

    from ranking_scheduler.service.startup import HealthProbe
    from ranking_scheduler.service.webapp import create_app

    service = SimpleNamespace(
        settings=SimpleNamespace(secret="s" * 24, dashboard_token="d" * 24),
        queue_depth=lambda: 0, request_reconcile=lambda: None,
    )  # fmt: skip
    app = create_app(service, health=HealthProbe(f"http://{closed}").down)
    body = TestClient(app).get("/health").json()
    assert body["status"] == "DEGRADED"
    assert (
        "LABEL_STUDIO_URL" in body["down"]["label_studio"]
        and closed in body["down"]["label_studio"]
    )


def test_train_with_redis_down(tmp_path, closed, monkeypatch, capsys):
    export = tmp_path / "export.json"
    from tests.ml_backend.synthdata import classify_task, make_media_root

    rows = make_media_root(tmp_path / "media", n_per_class=1)
    export.write_text(
        json.dumps([classify_task(i, r, label=r["true_class"]) for i, r in enumerate(rows)])
    )
    monkeypatch.setenv("REDIS_URL", f"redis://{closed}/0")
    assert main(["train", "--labels", str(export)]) == EXIT_UNREACHABLE
    out = capsys.readouterr()
    assert "queued" not in out.out
    assert_short(out.err, "REDIS_URL", f"redis://{closed}/0", "Start Redis", max_lines=2)


def test_train_never_queues_a_job_that_cannot_run(tmp_path, closed, monkeypatch, capsys, redis_url):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    # A labels file that is not there.
    assert main(["train", "--labels", str(tmp_path / "nope.json")]) == EXIT_CONFIG
    out = capsys.readouterr()
    assert "nope.json: no such file" in out.err and "queued" not in out.out
    # An export without one labelled task.
    (tmp_path / "empty.json").write_text("[]")
    assert main(["train", "--labels", str(tmp_path / "empty.json")]) == EXIT_CONFIG
    assert "nothing to train on" in capsys.readouterr().err
    # A project without a Label Studio key.
    assert main(["train", "--project", "1"]) == EXIT_CONFIG
    out = capsys.readouterr()
    assert "LABEL_STUDIO_API_KEY is not set" in out.err and "queued" not in out.out
    # A project on a Label Studio that is not there.
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", SECRETS["LABEL_STUDIO_API_KEY"])
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://{closed}")
    assert main(["train", "--project", "1"]) == EXIT_UNREACHABLE
    assert_short(capsys.readouterr().err, "LABEL_STUDIO_URL", closed, max_lines=2)
    import redis

    assert redis.Redis.from_url(redis_url).keys("rq:job:*") == []  # nothing was queued


def test_worker_with_redis_down_retries_then_gives_up_when_told(closed):
    url = f"redis://:hunter2@{closed}/0"
    out = run_cli(["worker"], {"REDIS_URL": url, "SLICERANK_START_WAIT_S": "1.5"})
    assert out.returncode == EXIT_UNREACHABLE, out.stderr
    # One line for the retry, two for the end; the password never shown.
    assert_short(out.stderr, "REDIS_URL", f"redis://:***@{closed}/0", "retrying in 1 s")
    assert "hunter2" not in out.stderr


def test_backend_health_and_start_training_with_redis_down(tmp_path, closed):
    import redis
    from fastapi.testclient import TestClient

    from ml_backend.server import create_app
    from ml_backend.settings import BackendSettings

    url = f"redis://{closed}/0"
    settings = BackendSettings(model_dir=tmp_path / "models", basic_auth_user="u",
                               basic_auth_pass="p" * 12, redis_url=url)  # fmt: skip
    client = TestClient(create_app(settings, redis_conn=redis.Redis.from_url(url)))
    health = client.get("/health").json()
    assert health["status"] == "DEGRADED" and "REDIS_URL" in health["down"]["redis"]
    assert closed in health["down"]["redis"]
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}},
                    auth=("u", "p" * 12))  # fmt: skip
    assert r.status_code == 503
    assert "REDIS_URL" in r.json()["detail"] and closed in r.json()["detail"]


def test_train_wait_says_when_no_worker_takes_the_job(tmp_path, redis_url):
    from tests.ml_backend.synthdata import classify_task, make_media_root

    rows = make_media_root(tmp_path / "media", n_per_class=1)
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps([classify_task(i, r, label=r["true_class"]) for i, r in enumerate(rows)])
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url,
           "SLICERANK_QUEUE": "slicerank-test-nobody", "SLICERANK_WORKER_PICKUP_S": "1"}  # fmt: skip
    with open(tmp_path / "out", "w") as out_fh, open(tmp_path / "err", "w") as err_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slicerank", "train", "--labels", str(export), "--wait"],
            env=env, stdout=out_fh, stderr=err_fh, text=True, cwd=ROOT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "still queued" not in (tmp_path / "err").read_text():
            assert proc.poll() is None, (tmp_path / "err").read_text()
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert "queued as job" in out
    assert "still queued after" in err and "slicerank worker" in err, err
    assert "no worker listens on queue 'slicerank-test-nobody'" in err


def test_train_without_wait_says_how_to_follow(tmp_path, redis_url, monkeypatch, capsys):
    from tests.ml_backend.synthdata import classify_task, make_media_root

    rows = make_media_root(tmp_path / "media", n_per_class=1)
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps([classify_task(i, r, label=r["true_class"]) for i, r in enumerate(rows)])
    )
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("SLICERANK_QUEUE", "slicerank-test-follow")
    assert main(["train", "--labels", str(export)]) == 0
    out = capsys.readouterr().out
    job = out.split("queued as job ")[1].split()[0]
    assert f"slicerank train --follow {job}" in out


def test_backoff_doubles_and_gives_up_after_the_limit():
    calls, pauses, now = [], [], [0.0]

    def check():
        calls.append(now[0])
        raise ServiceUnreachable("Redis", "REDIS_URL", "redis://x", "refused", "start it")

    def sleep(s):
        pauses.append(s)
        now[0] += s

    with pytest.raises(ServiceUnreachable):
        wait_until_reachable(check, who="t", give_up_after_s=20, sleep=sleep, clock=lambda: now[0])
    assert pauses == [1, 2, 4, 8] and len(calls) == 5


def test_redact_url_hides_only_the_password():
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("postgresql+psycopg://u:pw@h/db") == "postgresql+psycopg://u:***@h/db"
    assert redact_url("http://h:8080") == "http://h:8080"


def test_check_redis_names_a_custom_variable(closed):
    with pytest.raises(ServiceUnreachable, match="WORKER_REDIS"):
        check_redis(f"redis://{closed}/0", variable="WORKER_REDIS")


def test_a_service_lost_mid_command_ends_in_one_line_not_a_traceback(closed):
    import redis

    from slicerank.cli import lost_service

    try:
        redis.Redis.from_url(f"redis://{closed}/0").ping()
    except redis.exceptions.ConnectionError as exc:
        assert "REDIS_URL" in lost_service(exc)
    try:
        httpx.get(f"http://{closed}/api/projects")
    except httpx.TransportError as exc:
        assert f"http://{closed}" in lost_service(exc)
    assert lost_service(KeyError("x")) is None


def test_train_checks_the_key_and_the_project_on_a_real_label_studio(
    label_studio, monkeypatch, capsys, redis_url
):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)  # a token Label Studio never issued
    assert main(["train", "--project", "1"]) == EXIT_CONFIG
    assert "refused LABEL_STUDIO_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.api_key)
    assert main(["train", "--project", str(2**31 - 2)]) == EXIT_CONFIG
    out = capsys.readouterr()
    assert f"has no project {2**31 - 2}" in out.err and "queued" not in out.out
    import redis

    assert redis.Redis.from_url(redis_url).keys("rq:job:*") == []
