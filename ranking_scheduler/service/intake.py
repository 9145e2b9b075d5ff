"""Intake: a Label Studio payload in, a typed and validated event out. Pure: no I/O, no state.

A webhook is only a notification (:func:`from_webhook` takes the ids out of it and nothing
else): every Label Studio user can read the webhook's secret header, so the rater, the result
and the version of an annotation come from Label Studio itself, read by id with the scheduler's
own token (:func:`from_annotation`) or listed by a reconciliation pass (:func:`from_listing`).
Each event carries ``seen_at``, when the read that showed it *began*: the ledger lets nothing
read before a delete bring the annotation back. Whatever cannot be read (no annotation id, no
rater) is carried on the event as ``problem`` so the ledger records the refusal with its
reason; nothing is half-applied.

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
from datetime import datetime
from typing import Any

from ranking_scheduler.service.typed_order import read_typed_order, typed_text
from slicerank_base import CLASSES

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
"""Webhook actions that name one annotation to read back from Label Studio."""

DELETE_ACTION = "ANNOTATIONS_DELETED"
"""Webhook action that carries the ids of deleted annotations."""

TASKS_DELETED_ACTION = "TASKS_DELETED"
"""Webhook action that carries the ids of deleted tasks (their annotations went with them:
Label Studio sends no ``ANNOTATIONS_DELETED`` for those)."""

MAX_IDS_PER_WEBHOOK = 10_000
"""At most this many ids are taken from one delete webhook, so that a forged one cannot keep
the worker busy for minutes (each id costs a look at the log). Label Studio 1.23 sends a bulk
delete in batches of 5,000 (``WEBHOOK_BATCH_SIZE``) where batching is on; ids beyond the cap
are left to the full reconciliation (and its guard: see ``--accept-reconcile``)."""

MAX_REASON_CHARS = 500
"""A rejection reason is cut to this length (stored, logged and served)."""

MAX_IDS_SHOWN = 10
"""At most this many image ids are named in a rejection reason."""


@dataclass(frozen=True)
class AnnotationEvent:
    """One annotation as Label Studio showed it (a webhook or a listing).

    ``problem`` is set when the payload cannot be applied at all (it says why); ``rater`` is
    then possibly None. ``result`` is Label Studio's raw result list, read against the task by
    :func:`read_ranking` / :func:`read_boundary`. ``lead_time`` is the seconds the rater
    spent on it (Label Studio's own measure), None if absent or not a number. ``task`` is the
    task as Label Studio showed it, when the read had it (its ``meta`` lets a task the scheduler
    created be adopted). ``seen_at``: when the read that showed it began (UTC).
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
    seen_at: datetime | None = field(default=None, compare=False)

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
class AnnotationNotice:
    """A webhook said something happened to an annotation: read it back from Label Studio."""

    annotation_id: int | None
    action: str = "ANNOTATION_CREATED"


@dataclass(frozen=True)
class DeleteEvent:
    """A webhook said an annotation was deleted in Label Studio (to be confirmed there)."""

    annotation_id: int | None
    task_id: int | None = None


@dataclass(frozen=True)
class TasksDeletedEvent:
    """A webhook said tasks were deleted in Label Studio (to be confirmed there)."""

    task_ids: tuple[int, ...]


@dataclass(frozen=True)
class IgnoredEvent:
    """A webhook the scheduler does not act on (another action)."""

    action: str


Event = AnnotationNotice | DeleteEvent | TasksDeletedEvent | IgnoredEvent


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
    project_id: Any,
    task_id: Any,
    ann: dict,
    *,
    task: dict | None = None,
    source: str,
    seen_at: datetime | None = None,
) -> AnnotationEvent:
    """The typed event for one annotation dict of ``task_id`` in ``project_id``, as a read
    that began at ``seen_at`` showed it."""
    ann_id = _int_or_none(ann.get("id"))
    tid = _int_or_none(task_id)
    problem = None
    rater = None
    if ann_id is None or tid is None:
        problem = "annotation without annotation or task id"
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
        seen_at=seen_at,
    )


def _id_pairs(items: Any, key: str = "task") -> list[tuple[int, int | None]]:
    """``(id, item[key])`` of each ``{"id": ...}`` of a delete webhook that names an id (at most
    MAX_IDS_PER_WEBHOOK)."""
    if not isinstance(items, list):
        return []
    pairs = []
    for item in items[:MAX_IDS_PER_WEBHOOK]:
        if isinstance(item, dict) and _int_or_none(item.get("id")) is not None:
            pairs.append((_int_or_none(item["id"]), _int_or_none(item.get(key))))
    return pairs


def from_webhook(action: str, payload: dict) -> list[Event]:
    """The notices of one webhook body: which annotation (or which deleted annotations or
    tasks) to look at in Label Studio. Nothing else of the body is taken: not the rater, not
    the result, not the project (anyone who can read the webhook's header could write them)."""
    if action in ANNOTATION_ACTIONS:
        ann = payload.get("annotation")
        ann_id = _int_or_none(ann.get("id")) if isinstance(ann, dict) else None
        return [AnnotationNotice(ann_id, action)]
    if action == DELETE_ACTION:
        return [DeleteEvent(a, t) for a, t in _id_pairs(payload.get("annotations"))]
    if action == TASKS_DELETED_ACTION:
        ids = tuple(task_id for task_id, _ in _id_pairs(payload.get("tasks")))
        return [TasksDeletedEvent(ids)] if ids else []
    return [IgnoredEvent(action)]


def from_annotation(
    ann: dict, *, seen_at: datetime | None, task: dict | None = None
) -> AnnotationEvent:
    """The event of one annotation as Label Studio returned it by id (``GET
    /api/annotations/{id}/``): its project, task and rater are Label Studio's."""
    task_id = ann.get("task")
    if isinstance(task_id, dict):
        task_id = task_id.get("id")
    return annotation_event(
        ann.get("project"), task_id, ann, task=task, source="webhook", seen_at=seen_at
    )


def from_listing(
    project_id: int, task: dict, *, seen_at: datetime | None = None
) -> list[AnnotationEvent]:
    """The events of one task as a reconciliation listing shows it (same path as a webhook);
    ``seen_at`` is when the listing began."""
    out = []
    for ann in task.get("annotations") or []:
        ann = ann if isinstance(ann, dict) else ann.dict()
        out.append(
            annotation_event(
                project_id, task["id"], ann, task=task, source="listing", seen_at=seen_at
            )
        )
    return out


def _few(ids: list[str]) -> str:
    """At most MAX_IDS_SHOWN ids, and how many more (a reason must stay short)."""
    shown = repr(ids[:MAX_IDS_SHOWN])
    return shown if len(ids) <= MAX_IDS_SHOWN else f"{shown} and {len(ids) - MAX_IDS_SHOWN} more"


def short(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters (a reason or a value shown in one)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_ranking(result: Any, expected: tuple[str, ...] | list[str]) -> list[str]:
    """The ordered image ids (top = most basal) of a Rank annotation; ``ValueError`` says what
    is wrong (no ranking, too long, items missing, extra or repeated).

    ``expected`` is the task's images in the order the task shows them. A typed order (the
    slices' marks as text, see ``typed_order``) counts over the Ranker's list, which Label
    Studio saves even when untouched; without one, the Ranker's list is the order. Linear in
    the size of the result, and a Ranker list longer than its batch is refused before anything
    else is looked at: a hostile result of 40,000 ids costs one ``len``."""
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
        keys = sorted(map(str, ranker))[:MAX_IDS_SHOWN] if isinstance(ranker, dict) else ranker
        raise ValueError(
            short(f"ranker value must hold exactly one ordered list, got {keys!r}", 200)
        )
    order = next(iter(ranker.values()))
    if not isinstance(order, list):
        raise ValueError(f"ranker order must be a list of image ids, got {type(order).__name__}")
    if len(order) > len(expected):
        raise ValueError(
            f"ranking holds {len(order)} items, more than the task's {len(expected)} images"
        )
    if not all(isinstance(i, str) for i in order):
        raise ValueError(short(f"ranker order must be a list of image ids, got {order!r}", 200))
    want = set(expected)
    have = set(order)
    missing = sorted(want - have)
    extra = sorted(have - want)
    seen: set[str] = set()
    repeated = sorted({i for i in order if i in seen or seen.add(i)})
    if missing or extra or repeated:
        parts = [
            f"{name} {_few(ids)}"
            for name, ids in (("missing", missing), ("extra", extra), ("repeated", repeated))
            if ids
        ]
        raise ValueError(
            short(f"ranking does not match the task's {len(want)} images: {'; '.join(parts)}")
        )
    return order


VIEW_CONTROLS = ("window", "zoom")
"""Choices of the label configs that set only how slices are shown (not an answer)."""


def parse_boundary(result: Any) -> str:
    """The class chosen in a boundary (Choices) result; ``ValueError`` if none, unknown or not
    shaped as Label Studio writes it. The view buttons' choices (:data:`VIEW_CONTROLS`) are not
    answers and are passed over."""
    if not isinstance(result, list):
        raise ValueError(f"annotation result is {type(result).__name__}, not a list")
    chosen: list[Any] = []
    for r in result:
        if not isinstance(r, dict) or r.get("type") != "choices":
            continue
        if r.get("from_name") in VIEW_CONTROLS:
            continue
        value = r.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list):
            raise ValueError(
                short(f"choices result must hold a list of choices, got {value!r}", 200)
            )
        chosen += choices[: MAX_IDS_SHOWN + 1]
    if len(chosen) != 1:
        raise ValueError(short(f"expected exactly one class, got {chosen!r}", 200))
    if chosen[0] not in CLASSES:
        raise ValueError(short(f"class {chosen[0]!r} is not one of {', '.join(CLASSES)}", 200))
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
