"""The model registry: one folder per version under ``MODEL_DIR``.

A version folder holds ``checkpoint.pt`` (model, optimizer, epoch, config), ``config.json``,
``label_source.json``, ``splits.json`` (image ids per split), ``metrics.json`` and
``version.json``. Registration writes everything into a hidden staging folder and publishes it
with one ``rename``, which is atomic on a POSIX file system: a job that fails or is killed
while registering leaves at most a ``.staging-*`` folder that listing ignores — never a
half-registered version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_VERSION_RE = re.compile(r"^v(\d{4,})(?:-[a-z0-9-]+)?$")
CHECKPOINT = "checkpoint.pt"


class UnknownVersionError(KeyError):
    """The asked-for model version is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelVersion:
    """A registered version: its name, folder and the facts recorded in ``version.json``."""

    name: str
    path: Path
    info: dict[str, Any]

    @property
    def number(self) -> int:
        """The running number in the name (``v0007-classify`` → 7)."""
        return int(_VERSION_RE.match(self.name).group(1))  # type: ignore[union-attr]

    @property
    def checkpoint(self) -> Path:
        """Path of the checkpoint file."""
        return self.path / CHECKPOINT

    def read_json(self, name: str) -> Any:
        """One of the version's JSON files (``metrics``, ``splits``, ``config``, ...)."""
        return json.loads((self.path / f"{name}.json").read_text())


def _write_json(path: Path, obj: Any) -> None:
    with path.open("w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


class ModelRegistry:
    """Versions under one root folder (created on first registration)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[ModelVersion]:
        """All complete versions, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for child in self.root.iterdir():
            if (
                child.is_dir()
                and _VERSION_RE.match(child.name)
                and (child / "version.json").is_file()
            ):
                out.append(
                    ModelVersion(
                        child.name, child, json.loads((child / "version.json").read_text())
                    )
                )
        return sorted(out, key=lambda v: v.number)

    def newest(self) -> ModelVersion | None:
        """The most recently registered version, or None when there is none."""
        versions = self.versions()
        return versions[-1] if versions else None

    def get(self, name: str) -> ModelVersion:
        """The version called ``name``."""
        for v in self.versions():
            if v.name == name:
                return v
        raise UnknownVersionError(f"model version {name!r} is not registered under {self.root}")

    def register(
        self,
        *,
        checkpoint: dict[str, Any],
        config: dict[str, Any],
        label_source: dict[str, Any],
        splits: dict[str, list[str]],
        metrics: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Publish a new version atomically and return it."""
        import torch

        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            torch.save(checkpoint, staging / CHECKPOINT)
            _write_json(staging / "config.json", config)
            _write_json(staging / "label_source.json", label_source)
            _write_json(staging / "splits.json", splits)
            _write_json(staging / "metrics.json", metrics)
            suffix = re.sub(r"[^a-z0-9-]+", "-", str(label_source.get("source", "")).lower()).strip(
                "-"
            )
            for _ in range(100):
                number = max((v.number for v in self.versions()), default=0) + 1
                name = f"v{number:04d}" + (f"-{suffix}" if suffix else "")
                info = {
                    "name": name,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "label_source": label_source.get("source"),
                    **(extra or {}),
                }
                _write_json(staging / "version.json", info)
                try:
                    # rename() onto an existing non-empty folder fails: another worker took the
                    # number first, so count again.
                    os.rename(staging, self.root / name)
                except OSError:
                    continue
                return ModelVersion(name, self.root / name, info)
            raise RuntimeError(f"could not find a free version number under {self.root}")
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def remove_stale_staging(self, older_than_s: float = 24 * 3600) -> int:
        """Delete staging folders left by killed jobs; returns how many were removed."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for child in self.root.glob(".staging-*"):
            if time.time() - child.stat().st_mtime > older_than_s:
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
        return removed
