"""Intake: a Label Studio payload in, a typed and validated event out (pure, no services)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from ls_config.webclient import ranker_result
from ranking_scheduler.service import intake

ANN = {
    "id": 41,
    "task": 7,
    "completed_by": 3,
    "result": ranker_result(["a", "b"]),
    "was_cancelled": False,
    "created_at": "2026-01-05T09:00:00Z",
    "updated_at": "2026-01-05T09:00:11Z",
    "lead_time": 11.25,
}


def test_a_webhook_is_only_a_notice_naming_the_annotation():
    # Whatever else the body says (rater, result, project) is not taken: anyone who can read
    # the webhook's header could have written it. The annotation is read back by id.
    forged = {**ANN, "completed_by": 999, "result": ranker_result(["z"])}
    payload = {"project": {"id": 1}, "task": {"id": 7, "meta": {"x": 1}}, "annotation": forged}
    assert intake.from_webhook("ANNOTATION_CREATED", payload) == [intake.AnnotationNotice(41)]
    assert intake.from_webhook("ANNOTATION_UPDATED", {"annotation": {"id": "41"}}) == [
        intake.AnnotationNotice(41, "ANNOTATION_UPDATED")
    ]
    assert intake.from_webhook("ANNOTATION_CREATED", {"annotation": []}) == [
        intake.AnnotationNotice(None)
    ]


def test_an_annotation_read_back_becomes_one_typed_event_with_its_lead_time():
    when = datetime(2026, 1, 5, 9, 1, tzinfo=UTC)
    event = intake.from_annotation({**ANN, "project": 1}, seen_at=when)
    assert isinstance(event, intake.AnnotationEvent)
    assert (event.project_id, event.task_id, event.annotation_id) == (1, 7, 41)
    assert (event.rater, event.lead_time, event.problem) == ("ls-user-3", 11.25, None)
    assert event.source == "webhook" and event.seen_at == when
    # The same annotation from a listing is the same event but for where it came from.
    (listed,) = intake.from_listing(1, {"id": 7, "annotations": [ANN]}, seen_at=when)
    assert listed.source == "listing" and listed.version_key == event.version_key
    assert listed.seen_at == when


def test_an_edit_is_a_new_version():
    (a,) = intake.from_listing(1, {"id": 7, "annotations": [ANN]})
    edited = {**ANN, "result": ranker_result(["b", "a"]), "updated_at": "2026-01-05T09:01:00Z"}
    (b,) = intake.from_listing(1, {"id": 7, "annotations": [edited]})
    assert a.version_key != b.version_key


def test_what_cannot_be_applied_is_carried_as_a_problem():
    no_rater = {**ANN, "completed_by": None}
    event = intake.from_annotation(no_rater, seen_at=None)
    assert event.problem == "the annotation names no rater (completed_by is empty)"
    event = intake.from_annotation({"id": 41, "result": []}, seen_at=None)
    assert event.problem == "annotation without annotation or task id"
    # An odd lead time is not a reason to refuse a ranking: it is just not recorded.
    for odd in ("soon", -3, float("inf"), True):
        (event,) = intake.from_listing(1, {"id": 7, "annotations": [{**ANN, "lead_time": odd}]})
        assert event.lead_time is None and event.problem is None


def test_deletes_and_other_actions():
    events = intake.from_webhook(
        "ANNOTATIONS_DELETED", {"annotations": [{"id": 41, "task": 7}, {"id": "42"}]}
    )
    assert events == [intake.DeleteEvent(41, 7), intake.DeleteEvent(42, None)]
    assert intake.from_webhook("TASKS_DELETED", {"tasks": [{"id": 7}, {"id": "8"}, "x"]}) == [
        intake.TasksDeletedEvent((7, 8))
    ]
    assert intake.from_webhook("TASKS_DELETED", {"tasks": "x"}) == []
    assert intake.from_webhook("PROJECT_UPDATED", {}) == [intake.IgnoredEvent("PROJECT_UPDATED")]


# ----------------------------------------------------------------------------- bounded parsing
def test_parse_ranking_is_linear_and_refuses_a_ranking_longer_than_its_batch_first():
    batch = [f"i{k}" for k in range(8)]
    # 40,000 ids took 12.4 s (a quadratic count); refused on its length before anything else.
    huge = ranker_result([f"x{k}" for k in range(40_000)])
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="holds 40000 items, more than the task's 8 images"):
        intake.parse_ranking(huge, batch)
    # Not longer, but every id repeated: linear, and the reason names a few ids, not all.
    long_batch = [f"i{k}" for k in range(20_000)]
    repeats = ranker_result(["i0"] * 20_000)
    with pytest.raises(ValueError) as err:
        intake.parse_ranking(repeats, long_batch)
    assert time.perf_counter() - t0 < 2.0  # quadratic would take minutes
    assert len(str(err.value)) <= intake.MAX_REASON_CHARS
    assert "and 19989 more" in str(err.value)


def test_parse_boundary_refuses_a_value_that_is_not_an_object():
    for value in (["lv"], "lv", 3, None):
        with pytest.raises(ValueError, match="choices result must hold a list of choices"):
            intake.parse_boundary([{"type": "choices", "value": value}])
    with pytest.raises(ValueError, match="choices result must hold a list"):
        intake.parse_boundary([{"type": "choices", "value": {"choices": "lv"}}])


def test_a_typed_order_is_bounded_too():
    # A typed order of 4 MB of marks (quadratic before: str.count per letter) is refused on
    # its length before anything else.
    batch = [f"i{k}" for k in range(8)]
    huge = [{"type": "textarea", "value": {"text": ["A" * 4_000_000]}}]
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="4000000 characters long"):
        intake.parse_ranking(huge, batch)
    assert time.perf_counter() - t0 < 1.0
