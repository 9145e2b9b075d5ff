"""``slicerank demo``: the whole study end to end on embedded defaults.

One command on one machine: a synthetic cohort (plus a held-out test cohort with ground
truth), a local Label Studio (SQLite), Redis (the one at ``REDIS_URL`` or a private
``redis-server``), the scheduler, the ML backend and one RQ worker as child processes; the
three projects provisioned; three simulated clinicians labelling through Label Studio's REST
API with both strategies at equal labelling time; one model trained per strategy through the
backend's RQ queue; predictions written back into Label Studio; the held-out set scored and the
analysis report written. Every stage is a function that takes its inputs explicitly and returns
a JSON-able dict; ``--json FILE`` collects them.

Re-running with the same ``--out`` reuses the cohort, Label Studio's database, the scheduler's
log and the model registry (labels are topped up to the budget, not doubled); ``--fresh``
starts over. Ctrl-C (or SIGTERM) stops every child process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slicerank.demo_raters import (
    LabelStudioREST,
    labelling_budget,
    make_panel,
    simulate_classify,
    simulate_ranking,
)

log = logging.getLogger(__name__)

DEFAULT_OUT = "demo_out"
DEFAULT_SCANS = 40
DEFAULT_TEST_SCANS = 20
RATER_NAMES = ("rater1", "rater2", "rater3")
LS_USER_DOMAIN = "slicerank.local"


# --------------------------------------------------------------------------------------------
# Configuration and layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    """Everything one demo run needs to know; built from the command line."""

    out: Path
    scans: int = DEFAULT_SCANS
    test_scans: int = DEFAULT_TEST_SCANS
    seed: int = 0
    raters: int = 3
    #: Labelling time per strategy in hours; None = one single label per image's worth.
    hours: float | None = None
    strategy: str = "bayes"
    gpu: bool = False
    preset: str | None = None
    epochs: int | None = None
    simulate: bool = True
    keep_running: bool = False
    fresh: bool = False
    host: str = "127.0.0.1"
    ls_port: int | None = None
    scheduler_port: int | None = None
    backend_port: int | None = None
    redis_url: str | None = None
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        problems = []
        if self.scans < 2:
            problems.append(f"--scans {self.scans}: need at least 2 scans")
        if self.test_scans < 1:
            problems.append(f"--test-scans {self.test_scans}: need at least 1 scan")
        if not 1 <= self.raters <= len(RATER_NAMES):
            problems.append(f"--raters {self.raters}: choose 1 to {len(RATER_NAMES)}")
        if self.hours is not None and self.hours <= 0:
            problems.append(f"--hours {self.hours}: must be positive")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"--epochs {self.epochs}: must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def train_preset(self) -> str:
        """The training preset: the study's GPU recipe with ``--gpu``, else the CPU preset."""
        return self.preset or ("gpu" if self.gpu else "cpu-small")


@dataclass(frozen=True)
class Layout:
    """Where a demo run keeps its files under ``--out``."""

    root: Path

    @property
    def document_root(self) -> Path:
        """Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``: strictly above the media root."""
        return self.root / "data"

    @property
    def media(self) -> Path:
        """The labelling cohort (manifest.csv + PNGs), served by Label Studio."""
        return self.document_root / "media"

    @property
    def testset(self) -> Path:
        """The held-out cohort with ground truth; never shown to the raters."""
        return self.root / "testset"

    label_studio = property(lambda self: self.root / "label-studio")
    scheduler = property(lambda self: self.root / "scheduler")
    models = property(lambda self: self.root / "models")
    report = property(lambda self: self.root / "report")
    logs = property(lambda self: self.root / "logs")
    redis = property(lambda self: self.root / "redis")
    credentials = property(lambda self: self.root / "credentials.json")
    state = property(lambda self: self.root / "demo-state.json")


def load_credentials(path: Path) -> dict[str, str]:
    """The run's secrets (Label Studio login and token, webhook and backend secrets).

    Created once with ``secrets`` and kept (mode 0600) so a re-run can log into the same Label
    Studio database; never printed except the login a person needs.
    """
    creds = json.loads(path.read_text()) if path.exists() else {}
    wanted = {
        "username": lambda: f"lead@{LS_USER_DOMAIN}",
        "password": lambda: secrets.token_urlsafe(12),
        "api_key": lambda: secrets.token_hex(20),
        "webhook_secret": lambda: secrets.token_urlsafe(24),
        "backend_user": lambda: "labelstudio",
        "backend_pass": lambda: secrets.token_urlsafe(18),
    }
    changed = False
    for key, make in wanted.items():
        if not creds.get(key):
            creds[key] = make()
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(creds, fh, indent=2)
    return creds


def prepare_out_dir(cfg: DemoConfig) -> Layout:
    """Create (or with ``--fresh`` wipe and recreate) the output folder."""
    layout = Layout(cfg.out.resolve())
    if cfg.fresh and layout.root.exists():
        marker = layout.credentials
        if not marker.exists() and any(layout.root.iterdir()):
            raise ValueError(
                f"--fresh: {layout.root} is not empty and holds no demo run "
                f"({marker.name} missing); refusing to delete it"
            )
        shutil.rmtree(layout.root)
    for folder in (layout.root, layout.logs, layout.scheduler, layout.models, layout.report):
        folder.mkdir(parents=True, exist_ok=True)
    return layout


# --------------------------------------------------------------------------------------------
# Stage: cohorts
# --------------------------------------------------------------------------------------------


def stage_cohort(
    out_dir: Path, n_scans: int, seed: int, *, labelled: bool = False
) -> dict[str, Any]:
    """Generate a synthetic cohort into ``out_dir``, or reuse one made with the same settings.

    ``labelled``: Label Studio already holds tasks for the cohort in ``out_dir``, so a cohort
    with other settings would orphan them; that is an error asking for ``--fresh``.
    """
    from cmr_ingest.manifest import read_manifest
    from cmr_ingest.synth import generate_cohort

    stamp = out_dir / ".demo-cohort.json"
    wanted = {"scans": n_scans, "seed": seed}
    manifest = out_dir / "manifest.csv"
    have = json.loads(stamp.read_text()) if stamp.exists() else None
    reused = have == wanted and manifest.exists()
    if not reused:
        if labelled and have is not None:
            raise ValueError(
                f"{out_dir} holds a labelled cohort of {have['scans']} scans (seed "
                f"{have['seed']}), not {n_scans} (seed {seed}): add --fresh to start over, "
                "or choose another --out"
            )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        generate_cohort(n_scans, out_dir, seed=seed, progress=True)
        stamp.write_text(json.dumps(wanted))
    rows = read_manifest(manifest)
    classes: dict[str, int] = {}
    for row in rows:
        classes[row["true_class"]] = classes.get(row["true_class"], 0) + 1
    return {
        "dir": str(out_dir),
        "manifest": str(manifest),
        "scans": n_scans,
        "seed": seed,
        "images": len(rows),
        "classes": classes,
        "reused": reused,
    }


# --------------------------------------------------------------------------------------------
# Stage: services
# --------------------------------------------------------------------------------------------


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


def stage_label_studio(
    cfg: DemoConfig, layout: Layout, creds: dict[str, str], procs, port: int | None = None
):
    """Start Label Studio (SQLite in ``--out``) serving the media root; returns the server."""
    from ls_config.server import LabelStudioServer

    server = LabelStudioServer(
        layout.document_root,
        host=cfg.host,
        port=port or cfg.ls_port,
        data_dir=layout.label_studio,
        username=creds["username"],
        password=creds["password"],
        api_key=creds["api_key"],
        log_path=layout.logs / "label-studio.log",
    )
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
            "SCHEDULER_DB_URL": f"sqlite:///{layout.scheduler / 'scheduler.sqlite3'}",
            "SCHEDULER_STRATEGY": cfg.strategy,
            "SCHEDULER_OUT_DIR": str(layout.scheduler),
            # backend and worker
            "REDIS_URL": redis_url,
            "SLICERANK_QUEUE": f"slicerank-demo-{creds['api_key'][:8]}",
            "MODEL_DIR": str(layout.models),
            "SLICERANK_MEDIA_ROOT": str(layout.media),
            "BASIC_AUTH_USER": creds["backend_user"],
            "BASIC_AUTH_PASS": creds["backend_pass"],
            "SLICERANK_DEVICE": "cuda" if cfg.gpu else "cpu",
            "SLICERANK_TRAIN_PRESET": cfg.train_preset,
        }
    )
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
    report = provision(
        client,
        media_root=layout.media,
        manifest_rows=[{k: str(v) for k, v in row.items()} for row in rows],
        scheduler_url=scheduler_url,
        secret=secret,
        # Registered below, once stale endpoints of an earlier run are gone.
        backend_url=None,
        document_root=layout.document_root,
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


# --------------------------------------------------------------------------------------------
# Stage: training through RQ
# --------------------------------------------------------------------------------------------


def stage_train(
    conn,
    queue_name: str,
    *,
    label_source: str,
    project_id: int,
    consensus_path: str | None = None,
    layout: Layout,
    preset: str,
    device: str,
    epochs: int | None,
    label_studio_url: str,
    check_alive: Callable[[], None],
    timeout_s: float,
) -> dict[str, Any]:
    """Enqueue one training job on the RQ queue the worker serves and wait for its model.

    ``label_source`` ``classify`` trains on the one-at-a-time labels of the Classify project,
    ``ranking`` on the scheduler's consensus classes published there. The job writes the new
    model's predictions back onto the Classify tasks.
    """
    from rq.exceptions import NoSuchJobError

    from ml_backend.jobs import TrainRequest, enqueue_training, job_summary

    request = TrainRequest(
        label_source=label_source,
        project_id=project_id,
        consensus_path=consensus_path,
        preset=preset,
        media_root=str(layout.media),
        model_dir=str(layout.models),
        device=device,
        epochs=epochs,
        write_predictions=True,
        label_studio_url=label_studio_url,
    )
    queued = enqueue_training(conn, request, queue_name=queue_name)
    if not queued.created:
        raise RuntimeError(f"training {label_source}: {queued.message}")
    bar = _bar(0, f"train {label_source}", unit="epoch")
    deadline = time.monotonic() + timeout_s
    last_postfix = ""
    try:
        while True:
            check_alive()
            try:
                summary = job_summary(conn, queued.job_id)
            except NoSuchJobError:
                raise RuntimeError(
                    f"training job {queued.job_id} vanished from Redis (was the database "
                    "flushed by someone else?); run the demo again"
                ) from None
            meta = summary.get("meta") or {}
            epochs_total = int(meta.get("epochs") or 0) * max(1, len(meta.get("seeds") or [1]))
            if epochs_total and bar.total != epochs_total:
                bar.total = epochs_total
                bar.refresh()
            done = len(meta.get("history") or [])
            if done > bar.n:
                bar.update(done - bar.n)
            # rq's JobStatus is a str Enum: str() of it may read "JobStatus.FINISHED".
            status = str(summary["status"]).rsplit(".", 1)[-1].lower()
            loss = meta.get("val_loss")
            postfix = f"{meta.get('stage', status)}" + (f" val_loss={loss:.3f}" if loss else "")
            if postfix != last_postfix:
                bar.set_postfix_str(postfix)
                last_postfix = postfix
            if status == "finished":
                break
            if status in ("failed", "stopped", "canceled"):
                raise RuntimeError(
                    f"training on {label_source} labels {status}: "
                    f"{summary.get('error') or meta.get('error') or 'see logs/worker.log'}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"training on {label_source} labels took over {timeout_s:.0f} s")
            time.sleep(0.5)
    finally:
        bar.close()
    result = summary.get("result") or {}
    return {
        "job_id": queued.job_id,
        "label_source": label_source,
        "model_version": result.get("model_version") or meta.get("model_version"),
        "predictions_written": result.get("predictions_written"),
        "metrics": result.get("metrics"),
    }


# --------------------------------------------------------------------------------------------
# Stage: held-out evaluation and the report
# --------------------------------------------------------------------------------------------


def predict_testset(
    testset: Path, model_dir: Path, versions: dict[str, str], device: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """Ground truth and each model's class probabilities on the held-out cohort."""
    import numpy as np

    from analysis.predictions import Predictions
    from cmr_ingest.manifest import read_manifest
    from ml_backend.predictor import Predictor
    from ml_backend.registry import ModelRegistry
    from ml_backend.transforms import load_grayscale
    from slicerank_base import CLASSES

    rows = read_manifest(testset / "manifest.csv")
    truth = {str(r["image_id"]): str(r["true_class"]) for r in rows}
    images = [load_grayscale(testset / r["path"]) for r in rows]
    registry = ModelRegistry(model_dir)
    predictions = {}
    for name, version in versions.items():
        predictor = Predictor.from_version(registry.get(version), device=device)
        out = predictor.predict_images(images)
        probs = {}
        labels = {}
        for row, pred in zip(rows, out, strict=True):
            p = np.asarray([pred["probabilities"][c] for c in CLASSES], dtype=float)
            p = p / p.sum()  # float32 softmax can miss 1 by a few ulps
            probs[str(row["image_id"])] = tuple(float(x) for x in p)
            labels[str(row["image_id"])] = CLASSES[int(p.argmax())]
        predictions[name] = Predictions(labels, probs, source=f"model {version}")
    return truth, predictions


def write_prediction_csvs(folder: Path, truth: dict[str, str], predictions: dict) -> dict[str, str]:
    """``truth.csv`` and one ``<name>.csv`` per model, in ``slicerank analyze``'s format."""
    import csv

    from slicerank_base import CLASSES

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    with open(folder / "truth.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "label"])
        writer.writerows(sorted(truth.items()))
    paths["truth"] = str(folder / "truth.csv")
    for name, pred in predictions.items():
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image_id", "label", *(f"p_{c}" for c in CLASSES)])
            for image_id in sorted(truth):
                writer.writerow([image_id, pred.labels[image_id], *pred.probabilities[image_id]])
        paths[name] = str(path)
    return paths


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The report's headline numbers: accuracy and LV recall per model, McNemar's P."""
    models = {}
    for name, model in summary["models"].items():
        overall = model["overall"]
        models[name] = {
            "accuracy": overall["accuracy"],
            "macro_f1": overall.get("macro_f1"),
            "binary": {
                k: model["binary"].get(k)
                for k in (
                    "accuracy",
                    "sensitivity",
                    "specificity",
                    "paper_recall",
                    "paper_precision",
                )
            },
        }
    comparisons = [
        {
            "model": c["model"],
            "reference": c["reference"],
            "mcnemar_binary_p": c["mcnemar_binary"]["pvalue"],
            "mcnemar_3class_p": c["mcnemar_3class"]["pvalue"],
        }
        for c in summary["comparisons"]
    ]
    return {"n_images": summary["n_images"], "models": models, "comparisons": comparisons}


def stage_analysis(truth, predictions, report_dir: Path, seed: int) -> dict[str, Any]:
    """Write the held-out report (Markdown + HTML + plots) and return its headline numbers."""
    from analysis.report import build_report

    result = build_report(
        truth,
        predictions,
        report_dir,
        seed=seed,
        title="slicerank demo: ranking-trained vs one-at-a-time-trained model (held-out set)",
    )
    return {
        "markdown": str(result.markdown),
        "html": str(result.html),
        "figures": [str(f) for f in result.figures],
        "headline": headline(result.summary),
    }


def stage_label_report(
    client, classify_pid: int, consensus: Path, manifest: Path, report_dir: Path, seed: int
):
    """Both strategies' labels on the labelled cohort against its ground truth (label sets)."""
    from analysis.predictions import Predictions
    from analysis.report import build_report
    from cmr_ingest.manifest import read_manifest
    from ml_backend.labels import export_tasks, labels_from_classify_tasks, read_consensus

    tasks = export_tasks(client, classify_pid)
    truth_all = {str(r["image_id"]): str(r["true_class"]) for r in read_manifest(manifest)}
    sets = {
        "one-at-a-time labels": {x.image_id: x.label for x in labels_from_classify_tasks(tasks)},
        "ranking consensus": {x.image_id: x.label for x in read_consensus(consensus)},
    }
    # Both strategies are compared on the images both labelled.
    common = set(truth_all).intersection(*sets.values())
    if not common:
        return {"skipped": "no image carries labels from both strategies"}
    truth = {i: truth_all[i] for i in common}
    preds = {
        name: Predictions.from_labels({i: labels[i] for i in common}, source=name)
        for name, labels in sets.items()
    }
    result = build_report(
        truth, preds, report_dir, seed=seed,
        title="slicerank demo: the two labelling strategies against the ground truth",
    )  # fmt: skip
    return {
        "markdown": str(result.markdown),
        "html": str(result.html),
        "images_compared": len(common),
        "labelled": {name: len(labels) for name, labels in sets.items()},
        "headline": headline(result.summary),
    }


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def whole_seconds(update: Callable[[int], object]) -> Callable[[float], None]:
    """Feed fractional seconds to a progress bar that counts whole ones."""
    state = {"exact": 0.0, "shown": 0}

    def add(seconds: float) -> None:
        state["exact"] += seconds
        step = int(state["exact"]) - state["shown"]
        if step > 0:
            state["shown"] += step
            update(step)

    return add


def _bar(total: float, desc: str, unit: str = "it"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)


def scheduler_stats_fn(http, scheduler_url: str, secret: str) -> Callable[[], dict]:
    """A function returning the scheduler's ``/api/stats`` (the dashboard's numbers)."""

    def stats() -> dict:
        resp = http.get(f"{scheduler_url}/api/stats", headers=_bearer(secret))
        resp.raise_for_status()
        return resp.json()

    return stats


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def run_demo(
    cfg: DemoConfig, *, out=print, on_ready: Callable[[dict], None] = lambda result: None
) -> dict[str, Any]:
    """Run every stage; returns the outputs of each (what ``--json`` writes).

    ``on_ready`` gets the results once everything is set up and (unless ``--no-simulate``)
    labelled, trained and reported: before waiting for Ctrl-C when the services stay up.
    """
    import httpx
    import redis

    from slicerank_base.procs import ProcessSet

    layout = prepare_out_dir(cfg)
    creds = load_credentials(layout.credentials)
    result: dict[str, Any] = {"config": {k: str(v) for k, v in asdict(cfg).items()}}
    timings: dict[str, float] = {}
    result["timings_s"] = timings
    t0 = time.monotonic()
    n_stages = 8 if cfg.simulate else 3
    stages = _bar(n_stages, "demo", unit="stage")

    def mark(name: str, since: float) -> None:
        timings[name] = round(time.monotonic() - since, 2)
        stages.set_postfix_str(name)
        stages.update(1)

    with ProcessSet() as procs, httpx.Client(timeout=60.0) as http:
        t = time.monotonic()
        result["cohort"] = stage_cohort(
            layout.media, cfg.scans, cfg.seed, labelled=layout.label_studio.exists()
        )
        result["testset"] = stage_cohort(layout.testset, cfg.test_scans, cfg.seed + 1000)
        mark("cohorts", t)

        t = time.monotonic()
        result["redis"] = stage_redis(cfg, layout, procs)
        redis_url = result["redis"]["url"]
        result["redis"]["url"] = _redact(redis_url)
        ports = choose_ports(cfg, layout.state)
        server = stage_label_studio(cfg, layout, creds, procs, ports["label_studio"])
        result["label_studio"] = {"url": server.url, "username": creds["username"]}
        env = service_env(cfg, layout, creds, server.url, redis_url)
        queue_name = env["SLICERANK_QUEUE"]
        services = service_ports(cfg, ports)
        services["dashboard_url"] = f"{services['scheduler_url']}/dashboard"
        result["services"] = services
        stage_backend(layout, env, services, procs)
        mark("services", t)

        t = time.monotonic()
        client = server.client()
        result["provision"] = stage_provision(
            client, layout, services["scheduler_url"], services["backend_url"],
            creds["webhook_secret"], cfg.seed, (creds["backend_user"], creds["backend_pass"]),
        )  # fmt: skip
        projects = result["provision"]["projects"]
        stage_scheduler(layout, env, services, procs)
        mark("provision", t)

        urls = {
            "label_studio": server.url,
            "rank_project": f"{server.url}/projects/{projects['Rank']}/data",
            "classify_project": f"{server.url}/projects/{projects['Classify']}/data",
            "dashboard": services["dashboard_url"],
            "report": str(layout.report / "report.html"),
        }
        result["urls"] = urls
        if not cfg.simulate:
            stages.close()
            on_ready(result)
            print_access(out, urls, creds, layout, simulated=False)
            wait_until_interrupted(procs)
            return result

        rest = LabelStudioREST(http, server.url, creds["api_key"])
        panel = make_panel(layout.media / "manifest.csv", cfg.raters, cfg.seed)
        user_ids = {
            r.name: rest.ensure_user(f"{r.name}@{LS_USER_DOMAIN}", r.name) for r in panel.raters
        }
        budget = labelling_budget(result["cohort"]["images"], cfg.hours)
        result["budget"] = budget

        t = time.monotonic()
        bar = _bar(budget["single_labels"], "one-at-a-time labels", unit="label")
        result["classify"] = simulate_classify(
            rest, projects["Classify"], panel, user_ids, budget["single_labels"], bar.update
        )
        bar.close()
        mark("one-at-a-time labelling", t)

        t = time.monotonic()
        bar = _bar(round(budget["seconds"]), "ranking (labelling s)", unit="s")
        result["ranking"] = simulate_ranking(
            rest, projects, panel, user_ids, budget["seconds"],
            scheduler_stats_fn(http, services["scheduler_url"], creds["webhook_secret"]),
            procs.check_alive, whole_seconds(bar.update),
        )  # fmt: skip
        bar.close()
        result["consensus"] = stage_consensus(
            http, services["scheduler_url"], creds["webhook_secret"],
            layout.scheduler / "demo-consensus.json",
        )  # fmt: skip
        mark("ranking", t)

        t = time.monotonic()
        conn = redis.Redis.from_url(redis_url)
        models = {}
        # Published classes sit on the Classify tasks as predictions; otherwise the ranking
        # model learns from the consensus file (and its predictions are not written back).
        consensus_file = None if result["consensus"]["published"] else result["consensus"]["path"]
        for name, source in (("one-at-a-time", "classify"), ("ranking", "ranking")):
            models[name] = stage_train(
                conn, queue_name, label_source=source, project_id=projects["Classify"],
                consensus_path=consensus_file if source == "ranking" else None,
                layout=layout, preset=cfg.train_preset, device=env["SLICERANK_DEVICE"],
                epochs=cfg.epochs, label_studio_url=server.url, check_alive=procs.check_alive,
                timeout_s=cfg.timeout_s,
            )  # fmt: skip
        result["models"] = models
        mark("training", t)

        t = time.monotonic()
        versions = {name: m["model_version"] for name, m in models.items()}
        truth, predictions = predict_testset(
            layout.testset, layout.models, versions, env["SLICERANK_DEVICE"]
        )
        result["predictions"] = write_prediction_csvs(layout.report / "inputs", truth, predictions)
        mark("held-out predictions", t)

        t = time.monotonic()
        result["report"] = stage_analysis(truth, predictions, layout.report, cfg.seed)
        result["label_report"] = stage_label_report(
            client, projects["Classify"], Path(result["consensus"]["path"]),
            layout.media / "manifest.csv",
            layout.report / "labels", cfg.seed,
        )  # fmt: skip
        mark("analysis", t)
        result["wall_s"] = round(time.monotonic() - t0, 1)
        stages.close()

        on_ready(result)
        print_headline(out, result["report"]["headline"])
        print_access(out, urls, creds, layout, simulated=True)
        if cfg.keep_running:
            wait_until_interrupted(procs)
    return result


def stage_consensus(http, scheduler_url: str, secret: str, out_path: Path) -> dict[str, Any]:
    """The scheduler's consensus (``GET /api/consensus``), saved to ``out_path``.

    When the scheduler has published (its stopping rule held and the boundary questions were
    answered) its classes are also predictions on the Classify tasks; when the budget ran out
    first, this file is what the ranking-trained model learns from.
    """
    resp = http.get(f"{scheduler_url}/api/consensus", headers=_bearer(secret))
    if resp.status_code != 200:
        raise RuntimeError(
            f"the scheduler has no consensus to train on ({resp.status_code}: {resp.text[:300]})"
        )
    doc = resp.json()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2))
    counts: dict[str, int] = {}
    for image in doc.get("images", []):
        counts[image.get("class")] = counts.get(image.get("class"), 0) + 1
    return {
        "path": str(out_path),
        "published": doc.get("published"),
        "done": doc.get("done"),
        "thresholds": doc.get("thresholds"),
        "class_counts": counts,
        "images": len(doc.get("images", [])),
    }


def wait_until_interrupted(procs) -> None:
    """Keep the services running until Ctrl-C (or SIGTERM); stop if one of them dies."""
    print("services are running; press Ctrl-C to stop them", flush=True)
    try:
        while True:
            procs.check_alive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping services...", flush=True)


def print_access(out, urls: dict[str, str], creds: dict[str, str], layout: Layout, *, simulated):
    """Tell a person where to look and how to log in (the password is in credentials.json)."""
    out("")
    out(f"Label Studio   {urls['label_studio']}")
    out(f"  login        {creds['username']}  (password in {layout.credentials})")
    out(f"  rank slices  {urls['rank_project']}")
    out(f"  classify     {urls['classify_project']}")
    out(f"dashboard      {urls['dashboard']}")
    out("  login        any user name, password = webhook_secret in credentials.json")
    if simulated:
        out(f"report         {urls['report']}")
    out(f"logs           {layout.logs}")


def print_headline(out, head: dict[str, Any]) -> None:
    """The held-out table: accuracy per model and McNemar's P against one-at-a-time."""
    out("")
    out(f"held-out synthetic test set: {head['n_images']} images")
    out(f"{'model trained on':<22} {'accuracy (95% CI)':<24} {'LV-vs-not accuracy':<20}")
    for name, m in head["models"].items():
        acc = m["accuracy"]
        b = m["binary"]["accuracy"]
        out(
            f"{name:<22} {acc['value']:.3f} ({acc['low']:.3f}-{acc['high']:.3f})     "
            f"{b['value']:.3f}"
        )
    for c in head["comparisons"]:
        out(
            f"McNemar {c['model']} vs {c['reference']}: P = {c['mcnemar_binary_p']:.3g} "
            f"(LV vs not), {c['mcnemar_3class_p']:.3g} (3 classes)"
        )


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole study end to end on one machine (synthetic data, simulated raters)",
        description=(
            "Generate a synthetic cohort, start Label Studio, Redis (unless REDIS_URL answers), "
            "the scheduler, the ML backend and a worker; provision the projects; let simulated "
            "clinicians label with both strategies at equal labelling time; train one model per "
            "strategy; score them on a held-out synthetic test set and write the report."
        ),
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--fresh", action="store_true", help="delete --out first and start over")
    p.add_argument("--scans", type=int, default=DEFAULT_SCANS, help="scans to label")
    p.add_argument("--test-scans", type=int, default=DEFAULT_TEST_SCANS, help="held-out scans")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort and the raters")
    p.add_argument("--raters", type=int, default=3, help="simulated clinicians (1-3)")
    p.add_argument(
        "--hours",
        type=float,
        help="labelling time per strategy (default: the time one label per image takes)",
    )
    p.add_argument(
        "--strategy", default="bayes", choices=("bayes", "paper"), help="scheduler strategy"
    )
    p.add_argument("--gpu", action="store_true", help="train with the study's recipe on CUDA")
    p.add_argument("--preset", help="training preset (default: cpu-small, or gpu with --gpu)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument(
        "--no-simulate",
        dest="simulate",
        action="store_false",
        help="set everything up and leave the projects to real people (runs until Ctrl-C)",
    )
    p.add_argument("--keep-running", action="store_true", help="keep the services up after the run")
    p.add_argument("--host", default="127.0.0.1", help="interface the services listen on")
    p.add_argument("--ls-port", type=int, help="Label Studio port (default: a free one)")
    p.add_argument("--scheduler-port", type=int, help="scheduler port (default: a free one)")
    p.add_argument("--backend-port", type=int, help="ML backend port (default: a free one)")
    p.add_argument("--json", metavar="FILE", help="write every stage's outputs as JSON")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from slicerank_base.jsonout import write_json

    if getattr(args, "verbose", 0) < 2:
        # One line per HTTP call would bury the progress bars.
        logging.getLogger("httpx").setLevel(logging.WARNING)

    try:
        cfg = DemoConfig(
            out=Path(args.out),
            scans=args.scans,
            test_scans=args.test_scans,
            seed=args.seed,
            raters=args.raters,
            hours=args.hours,
            strategy=args.strategy,
            gpu=args.gpu,
            preset=args.preset,
            epochs=args.epochs,
            simulate=args.simulate,
            keep_running=args.keep_running,
            fresh=args.fresh,
            host=args.host,
            ls_port=args.ls_port,
            scheduler_port=args.scheduler_port,
            backend_port=args.backend_port,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def save(result: dict) -> None:
        if args.json:
            write_json(args.json, result)

    try:
        save(run_demo(cfg, on_ready=save))
    except (RuntimeError, TimeoutError, ValueError) as exc:
        # A stage failed: the child processes are already stopped; say which and why.
        print(f"slicerank demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` benchmark target (``slicerank.demo_bench``)."""
    from slicerank.demo_bench import register_bench as register_demo_bench

    register_demo_bench(bench_subparsers)
