"""A real Label Studio for the whole test session (imported into tests/conftest.py).

``label_studio`` starts one ``label-studio start`` (temporary data dir, SQLite, legacy token on,
local files served, SSRF guards off) the first time a test asks for it and stops it at the end
of the session; startup takes ~25 s on an idle machine. Tests share it, so each test provisions
its projects under its own title prefix and writes its images under its own folder of
``label_studio.media_root``. Developers may point the fixture at a running server with
SLICERANK_TEST_LS_URL, _API_KEY, _DOCUMENT_ROOT (and _USERNAME, _PASSWORD). ``write_cohort`` writes a small set of real PNG slices + manifest.
"""

from __future__ import annotations

import csv
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class LabelStudioHandle:
    """What tests need of the running server."""

    url: str
    api_key: str
    username: str
    password: str
    document_root: Path
    media_root: Path
    log_path: Path

    def client(self):
        """A ``label_studio_sdk.LabelStudio`` client authenticated with the API token."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.api_key, timeout=60)

    def new_media_dir(self, name: str | None = None) -> Path:
        """A fresh folder under the media root (inside the document root) for one test."""
        path = self.media_root / (name or uuid.uuid4().hex[:10])
        path.mkdir(parents=True, exist_ok=False)
        return path

    def unique_prefix(self) -> str:
        """A project-title prefix no other test uses."""
        return f"t{uuid.uuid4().hex[:8]} "


def write_cohort(out_dir: Path, n_scans: int = 4, n_slices: int = 10, size: int = 96) -> list:
    """Write ``n_scans`` × ``n_slices`` phantom short-axis PNGs and ``manifest.csv``; returns rows.

    A ring (myocardium) around a blood pool whose radius shrinks towards the apex; positions run
    0 (basal) → 1 (apical) and ``true_class`` follows the position, as in the manifest contract.
    """
    import numpy as np
    from PIL import Image

    out_dir = Path(out_dir)
    (out_dir / "slices").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    rows = []
    for s in range(n_scans):
        scan_id = f"scan{uuid.uuid4().hex[:8]}"
        for k in range(n_slices):
            pos = k / (n_slices - 1)
            outer = size * (0.38 - 0.22 * pos)
            inner = outer * max(0.0, 0.75 - 0.8 * pos**2)
            img = np.full((size, size), 20, np.uint8)
            img[r < outer] = 90
            img[r < inner] = 220
            img = (img + 10 * math.sin(s + k)).clip(0, 255).astype(np.uint8)
            image_id = f"{scan_id}-{k:02d}"
            path = f"slices/{image_id}.png"
            Image.fromarray(img).save(out_dir / path)
            cls = "too_basal" if pos < 0.15 else ("too_apical" if pos > 0.85 else "lv")
            rows.append(
                {
                    "image_id": image_id,
                    "scan_id": scan_id,
                    "slice_index": k,
                    "n_slices": n_slices,
                    "path": path,
                    "position": round(pos, 4),
                    "true_class": cls,
                }
            )
    with open(out_dir / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> Iterator[LabelStudioHandle]:
    """One real Label Studio server shared by every test of the session."""
    from ls_config.server import LabelStudioServer

    if os.environ.get("SLICERANK_TEST_LS_URL"):
        # Developer shortcut: reuse a running server (set up like LabelStudioServer's).
        document_root = Path(os.environ["SLICERANK_TEST_LS_DOCUMENT_ROOT"])
        media_root = document_root / f"tests-{uuid.uuid4().hex[:6]}"
        media_root.mkdir(parents=True)
        yield LabelStudioHandle(
            url=os.environ["SLICERANK_TEST_LS_URL"],
            api_key=os.environ["SLICERANK_TEST_LS_API_KEY"],
            username=os.environ.get("SLICERANK_TEST_LS_USERNAME", "lead@slicerank.local"),
            password=os.environ.get("SLICERANK_TEST_LS_PASSWORD", ""),
            document_root=document_root,
            media_root=media_root,
            log_path=Path(os.environ.get("SLICERANK_TEST_LS_LOG", "/dev/null")),
        )
        return
    base = tmp_path_factory.mktemp("label-studio")
    document_root = base / "files"
    media_root = document_root / "media"
    media_root.mkdir(parents=True)
    artifacts = Path(os.environ.get("SLICERANK_TEST_ARTIFACTS", "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    server = LabelStudioServer(
        media_root,
        document_root=document_root,
        data_dir=base / "data",
        log_path=artifacts / "label-studio.log",
        open_signup=True,  # tests sign simulated raters up through the real form
    )
    try:
        server.start()
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"could not start Label Studio for the tests: {exc}")
    try:
        yield LabelStudioHandle(
            url=server.url,
            api_key=server.api_key,
            username=server.username,
            password=server.password,
            document_root=document_root,
            media_root=media_root,
            log_path=server.log_path,
        )
    finally:
        server.stop()
