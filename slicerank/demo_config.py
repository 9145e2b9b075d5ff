"""The demo's configuration, its folder layout under ``--out`` and its secrets.

Pure values plus the two file operations every run starts with (the credentials file and
the output folder); each stage module takes a ``DemoConfig`` and a ``Layout`` as arguments.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = "demo_out"
DEFAULT_SCANS = 40
DEFAULT_TEST_SCANS = 20
RATER_NAMES = ("rater1", "rater2", "rater3")
LS_USER_DOMAIN = "slicerank.local"


@dataclass(frozen=True)
class DemoConfig:
    """Everything one demo run needs to know; built from the command line."""

    out: Path
    scans: int = DEFAULT_SCANS
    test_scans: int = DEFAULT_TEST_SCANS
    seed: int = 0
    #: The simulated raters' abs_difficulty: 1.0 equal noise (default), 1.5 the study's.
    premise: float = 1.0
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
        if not self.premise > 0:
            problems.append(f"--premise {self.premise}: must be positive (1.0 or 1.5)")
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
    def local_files(self):
        """The media root and document root Label Studio starts with and the task URLs use
        (one value, so the two cannot drift: ``ls_config.local_files``)."""
        from ls_config.local_files import LocalFiles

        return LocalFiles.below(self.media, self.document_root)

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
        # Read-only: the dashboard and the scheduler's JSON; never the webhook secret (issue 15).
        "dashboard_token": lambda: secrets.token_urlsafe(24),
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
