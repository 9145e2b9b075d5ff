"""The numbers behind the coverage dashboard (``GET /api/stats``), computed from engine and store.

:func:`compute_stats` returns one JSON-serialisable dict (see its docstring for the keys). It
reads the engine only through :func:`read_engine`, which copies the engine's figures (a few
milliseconds of calls that each return fresh objects) while the caller's engine lock is held;
everything else (the store, the sums, the histograms) runs after the lock is released, from
that snapshot, so a dashboard refresh never holds up a submission and never iterates a dict
the worker is changing. The engine is used only through the API in docs/INTERFACES.md /
INTERFACES.md; a method a strategy does not offer (or that raises because it does not apply
yet, e.g. ``classes()`` before the thresholds are known) leaves its figure ``None`` and is
listed under ``"unavailable"`` instead of failing the whole page.

Labelling time is measured, not inferred: Label Studio records each annotation's ``lead_time``
(seconds the rater spent on it), the log keeps it, and :func:`labelling_time` turns it into
median seconds per ranked batch and per single label, per rater, and the hours those imply for
the whole cohort, against the study's time parity (5 h = 3,323 single labels = 1,575 batches).
:func:`webhook_health` says when webhook deliveries seem to have stopped.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

__all__ = [
    "BREAK_SECONDS",
    "EngineFigures",
    "STUDY_PARITY",
    "compute_stats",
    "jsonable",
    "labelling_time",
    "rater_pace",
    "read_engine",
    "webhook_health",
]

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

STUDY_PARITY = {"hours": 5.0, "single_labels": 3323, "batches": 1575}
"""The study's equal-effort comparison: in 5 hours a clinician labelled 3,323 images one at a
time, or ranked about 1,575 batches of 8 (paper/, Methods)."""

WEBHOOK_QUIET_S = 120.0
"""No webhook for this long (2 min) while the reconciliation keeps finding answers means
deliveries have stopped (a webhook a moment behind its answer is not an outage)."""

ENGINE_READS = (
    "view_counts",
    "scores",
    "ranking",
    "progress",
    "expected_misclassified",
    "boundary_status",
    "thresholds",
    "classes",
    "rater_noise",
    "provenance",
    "misreads",
)
"""The engine methods the dashboard reads (each returns a fresh object, safe to keep)."""


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


@dataclass(frozen=True)
class EngineFigures:
    """A snapshot of what the dashboard reads from the engine: one field per method of
    :data:`ENGINE_READS` (None where the engine gave nothing), ``done``, ``strategy``, and the
    methods that gave nothing under ``unavailable``."""

    view_counts: Mapping[str, int] | None = None
    scores: Mapping[str, Any] | None = None
    ranking: list[str] | None = None
    progress: Mapping[str, Any] | None = None
    expected_misclassified: float | None = None
    boundary_status: Mapping[str, Any] | None = None
    thresholds: Any = None
    classes: Mapping[str, str] | None = None
    rater_noise: Mapping[str, float] | None = None
    provenance: Mapping[str, Mapping[str, Any]] | None = None
    misreads: list[Mapping[str, Any]] | None = None
    done: bool | None = None
    strategy: str | None = None
    unavailable: tuple[str, ...] = field(default_factory=tuple)


def _provenance_section(provenance: Mapping[str, Mapping[str, Any]] | None) -> Any:
    """How many images a rater saw (``seen``, split into ranked only, labelled only, both) and
    how many the engine inferred from their scan (``inferred``) or from the prior alone."""
    keys = ("seen", "inferred", "prior", "ranked_only", "labelled_only", "both", "share_seen")
    if not provenance:
        return dict.fromkeys(keys)
    rows = list(provenance.values())
    seen = [p for p in rows if p["source"] == "seen"]
    return {
        "seen": len(seen),
        "inferred": sum(1 for p in rows if p["source"] == "inferred"),
        "prior": sum(1 for p in rows if p["source"] == "prior"),
        "ranked_only": sum(1 for p in seen if p["ranked_by"] and not p["labelled_by"]),
        "labelled_only": sum(1 for p in seen if p["labelled_by"] and not p["ranked_by"]),
        "both": sum(1 for p in seen if p["ranked_by"] and p["labelled_by"]),
        "share_seen": len(seen) / len(rows),
    }


def read_engine(engine: Any, lock: AbstractContextManager | None = None) -> EngineFigures:
    """Copy the engine's figures into an :class:`EngineFigures`, holding ``lock`` (the
    service's engine lock) only for these calls (about 4 ms at 3,323 images)."""
    if isinstance(engine, EngineFigures):
        return engine
    unavailable: list[str] = []
    with lock or nullcontext():
        values = {name: _call(engine, name, unavailable) for name in ENGINE_READS}
        done = getattr(engine, "done", None) if engine is not None else None
    return EngineFigures(
        **values,
        done=done if isinstance(done, bool) else None,
        strategy=getattr(engine, "strategy", None) if engine is not None else None,
        unavailable=tuple(unavailable),
    )


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


def _median_iqr(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median_s": _percentile(ordered, 0.5),
        "p25_s": _percentile(ordered, 0.25),
        "p75_s": _percentile(ordered, 0.75),
    }


def labelling_time(
    submissions: Iterable[Any],
    *,
    n_images: int | None,
    engine_batches: int | None = None,
    break_s: float = BREAK_SECONDS,
) -> dict[str, Any]:
    """Measured labelling time from each submission's ``lead_time`` (seconds Label Studio saw
    the rater spend on it): per strategy (``ranking``: one ranked batch of 8; ``single_label``:
    one image labelled on its own, the boundary questions) and per rater, median and quartiles;
    and the hours these medians imply for the whole cohort of ``n_images``.

    A ranking of the cohort takes as many batches as the study's parity implies
    (``n_images`` x 1,575 / 3,323), or ``engine_batches`` (the engine's own estimate of
    done + left) when given; labelling it one image at a time takes ``n_images`` labels.
    A lead time longer than ``break_s`` is a task left open (a break), and a missing one (an
    answer from before Label Studio recorded it, or from the API) is not a measurement: both
    are counted under ``not_measured`` instead.
    """
    if n_images is not None and n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    times: dict[str, list[float]] = {"ranking": [], "single_label": []}
    per_rater: dict[str, dict[str, list[float]]] = defaultdict(
        lambda: {"ranking": [], "single_label": []}
    )
    not_measured = {"ranking": 0, "single_label": 0}
    for sub in submissions:
        strategy = "ranking" if sub.kind == "rank" else "single_label"
        lead = getattr(sub, "lead_time", None)
        if not isinstance(lead, int | float) or not math.isfinite(lead) or not 0 < lead <= break_s:
            not_measured[strategy] += 1
            continue
        times[strategy].append(float(lead))
        per_rater[sub.rater or "(unknown)"][strategy].append(float(lead))

    by_strategy = {name: _median_iqr(values) for name, values in times.items()}
    for name, row in by_strategy.items():
        row["not_measured"] = not_measured[name]
    s_batch = by_strategy["ranking"]["median_s"]
    s_label = by_strategy["single_label"]["median_s"]
    study_ratio = STUDY_PARITY["batches"] / STUDY_PARITY["single_labels"]
    batches_parity = round(n_images * study_ratio) if n_images is not None else None
    cohort_batches = engine_batches if engine_batches else batches_parity

    def hours(count: int | None, seconds: float | None) -> float | None:
        return None if count is None or seconds is None else count * seconds / 3600.0

    hours_rank = hours(cohort_batches, s_batch)
    hours_single = hours(n_images, s_label)
    study_s = 3600.0 * STUDY_PARITY["hours"]
    return {
        "by_strategy": by_strategy,
        "by_rater": [
            {
                "rater": name,
                "batches_timed": len(row["ranking"]),
                "median_s_per_batch": _percentile(sorted(row["ranking"]), 0.5),
                "labels_timed": len(row["single_label"]),
                "median_s_per_label": _percentile(sorted(row["single_label"]), 0.5),
            }
            for name, row in sorted(per_rater.items())
        ],
        "cohort": {
            "images": n_images,
            "batches": cohort_batches,
            "batches_basis": "engine" if engine_batches else "study_ratio",
            "batches_at_study_ratio": batches_parity,
            "hours_ranking": hours_rank,
            "hours_single_label": hours_single,
            # < 1: ranking the cohort takes less of the team's time than labelling it singly.
            "ranking_to_single_ratio": hours_rank / hours_single
            if hours_rank is not None and hours_single
            else None,
        },
        "study": {
            **STUDY_PARITY,
            "s_per_batch": study_s / STUDY_PARITY["batches"],
            "s_per_single_label": study_s / STUDY_PARITY["single_labels"],
        },
        "break_s": break_s,
    }


def _timestamp(value: Any) -> datetime | None:
    """A datetime from an epoch number, an ISO string or a datetime (None stays None)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        return _timestamp(datetime.fromisoformat(value))
    raise ValueError(f"not a time: {value!r}")


def webhook_health(
    *,
    last_delivery_at: Any,
    found_by_reconciliation: int = 0,
    last_found_at: Any = None,
    now: datetime,
    quiet_s: float = WEBHOOK_QUIET_S,
) -> dict[str, Any]:
    """Whether Label Studio's webhooks still arrive.

    ``last_delivery_at``: when the last webhook came (None: never); ``found_by_reconciliation``:
    answers the reconciliation applied that no webhook had brought; ``last_found_at``: when it
    last found one. Deliveries have ``stopped`` when the reconciliation found answers after the
    last webhook and none has come for ``quiet_s`` (a webhook a moment behind its answer is not
    an outage). ``missed``: webhooks were lost now and then, but they arrive. Times may be
    epoch seconds, ISO strings or datetimes.
    """
    last = _timestamp(last_delivery_at)
    found_last = _timestamp(last_found_at)
    age = (now - last).total_seconds() if last else None
    after_last = found_last is not None and (last is None or found_last > last)
    if after_last and (age is None or age > quiet_s):
        status = "stopped"
        since = f"since {age / 60:.0f} min" if age is not None else "at all"
        message = (
            f"No webhook from Label Studio {since}, but the reconciliation keeps finding "
            f"answers ({found_by_reconciliation} so far): check the project's webhook in Label "
            "Studio (Settings → Webhooks: active, URL and secret header) and that it can reach "
            "the scheduler. Answers are still counted, only later."
        )
    elif found_by_reconciliation:
        status = "missed"
        message = (
            f"{found_by_reconciliation} answers reached the scheduler through the "
            "reconciliation, not their webhook; deliveries still arrive."
        )
    elif last is None:
        status, message = "waiting", "No webhook received yet."
    else:
        status, message = "ok", "Webhooks arrive."
    return {
        "status": status,
        "message": message,
        "last_delivery_at": last,
        "last_delivery_age_s": age,
        "found_by_reconciliation": found_by_reconciliation,
        "last_found_at": found_last,
        "quiet_s": quiet_s,
    }


def compute_stats(
    engine: Any,
    store: Any,
    *,
    target_views: int,
    now: datetime | None = None,
    break_s: float = BREAK_SECONDS,
    rejections_shown: int = REJECTIONS_SHOWN,
    engine_lock: AbstractContextManager | None = None,
    webhooks: Mapping[str, Any] | None = None,
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
    ``provenance`` (images ``seen`` by a rater, split ``ranked_only``/``labelled_only``/
    ``both``, ``inferred`` from their scan, from the ``prior`` alone, ``share_seen``),
    ``misreads`` (the engine's probable misreads for review),
    ``rejections`` (``total``, ``latest``), ``tasks`` (``by_status``, ``open`` per kind,
    ``open_list``, ``oldest_open_age_s``), ``unavailable`` (engine methods that gave nothing).
    A figure that cannot be computed is None.

    ``labelling_time`` (:func:`labelling_time`: measured seconds per batch and per single
    label, per rater, cohort hours against the study's parity) and, when the service passes
    ``webhooks`` (``last_delivery_at``, ``found_by_reconciliation``, ``last_found_at``),
    ``webhooks`` (:func:`webhook_health`).

    ``engine`` may be an :class:`EngineFigures` snapshot already taken; otherwise
    :func:`read_engine` takes one, holding ``engine_lock`` (e.g. the service's engine lock) only
    for those calls. The store is read and everything computed after the lock is released, so
    webhooks are not held up by the dashboard.
    """
    if not isinstance(target_views, int) or target_views < 1:
        raise ValueError(f"target_views must be a positive integer, got {target_views!r}")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    figures = read_engine(engine, engine_lock)
    unavailable = list(figures.unavailable)
    views, scores, ranking = figures.view_counts, figures.scores, figures.ranking
    progress, expected_mis = figures.progress, figures.expected_misclassified
    boundary_status, thresholds = figures.boundary_status, figures.thresholds
    classes, noise, done_attr = figures.classes, figures.rater_noise, figures.done

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

    n_images = len(views) if views is not None else (len(scores) if scores else None)
    engine_total = (
        batches_done + batches_left
        if isinstance(batches_done, int) and isinstance(batches_left, int) and batches_left >= 0
        else None
    )
    stats = {
        "generated_at": now,
        "strategy": figures.strategy,
        "n_images": n_images,
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
        "provenance": _provenance_section(figures.provenance),
        "misreads": list(figures.misreads or []),
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
            "open_single": sum(1 for t in open_tasks if (t.meta or {}).get("single")),
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
        "labelling_time": labelling_time(
            submissions,
            n_images=n_images,
            # The engine's estimate only once it is done; before, "left" is a rough guess.
            engine_batches=engine_total if done else None,
            break_s=break_s,
        ),
        "unavailable": sorted(set(unavailable)),
    }
    if webhooks is not None:
        stats["webhooks"] = webhook_health(
            last_delivery_at=webhooks.get("last_delivery_at"),
            found_by_reconciliation=int(webhooks.get("found_by_reconciliation") or 0),
            last_found_at=webhooks.get("last_found_at"),
            now=now,
            quiet_s=float(webhooks.get("quiet_s", WEBHOOK_QUIET_S)),
        )
    return jsonable(stats)
