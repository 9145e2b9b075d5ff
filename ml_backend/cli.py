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

    settings = BackendSettings.from_env(os.environ)
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

    p = subparsers.add_parser("train", help="enqueue a training job (optionally wait for it)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--project", type=int, help="Label Studio Classify project id")
    src.add_argument("--labels", help="a Label Studio JSON export of the Classify project")
    p.add_argument("--label-source", choices=("classify", "ranking"), default="classify")
    p.add_argument(
        "--consensus", help="scheduler consensus.json (ranking source; env SLICERANK_CONSENSUS)"
    )
    p.add_argument("--soft", action="store_true", help="train on the consensus class probabilities")
    p.add_argument("--preset", help="auto, study, gpu or cpu-small (env SLICERANK_TRAIN_PRESET)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1), overriding the preset")
    p.add_argument("--no-predictions", action="store_true", help="do not write predictions to LS")
    p.add_argument("--label-studio-url", help="env LABEL_STUDIO_URL")
    p.add_argument("--wait", action="store_true", help="wait for the job and show its progress")
    p.add_argument("--json", metavar="FILE", help="write the job's outcome as JSON")
    _common(p)
    p.set_defaults(func=_train)


def _backend(args: argparse.Namespace) -> int:
    import redis
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
    app = create_app(settings, redis_conn=redis.Redis.from_url(settings.redis_url),
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


def _worker(args: argparse.Namespace) -> int:
    import redis

    from ml_backend.jobs import run_worker

    settings = _settings(args)
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
    run_worker(
        redis.Redis.from_url(settings.redis_url),
        settings.queue_name,
        burst=args.burst,
        name=args.name,
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    import redis

    from ml_backend.jobs import TrainRequest, enqueue_training, wait_for_job
    from slicerank_base.jsonout import write_json

    settings = _settings(args)
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
            label_studio_url=settings.label_studio_url,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    conn = redis.Redis.from_url(settings.redis_url)
    result = enqueue_training(
        conn, request, queue_name=settings.queue_name, job_timeout=settings.job_timeout
    )
    print(result.message)
    outcome = {"job_id": result.job_id, "created": result.created, "status": result.status}
    if args.wait:
        from tqdm import tqdm

        bar = tqdm(desc="training", unit="epoch")

        def show(summary):
            meta = summary.get("meta") or {}
            if meta.get("epoch"):
                total = meta.get("epochs", 0) * len(meta.get("seeds") or [0])
                done = (meta.get("seeds") or [0]).index(meta.get("seed", 0)) * meta.get(
                    "epochs", 0
                ) + meta["epoch"]
                bar.total = total
                bar.n = done
                bar.set_postfix_str(
                    f"{meta.get('stage')} val_loss={meta.get('val_loss', float('nan')):.3f}"
                )
                bar.refresh()

        summary = wait_for_job(conn, result.job_id, on_progress=show)
        bar.close()
        outcome.update(summary)
        if summary["status"] == "finished":
            print(f"registered model version {summary['result']['model_version']}")
        else:
            print(
                f"training job {result.job_id} {summary['status']}: {summary.get('error')}",
                file=sys.stderr,
            )
    if args.json:
        write_json(args.json, outcome)
    return 0 if outcome["status"] != "failed" else 1
