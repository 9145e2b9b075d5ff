"""Accepting a refused reconciliation pass: what a lead runs after removing work on purpose.

A full reconciliation that would drop more of the log than ``max_delete_share`` is refused
(reconciler.py): that is what a wrong project or a broken listing looks like. But a lead who
deletes a bad rater's work in Label Studio means it. :func:`refused_drop` lists exactly what the
refused pass would drop (``slicerank scheduler --accept-reconcile`` prints it and changes
nothing); :func:`accept_drop` (``--accept-reconcile --yes``) records the acceptance of those ids
in the log's state, and the scheduler's next full pass drops them (only those: an id the lead
did not see is still guarded).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from ranking_scheduler.service.reconciler import ACCEPTED_STATE_KEY, REFUSED_STATE_KEY
from ranking_scheduler.service.store import SubmissionStore


def refused_drop(store: SubmissionStore) -> dict[str, Any] | None:
    """The last refused pass and the logged annotations it would drop (id, kind, rater, task,
    time), or None when no pass is refused."""
    report = store.get_state(REFUSED_STATE_KEY)
    if not isinstance(report, dict) or not report.get("ids"):
        return None
    ids = {int(i) for i in report["ids"]}
    rows = [
        {
            "annotation_id": s.annotation_id,
            "kind": s.kind,
            "rater": s.rater,
            "task_id": s.task_id,
            "submitted": s.time.isoformat(),
        }
        for s in store.effective_submissions(content=False)
        if s.annotation_id in ids
    ]
    return {
        "refused_at": report.get("at"),
        "projects": report.get("projects"),
        "logged": report.get("logged"),
        "allowed": report.get("allowed"),
        "annotations": rows,
        "by_rater": dict(Counter(r["rater"] for r in rows).most_common()),
    }


def accept_drop(store: SubmissionStore) -> int:
    """Accept the last refused pass: its ids may be dropped by the next full reconciliation.
    Returns how many were accepted (0 when nothing is refused)."""
    drop = refused_drop(store)
    if drop is None:
        return 0
    ids = [r["annotation_id"] for r in drop["annotations"]]
    store.set_state(
        ACCEPTED_STATE_KEY,
        {"ids": ids, "refused_at": drop["refused_at"], "at": datetime.now(UTC).isoformat()},
    )
    return len(ids)


def format_drop(drop: dict[str, Any], limit: int = 50) -> str:
    """The listing a lead reads before accepting (the first ``limit`` annotations)."""
    rows = drop["annotations"]
    lines = [
        f"A reconciliation at {drop['refused_at']} was refused: Label Studio projects "
        f"{drop['projects']} no longer show {len(rows)} of the {drop['logged']} logged "
        f"annotations (at most {drop['allowed']} may go in one pass).",
        "Accepting drops these from the count (the log keeps them as deleted):",
        "  by rater: " + ", ".join(f"{r} {n}" for r, n in drop["by_rater"].items()),
    ]
    for r in rows[:limit]:
        lines.append(
            f"  annotation {r['annotation_id']} ({r['kind']}) by {r['rater']} on task "
            f"{r['task_id']}, {r['submitted']}"
        )
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more")
    return "\n".join(lines)
