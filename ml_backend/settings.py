"""Settings of the ML backend and its workers, read once from the environment at start-up.

Every setting has an environment variable (``SLICERANK_`` prefix where the name would
otherwise be ambiguous); the variables Label Studio's own ML-backend examples use
(``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``, ``BASIC_AUTH_USER``, ``BASIC_AUTH_PASS``)
keep their usual names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Name of the RQ queue that training jobs go to.
DEFAULT_QUEUE = "slicerank-train"
#: Where model versions are registered unless MODEL_DIR says otherwise.
DEFAULT_MODEL_DIR = "runs/models"


@dataclass(frozen=True)
class BackendSettings:
    """Everything the backend server, the workers and ``slicerank train`` need to know."""

    label_studio_url: str = "http://127.0.0.1:8080"
    #: Label Studio access token (legacy or personal); never logged.
    label_studio_api_key: str = field(default="", repr=False)
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = DEFAULT_QUEUE
    model_dir: Path = Path(DEFAULT_MODEL_DIR)
    #: A media root (manifest.csv + PNGs) the backend and workers read images from directly;
    #: images not found there are fetched from Label Studio.
    media_root: Path | None = None
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    #: Serve without basic auth (development only: ``--dev-no-auth`` or
    #: SLICERANK_BACKEND_DEV_NO_AUTH=1); without it the backend refuses to start unauthenticated.
    dev_no_auth: bool = False
    #: "auto" picks CUDA when available, else CPU.
    device: str = "auto"
    #: Training preset name (see ``ml_backend.config.PRESETS``); "auto" lets the worker pick
    #: "gpu" on CUDA and "study" otherwise.
    preset: str = "auto"
    #: Serve this registry version instead of the newest one.
    model_version: str = ""
    #: Default label source for training started from Label Studio.
    label_source: str = "classify"
    #: Path of a scheduler ``consensus.json`` used by the ``ranking`` label source.
    consensus_path: Path | None = None
    #: Seconds a training job may run before RQ stops it.
    job_timeout: int = 6 * 3600
    #: Seconds ``slicerank train --wait`` lets a job sit in the queue before it says that no
    #: worker has taken it, and how to start one (SLICERANK_WORKER_PICKUP_S).
    pickup_warn_s: float = 60.0
    #: Folders (besides MODEL_DIR, the media root and the consensus file's folder) under which
    #: a queued job's files may lie (env SLICERANK_WORKER_ROOTS, separated by ``os.pathsep``).
    worker_roots: tuple[Path, ...] = ()
    #: Most tasks one ``/predict`` request may carry (env SLICERANK_PREDICT_MAX_TASKS).
    predict_max_tasks: int = 1000
    #: Largest request body the backend reads, in bytes (env SLICERANK_BACKEND_MAX_BODY_MB).
    max_body_bytes: int = 16 * 1024 * 1024

    def job_roots(self) -> list[Path]:
        """The folders a worker lets a queued job name files under (see :mod:`ml_backend.jobs`)."""
        roots = [self.model_dir, *self.worker_roots]
        if self.media_root is not None:
            roots.append(self.media_root)
        if self.consensus_path is not None:
            roots.append(self.consensus_path.parent)
        return roots

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BackendSettings:
        """Build settings from an environment mapping (call once, at start-up)."""

        def opt_path(name: str) -> Path | None:
            value = environ.get(name, "").strip()
            return Path(value) if value else None

        label_source = environ.get("SLICERANK_LABEL_SOURCE", "classify")
        if label_source not in ("classify", "ranking"):
            raise ValueError(
                f"SLICERANK_LABEL_SOURCE={label_source!r} is not a label source; "
                "use 'classify' or 'ranking'"
            )
        timeout_text = environ.get("SLICERANK_JOB_TIMEOUT", str(6 * 3600))
        try:
            job_timeout = int(timeout_text)
        except ValueError:
            raise ValueError(
                f"SLICERANK_JOB_TIMEOUT={timeout_text!r} is not a whole number of seconds"
            ) from None
        pickup_text = environ.get("SLICERANK_WORKER_PICKUP_S", "").strip() or "60"
        try:
            pickup_warn_s = float(pickup_text)
        except ValueError:
            raise ValueError(
                f"SLICERANK_WORKER_PICKUP_S={pickup_text!r} is not a number of seconds"
            ) from None
        roots = tuple(
            Path(p)
            for p in environ.get("SLICERANK_WORKER_ROOTS", "").split(os.pathsep)
            if p.strip()
        )
        return cls(
            label_studio_url=environ.get("LABEL_STUDIO_URL", cls.label_studio_url).rstrip("/"),
            label_studio_api_key=environ.get("LABEL_STUDIO_API_KEY", ""),
            redis_url=environ.get("REDIS_URL", cls.redis_url),
            queue_name=environ.get("SLICERANK_QUEUE", DEFAULT_QUEUE),
            model_dir=Path(environ.get("MODEL_DIR", DEFAULT_MODEL_DIR)),
            media_root=opt_path("SLICERANK_MEDIA_ROOT"),
            basic_auth_user=environ.get("BASIC_AUTH_USER", ""),
            basic_auth_pass=environ.get("BASIC_AUTH_PASS", ""),
            dev_no_auth=_flag(environ, "SLICERANK_BACKEND_DEV_NO_AUTH"),
            device=environ.get("SLICERANK_DEVICE", "auto"),
            preset=environ.get("SLICERANK_TRAIN_PRESET", "auto"),
            model_version=environ.get("SLICERANK_MODEL_VERSION", ""),
            label_source=label_source,
            consensus_path=opt_path("SLICERANK_CONSENSUS"),
            job_timeout=job_timeout,
            pickup_warn_s=pickup_warn_s,
            worker_roots=roots,
            predict_max_tasks=_positive_int(environ, "SLICERANK_PREDICT_MAX_TASKS", 1000),
            max_body_bytes=_positive_int(environ, "SLICERANK_BACKEND_MAX_BODY_MB", 16)
            * 1024
            * 1024,
        )


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={text!r} is not a whole number of at least 1")
    return value


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={value!r} is not a yes/no value; use 1 or 0")


class AuthConfigError(ValueError):
    """The backend's credentials are missing or unusable; says what to set."""


def check_auth(settings: BackendSettings) -> None:
    """Refuse (:class:`AuthConfigError`) to serve without usable basic-auth credentials, unless
    the explicit development flag is set."""
    user, password = settings.basic_auth_user, settings.basic_auth_pass
    if not user and not password:
        if settings.dev_no_auth:
            return
        raise AuthConfigError(
            "the ML backend needs basic-auth credentials: set BASIC_AUTH_USER and BASIC_AUTH_PASS "
            "(the same ones Label Studio's model settings send), or start it with --dev-no-auth "
            "(SLICERANK_BACKEND_DEV_NO_AUTH=1) on a development machine only"
        )
    if not user:
        raise AuthConfigError("BASIC_AUTH_PASS is set but BASIC_AUTH_USER is empty: set both")
    if not password.strip():
        raise AuthConfigError(
            f"BASIC_AUTH_PASS is empty for user {user!r}: set a password (e.g. python3 -c "
            "'import secrets; print(secrets.token_urlsafe(24))')"
        )


def resolve_device(name: str) -> str:
    """Turn a device setting ("auto", "cpu", "cuda", "cuda:1") into a torch device string."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available on this machine")
    return name
