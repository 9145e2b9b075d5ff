"""The demo's simulated clinicians: the REST calls Label Studio's labelling UI makes.

Simulated raters (``ranking_scheduler.simulator.raters``) label the Classify project one image at a time
and rank the scheduler's Rank tasks, each as its own Label Studio user, within a labelling-time
budget set by the study's time parity.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TaskGone(LookupError):
    """The task was deleted before the simulated rater answered it."""


class LabelStudioREST:
    """The few REST calls the labelling UI makes, with the API token (httpx client passed in)."""

    def __init__(self, http, url: str, api_key: str) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Token {api_key}"}

    def _call(self, method: str, path: str, **kw) -> Any:
        resp = self.http.request(method, self.url + path, headers=self.headers, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(
                f"Label Studio {method} {path} -> {resp.status_code}: {resp.text[:300]}"
            )
        return resp.json() if resp.content else None

    def ensure_user(self, email: str, first_name: str) -> int:
        """The id of the user with ``email``, created (in the lead's organisation) if missing."""
        for user in self._call("GET", "/api/users/"):
            if user.get("email") == email:
                return int(user["id"])
        created = self._call(
            "POST",
            "/api/users/",
            json={"email": email, "username": email, "first_name": first_name},
        )
        return int(created["id"])

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of a project with its annotation counts (paged)."""
        out: list[dict] = []
        page = 1
        while True:
            resp = self.http.get(
                f"{self.url}/api/tasks",
                params={"project": project_id, "page": page, "page_size": 500, "fields": "all"},
                headers=self.headers,
            )
            if resp.status_code == 404:  # past the last page
                break
            if resp.status_code >= 400:
                raise RuntimeError(
                    f"Label Studio task list -> {resp.status_code}: {resp.text[:300]}"
                )
            body = resp.json()
            batch = body["tasks"] if isinstance(body, dict) else body
            out.extend(batch)
            total = body.get("total", len(out)) if isinstance(body, dict) else len(out)
            if not batch or len(out) >= total:
                break
            page += 1
        return out

    def annotate(self, task_id: int, result: list[dict], user_id: int, lead_time: float) -> dict:
        """Post one annotation as ``user_id`` (the submit button's call).

        Raises :class:`TaskGone` when the task no longer exists (the scheduler retired it).
        """
        resp = self.http.post(
            f"{self.url}/api/tasks/{task_id}/annotations/",
            headers=self.headers,
            json={"result": result, "completed_by": user_id, "lead_time": lead_time},
        )
        if resp.status_code == 404:
            raise TaskGone(task_id)
        if resp.status_code >= 400:
            raise RuntimeError(
                f"Label Studio refused an annotation on task {task_id}: "
                f"{resp.status_code} {resp.text[:300]}"
            )
        return resp.json()


def choice_result(label: str) -> list[dict]:
    """The annotation result of a Classify/Boundary choice."""
    return [
        {
            "from_name": "slice_class",
            "to_name": "image",
            "type": "choices",
            "origin": "manual",
            "value": {"choices": [label]},
        }
    ]


def ranker_result(order: list[str]) -> list[dict]:
    """The annotation result of a Rank task: item ids most basal first."""
    return [
        {
            "from_name": "order",
            "to_name": "slices",
            "type": "ranker",
            "origin": "manual",
            "value": {"ranker": {"order": list(order)}},
        }
    ]


#: Spread (log scale) of the raters' typical speeds: one rater about 1.3x as fast as another.
RATER_SPEED_SD = 0.25
#: Spread (log scale) of one rater's times from task to task.
TASK_TIME_SD = 0.35
#: Fewer seconds than this is no real look at a task; more is a coffee break.
LEAD_TIME_RANGE_S = (1.5, 120.0)


class LeadTimes:
    """Plausible ``lead_time``s (seconds on a task) for the simulated clinicians' annotations.

    Median at the study's exchange rate (5 h = 3,323 single labels = about 1,575 ranked
    batches: 5.4 s per label, 11.4 s per batch), with a fixed speed per rater and log-normal
    variation from task to task, so the scheduler's measured medians per rater differ as a real
    team's would. Deterministic for a seed; each rater draws from its own stream, so the
    threads that label in parallel cannot change one another's draws.
    """

    def __init__(self, rater_names: list[str], seed: int = 0) -> None:
        import numpy as np

        from ranking_scheduler.simulator.raters import SECONDS_PER_BATCH, SECONDS_PER_LABEL

        self.median_s = {"rank": SECONDS_PER_BATCH, "label": SECONDS_PER_LABEL}
        speeds = np.random.default_rng([seed, 7]).normal(0.0, RATER_SPEED_SD, len(rater_names))
        self.speed = {name: float(np.exp(s)) for name, s in zip(rater_names, speeds, strict=True)}
        self._rng = {
            name: np.random.default_rng([seed, 11, i]) for i, name in enumerate(rater_names)
        }

    def draw(self, rater: str, kind: str) -> float:
        """Seconds ``rater`` spends on one task of ``kind`` (``"rank"`` or ``"label"``)."""
        if kind not in self.median_s:
            raise ValueError(f"lead time kind {kind!r} is not 'rank' or 'label'")
        if rater not in self._rng:
            raise ValueError(f"rater {rater!r} is not one of {sorted(self._rng)}")
        noise = float(self._rng[rater].normal(0.0, TASK_TIME_SD))
        seconds = self.median_s[kind] * self.speed[rater] * math.exp(noise)
        low, high = LEAD_TIME_RANGE_S
        return round(min(max(seconds, low), high), 2)


def is_open(task: dict) -> bool:
    """A task nobody has annotated (or skipped) yet and still in the labelling stream (the
    scheduler retires a task, never deletes it, by marking it labelled)."""
    return (
        not task.get("is_labeled")
        and not task.get("total_annotations")
        and not task.get("cancelled_annotations")
    )


# --------------------------------------------------------------------------------------------
# Stage: simulated clinicians
# --------------------------------------------------------------------------------------------


def labelling_budget(n_images: int, hours: float | None) -> dict[str, float]:
    """Seconds of labelling per strategy, and what they buy at the study's time parity."""
    from ranking_scheduler.simulator.raters import SECONDS_PER_BATCH, SECONDS_PER_LABEL

    seconds = hours * 3600 if hours is not None else n_images * SECONDS_PER_LABEL
    return {
        "seconds": seconds,
        "hours": seconds / 3600,
        # The epsilon keeps n labels' worth of seconds from flooring to n - 1.
        "single_labels": int(seconds / SECONDS_PER_LABEL + 1e-9),
        "ranked_batches": int(seconds / SECONDS_PER_BATCH + 1e-9),
        "seconds_per_label": SECONDS_PER_LABEL,
        "seconds_per_batch": SECONDS_PER_BATCH,
    }


def simulate_single(
    rest: LabelStudioREST,
    project_id: int,
    panel,
    user_ids: dict[str, int],
    n_labels: int,
    labeller,
    progress: Callable[[int], None] = lambda n: None,
    lead_times: LeadTimes | None = None,
) -> dict[str, Any]:
    """One-at-a-time with the scheduler's intelligence: ``labeller``
    (:func:`ranking_scheduler.simulator.stack_labels.single_labeller`) picks the slice each
    rater labels next, where a scan's classes are least certain given its geometry and the
    labels so far; every answer is a Label Studio annotation on the Classify task.

    Labels already in Label Studio (a re-run) are replayed into ``labeller`` and count toward
    the budget. The raters work in parallel threads; each answer informs the next choice as
    soon as it is in (as the ranking arm's scheduler works); each label carries a
    ``lead_time`` from ``lead_times``.
    """
    from ml_backend.labels import CLASS_CONTROL

    lead_times = lead_times or LeadTimes([r.name for r in panel.raters])
    tasks = rest.tasks(project_id)
    if not tasks:
        raise RuntimeError(f"Classify project {project_id} has no tasks: provisioning failed")
    task_of = {t["data"]["image_id"]: t["id"] for t in tasks}
    name_of = {uid: name for name, uid in user_ids.items()}
    existing = 0
    for task in tasks:
        for ann in task.get("annotations") or []:
            who = ann.get("completed_by")
            who = who.get("id") if isinstance(who, dict) else who
            choice = next(
                (r["value"]["choices"][0] for r in ann.get("result") or []
                 if r.get("from_name") == CLASS_CONTROL and r.get("value", {}).get("choices")),
                None,
            )  # fmt: skip
            if choice is not None and who in name_of:
                labeller.submit(task["data"]["image_id"], name_of[who], choice)
                existing += 1
    progress(min(existing, n_labels))
    # Each rater labels on a thread of its own, as clinicians work in parallel; the labeller
    # is shared under a lock and hands out a slice nobody else is answering right now.
    lock = threading.Lock()
    pending: set[str] = set()
    state = {"claimed": existing, "done": existing}

    def work(rater) -> None:
        while True:
            with lock:
                if state["claimed"] >= n_labels:
                    return
                image_id = labeller.next_query(rater.name, exclude=pending)
                if image_id is None:
                    return  # this rater has labelled every slice not out with another
                state["claimed"] += 1
                pending.add(image_id)
            label = rater.classify(image_id)
            seconds = lead_times.draw(rater.name, "label")
            try:
                rest.annotate(
                    task_of[image_id], choice_result(label), user_ids[rater.name], seconds
                )
            except BaseException:
                with lock:
                    pending.discard(image_id)
                raise
            with lock:  # out of pending only once its answer counts
                labeller.submit(image_id, rater.name, label)
                pending.discard(image_id)
                state["done"] += 1
            progress(1)

    with ThreadPoolExecutor(max_workers=len(panel.raters)) as pool:
        list(pool.map(work, panel.raters))
    done = state["done"]
    return {"labels": done, "labels_before": existing, "tasks": len(tasks),
            "strategy": "single (stack-aware active one-at-a-time)"}  # fmt: skip


def simulate_ranking(
    rest: LabelStudioREST,
    projects: dict[str, int],
    panel,
    user_ids: dict[str, int],
    budget_seconds: float,
    scheduler_stats: Callable[[], dict],
    check_alive: Callable[[], None],
    progress: Callable[[float], None] = lambda s: None,
    wait_s: float = 60.0,
    lead_times: LeadTimes | None = None,
) -> dict[str, Any]:
    """Multiple-image ranking: raters take turns on the scheduler's open Rank tasks.

    Each ranked batch costs ``SECONDS_PER_BATCH`` of the budget and each boundary answer
    ``SECONDS_PER_LABEL``; annotations already in Label Studio count. Boundary questions are
    answered first. Stops when the budget is spent, or when the scheduler has published its
    classes (its stopping rule held and every boundary question was answered). The budget
    is counted at the study's exchange rate, so both strategies buy the same number of tasks
    whatever the draws; each annotation's ``lead_time`` comes from ``lead_times``.
    """
    from ranking_scheduler.simulator.raters import SECONDS_PER_BATCH, SECONDS_PER_LABEL

    lead_times = lead_times or LeadTimes([r.name for r in panel.raters])

    rank_pid, boundary_pid = projects["Rank"], projects["Boundary"]
    batches = sum(int(t.get("total_annotations") or 0) for t in rest.tasks(rank_pid))
    boundary = sum(int(t.get("total_annotations") or 0) for t in rest.tasks(boundary_pid))
    spent = batches * SECONDS_PER_BATCH + boundary * SECONDS_PER_LABEL
    progress(min(spent, budget_seconds))
    turn = batches + boundary
    idle_since = time.monotonic()
    stop_reason = "budget spent"
    # Open Rank tasks from the last listing: listing the growing project after every
    # submission would cost more than the submission itself. A task the scheduler retired
    # meanwhile is still answered and counts (like a clinician who had it open); one deleted
    # by hand answers 404 and is skipped.
    queue: list[dict] = []
    gone = 0
    while spent < budget_seconds:
        check_alive()
        rater = panel.raters[turn % len(panel.raters)]
        open_boundary = [t for t in rest.tasks(boundary_pid) if is_open(t)]
        if open_boundary:
            task = open_boundary[0]
            label = rater.classify(task["data"]["image_id"])
            kind, result, cost = "boundary", choice_result(label), SECONDS_PER_LABEL
            seconds = lead_times.draw(rater.name, "label")
        else:
            if not queue:
                queue = [t for t in rest.tasks(rank_pid) if is_open(t)]
            if not queue:
                stats = scheduler_stats()
                if (stats.get("service") or {}).get("published"):
                    stop_reason = "scheduler finished and published its classes"
                    break
                if time.monotonic() - idle_since > wait_s:
                    raise TimeoutError(
                        f"no open Rank or Boundary task for {wait_s:.0f} s and the scheduler "
                        f"has not published its classes; its stats: {json.dumps(stats)[:500]}"
                    )
                time.sleep(0.2)
                continue
            task = queue.pop(0)
            order = rater.rank([item["id"] for item in task["data"]["images"]])
            kind, result, cost = "rank", ranker_result(order), SECONDS_PER_BATCH
            seconds = lead_times.draw(rater.name, "rank")
        try:
            rest.annotate(task["id"], result, user_ids[rater.name], seconds)
        except TaskGone:
            gone += 1
            continue
        if kind == "rank":
            batches += 1
        else:
            boundary += 1
        idle_since = time.monotonic()
        spent += cost
        turn += 1
        progress(cost)
    return {
        "ranked_batches": batches,
        "boundary_labels": boundary,
        "seconds": spent,
        "hours": spent / 3600,
        "stop_reason": stop_reason,
        "retired_before_answer": gone,
    }


def make_panel(
    manifest: Path, n_raters: int, seed: int, *, premise: float = 1.0, scans: int | None = None
):
    """Simulated clinicians for a cohort, their class cuts fitted to its ground truth.

    ``premise`` is ``abs_difficulty`` (1.0: equal noise, the demo's default; 1.5: the
    study's). With ``scans`` (the phantom cohort ``generate_cohort(scans, seed=seed)``) the
    raters perceive what each rendered slice shows (:func:`cmr_ingest.synth.slice_perception`)
    with the noise levels calibrated for that (``PHANTOM_PARAMS``); without, true positions.
    """  # fmt: skip
    from dataclasses import replace

    from cmr_ingest.manifest import read_manifest
    from ranking_scheduler.simulator.raters import (
        DEFAULT_PARAMS,
        PHANTOM_PARAMS,
        RaterPanel,
        cuts_from_classes,
    )

    rows = read_manifest(manifest)
    positions = {str(r["image_id"]): float(r["position"]) for r in rows}
    classes = {str(r["image_id"]): str(r["true_class"]) for r in rows}
    cuts = cuts_from_classes(positions, classes)
    if scans is None:
        params = replace(DEFAULT_PARAMS, cuts=cuts, abs_difficulty=premise)
        return RaterPanel.from_positions(positions, n_raters=n_raters, seed=seed, params=params)
    from cmr_ingest.synth import slice_perception

    seen = slice_perception(scans, seed)
    missing = set(positions) - set(seen)
    if missing:
        raise ValueError(
            f"{manifest}: {len(missing)} image(s) are not slices of the {scans}-scan phantom "
            f"cohort with seed {seed} (e.g. {sorted(missing)[:2]}); was it generated otherwise?"
        )
    params = replace(PHANTOM_PARAMS, cuts=cuts, abs_difficulty=premise)
    return RaterPanel.from_positions(
        {i: seen[i][0] for i in positions}, n_raters=n_raters, seed=seed, params=params,
        difficulty={i: seen[i][1] for i in positions},
    )  # fmt: skip
