"""Demo stage: reading the scheduler while the simulated clinicians label (its dashboard
numbers and the consensus the ranking-trained model learns from). The clinicians themselves
are in ``slicerank.demo_raters``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def scheduler_stats_fn(http, scheduler_url: str, token: str) -> Callable[[], dict]:
    """A function returning the scheduler's ``/api/stats`` (the dashboard's numbers)."""

    def stats() -> dict:
        resp = http.get(f"{scheduler_url}/api/stats", headers=_bearer(token))
        resp.raise_for_status()
        return resp.json()

    return stats


def _bearer(token: str) -> dict[str, str]:
    # The scheduler's read-only dashboard token, never its webhook secret.
    return {"Authorization": f"Bearer {token}"}


def stage_consensus(http, scheduler_url: str, token: str, out_path: Path) -> dict[str, Any]:
    """The scheduler's consensus (``GET /api/consensus``), saved to ``out_path``.

    When the scheduler has published (its stopping rule held and the boundary questions were
    answered) its classes are also predictions on the Classify tasks; when the budget ran out
    first, this file is what the ranking-trained model learns from.
    """
    resp = http.get(f"{scheduler_url}/api/consensus", headers=_bearer(token))
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
