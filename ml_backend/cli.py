"""Subcommands of ``slicerank`` that drive ``ml_backend``: ``backend``, ``worker``, ``train``
and ``bench train``. Heavy imports (torch, FastAPI, the SDK) happen inside the handlers."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace):
    """Settings from the environment (read once, here), overridden by command-line options."""
    from ml_backend.settings import BackendSettings
    from slicerank_base.reach import ConfigError

    try:
        settings = BackendSettings.from_env(os.environ)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    changes = {}
    for opt, name in (("model_dir", "model_dir"), ("media_root", "media_root"), ("device", "device"),
                      ("preset", "preset"), ("redis_url", "redis_url"), ("queue", "queue_name"),
                      ("label_studio_url", "label_studio_url")):  # fmt: skip
        value = getattr(args, opt, None)
        if value is not None:
            changes[name] = Path(value) if name in ("model_dir", "media_root") else value
    return dataclasses.replace(settings, **changes)


def _common(p: argparse.ArgumentParser, *, queue: bool = True) -> None:
    p.add_argument("--model-dir", help="model registry folder (env MODEL_DIR, default runs/models)")
    p.add_argument("--media-root", help="media root with manifest.csv (env SLICERANK_MEDIA_ROOT)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (env SLICERANK_DEVICE)")
    if queue:
        p.add_argument("--redis-url", help="Redis URL (env REDIS_URL)")
        p.add_argument("--queue", help="RQ queue name (env SLICERANK_QUEUE)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``slicerank`` parser."""
    p = subparsers.add_parser("backend", help="run the Label Studio ML backend (HTTP)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument(
        "--dev-no-auth",
        action="store_true",
        help="serve without basic auth (development machines only; otherwise BASIC_AUTH_USER and "
        "BASIC_AUTH_PASS are required; env SLICERANK_BACKEND_DEV_NO_AUTH=1)",
    )
    _common(p)
    p.set_defaults(func=_backend)

    p = subparsers.add_parser("worker", help="run an RQ training worker (one per GPU)")
    p.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    p.add_argument("--name", help="worker name (default: RQ's host.pid)")
    _common(p)
    p.set_defaults(func=_worker)

    p = subparsers.add_parser(
        "train",
        help="enqueue a training job (optionally wait for it)",
        description=(
            "Check what can be checked here (Redis, the labels file, the Label Studio project "
            "and key), then enqueue one training job for the workers. Without --wait it prints "
            "the job id and how to follow it; --follow JOB waits for a job queued earlier."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--project", type=int, help="Label Studio Classify project id")
    src.add_argument("--labels", help="a Label Studio JSON export of the Classify project")
    src.add_argument(
        "--follow", metavar="JOB", help="show the progress of a job queued earlier and wait for it"
    )
    p.add_argument("--label-source", choices=("classify", "ranking"), default="classify")
    p.add_argument(
        "--consensus", help="scheduler consensus.json (ranking source; env SLICERANK_CONSENSUS)"
    )
    p.add_argument("--soft", action="store_true", help="train on the consensus class probabilities")
    p.add_argument("--preset", help="auto, study, gpu or cpu-small (env SLICERANK_TRAIN_PRESET)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1), overriding the preset")
    p.add_argument("--no-predictions", action="store_true", help="do not write predictions to LS")
    p.add_argument(
        "--label-studio-url",
        help="the Label Studio this command checks the project against before queueing (env "
        "LABEL_STUDIO_URL); the job carries no URL: the worker uses its own",
    )
    p.add_argument("--wait", action="store_true", help="wait for the job and show its progress")
    p.add_argument("--json", metavar="FILE", help="write the job's outcome as JSON")
    _common(p)
    p.set_defaults(func=_train)


def _backend(args: argparse.Namespace) -> int:
    import uvicorn

    from ml_backend.server import create_app
    from ml_backend.settings import AuthConfigError, check_auth, resolve_device

    settings = _settings(args)
    if args.dev_no_auth:
        settings = dataclasses.replace(settings, dev_no_auth=True)
    try:
        check_auth(settings)
    except AuthConfigError as exc:
        print(f"slicerank backend: {exc}", file=sys.stderr)
        return 2
    if settings.dev_no_auth and not settings.basic_auth_user:
        log.warning(
            "--dev-no-auth: the backend accepts unauthenticated requests (development only)"
        )
    _warn_redis_password(settings.redis_url, "backend")
    # Redis may be down now or later: the backend still serves predictions, says "DEGRADED"
    # on /health and answers START_TRAINING with a 503 naming REDIS_URL until it is back.
    app = create_app(settings, redis_conn=_redis(settings.redis_url),
                     device=resolve_device(settings.device))  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def redis_password_warning(redis_url: str) -> str | None:
    """A warning when ``redis_url`` carries no password (anyone who reaches that Redis can queue
    jobs for the workers), else None."""
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    if parts.scheme == "unix" or parts.password:
        return None
    return (
        f"REDIS_URL has no password ({parts.scheme}://{parts.netloc}): anyone "
        "who reaches this Redis can queue training jobs and read their results. Use "
        "redis://:PASSWORD@host:port/0 and keep Redis on a private network (compose does both)"
    )


def owner_token_warning(label_studio_url: str, api_key: str, *, timeout: float = 5.0) -> str | None:
    """A warning when ``api_key`` is the token of the Label Studio organisation's owner (the
    admin who created it), else None; None too when Label Studio cannot be asked. Workers
    should hold a separate user's token: the GPU machines then never hold the admin's."""
    import httpx

    from ml_backend.media import auth_header

    if not label_studio_url or not api_key:
        return None
    try:
        me = httpx.get(
            f"{label_studio_url.rstrip('/')}/api/current-user/whoami",
            headers=auth_header(api_key),
            timeout=timeout,
            follow_redirects=False,
        )
        me.raise_for_status()
        data = me.json()
    except (httpx.HTTPError, ValueError):
        return None  # unreachable or another auth scheme: the worker says so when it trains
    email = str(data.get("email") or "").lower()
    owner = str((data.get("active_organization_meta") or {}).get("email") or "").lower()
    if email and email == owner:
        return (
            "LABEL_STUDIO_API_KEY is the Label Studio organisation owner's token: give workers "
            "the token of a separate, non-admin user (WORKER_LABEL_STUDIO_API_KEY in compose; "
            "README security notes)"
        )
    return None


def _warn_redis_password(redis_url: str, who: str) -> None:
    message = redis_password_warning(redis_url)
    if message:
        log.warning("%s: %s", who, message)


def _redis(url: str):
    """A Redis client that gives up on an unreachable server within seconds, not minutes."""
    import redis

    from slicerank_base.reach import CHECK_TIMEOUT_S

    return redis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S)


def _worker(args: argparse.Namespace) -> int:
    import redis

    from ml_backend.jobs import run_worker
    from slicerank_base.reach import check_redis, start_wait_s, wait_until_reachable

    settings = _settings(args)
    give_up = start_wait_s(os.environ)
    _warn_redis_password(settings.redis_url, "worker")
    if os.environ.get("LABEL_STUDIO_URL"):
        message = owner_token_warning(settings.label_studio_url, settings.label_studio_api_key)
        if message:
            log.warning("worker: %s", message)
    # The job reads its own settings from this environment; pass the overrides on.
    os.environ["MODEL_DIR"] = str(settings.model_dir)
    os.environ["SLICERANK_DEVICE"] = settings.device
    if settings.media_root:
        os.environ["SLICERANK_MEDIA_ROOT"] = str(settings.media_root)
    while True:
        # Redis down at start or lost later: one log line per attempt, backing off; RQ itself
        # retries a Redis lost while it waits for jobs.
        wait_until_reachable(
            lambda: check_redis(settings.redis_url), who="worker", give_up_after_s=give_up, log=log
        )
        try:
            run_worker(
                _redis(settings.redis_url), settings.queue_name, burst=args.burst, name=args.name
            )
            return 0
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("worker: lost Redis (REDIS_URL): %s; reconnecting", exc)


def _train(args: argparse.Namespace) -> int:
    from ml_backend.jobs import TrainRequest, enqueue_training
    from slicerank_base.reach import ConfigError, check_redis

    settings = _settings(args)
    if args.follow:
        check_redis(settings.redis_url)
        return _follow(_redis(settings.redis_url), args.follow, settings, args.json)
    consensus = args.consensus or (
        str(settings.consensus_path) if settings.consensus_path else None
    )
    try:
        request = TrainRequest(
            label_source=args.label_source,
            project_id=args.project,
            labels_path=str(Path(args.labels).resolve()) if args.labels else None,
            consensus_path=str(Path(consensus).resolve()) if consensus else None,
            soft_targets=args.soft,
            preset=settings.preset,
            media_root=str(Path(settings.media_root).resolve()) if settings.media_root else None,
            model_dir=str(Path(settings.model_dir).resolve()),
            device=args.device or "auto",
            epochs=args.epochs,
            seeds=tuple(range(args.seeds)) if args.seeds else None,
            write_predictions=not args.no_predictions,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # Everything that can be checked from here is, before a job exists that could only fail.
    check_train_inputs(request, settings)
    check_redis(settings.redis_url)
    conn = _redis(settings.redis_url)
    result = enqueue_training(
        conn, request, queue_name=settings.queue_name, job_timeout=settings.job_timeout
    )
    print(result.message)
    if not listening_workers(conn, settings.queue_name):
        print(f"note: {no_worker_hint(settings)}", file=sys.stderr)
    if not args.wait:
        print(
            f"follow it with: slicerank train --follow {result.job_id}  (the worker's log shows "
            "it too; model versions: GET /versions on the ML backend)"
        )
        if args.json:
            from slicerank_base.jsonout import write_json

            write_json(
                args.json,
                {"job_id": result.job_id, "created": result.created, "status": result.status},
            )
        return 0
    return _follow(conn, result.job_id, settings, args.json, created=result.created)


def check_train_inputs(request, settings) -> None:
    """Raise :class:`~slicerank_base.reach.ConfigError` (or ``ServiceUnreachable``) for what
    would make the job fail at once: a labels or consensus file that is missing or not JSON, a
    Label Studio project that does not answer with this key."""
    import json

    from ml_backend.labels import collect_labels
    from slicerank_base.reach import ConfigError

    loaded = {}
    for option, path in (
        ("--labels", request.labels_path),
        ("--consensus", request.consensus_path),
    ):
        if not path:
            continue
        if not Path(path).is_file():
            raise ConfigError(f"{option} {path}: no such file")
        try:
            loaded[option] = json.loads(Path(path).read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{option} {path} is not JSON ({exc})") from None
    tasks = loaded.get("--labels")
    if tasks is not None and not isinstance(tasks, list):
        raise ConfigError(
            f"--labels {request.labels_path} is not a Label Studio JSON export (a list of tasks)"
        )
    # The labels themselves, where they need no Label Studio: a job without any would fail.
    if tasks is not None or (request.label_source == "ranking" and request.consensus_path):
        try:
            collect_labels(
                request.label_source, tasks=tasks, soft=request.soft_targets,
                consensus_path=Path(request.consensus_path) if request.consensus_path else None,
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:  # NoLabelsError is a ValueError
            raise ConfigError(f"nothing to train on: {exc}") from None
    if request.project_id is not None:
        from ls_config.access import check_access

        check_access(
            settings.label_studio_url, settings.label_studio_api_key, project_id=request.project_id
        )


def listening_workers(conn, queue_name: str) -> int:
    """How many workers listen on ``queue_name`` now."""
    from rq import Queue, Worker

    from ml_backend.jobs import SERIALIZER

    return Worker.count(queue=Queue(queue_name, connection=conn, serializer=SERIALIZER))


def no_worker_hint(settings, n_workers: int = 0) -> str:
    """What to do when no worker takes the job."""
    from slicerank_base.reach import redact_url

    where = f"queue {settings.queue_name!r} at {redact_url(settings.redis_url)} (REDIS_URL)"
    if n_workers:
        return (
            f"{n_workers} worker(s) listen on {where} but none has taken the job: they are busy "
            "or stuck; see their logs, or start another with `slicerank worker`"
        )
    return (
        f"no worker listens on {where}: start one with `slicerank worker` (same REDIS_URL; one "
        "per GPU); the job waits in the queue until then"
    )


def _follow(conn, job_id: str, settings, json_path, *, created: bool | None = None) -> int:
    """Show job ``job_id``'s progress until it ends; say so when no worker takes it."""
    import time

    from rq.exceptions import NoSuchJobError
    from tqdm import tqdm

    from ml_backend.jobs import job_summary, wait_for_job
    from slicerank_base.jsonout import write_json
    from slicerank_base.reach import ConfigError, redact_url

    try:
        summary = job_summary(conn, job_id)
    except NoSuchJobError:
        raise ConfigError(
            f"no training job {job_id!r} in Redis at {redact_url(settings.redis_url)} "
            "(REDIS_URL): check the id (jobs are kept 7 days after they end)"
        ) from None
    outcome = {"job_id": job_id, "created": created, "status": summary["status"]}
    bar = tqdm(desc="training", unit="epoch")
    started = time.monotonic()
    warned = False

    def show(summary):
        nonlocal warned
        meta = summary.get("meta") or {}
        if summary["status"] == "queued" and not meta.get("epoch"):
            bar.set_postfix_str("queued: waiting for a worker")
            waited = time.monotonic() - started
            if not warned and waited >= settings.pickup_warn_s:
                warned = True
                n = listening_workers(conn, settings.queue_name)
                tqdm.write(
                    f"job {job_id} still queued after {waited:.0f} s: {no_worker_hint(settings, n)}",
                    file=sys.stderr,
                )
        elif meta.get("epoch"):
            total = meta.get("epochs", 0) * len(meta.get("seeds") or [0])
            done = (meta.get("seeds") or [0]).index(meta.get("seed", 0)) * meta.get(
                "epochs", 0
            ) + meta["epoch"]
            bar.total = total
            bar.n = done
            bar.set_postfix_str(
                f"{meta.get('stage')} val_loss={meta.get('val_loss', float('nan')):.3f}"
            )
        else:
            bar.set_postfix_str(str(meta.get("stage") or summary["status"]))
        bar.refresh()

    summary = wait_for_job(conn, job_id, on_progress=show, poll_s=min(1.0, settings.pickup_warn_s))
    bar.close()
    outcome.update(summary)
    if summary["status"] == "finished":
        print(f"registered model version {summary['result']['model_version']}")
    else:
        print(f"training job {job_id} {summary['status']}: {summary.get('error')}", file=sys.stderr)
    if json_path:
        write_json(json_path, outcome)
    return 0 if outcome["status"] == "finished" else 1
