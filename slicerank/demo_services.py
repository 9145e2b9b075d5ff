"""Demo stage: the services (Redis, Label Studio, ML backend + worker, scheduler) as child
processes, their ports and settings, and provisioning the three projects."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from slicerank.demo_config import DemoConfig, Layout


def stage_redis(cfg: DemoConfig, layout: Layout, procs) -> dict[str, Any]:
    """Use Redis at ``REDIS_URL`` when it answers, else start a private ``redis-server``."""
    from slicerank_base.procs import ChildProcess, free_port, redis_ok

    url = cfg.redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if redis_ok(url)():
        return {"url": url, "started": False}
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(
            f"no Redis answers at {url} and redis-server is not installed: install it "
            "(apt-get install redis-server) or set REDIS_URL"
        )
    port = free_port(cfg.host)
    layout.redis.mkdir(parents=True, exist_ok=True)
    url = f"redis://{cfg.host}:{port}/0"
    procs.start(
        ChildProcess(
            "redis",
            [
                exe,
                "--bind",
                cfg.host,
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(layout.redis),
            ],
            log_path=layout.logs / "redis.log",
            health=redis_ok(url),
        ),
        timeout=30,
    )
    return {"url": url, "started": True}


def label_studio_server(
    cfg: DemoConfig, layout: Layout, creds: dict[str, str], port: int | None = None
):
    """The demo's Label Studio (SQLite in ``--out``) serving the media root, not yet started.

    The admin password and token go to Label Studio through its environment (not ``ps``), and
    open sign-up is off: the lead adds clinicians (the simulated ones through the API).
    """
    from ls_config.server import LabelStudioServer

    files = layout.local_files
    return LabelStudioServer(
        files.media_root,
        document_root=files.document_root,
        host=cfg.host,
        port=port or cfg.ls_port,
        data_dir=layout.label_studio,
        username=creds["username"],
        password=creds["password"],
        api_key=creds["api_key"],
        log_path=layout.logs / "label-studio.log",
        open_signup=False,
    )


def stage_label_studio(
    cfg: DemoConfig, layout: Layout, creds: dict[str, str], procs, port: int | None = None
):
    """Start the demo's Label Studio (stopped with ``procs``); returns the server."""
    server = label_studio_server(cfg, layout, creds, port)
    procs.on_stop("label-studio", server.stop)
    server.start()
    return server


def service_env(
    cfg: DemoConfig, layout: Layout, creds: dict[str, str], ls_url: str, redis_url: str
) -> dict[str, str]:
    """The environment the scheduler, backend and worker start with (their settings)."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "LABEL_STUDIO_URL": ls_url,
            "LABEL_STUDIO_API_KEY": creds["api_key"],
            # scheduler
            "SCHEDULER_WEBHOOK_SECRET": creds["webhook_secret"],
            "SCHEDULER_DASHBOARD_TOKEN": creds["dashboard_token"],
            "SCHEDULER_DB_URL": f"sqlite:///{layout.scheduler / 'scheduler.sqlite3'}",
            "SCHEDULER_STRATEGY": cfg.strategy,
            "SCHEDULER_OUT_DIR": str(layout.scheduler),
            # Each slice's scan and position along its stack are known: the engine ranks with
            # them (8 scans per task, classes in order along each stack).
            "SCHEDULER_MANIFEST": str(layout.media / "manifest.csv"),
            # backend and worker
            "REDIS_URL": redis_url,
            "SLICERANK_QUEUE": f"slicerank-demo-{creds['api_key'][:8]}",
            "MODEL_DIR": str(layout.models),
            "SLICERANK_MEDIA_ROOT": str(layout.media),
            # The ranking model's job names the scheduler's consensus file: the worker reads
            # files only under its own roots.
            "SLICERANK_WORKER_ROOTS": str(layout.scheduler),
            "BASIC_AUTH_USER": creds["backend_user"],
            "BASIC_AUTH_PASS": creds["backend_pass"],
            "SLICERANK_DEVICE": "cuda" if cfg.gpu else "cpu",
            "SLICERANK_TRAIN_PRESET": cfg.train_preset,
        }
    )
    if cfg.simulate:
        # The demo's raters are simulated and answer in milliseconds: a wall-clock window that
        # keeps a just-ranked slice out of new tasks (so a clinician is not shown it again
        # straight away) would span the whole run and keep the scheduler off the slices it most
        # needs to see again (seed 500 at 1.5: consensus 0.931 with the default 300 s, 0.943
        # without). With --no-simulate real people label: the scheduler's own default. A value
        # in the environment wins either way.
        env.setdefault("SCHEDULER_RECENT_VIEW_S", "0")
    return env


def slicerank_command(*args: str) -> list[str]:
    """``slicerank ARGS`` run with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "slicerank", *args]


def port_is_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: connections of the last run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_ports(cfg: DemoConfig, state_path: Path) -> dict[str, int]:
    """Ports for Label Studio, the scheduler and the backend: as given, else those of the last
    run in this ``--out`` (so URLs, webhooks and the registered backend stay valid), else free
    ones. Remembered in ``state_path``."""
    from slicerank_base.procs import free_port

    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    last = state.get("ports", {})
    ports = {}
    for name, given in (
        ("label_studio", cfg.ls_port),
        ("scheduler", cfg.scheduler_port),
        ("backend", cfg.backend_port),
    ):
        previous = last.get(name)
        if given:
            ports[name] = given
        elif previous and previous not in ports.values() and port_is_free(cfg.host, previous):
            ports[name] = int(previous)
        else:
            ports[name] = free_port(cfg.host)
    state["ports"] = ports
    state_path.write_text(json.dumps(state, indent=2))
    return ports


def service_ports(cfg: DemoConfig, ports: dict[str, int]) -> dict[str, str]:
    """The scheduler's and the backend's URLs."""
    sched_port = ports["scheduler"]
    backend_port = ports["backend"]
    return {
        "scheduler_url": f"http://{cfg.host}:{sched_port}",
        "backend_url": f"http://{cfg.host}:{backend_port}",
    }


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


def stage_backend(layout: Layout, env: dict[str, str], urls: dict[str, str], procs) -> None:
    """Start the ML backend and one RQ worker (before provisioning: Label Studio checks the
    backend's ``/health`` and ``/setup`` when it is registered)."""
    from slicerank_base.procs import ChildProcess

    start_http_service(procs, "backend", urls["backend_url"], env, layout)
    procs.start(
        ChildProcess(
            "worker",
            slicerank_command("worker"),
            env=env,
            log_path=layout.logs / "worker.log",
        ),
        timeout=10,
    )


def stage_scheduler(layout: Layout, env: dict[str, str], urls: dict[str, str], procs) -> None:
    """Start the scheduler (after provisioning: it finds the projects by title on start)."""
    start_http_service(procs, "scheduler", urls["scheduler_url"], env, layout)


def start_http_service(procs, command: str, url: str, env: dict[str, str], layout: Layout) -> None:
    """Start ``slicerank COMMAND --host --port`` listening at ``url``; wait for its /health."""
    from slicerank_base.procs import ChildProcess, http_ok

    host = url.split("//")[1].rsplit(":", 1)[0]
    procs.start(
        ChildProcess(
            command,
            slicerank_command(command, "--host", host, "--port", _port(url)),
            env=env,
            log_path=layout.logs / f"{command}.log",
            health=http_ok(f"{url}/health"),
        ),
        timeout=180,
    )


def stage_provision(
    client,
    layout: Layout,
    scheduler_url: str,
    backend_url: str,
    secret: str,
    seed: int,
    backend_auth: tuple[str, str],
) -> dict[str, Any]:
    """Create or update the three projects, their storage, webhooks and the ML backend."""
    from cmr_ingest.manifest import read_manifest
    from ls_config.provision import ensure_ml_backend, provision

    rows = read_manifest(layout.media / "manifest.csv")
    files = layout.local_files  # the same folders Label Studio was started with
    report = provision(
        client,
        media_root=files.media_root,
        manifest_rows=[{k: str(v) for k, v in row.items()} for row in rows],
        scheduler_url=scheduler_url,
        secret=secret,
        # Registered below, once stale endpoints of an earlier run are gone.
        backend_url=None,
        document_root=files.document_root,
        seed=seed,
    )
    summary = report.to_json()
    summary["removed"] = remove_stale_endpoints(
        client, summary["projects"], scheduler_url, backend_url
    )
    summary["ml_backend"] = ensure_ml_backend(
        client, summary["projects"]["Classify"], backend_url, auth=backend_auth
    )
    return summary


def remove_stale_endpoints(
    client, projects: dict[str, int], scheduler_url: str, backend_url: str
) -> list[str]:
    """Delete webhooks and ML backends an earlier run registered on other ports.

    Label Studio would otherwise keep calling a dead address on every annotation. Only
    endpoints on the demo's own host are considered; the webhook Label Studio itself keeps
    for a registered ML backend (to its ``/webhook``) is current when the backend is.
    """
    from urllib.parse import urlsplit

    host = urlsplit(scheduler_url).hostname
    current = (scheduler_url.rstrip("/") + "/", backend_url.rstrip("/") + "/")
    removed = []
    for pid in projects.values():
        for hook in client.webhooks.list(project=str(pid)):
            url = hook.url.rstrip("/") + "/"
            if hook.project != pid or urlsplit(url).hostname != host:
                continue
            if not url.startswith(current):
                client.webhooks.delete(hook.id)
                removed.append(f"webhook {hook.url} on project {pid}")
        for backend in client.ml.list(project=pid):
            if urlsplit(backend.url).hostname != host:
                continue
            if backend.url.rstrip("/") != backend_url.rstrip("/"):
                client.ml.delete(backend.id)
                removed.append(f"ML backend {backend.url} on project {pid}")
    return removed
