"""Training as RQ jobs: enqueue (at most one running job per project), the job, the worker.

The job function runs in an RQ work horse (a forked child of ``slicerank worker``). It
reports progress in ``job.meta`` (``stage``, ``seed``, ``epoch``, losses, accuracy) and the
log, and ends either with a registered model version or as a failed job whose exception says
what went wrong: no labels, a missing image, CUDA out of memory. A work horse killed from
outside (the kernel's OOM killer, ``kill -9``) is marked failed by its worker at once; a whole
worker that dies is caught by RQ's abandoned-job clean-up (``StartedJobRegistry.cleanup``,
run by every worker and by :func:`enqueue_training`), which moves the job to the failed
registry. Registration is atomic (see :mod:`ml_backend.registry`), so no failure leaves a
half-registered version.

One request per project: :func:`enqueue_training` keeps ``slicerank:train:<project>`` →
job id in Redis and refuses (reporting the running job) while that job is queued or started.
This module imports only ``rq``/``redis`` at the top so the worker's parent process stays
light; torch is imported inside the job.

Whoever can write to Redis can queue a job, so a worker trusts nothing a job says: it runs only
:func:`train_job` (:class:`TrainingJob` refuses any other function or callback name before RQ
would import it), every path the job names must lie under the worker's own roots
(:func:`confine_request`), and Label Studio is reached only at the worker's own
``LABEL_STUDIO_URL``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import WatchError
from rq import Queue, Worker, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from ml_backend.config import PRESETS

log = logging.getLogger(__name__)

#: Job states in which a project's training is still under way.
ACTIVE_STATES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
#: A lock whose job is not (yet) in Redis counts as active this long: the enqueuer claims the
#: lock just before it enqueues.
CLAIM_GRACE_S = 30.0
LOCK_PREFIX = "slicerank:train:"
#: How jobs, their meta and results are stored in Redis: JSON, not RQ's default pickle, so a
#: worker never unpickles what someone who reached Redis wrote there (arbitrary code). Every
#: Queue, Worker and Job.fetch on the training queue must use it.
SERIALIZER = JSONSerializer


MAX_EPOCHS = 500
"""Most epochs one job may ask for (the study trains 70)."""
MAX_SEEDS = 32
"""Most seeds (ensemble members) one job may ask for (the study trains 10)."""
MAX_VAL_SCANS = 100_000
"""Most validation scan ids one job may name."""
_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,2})?")


@dataclass(frozen=True)
class TrainRequest:
    """What to train; JSON-able, stored as the job's argument (no secrets in it)."""

    label_source: str = "classify"
    project_id: int | None = None
    #: A Label Studio JSON export file to read labels from instead of the project.
    labels_path: str | None = None
    consensus_path: str | None = None
    soft_targets: bool = False
    #: A preset name, or "auto" ("gpu" when the worker trains on CUDA, else "study").
    preset: str = "auto"
    media_root: str | None = None
    model_dir: str = "runs/models"
    #: "auto" = the worker's own SLICERANK_DEVICE (itself "auto": CUDA when present).
    device: str = "auto"
    epochs: int | None = None
    seeds: tuple[int, ...] | None = None
    #: Scan ids that form the validation set; every other labelled image trains (no internal
    #: test split). One split shared by every arm of a comparison (issue 19); None = the
    #: preset's stratified split.
    val_scans: tuple[str, ...] | None = None
    #: After registering, write the new model's predictions on the project's tasks.
    write_predictions: bool = True

    def __post_init__(self) -> None:
        if self.label_source not in ("classify", "ranking"):
            raise ValueError(f"label source {self.label_source!r} must be 'classify' or 'ranking'")
        if self.project_id is None and not self.labels_path and not self.consensus_path:
            raise ValueError(
                "a training request needs a project id, a labels export file or a consensus file"
            )
        # A request can arrive through Redis from anyone who can write there: every number
        # that sets how much work a job does has a bound before the work starts.
        if self.preset != "auto" and self.preset not in PRESETS:
            raise ValueError(
                f"training preset {str(self.preset)[:40]!r} is not one of auto, "
                f"{', '.join(sorted(PRESETS))}"
            )
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device {str(self.device)[:40]!r} must be auto, cpu, cuda or cuda:N")
        if self.epochs is not None and not (
            isinstance(self.epochs, int) and 1 <= self.epochs <= MAX_EPOCHS
        ):
            raise ValueError(
                f"epochs {str(self.epochs)[:20]} must be a whole number 1-{MAX_EPOCHS}"
            )
        if self.seeds is not None and not (
            1 <= len(self.seeds) <= MAX_SEEDS
            and all(isinstance(x, int) and 0 <= x < 2**31 for x in self.seeds)
        ):
            raise ValueError(
                f"seeds must be 1-{MAX_SEEDS} whole numbers in 0..2**31-1, "
                f"got {str(list(self.seeds))[:60]}"
            )

        if self.val_scans is not None and not (
            1 <= len(self.val_scans) <= MAX_VAL_SCANS
            and all(isinstance(x, str) and 0 < len(x) <= 200 for x in self.val_scans)
        ):
            raise ValueError(
                f"val_scans must be 1-{MAX_VAL_SCANS} scan ids (strings of 1-200 characters), "
                f"got {str(list(self.val_scans))[:60]}"
            )

    @property
    def lock_name(self) -> str:
        """What "the same project" means for the one-job-at-a-time rule."""
        if self.project_id is not None:
            return f"project:{self.project_id}"
        return f"file:{self.labels_path or self.consensus_path}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["seeds"] = list(self.seeds) if self.seeds is not None else None
        d["val_scans"] = list(self.val_scans) if self.val_scans is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainRequest:
        """Inverse of :meth:`to_dict`; ValueError for fields it does not know."""
        d = dict(d)
        # Jobs queued by earlier versions name a Label Studio URL: the worker uses its own.
        d.pop("label_studio_url", None)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"a training request has unknown field(s) {', '.join(unknown)[:200]}")
        if d.get("seeds") is not None:
            d["seeds"] = tuple(d["seeds"])
        if d.get("val_scans") is not None:
            d["val_scans"] = tuple(d["val_scans"])
        return cls(**d)


@dataclass(frozen=True)
class EnqueueResult:
    """The outcome of a training request: the job and whether this request created it."""

    job_id: str
    created: bool
    status: str
    message: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


#: The one function a training worker runs.
JOB_FUNCTION = "ml_backend.jobs.train_job"


class RefusedJobError(RuntimeError):
    """A job on the training queue names something other than :func:`train_job`."""


def job_refusal(job: Job) -> str | None:
    """Why ``job`` must not run on a training worker, or None when it is a plain
    :func:`train_job` call (one request dict, no instance, no callbacks)."""
    name = job.func_name
    if name != JOB_FUNCTION:
        return (
            f"job {job.id} names the function {str(name)[:200]!r}; workers run only {JOB_FUNCTION}"
        )
    if job.instance is not None:
        return f"job {job.id} names an instance to call {JOB_FUNCTION} on"
    callbacks = [
        n for n in (job._success_callback_name, job._failure_callback_name,
                    job._stopped_callback_name) if n
    ]  # fmt: skip
    if callbacks:
        return f"job {job.id} names callbacks ({', '.join(callbacks)[:200]}); workers run none"
    if job.kwargs or len(job.args) != 1 or not isinstance(job.args[0], dict):
        return f"job {job.id} must carry exactly one training request (a JSON object)"
    return None


class TrainingJob(Job):
    """An RQ job that can only run :func:`train_job`.

    RQ imports whatever dotted name a job carries, as its function and as its success, failure
    and stopped callbacks, whatever the serializer: a job naming ``os.system`` would run it.
    This class compares names instead of importing them. A refused job fails with
    :class:`RefusedJobError` (in the work horse, so it is recorded like any failed job), and
    callbacks are never resolved, not even on the failure path or by the abandoned-job clean-up.
    """

    @property
    def func(self):
        problem = job_refusal(self)
        if problem:
            log.error("refused: %s", problem)
            raise RefusedJobError(problem)
        return train_job

    @property
    def success_callback(self):
        return None

    @property
    def failure_callback(self):
        return None

    @property
    def stopped_callback(self):
        return None


def training_queue(conn: Redis, queue_name: str) -> Queue:
    """The training queue, with the JSON serializer and the job class that runs only our job."""
    return Queue(queue_name, connection=conn, serializer=SERIALIZER, job_class=TrainingJob)


def _job_active(conn: Redis, job_id: str, claimed_at: float) -> bool:
    try:
        job = Job.fetch(job_id, connection=conn, serializer=SERIALIZER)
    except NoSuchJobError:
        return time.time() - claimed_at < CLAIM_GRACE_S
    return job.get_status(refresh=True) in ACTIVE_STATES


def enqueue_training(
    conn: Redis, request: TrainRequest, *, queue_name: str, job_timeout: int = 6 * 3600
) -> EnqueueResult:
    """Enqueue a training job unless one for the same project is queued or running."""
    queue = training_queue(conn, queue_name)
    # Jobs of workers that died are moved to "failed" here, so they cannot hold the lock (with
    # our job class: the clean-up would otherwise import a failure callback a job names).
    StartedJobRegistry(queue=queue, job_class=TrainingJob).cleanup()
    key = LOCK_PREFIX + request.lock_name
    job_id = uuid.uuid4().hex
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                current = pipe.get(key)
                if current is not None:
                    held = json.loads(current)
                    if _job_active(conn, held["job_id"], held["claimed_at"]):
                        pipe.unwatch()
                        status = _status(conn, held["job_id"])
                        return EnqueueResult(
                            held["job_id"], False, status,
                            f"training for {request.lock_name} is already {status} as job {held['job_id']}",
                        )  # fmt: skip
                pipe.multi()
                pipe.set(key, json.dumps({"job_id": job_id, "claimed_at": time.time()}))
                pipe.execute()
                break
            except WatchError:
                continue
    job = queue.enqueue(
        JOB_FUNCTION,
        request.to_dict(),
        job_id=job_id,
        job_timeout=job_timeout,
        result_ttl=7 * 24 * 3600,
        failure_ttl=30 * 24 * 3600,
        description=f"train {request.label_source} labels of {request.lock_name}",
        meta={"stage": "queued", "lock": key},
    )
    log.info("enqueued training job %s for %s", job.id, request.lock_name)
    return EnqueueResult(
        job.id, True, "queued", f"training for {request.lock_name} queued as job {job.id}"
    )


def _status(conn: Redis, job_id: str) -> str:
    try:
        return _name(
            Job.fetch(job_id, connection=conn, serializer=SERIALIZER).get_status(refresh=True)
        )
    except NoSuchJobError:
        return "queued"


def _name(status: JobStatus | str | None) -> str:
    return getattr(status, "value", None) or str(status)


def _release_lock(conn: Redis, key: str, job_id: str) -> None:
    # Only the job that holds the lock may free it (compare-and-delete in one script).
    conn.eval(
        "local v = redis.call('get', KEYS[1]); "
        "if v and cjson.decode(v)['job_id'] == ARGV[1] then return redis.call('del', KEYS[1]) end; return 0",
        1, key, job_id,
    )  # fmt: skip


def job_summary(conn: Redis, job_id: str) -> dict[str, Any]:
    """Status, meta, result and error of a job, for the CLI and ``/versions``."""
    job = Job.fetch(job_id, connection=conn, serializer=SERIALIZER)
    status = job.get_status(refresh=True)
    out: dict[str, Any] = {
        "job_id": job_id,
        "status": _name(status),
        "meta": job.get_meta(refresh=True),
    }
    if status == JobStatus.FINISHED:
        out["result"] = job.return_value()
    elif status == JobStatus.FAILED:
        result = job.latest_result()
        out["error"] = _last_line(result.exc_string if result else job.exc_info)
    return out


def _last_line(text: str | None) -> str:
    lines = [x for x in (text or "").strip().splitlines() if x.strip()]
    return lines[-1] if lines else "failed"


def wait_for_job(
    conn: Redis, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Poll until the job finished or failed; returns :func:`job_summary`."""
    start = time.monotonic()
    while True:
        summary = job_summary(conn, job_id)
        if on_progress is not None:
            on_progress(summary)
        if summary["status"] in ("finished", "failed", "stopped", "canceled"):
            return summary
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"job {job_id} still {summary['status']} after {timeout_s} s")
        time.sleep(poll_s)


def run_worker(
    conn: Redis, queue_name: str, *, burst: bool = False, name: str | None = None
) -> bool:
    """Run an RQ worker on the training queue (one per GPU); returns when stopped or, with
    ``burst``, when the queue is empty."""
    worker = Worker(
        [training_queue(conn, queue_name)], connection=conn, name=name, serializer=SERIALIZER,
        job_class=TrainingJob,
    )  # fmt: skip
    return worker.work(burst=burst, with_scheduler=False)


# ---------------------------------------------------------------------------------------
# The job itself (runs in the work horse).


class _Progress:
    """Writes progress into the current RQ job's meta (no-op outside a job)."""

    def __init__(self) -> None:
        self.job = get_current_job()

    def update(self, **values: Any) -> None:
        if self.job is None:
            return
        self.job.meta.update(values)
        self.job.save_meta()


def train_job(request_dict: dict[str, Any]) -> dict[str, Any]:
    """RQ job: export labels, build the data set, train every seed, register, predict back.

    The worker's environment, read when the job starts, gives the secrets (the Label Studio
    API key), Label Studio's address and the roots the request's paths must lie under; the
    request says what to train.
    """
    from ml_backend.settings import BackendSettings

    progress = _Progress()
    job = progress.job
    conn = job.connection if job is not None else None
    # The pid lets an operator (or a test) find the work horse that runs this job.
    progress.update(stage="starting", pid=os.getpid())
    try:
        settings = BackendSettings.from_env(os.environ)
        request = confine_request(TrainRequest.from_dict(request_dict), settings.job_roots())
        return _train(request, settings, progress, os.environ.get("LABEL_STUDIO_URL", ""))
    except Exception as exc:
        progress.update(stage="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if job is not None and conn is not None and job.meta.get("lock"):
            _release_lock(conn, job.meta["lock"], job.id)


class JobPathError(ValueError):
    """A queued job names a file or folder outside the worker's roots."""


#: The request fields that name files or folders on the worker.
PATH_FIELDS = ("labels_path", "consensus_path", "model_dir", "media_root")


def confine_request(request: TrainRequest, roots: list[Path]) -> TrainRequest:
    """``request`` with every path it names resolved (symlinks too), or
    :class:`JobPathError` when one lies outside all of ``roots`` (the worker's MODEL_DIR,
    SLICERANK_MEDIA_ROOT, SLICERANK_CONSENSUS's folder and SLICERANK_WORKER_ROOTS).

    A request comes from Redis: whoever can write there must not make the worker read or
    write files of their choosing. The resolved paths are used from here on.
    """
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    changes = {}
    for name in PATH_FIELDS:
        value = getattr(request, name)
        if value is None:
            continue
        if not isinstance(value, str) or not value or "\x00" in value:
            raise JobPathError(f"job field {name} must be a path, not {str(value)[:100]!r}")
        real = Path(os.path.realpath(value))
        if not any(real == r or real.is_relative_to(r) for r in real_roots):
            shown = ", ".join(str(r) for r in real_roots)
            raise JobPathError(
                f"job field {name}={value[:200]!r} lies outside the worker's roots ({shown}): "
                "put the file under one of them or add its folder to SLICERANK_WORKER_ROOTS "
                "in the worker's environment"
            )
        changes[name] = str(real)
    return dataclasses.replace(request, **changes)


def worker_label_studio(own_url: str, api_key: str, request: TrainRequest) -> tuple[str, str]:
    """The Label Studio this job talks to, and so sends the worker's token to: the worker's
    own LABEL_STUDIO_URL, never an address from the job. ValueError when the job needs Label
    Studio (it names a project) and the worker has no URL or token of its own."""
    if request.project_id is None:
        return "", ""
    if not own_url:
        raise ValueError(
            f"job for project {request.project_id} needs Label Studio, but the worker has no "
            "LABEL_STUDIO_URL: set it (and LABEL_STUDIO_API_KEY) in the worker's environment"
        )
    if not api_key:
        raise ValueError("LABEL_STUDIO_API_KEY is not set in the worker's environment")
    return own_url.rstrip("/"), api_key


def _ls_client(url: str, api_key: str):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=api_key)


def _train(request: TrainRequest, settings, progress: _Progress, own_ls_url: str) -> dict[str, Any]:
    import torch

    from ml_backend.config import get_preset
    from ml_backend.data import build_dataset, stratified_split
    from ml_backend.labels import collect_labels
    from ml_backend.registry import ModelRegistry
    from ml_backend.settings import resolve_device
    from ml_backend.splits import grouped_stratified_split, split_by_validation_scans
    from ml_backend.train import protocol_checkpoint, run_protocol

    # The worker, not the enqueuer, knows its hardware: "auto" defers to its environment.
    device_name = request.device if request.device != "auto" else settings.device
    device = torch.device(resolve_device(device_name))
    preset = request.preset
    if preset == "auto":
        preset = "gpu" if device.type == "cuda" else "study"
    config = get_preset(preset)
    changes: dict[str, Any] = {"soft_targets": request.soft_targets}
    if request.epochs:
        changes["epochs"] = request.epochs
    if request.seeds:
        changes["seeds"] = tuple(request.seeds)
    config = config.replace(**changes)
    if device.type != "cuda" and (config.amp or config.data_on_device):
        log.warning("preset %s asks for CUDA features but runs on %s", config.name, device)
    ls_url, api_key = worker_label_studio(own_ls_url, settings.label_studio_api_key, request)

    progress.update(stage="labels", project=request.project_id, label_source=request.label_source)
    tasks = None
    if request.labels_path:
        tasks = json.loads(Path(request.labels_path).read_text())
    elif request.project_id is not None:
        # Exported even when a consensus file gives the labels: the tasks receive the
        # new model's predictions.
        from ml_backend.labels import export_tasks

        tasks = export_tasks(_ls_client(ls_url, api_key), request.project_id)
    labels = collect_labels(
        request.label_source, tasks=tasks,
        consensus_path=Path(request.consensus_path) if request.consensus_path else None,
        soft=request.soft_targets,
    )  # fmt: skip
    media_root = request.media_root or (str(settings.media_root) if settings.media_root else None)
    if not media_root:
        raise ValueError("no media root: set SLICERANK_MEDIA_ROOT or pass --media-root")
    progress.update(stage="images", n_labels=len(labels))
    # One bad task (an image refused or undecodable) is left out with its reason, not fatal.
    skipped: list[dict[str, str]] = []
    dataset = build_dataset(labels, Path(media_root), config, skipped=skipped)
    if skipped:
        kept = set(dataset.image_ids)
        labels = [x for x in labels if x.image_id in kept]
        for item in skipped[:20]:
            log.warning("training without an image: %s", item["reason"])
        progress.update(n_skipped=len(skipped), skipped=skipped[:100])
    wants_groups = config.group_by_scan or request.val_scans is not None
    groups = split_groups(labels, Path(media_root)) if wants_groups else None
    if request.val_scans is not None:
        if groups is None:
            raise ValueError(
                "val_scans needs every labelled image's scan id from the media root's manifest"
            )
        train_idx, val_idx, test_idx = split_by_validation_scans(groups, request.val_scans)
    elif groups is not None:
        train_idx, val_idx, test_idx = grouped_stratified_split(
            [x.label for x in labels], groups, config.split, config.split_seed
        )
    else:
        train_idx, val_idx, test_idx = stratified_split(
            [x.label for x in labels], config.split, config.split_seed
        )
    train, val, test = (dataset.subset(i) for i in (train_idx, val_idx, test_idx))
    progress.update(
        stage="training", epochs=config.epochs, seeds=list(config.seeds), device=str(device),
        n_train=len(train), n_val=len(val), n_test=len(test), history=[],
    )  # fmt: skip

    history: list[dict[str, Any]] = []

    def on_epoch(stats) -> None:
        history.append(stats.as_dict())
        progress.update(
            seed=stats.seed, epoch=stats.epoch, train_loss=stats.train_loss,
            val_loss=stats.val_loss, val_accuracy=stats.val_accuracy, history=history[-200:],
        )  # fmt: skip

    try:
        result = run_protocol(config, train, val, test, device, on_epoch=on_epoch)
    except torch.OutOfMemoryError as exc:
        raise RuntimeError(
            f"CUDA out of memory on {device} training preset {config.name!r} with batch size "
            f"{config.batch_size}: free the GPU or use a smaller batch size / the study preset "
            "without data_on_device"
        ) from exc

    progress.update(stage="registering")
    from slicerank_base import CLASSES

    counts = {c: sum(1 for x in labels if x.label == c) for c in CLASSES}
    version = ModelRegistry(Path(request.model_dir)).register(
        checkpoint=protocol_checkpoint(result, config),
        config=config.to_dict(),
        label_source={
            "source": request.label_source, "project_id": request.project_id,
            "labels_path": request.labels_path, "consensus_path": request.consensus_path,
            "soft_targets": request.soft_targets, "n_labels": len(labels), "class_counts": counts,
            "skipped_images": skipped[:100], "n_skipped": len(skipped),
        },
        splits={
            "train": train.image_ids, "val": val.image_ids, "test": test.image_ids,
            "grouped_by": "scan" if groups is not None else "image",
            "shared_validation_scans": request.val_scans is not None,
            "scans": {
                name: sorted({groups[i] for i in idx}) if groups is not None else []
                for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))
            },
        },
        metrics={**result.summary(), "history": history, "device": str(device)},
        extra={"project_id": request.project_id, "job_id": progress.job.id if progress.job else None},
    )  # fmt: skip
    progress.update(stage="registered", model_version=version.name)
    n_predicted, predictions_error = 0, None
    if request.write_predictions and request.project_id is not None and tasks is not None:
        progress.update(stage="predicting")
        try:
            n_predicted = write_predictions(
                _ls_client(ls_url, api_key), request.project_id, version,
                tasks, Path(media_root), device, label_studio_url=ls_url, api_key=api_key,
            )  # fmt: skip
        except Exception as exc:
            # The version is trained and registered; pre-annotations are a follow-up that
            # /predict (LS's "Retrieve predictions") can still provide, so report, don't fail.
            predictions_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "model %s registered but predictions not written: %s",
                version.name,
                predictions_error,
            )
    progress.update(
        stage="done", predictions_written=n_predicted, predictions_error=predictions_error
    )
    return {
        "model_version": version.name,
        "metrics": result.summary(),
        "predictions_written": n_predicted,
        "predictions_error": predictions_error,
    }


def split_groups(labels, media_root: Path) -> list[str] | None:
    """Each labelled image's scan id from the media root's manifest, or None when any image
    lacks one (the split then falls back to images, and says so in ``splits.json``)."""
    from ml_backend.splits import read_manifest_stacks

    stacks = read_manifest_stacks(media_root)
    groups = [stacks.get(x.image_id, (None, 0))[0] for x in labels]
    if any(g is None for g in groups) or len(set(groups)) < 3:
        log.warning("scan ids unknown for some images: splitting by image, not by scan")
        return None
    return groups  # type: ignore[return-value]


def write_predictions(
    client, project_id: int, version, tasks, media_root: Path, device, *,
    label_studio_url: str | None = None, api_key: str | None = None,
) -> int:  # fmt: skip
    """Predict every task of the project with ``version`` and store the predictions in Label
    Studio as pre-annotations (one bulk import per batch); returns how many were written."""
    from label_studio_sdk import PredictionRequest

    from ml_backend.data import read_manifest_paths
    from ml_backend.predictor import Predictor
    from ml_backend.scan_predict import ScanPredictions

    predictor = Predictor.from_version(version, device=device)
    if predictor.device.type == "cpu" and predictor.config.cpu_threads:
        import torch

        # The work horse ends with the job: its thread count need not be restored.
        torch.set_num_threads(predictor.config.cpu_threads)
    # Each scan's slices are decoded together (the media root holds the whole stack).
    scans = ScanPredictions(media_root)
    manifest = read_manifest_paths(media_root)
    written = 0
    batch = 64
    for start in range(0, len(tasks), batch):
        chunk = tasks[start : start + batch]
        preds, skipped = predictor.predict_tasks(
            chunk, media_root=media_root, manifest=manifest, label_studio_url=label_studio_url,
            api_key=api_key, scans=scans,
        )  # fmt: skip
        for item in skipped:
            # A task whose image is refused or unreadable gets no pre-annotation; the rest do.
            log.warning("no prediction for task %s: %s", item["task"], item["reason"])
        requests = [
            PredictionRequest(
                task=task["id"],
                result=pred["result"],
                score=pred["score"],
                model_version=pred["model_version"],
            )  # fmt: skip
            for task, pred in zip(chunk, preds, strict=True)
            if pred
        ]
        if not requests:
            continue
        client.projects.import_predictions(project_id, request=requests)
        written += len(requests)
    return written
