"""Intake: a Label Studio payload in, a typed and validated event out. Pure: no I/O, no state.

Both ways an annotation reaches the scheduler end here: a webhook (:func:`from_webhook`) and
a reconciliation pass that lists Label Studio (:func:`from_listing`). Whatever cannot be read
(no annotation id, no rater) is carried on the event as ``problem`` so the ledger records the
refusal with its reason; nothing is half-applied.

Reading the *content* of an annotation needs the task it answers (a ranking must hold exactly
the task's images): :func:`read_ranking` / :func:`read_boundary` do that once the ledger has
found the task.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ranking_scheduler.service.typed_order import read_typed_order, typed_text
from slicerank_base import CLASSES

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
"""Webhook actions that carry one annotation to apply."""

DELETE_ACTION = "ANNOTATIONS_DELETED"
"""Webhook action that carries the ids of deleted annotations."""


@dataclass(frozen=True)
class AnnotationEvent:
    """One annotation as Label Studio showed it (a webhook or a listing).

    ``problem`` is set when the payload cannot be applied at all (it says why); ``rater`` is
    then possibly None. ``result`` is Label Studio's raw result list, read against the task by
    :func:`read_ranking` / :func:`read_boundary`. ``lead_time`` is the seconds the rater
    spent on it (Label Studio's own measure), None if absent or not a number. ``task`` is the
    task part of the payload (its ``meta`` lets a task the scheduler created be adopted).
    """

    project_id: int | None
    task_id: int | None
    annotation_id: int | None
    rater: str | None
    result: Any
    cancelled: bool = False
    created_at: str | None = None
    updated_at: str | None = None
    lead_time: float | None = None
    problem: str | None = None
    source: str = "webhook"
    task: dict = field(default_factory=dict, compare=False)

    @property
    def raw(self) -> dict:
        """The annotation fields a rejection keeps for diagnosis."""
        return {"id": self.annotation_id, "result": self.result}

    @property
    def version_key(self) -> str:
        """What identifies this *version* of the annotation: its ``updated_at`` and a hash of
        its result (an edit changes at least one of them)."""
        blob = json.dumps(
            [self.updated_at, self.cancelled, self.result], sort_keys=True, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class DeleteEvent:
    """An annotation was deleted in Label Studio."""

    annotation_id: int | None
    task_id: int | None = None


@dataclass(frozen=True)
class IgnoredEvent:
    """A webhook the scheduler does not act on (another action)."""

    action: str


Event = AnnotationEvent | DeleteEvent | IgnoredEvent


def rater_name(completed_by: Any) -> str:
    """A stable rater name from Label Studio's ``completed_by`` (a user id or a user dict)."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id") or completed_by.get("email")
    if completed_by in (None, ""):
        raise ValueError("the annotation names no rater (completed_by is empty)")
    return f"ls-user-{completed_by}"


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _lead_time(value: Any) -> float | None:
    # Informational (the labelling-time figures): a missing or odd value is not a reason to
    # refuse the ranking, it is just not recorded.
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def annotation_event(
    project_id: Any, task_id: Any, ann: dict, *, task: dict | None = None, source: str
) -> AnnotationEvent:
    """The typed event for one annotation dict of ``task_id`` in ``project_id``."""
    ann_id = _int_or_none(ann.get("id"))
    tid = _int_or_none(task_id)
    problem = None
    rater = None
    if ann_id is None or tid is None:
        problem = "webhook without annotation or task id"
    else:
        try:
            rater = rater_name(ann.get("completed_by"))
        except ValueError as exc:
            problem = str(exc)
    return AnnotationEvent(
        project_id=_int_or_none(project_id),
        task_id=tid,
        annotation_id=ann_id,
        rater=rater,
        result=ann.get("result"),
        cancelled=bool(ann.get("was_cancelled")),
        created_at=ann.get("created_at"),
        updated_at=ann.get("updated_at"),
        lead_time=_lead_time(ann.get("lead_time")),
        problem=problem,
        source=source,
        task=dict(task or {}),
    )


def from_webhook(action: str, payload: dict) -> list[Event]:
    """The events of one webhook body (``ANNOTATIONS_DELETED`` may carry several)."""
    if action in ANNOTATION_ACTIONS:
        ann = payload.get("annotation") or {}
        task = payload.get("task") or {}
        project = payload.get("project") or {}
        project_id = project.get("id") if isinstance(project, dict) else project
        project_id = project_id or task.get("project")
        task_id = task.get("id") or ann.get("task")
        return [annotation_event(project_id, task_id, ann, task=task, source="webhook")]
    if action == DELETE_ACTION:
        return [
            DeleteEvent(_int_or_none(a.get("id")), _int_or_none(a.get("task")))
            for a in payload.get("annotations") or []
            if isinstance(a, dict)
        ]
    return [IgnoredEvent(action)]


def from_listing(project_id: int, task: dict) -> list[AnnotationEvent]:
    """The events of one task as a reconciliation listing shows it (same path as a webhook)."""
    out = []
    for ann in task.get("annotations") or []:
        ann = ann if isinstance(ann, dict) else ann.dict()
        out.append(annotation_event(project_id, task["id"], ann, task=task, source="listing"))
    return out


def parse_ranking(result: Any, expected: tuple[str, ...] | list[str]) -> list[str]:
    """The ordered image ids (top = most basal) of a Rank annotation; ``ValueError`` says what
    is wrong (no ranking, items missing, extra or repeated).

    ``expected`` is the task's images in the order the task shows them. A typed order (the
    slices' marks as text, see ``typed_order``) counts over the Ranker's list, which Label
    Studio saves even when untouched; without one, the Ranker's list is the order."""
    if not isinstance(result, list):
        raise ValueError(f"annotation result is {type(result).__name__}, not a list")
    text = typed_text(result)
    if text is not None:
        return read_typed_order(text, list(expected))
    rankers = [r for r in result if isinstance(r, dict) and r.get("type") == "ranker"]
    if len(rankers) != 1:
        raise ValueError(f"expected one ranker result, found {len(rankers)}")
    value = rankers[0].get("value") or {}
    ranker = value.get("ranker") if isinstance(value, dict) else None
    if not isinstance(ranker, dict) or len(ranker) != 1:
        keys = sorted(ranker) if isinstance(ranker, dict) else ranker
        raise ValueError(f"ranker value must hold exactly one ordered list, got {keys!r}")
    order = next(iter(ranker.values()))
    if not isinstance(order, list) or not all(isinstance(i, str) for i in order):
        raise ValueError(f"ranker order must be a list of image ids, got {order!r}")
    want = set(expected)
    missing = sorted(want - set(order))
    extra = sorted(set(order) - want)
    repeated = sorted({i for i in order if order.count(i) > 1})
    if missing or extra or repeated:
        parts = [
            f"{name} {ids}"
            for name, ids in (("missing", missing), ("extra", extra), ("repeated", repeated))
            if ids
        ]
        raise ValueError(
            f"ranking does not match the task's {len(want)} images: {'; '.join(parts)}"
        )
    return order


VIEW_CONTROLS = ("window", "zoom")
"""Choices of the label configs that set only how slices are shown (not an answer)."""


def parse_boundary(result: Any) -> str:
    """The class chosen in a boundary (Choices) result; ``ValueError`` if none or unknown.
    The view buttons' choices (:data:`VIEW_CONTROLS`) are not answers and are passed over."""
    if not isinstance(result, list):
        raise ValueError(f"annotation result is {type(result).__name__}, not a list")
    chosen = [
        c
        for r in result
        if isinstance(r, dict)
        and r.get("type") == "choices"
        and r.get("from_name") not in VIEW_CONTROLS
        for c in (r.get("value") or {}).get("choices") or []
    ]
    if len(chosen) != 1:
        raise ValueError(f"expected exactly one class, got {chosen!r}")
    if chosen[0] not in CLASSES:
        raise ValueError(f"class {chosen[0]!r} is not one of {', '.join(CLASSES)}")
    return chosen[0]


def unchanged(sub, event: AnnotationEvent, task_order: Sequence[str] | None = None) -> bool:
    """Whether the logged submission ``sub`` already holds exactly this event's content
    (``task_order``: the task's images as shown, which a typed order's marks refer to)."""
    if sub is None or event.cancelled:
        return False
    try:
        if sub.kind == "rank":
            expected = list(task_order) if task_order is not None else list(sub.ordered)
            return parse_ranking(event.result, expected) == list(sub.ordered)
        return parse_boundary(event.result) == sub.label
    except ValueError:
        return False
