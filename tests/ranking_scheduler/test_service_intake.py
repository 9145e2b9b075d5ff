"""Intake: a Label Studio payload in, a typed and validated event out (pure, no services)."""

from __future__ import annotations

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


def test_a_webhook_becomes_one_typed_event_with_its_lead_time():
    payload = {"project": {"id": 1}, "task": {"id": 7, "meta": {"x": 1}}, "annotation": ANN}
    (event,) = intake.from_webhook("ANNOTATION_CREATED", payload)
    assert isinstance(event, intake.AnnotationEvent)
    assert (event.project_id, event.task_id, event.annotation_id) == (1, 7, 41)
    assert (event.rater, event.lead_time, event.problem) == ("ls-user-3", 11.25, None)
    assert event.source == "webhook" and event.task == {"id": 7, "meta": {"x": 1}}
    # The same annotation from a listing is the same event but for where it came from.
    (listed,) = intake.from_listing(1, {"id": 7, "annotations": [ANN]})
    assert listed.source == "listing" and listed.version_key == event.version_key


def test_an_edit_is_a_new_version():
    (a,) = intake.from_listing(1, {"id": 7, "annotations": [ANN]})
    edited = {**ANN, "result": ranker_result(["b", "a"]), "updated_at": "2026-01-05T09:01:00Z"}
    (b,) = intake.from_listing(1, {"id": 7, "annotations": [edited]})
    assert a.version_key != b.version_key


def test_what_cannot_be_applied_is_carried_as_a_problem():
    no_rater = {**ANN, "completed_by": None}
    (event,) = intake.from_webhook(
        "ANNOTATION_UPDATED", {"task": {"id": 7}, "annotation": no_rater}
    )
    assert event.problem == "the annotation names no rater (completed_by is empty)"
    (event,) = intake.from_webhook("ANNOTATION_CREATED", {"annotation": {"result": []}})
    assert event.problem == "webhook without annotation or task id"
    # An odd lead time is not a reason to refuse a ranking: it is just not recorded.
    for odd in ("soon", -3, float("inf"), True):
        (event,) = intake.from_listing(1, {"id": 7, "annotations": [{**ANN, "lead_time": odd}]})
        assert event.lead_time is None and event.problem is None


def test_deletes_and_other_actions():
    events = intake.from_webhook(
        "ANNOTATIONS_DELETED", {"annotations": [{"id": 41, "task": 7}, {"id": "42"}]}
    )
    assert events == [intake.DeleteEvent(41, 7), intake.DeleteEvent(42, None)]
    assert intake.from_webhook("PROJECT_UPDATED", {}) == [intake.IgnoredEvent("PROJECT_UPDATED")]
