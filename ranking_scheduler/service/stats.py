"""The numbers behind the coverage dashboard (``GET /api/stats``), computed from engine and store.

:func:`compute_stats` is pure apart from reading the two objects it is given: it returns one
JSON-serialisable dict (see its docstring for the keys). The engine is used only through the
API in ARCHITECTURE.md / INTERFACES.md; a method a strategy does not offer (or that raises
because it does not apply yet, e.g. ``classes()`` before the thresholds are known) leaves its
figure ``None`` and is listed under ``"unavailable"`` instead of failing the whole page.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, date, datetime
from typing import Any

__all__ = ["BREAK_SECONDS", "compute_stats", "rater_pace", "jsonable"]

BREAK_SECONDS = 600.0
"""A gap between a rater's consecutive batches longer than this (10 min) is a break, not work:
it is left out of the median seconds per batch."""

REJECTIONS_SHOWN = 20
"""How many of the latest rejected submissions the stats carry."""

OPEN_TASKS_SHOWN = 50
"""How many open tasks (oldest first) the stats list one by one."""

UNCERTAINTY_BINS = 12
"""Bins of the posterior-sd histogram (equal width from 0 to the largest sd)."""

RANK_POINTS = 300
"""At most this many (rank, mean, sd) points for the uncertainty-along-the-ranking chart."""

CLASS_ORDER = ("too_basal", "lv", "too_apical")

FINAL_CUT_STATES = frozenset({"settled", "budget_spent", "converged", "done"})
"""``boundary_status()`` states after which a cut no longer moves (the classes are final)."""


def _call(engine: Any, name: str, unavailable: list[str], *args: Any) -> Any:
    """``engine.name(*args)``, or None (noted in ``unavailable``) if it is missing or refuses."""
    method = getattr(engine, name, None) if engine is not None else None
    if method is None or not callable(method):
        unavailable.append(name)
        return None
    try:
        return method(*args)
    except (NotImplementedError, ValueError, RuntimeError, KeyError, LookupError):
        # "not applicable yet" (e.g. classes before thresholds): the rest of the page still works.
        unavailable.append(name)
        return None


def jsonable(value: Any) -> Any:
    """Convert to plain JSON types: numpy scalars to Python, tuples to lists, times to ISO
    strings, NaN/inf to None (JSON has no NaN and browsers' ``JSON.parse`` rejects it)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if hasattr(value, "item"):
        return jsonable(value.item())
    return str(value)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _views_section(views: Mapping[str, int] | None, target_views: int) -> dict[str, Any] | None:
    if views is None:
        return None
    counts = [int(v) for v in views.values()]
    n = len(counts)
    # One bar per view count up to twice the target; everything above lands in the last bar.
    top = max(2 * target_views, 1)
    hist = Counter(min(c, top) for c in counts)
    bins = [
        {"views": k, "label": f"≥{k}" if k == top else str(k), "count": hist.get(k, 0)}
        for k in range(top + 1)
    ]
    at_target = sum(1 for c in counts if c >= target_views)
    ordered = sorted(counts)
    return {
        "target": target_views,
        "n_images": n,
        "histogram": bins,
        "at_target": at_target,
        "share_at_target": at_target / n if n else None,
        "min": ordered[0] if n else None,
        "median": _percentile(ordered, 0.5),
        "mean": sum(counts) / n if n else None,
        "max": ordered[-1] if n else None,
        "total": sum(counts),
    }


def _uncertainty_section(
    scores: Mapping[str, Any] | None, ranking: list[str] | None, thresholds: Any
) -> dict[str, Any] | None:
    if scores is None:
        return None
    sds = sorted(float(s[1]) for s in scores.values())
    n = len(sds)
    top = sds[-1] if n else 0.0
    width = top / UNCERTAINTY_BINS if top > 0 else 1.0
    hist = [0] * UNCERTAINTY_BINS
    for sd in sds:
        hist[min(int(sd / width), UNCERTAINTY_BINS - 1)] += 1
    by_rank = None
    if ranking:
        step = max(1, math.ceil(len(ranking) / RANK_POINTS))
        picks = list(range(0, len(ranking), step))
        if picks[-1] != len(ranking) - 1:
            picks.append(len(ranking) - 1)
        by_rank = [
            [i, float(scores[ranking[i]][0]), float(scores[ranking[i]][1])]
            for i in picks
            if ranking[i] in scores
        ]
    return {
        "histogram": [
            {"lo": i * width, "hi": (i + 1) * width, "count": c} for i, c in enumerate(hist)
        ],
        "median_sd": _percentile(sds, 0.5),
        "p90_sd": _percentile(sds, 0.9),
        "max_sd": sds[-1] if n else None,
        "by_rank": by_rank,
        "thresholds": thresholds,
    }


def rater_pace(
    times_by_rater: Mapping[str, list[datetime]], *, break_s: float = BREAK_SECONDS
) -> dict[str, float | None]:
    """Median seconds between a rater's consecutive batches, ignoring breaks.

    A gap longer than ``break_s`` is a pause (coffee, another task), not labelling time, so it
    is left out; so are non-positive gaps (two deliveries with the same timestamp). A rater with
    fewer than two batches in one sitting has no pace yet (None).
    """
    out: dict[str, float | None] = {}
    for rater, times in times_by_rater.items():
        ts = sorted(times)
        gaps = [
            (b - a).total_seconds()
            for a, b in zip(ts, ts[1:], strict=False)
            if 0 < (b - a).total_seconds() <= break_s
        ]
        out[rater] = statistics.median(gaps) if gaps else None
    return out


def compute_stats(
    engine: Any,
    store: Any,
    *,
    target_views: int,
    now: datetime | None = None,
    break_s: float = BREAK_SECONDS,
    rejections_shown: int = REJECTIONS_SHOWN,
    engine_lock: AbstractContextManager | None = None,
) -> dict[str, Any]:
    """Everything the coverage dashboard shows, as one JSON-serialisable dict.

    ``engine`` is the live ``RankingEngine`` (or None before it exists), ``store`` the
    :class:`~ranking_scheduler.service.store.SubmissionStore`, ``target_views`` the view target the
    engine was built with, ``now`` the time to measure ages against (default: now, UTC).

    Keys: ``generated_at``, ``strategy``, ``n_images``, ``target_views``, ``headline``
    (``progress_pct``, ``batches_done``, ``batches_left``, ``images_at_target``,
    ``share_at_target``, ``expected_misclassified``, ``done``), ``progress``, ``views``
    (``histogram`` of ``{views, label, count}``, ``share_at_target``, ...), ``uncertainty``
    (``histogram`` of posterior sd, ``median_sd``, ``p90_sd``, ``by_rank`` as
    ``[rank, mean, sd]``, ``thresholds``), ``classes`` (``known``: final; ``provisional``:
    counts while ranking or the cut search goes on; ``counts``), ``boundary`` (engine
    ``status`` per cut, ``labels`` in the log), ``raters`` (one row per rater:
    ``batches``, ``boundary_labels``, ``median_s_per_batch``, ``last_active``, ``noise``),
    ``rejections`` (``total``, ``latest``), ``tasks`` (``by_status``, ``open`` per kind,
    ``open_list``, ``oldest_open_age_s``), ``unavailable`` (engine methods that gave nothing).
    A figure that cannot be computed is None.

    ``engine_lock`` (e.g. the service's ``threading.Lock``) is held only while the engine is
    read; the store is read after releasing it, so webhooks are not held up by the dashboard.
    """
    if not isinstance(target_views, int) or target_views < 1:
        raise ValueError(f"target_views must be a positive integer, got {target_views!r}")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    unavailable: list[str] = []

    with engine_lock or nullcontext():
        views = _call(engine, "view_counts", unavailable)
        scores = _call(engine, "scores", unavailable)
        ranking = _call(engine, "ranking", unavailable)
        progress = _call(engine, "progress", unavailable)
        expected_mis = _call(engine, "expected_misclassified", unavailable)
        boundary_status = _call(engine, "boundary_status", unavailable)
        thresholds = _call(engine, "thresholds", unavailable)
        classes = _call(engine, "classes", unavailable)
        noise = _call(engine, "rater_noise", unavailable)
        done_attr = getattr(engine, "done", None) if engine is not None else None

    submissions = list(store.effective_submissions(content=False))
    rankings = [s for s in submissions if s.kind == "rank"]
    boundary_labels = [s for s in submissions if s.kind == "boundary"]

    views_sec = _views_section(views, target_views)
    progress = dict(progress or {})
    batches_done = progress.get("batches", len(rankings))
    batches_left = progress.get("estimated_batches_left")
    done = progress.get("done", done_attr if isinstance(done_attr, bool) else None)
    # Progress %: share of the estimated total work when the engine estimates what is left,
    # else the share of images at the view target (the study's own stopping rule).
    if done:
        pct, basis = 100.0, "done"
    elif batches_left is not None and batches_done is not None and batches_done + batches_left > 0:
        pct, basis = 100.0 * batches_done / (batches_done + batches_left), "batches"
    elif views_sec and views_sec["share_at_target"] is not None:
        pct, basis = 100.0 * views_sec["share_at_target"], "views"
    else:
        pct, basis = None, None

    class_counts = None
    if classes:
        counter = Counter(classes.values())
        class_counts = {c: counter.get(c, 0) for c in CLASS_ORDER}
        class_counts.update({c: n for c, n in counter.items() if c not in class_counts})
    # The engine answers classes() from its current cut estimates even before any boundary
    # label (the class-mix prior), and the scores keep moving while batches are ranked, so the
    # counts are *final* only once the stopping rule holds and every cut has stopped
    # searching; until then they are shown as provisional.
    cut_states = [
        c.get("state") for c in (boundary_status or {}).values() if isinstance(c, Mapping)
    ]
    if boundary_status is None:
        classes_final = class_counts is not None and bool(done)
    else:
        classes_final = (
            class_counts is not None
            and bool(done)
            and bool(cut_states)
            and all(st in FINAL_CUT_STATES for st in cut_states)
        )

    by_rater: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"batches": 0, "boundary_labels": 0, "times": []}
    )
    for s in rankings:
        row = by_rater[s.rater or "(unknown)"]
        row["batches"] += 1
        row["times"].append(s.time)
    for s in boundary_labels:
        row = by_rater[s.rater or "(unknown)"]
        row["boundary_labels"] += 1
        row.setdefault("label_times", []).append(s.time)
    pace = rater_pace({r: v["times"] for r, v in by_rater.items()}, break_s=break_s)
    raters = []
    for name in sorted(by_rater):
        row = by_rater[name]
        last = max(row["times"] + row.get("label_times", []), default=None)
        raters.append(
            {
                "rater": name,
                "batches": row["batches"],
                "boundary_labels": row["boundary_labels"],
                "median_s_per_batch": pace[name],
                "last_active": last,
                "idle_s": (now - last).total_seconds() if last else None,
                "noise": (noise or {}).get(name),
            }
        )

    latest_rej = store.rejections(limit=rejections_shown)
    tasks = store.tasks()
    by_status = Counter(t.status for t in tasks)
    open_tasks = [t for t in tasks if t.status == "open"]
    open_by_kind = Counter(t.kind for t in open_tasks)

    stats = {
        "generated_at": now,
        "strategy": getattr(engine, "strategy", None) if engine is not None else None,
        "n_images": len(views) if views is not None else (len(scores) if scores else None),
        "target_views": target_views,
        "headline": {
            "progress_pct": pct,
            "progress_basis": basis,
            "batches_done": batches_done,
            "batches_left": batches_left,
            "images_at_target": views_sec["at_target"] if views_sec else None,
            "share_at_target": views_sec["share_at_target"] if views_sec else None,
            "expected_misclassified": expected_mis,
            "done": done,
        },
        "progress": {
            **progress,
            "batches": batches_done,
            "batches_logged": len(rankings),
            "estimated_batches_left": batches_left,
            "expected_misclassified": expected_mis,
            "done": done,
            "percent": pct,
            "percent_basis": basis,
        },
        "views": views_sec,
        "uncertainty": _uncertainty_section(scores, ranking, thresholds),
        "classes": {
            "known": classes_final,
            "provisional": class_counts is not None and not classes_final,
            "counts": class_counts,
        },
        "boundary": {
            "status": boundary_status,
            "labels": len(boundary_labels),
            "thresholds": thresholds,
        },
        "raters": raters,
        "break_s": break_s,
        "rejections": {
            "total": store.rejection_count(),
            "latest": [
                {
                    "at": r.received_at,
                    "reason": r.reason,
                    "kind": r.kind,
                    "annotation_id": r.annotation_id,
                    "task_id": r.task_id,
                    "rater": r.rater,
                }
                for r in latest_rej
            ],
        },
        "tasks": {
            "by_status": {
                s: by_status.get(s, 0) for s in ("open", "answered", "retired", "skipped")
            },
            "open": {k: open_by_kind.get(k, 0) for k in ("rank", "boundary")},
            "open_list": [
                {
                    "task_id": t.task_id,
                    "kind": t.kind,
                    "batch_id": t.batch_id,
                    "n_images": len(t.image_ids),
                    "age_s": (now - t.created_at).total_seconds(),
                }
                for t in open_tasks[:OPEN_TASKS_SHOWN]
            ],
            "oldest_open_age_s": (now - open_tasks[0].created_at).total_seconds()
            if open_tasks
            else None,
        },
        "unavailable": sorted(set(unavailable)),
    }
    return jsonable(stats)
