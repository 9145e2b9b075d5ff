"""The durable store, on SQLite and on a real PostgreSQL (the ``db_url`` fixture runs both)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from ranking_scheduler.service.store import REJECTION_REASON_MAX_CHARS, SubmissionStore

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
BATCH_A = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"]
BATCH_B = ["b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"]


class RecordingEngine:
    """Stands in for RankingEngine in the replay tests: records the calls it gets."""

    def __init__(self, refuse: set[str] = frozenset()):
        self.calls: list[tuple] = []
        self.refuse = refuse

    def submit(self, rater, ordered, *, require_open=True):
        if set(ordered) & self.refuse:
            raise ValueError(f"unknown image ids {sorted(set(ordered) & self.refuse)}")
        self.calls.append(("rank", rater, tuple(ordered), require_open))

    def submit_boundary(self, image_id, cls, rater=None):
        self.calls.append(("boundary", image_id, cls, rater))

    def record_time(self, rater, kind, seconds):
        self.calls.append(("time", rater, kind, seconds))


@pytest.fixture
def store(db_url):
    s = SubmissionStore(db_url)
    yield s
    s.close()


def _orders(store, kind=None):
    return [
        (s.annotation_id, s.ordered if s.kind == "rank" else (s.image_id, s.label))
        for s in store.effective_submissions(kind)
    ]


def test_append_and_effective_in_log_order(store):
    r1 = store.append_ranking(11, BATCH_A, rater="r1", task_id=101, created_at=T0)
    r2 = store.append_boundary(12, "a3", "lv", rater="r2", task_id=102, created_at=T0)
    r3 = store.append_ranking("13", BATCH_B, rater="r2", task_id="103")
    assert [r.status for r in (r1, r2, r3)] == ["created"] * 3
    assert r1.seq < r2.seq < r3.seq and r1.changed and not r1.needs_rebuild
    assert _orders(store) == [(11, tuple(BATCH_A)), (12, ("a3", "lv")), (13, tuple(BATCH_B))]
    assert _orders(store, "boundary") == [(12, ("a3", "lv"))]
    sub = next(store.effective_submissions())
    assert (sub.rater, sub.task_id, sub.version, sub.created_at) == ("r1", 101, 1, T0)
    assert sub.time == T0
    assert store.event_count() == 3
    light = list(store.effective_submissions(content=False))
    assert [(s.annotation_id, s.kind, s.rater, s.ordered, s.label) for s in light] == [
        (11, "rank", "r1", None, None),
        (12, "boundary", "r2", None, None),
        (13, "rank", "r2", None, None),
    ]


def test_duplicate_delivery_is_a_no_op(store):
    store.append_ranking(11, BATCH_A, rater="r1", task_id=101)
    again = store.append_ranking(11, list(BATCH_A), rater="r1", task_id=101)
    assert again.status == "duplicate" and not again.changed
    store.append_boundary(12, "a3", "lv", rater="r1")
    assert store.append_boundary(12, "a3", "lv", rater="r1").status == "duplicate"
    assert store.event_count() == 2


def test_edit_appends_update_that_supersedes_in_place(store):
    store.append_ranking(11, BATCH_A, rater="r1", updated_at=T0)
    store.append_ranking(12, BATCH_B, rater="r2", updated_at=T0)
    edited = list(reversed(BATCH_A))
    up = store.append_ranking(11, edited, rater="r1", updated_at=T0 + timedelta(minutes=1))
    assert up.status == "updated" and up.needs_rebuild and up.version == 2
    # The edit replaces the content but keeps the annotation's place in the stream.
    assert _orders(store) == [(11, tuple(edited)), (12, tuple(BATCH_B))]
    # Reverting to the first content is a real change too, not a duplicate of version 1.
    back = store.append_ranking(11, BATCH_A, rater="r1", updated_at=T0 + timedelta(minutes=2))
    assert back.status == "updated" and back.version == 3
    assert _orders(store)[0] == (11, tuple(BATCH_A))
    assert [e["op"] for e in store.events()] == ["create", "create", "update", "update"]
    assert store.latest_version(11).version == 3


def test_late_older_version_is_stale(store):
    store.append_ranking(11, BATCH_A, rater="r1", updated_at=T0 + timedelta(minutes=5))
    late = store.append_ranking(11, BATCH_B, rater="r1", updated_at=T0)
    assert late.status == "stale"
    assert _orders(store) == [(11, tuple(BATCH_A))]


def test_delete_drops_the_annotation(store):
    store.append_ranking(11, BATCH_A, rater="r1")
    store.append_boundary(12, "a1", "too_basal", rater="r1")
    gone = store.delete_annotation(11)
    assert gone.status == "deleted" and gone.needs_rebuild
    assert _orders(store) == [(12, ("a1", "too_basal"))]
    assert store.delete_annotation(11).status == "duplicate"
    assert store.delete_annotation(999).status == "unknown"
    # A late re-delivery of the deleted annotation does not bring it back.
    assert store.append_ranking(11, BATCH_A, rater="r1").status == "stale"
    assert store.latest_version(11) is None
    assert [e["op"] for e in store.events()] == ["create", "create", "delete"]


def test_a_deleted_annotation_comes_back_only_when_a_read_after_the_delete_shows_it(store):
    store.append_ranking(11, BATCH_A, rater="r1", task_id=101, updated_at=T0)
    store.append_ranking(12, BATCH_B, rater="r2", task_id=102, updated_at=T0)
    before = datetime.now(UTC)  # a listing began here ...
    store.delete_annotation(11)  # ... then a delete (e.g. a reconciliation's, by mistake)
    # What the earlier listing showed is late: it does not bring the annotation back.
    late = store.append_ranking(11, BATCH_A, rater="r1", task_id=101, seen_at=before)
    assert late.status == "stale" and store.latest_version(11) is None
    # Neither does a delivery that says nothing of when it was read, however new its version.
    newer = store.append_ranking(11, BATCH_B, rater="r1", updated_at=T0 + timedelta(minutes=1))
    assert newer.status == "stale"
    # Shown by a read that began after the delete (Label Studio has it now): back, at its
    # first place in the log.
    back = store.append_ranking(
        11, BATCH_A, rater="r1", task_id=101, updated_at=T0, seen_at=datetime.now(UTC)
    )
    assert back.status == "restored" and back.needs_rebuild and back.version == 3
    assert _orders(store) == [(11, tuple(BATCH_A)), (12, tuple(BATCH_B))]
    assert [e["op"] for e in store.events()] == ["create", "create", "delete", "restore"]


def test_rejected_versions_and_short_reasons_outlive_the_process(store):
    store.record_rejection("x" * 10_000, annotation_id=5, payload=[1], version_key="v1")
    store.record_rejection("task not ours", annotation_id=6)  # not about its content
    store.record_rejection("still wrong", annotation_id=5, payload=[2], version_key="v2")
    again = SubmissionStore(store.url)
    try:
        assert again.rejected_versions() == {5: "v2"}
        assert max(len(r.reason) for r in again.rejections()) == REJECTION_REASON_MAX_CHARS
    finally:
        again.close()


def test_lead_time_is_kept_with_each_version(store):
    store.append_ranking(11, BATCH_A, rater="r1", lead_time=11.5)
    store.append_boundary(12, "a1", "lv", rater="r1", lead_time=3)
    store.append_ranking(13, BATCH_B, rater="r2")  # Label Studio sent none
    assert [s.lead_time for s in store.effective_submissions()] == [11.5, 3.0, None]
    # The dashboard reads without content: the lead time is still there.
    assert [s.lead_time for s in store.effective_submissions(content=False)] == [11.5, 3.0, None]
    store.append_ranking(11, BATCH_B, rater="r1", lead_time=20.0)  # an edit adds time
    assert store.latest_version(11).lead_time == 20.0
    assert [e["lead_time"] for e in store.events()] == [11.5, 3.0, None, 20.0]
    for bad in (-1, float("nan"), "12"):
        with pytest.raises(ValueError, match="lead_time"):
            store.append_ranking(14, BATCH_A, rater="r1", lead_time=bad)
    assert store.event_count() == 4


def test_a_store_written_before_lead_time_opens_and_gains_the_column(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    with old.begin() as conn:  # the table as the previous version created it
        conn.exec_driver_sql(
            "CREATE TABLE submission_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "annotation_id BIGINT NOT NULL, version INTEGER NOT NULL, op VARCHAR(8) NOT NULL, "
            "kind VARCHAR(16) NOT NULL, task_id BIGINT, rater VARCHAR(200), payload JSON, "
            "content_hash VARCHAR(64), created_at DATETIME, updated_at DATETIME, "
            "recorded_at DATETIME NOT NULL, UNIQUE (annotation_id, version))"
        )
        conn.exec_driver_sql(
            "INSERT INTO submission_events (annotation_id, version, op, kind, rater, payload, "
            "content_hash, recorded_at) VALUES (11, 1, 'create', 'rank', 'r1', "
            f"'{{\"ordered\": {json.dumps(BATCH_A)}}}', 'x', '2026-01-05 09:00:00')"
        )
    old.dispose()
    with SubmissionStore(url) as store:
        (sub,) = store.effective_submissions()
        assert sub.ordered == tuple(BATCH_A) and sub.lead_time is None
        store.append_ranking(12, BATCH_B, rater="r1", lead_time=9.0)
        assert [s.lead_time for s in store.effective_submissions()] == [None, 9.0]


def test_bad_input_is_refused_and_changes_nothing(store):
    with pytest.raises(ValueError, match="annotation_id"):
        store.append_ranking("abc", BATCH_A, rater="r1")
    with pytest.raises(ValueError, match="ordered"):
        store.append_ranking(1, "a1a2", rater="r1")
    with pytest.raises(ValueError, match="empty"):
        store.append_ranking(1, [], rater="r1")
    with pytest.raises(ValueError, match="label"):
        store.append_boundary(1, "a1", "", rater="r1")
    with pytest.raises(ValueError, match="created_at"):
        store.append_ranking(1, BATCH_A, rater="r1", created_at="yesterday")
    with pytest.raises(ValueError, match="kind"):
        list(store.effective_submissions("pairs"))
    assert store.event_count() == 0
    with pytest.raises(ValueError, match="SQLAlchemy URL"):
        SubmissionStore("runs/scheduler.db")


def test_iso_times_from_label_studio_round_trip(store):
    store.append_ranking(
        11, BATCH_A, rater="r1", created_at="2026-01-05T09:00:00.123456Z", updated_at=T0
    )
    sub = next(store.effective_submissions())
    assert sub.created_at == T0 + timedelta(microseconds=123456)
    assert sub.created_at.tzinfo is not None and sub.recorded_at.tzinfo is not None


def test_rejections_logged_with_reason_newest_first(store):
    assert store.record_rejection(
        "ranking has 7 items, expected 8",
        kind="rank",
        annotation_id=21,
        task_id=5,
        rater="r1",
        payload={"order": BATCH_A[:7]},
    )
    # The same refused annotation delivered again is recorded once.
    assert not store.record_rejection(
        "ranking has 7 items, expected 8",
        kind="rank",
        annotation_id=21,
        task_id=5,
        rater="r1",
        payload={"order": BATCH_A[:7]},
    )
    assert store.record_rejection(
        "task 77 was not created by the scheduler",
        task_id=77,
        annotation_id=22,
        payload="x" * 10_000,
    )
    assert store.record_rejection("webhook body is not JSON")  # no annotation: never deduplicated
    assert store.record_rejection("webhook body is not JSON")
    rej = store.rejections()
    assert [r.reason for r in rej[:3]] == [
        "webhook body is not JSON",
        "webhook body is not JSON",
        "task 77 was not created by the scheduler",
    ]
    assert rej[-1].annotation_id == 21 and rej[-1].rater == "r1" and '"a7"' in rej[-1].payload
    assert len(rej[2].payload) == 4000
    assert store.rejection_count() == 4 and len(store.rejections(limit=2)) == 2
    assert store.event_count() == 0  # a rejection never enters the submission log
    with pytest.raises(ValueError, match="reason"):
        store.record_rejection("")


def test_task_records(store):
    t = store.add_task(101, "rank", BATCH_A, batch_id="b-1", created_at=T0, meta={"round": 1})
    assert (t.task_id, t.kind, t.image_ids, t.status, t.meta) == (
        101,
        "rank",
        tuple(BATCH_A),
        "open",
        {"round": 1},
    )
    assert store.add_task("101", "rank", BATCH_A, batch_id="b-1") == store.get_task(101)
    with pytest.raises(ValueError, match="already recorded"):
        store.add_task(101, "rank", BATCH_B)
    store.add_task(102, "boundary", ["a3"], meta={"cut": "basal"})
    store.add_task(103, "rank", BATCH_B, batch_id="b-2")
    assert store.set_task_status(101, "answered").status == "answered"
    store.set_task_status(103, "retired")
    assert store.get_task(999) is None
    with pytest.raises(ValueError, match="not created by the scheduler"):
        store.set_task_status(999, "answered")
    with pytest.raises(ValueError, match="status"):
        store.set_task_status(101, "done")
    with pytest.raises(ValueError, match="kind"):
        store.add_task(104, "classify", ["a1"])
    assert [x.task_id for x in store.tasks(status="open")] == [102]
    assert [x.task_id for x in store.tasks(kind="rank")] == [101, 103]
    assert store.get_task(102).meta == {"cut": "basal"}


def test_state_key_value(store):
    assert store.get_state("watermark", 0) == 0
    store.set_state("watermark", {"annotation_id": 5})
    store.set_state("watermark", {"annotation_id": 9})
    assert store.get_state("watermark") == {"annotation_id": 9}
    with pytest.raises(ValueError, match="JSON"):
        store.set_state("bad", object())


def test_restart_loses_nothing(db_url):
    first = SubmissionStore(db_url)
    first.append_ranking(11, BATCH_A, rater="r1", task_id=101, created_at=T0)
    first.append_ranking(11, list(reversed(BATCH_A)), rater="r1", task_id=101)
    first.append_boundary(12, "a1", "too_basal", rater="r2")
    first.append_ranking(13, BATCH_B, rater="r2")
    first.delete_annotation(13)
    first.record_rejection("bad", annotation_id=14)
    first.add_task(101, "rank", BATCH_A)
    first.set_task_status(101, "answered")
    first.set_state("k", [1, 2])
    before = (
        first.events(),
        _orders(first),
        first.rejections(),
        first.tasks(),
        first.get_state("k"),
    )
    first.close()

    again = SubmissionStore(db_url)  # opening an existing schema must keep it as it is
    after = (
        again.events(),
        _orders(again),
        again.rejections(),
        again.tasks(),
        again.get_state("k"),
    )
    assert after == before
    assert _orders(again) == [(11, tuple(reversed(BATCH_A))), (12, ("a1", "too_basal"))]
    # Idempotence survives the restart too.
    assert again.append_ranking(11, list(reversed(BATCH_A)), rater="r1").status == "duplicate"
    again.close()


def test_concurrent_writers_count_each_annotation_once(db_url):
    store = SubmissionStore(db_url)
    errors: list[BaseException] = []
    statuses: list[str] = []
    lock = threading.Lock()

    def worker(k: int):
        try:
            # Every thread delivers every annotation (like duplicate webhooks racing).
            for ann in range(20):
                res = store.append_ranking(ann, [f"x{ann}", f"y{ann}"], rater=f"r{k}")
                with lock:
                    statuses.append(res.status)
        except BaseException as exc:  # pragma: no cover - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert not errors
    assert statuses.count("created") == 20 and statuses.count("duplicate") == 100
    reopened = SubmissionStore(db_url)
    assert reopened.event_count() == 20
    assert sorted(s.annotation_id for s in reopened.effective_submissions()) == list(range(20))
    reopened.close()


def test_rebuild_replays_effective_submissions(store):
    store.append_ranking(11, BATCH_A, rater="r1")
    store.append_boundary(12, "a3", "lv", rater="r2")
    store.append_ranking(13, BATCH_B, rater="r2")
    store.append_ranking(11, list(reversed(BATCH_A)), rater="r1")
    store.append_ranking(14, ["c1", "c2"], rater="r3")
    store.delete_annotation(14)
    engine = store.rebuild(RecordingEngine)
    assert engine.calls == [
        ("rank", "r1", tuple(reversed(BATCH_A)), False),
        ("boundary", "a3", "lv", "r2"),
        ("rank", "r2", tuple(BATCH_B), False),
    ]


def test_rebuild_names_a_refused_submission(store):
    store.append_ranking(11, BATCH_A, rater="r1")
    store.append_ranking(12, BATCH_B, rater="r2")
    with pytest.raises(ValueError, match="annotation 12"):
        store.rebuild(lambda: RecordingEngine(refuse={"b1"}))
    refused = []
    engine = store.rebuild(
        lambda: RecordingEngine(refuse={"b1"}),
        on_invalid=lambda s, e: refused.append(s.annotation_id),
    )
    assert refused == [12] and len(engine.calls) == 1


def _live_session(store, strategy: str, n_images: int = 120, n_batches: int = 45):
    """Drive a real RankingEngine the way the service does, logging every submission."""
    import random

    from ranking_scheduler.engine.ranking import RankingEngine

    ids = [f"img{i:03d}" for i in range(n_images)]
    position = {i: k / n_images for k, i in enumerate(ids)}  # img000 is the most basal
    rng = random.Random(7)
    live = RankingEngine(ids, strategy=strategy, seed=3)
    ann = 0
    for k in range(n_batches):
        rater = f"r{k % 3}"
        batch = live.next_batch(rater)
        if not batch:
            break
        ordered = sorted(batch, key=lambda i: position[i] + rng.gauss(0, 0.03))
        live.submit(rater, ordered)
        ann += 1
        store.append_ranking(ann, ordered, rater=rater, task_id=ann)
        if k % 5 == 4:
            query = live.next_boundary_query()
            if query is not None:
                cls = (
                    "too_basal"
                    if position[query] < 0.15
                    else "lv"
                    if position[query] < 0.85
                    else "too_apical"
                )
                live.submit_boundary(query, cls, rater)
                ann += 1
                store.append_boundary(ann, query, cls, rater=rater)
    return ids, live


@pytest.mark.parametrize("strategy", ["paper", "bayes"])
def test_rebuild_equals_the_live_engine(db_url, strategy):
    from ranking_scheduler.engine.ranking import RankingEngine

    store = SubmissionStore(db_url)
    ids, live = _live_session(store, strategy)
    assert sum(1 for s in store.effective_submissions("boundary")) >= 1
    store.close()
    reopened = SubmissionStore(db_url)  # as after a scheduler restart
    rebuilt = reopened.rebuild(lambda: RankingEngine(ids, strategy=strategy, seed=3))
    reopened.close()
    assert rebuilt.scores() == live.scores()
    assert rebuilt.view_counts() == live.view_counts()
    assert rebuilt.ranking() == live.ranking()
    assert rebuilt.classes() == live.classes()
    assert rebuilt.progress()["batches"] == live.progress()["batches"]


def test_rebuild_after_edit_and_delete_equals_engine_fed_the_corrected_history(db_url):
    from ranking_scheduler.engine.ranking import RankingEngine

    store = SubmissionStore(db_url)
    ids, _ = _live_session(store, "bayes", n_batches=20)
    history = list(store.effective_submissions())
    ranks = [s for s in history if s.kind == "rank"]
    edit, drop = ranks[3], ranks[5]
    edited = list(reversed(edit.ordered))
    assert store.append_ranking(edit.annotation_id, edited, rater=edit.rater).needs_rebuild
    assert store.delete_annotation(drop.annotation_id).needs_rebuild
    rebuilt = store.rebuild(lambda: RankingEngine(ids, strategy="bayes", seed=3))
    store.close()

    expected = RankingEngine(ids, strategy="bayes", seed=3)
    for s in history:
        if s.annotation_id == drop.annotation_id:
            continue
        if s.kind == "boundary":
            expected.submit_boundary(s.image_id, s.label, s.rater)
        else:
            ordered = edited if s.annotation_id == edit.annotation_id else list(s.ordered)
            expected.submit(s.rater, ordered, require_open=False)
    assert rebuilt.scores() == expected.scores()
    assert rebuilt.view_counts() == expected.view_counts()
    assert rebuilt.progress()["batches"] == len(ranks) - 1
    original = RankingEngine(ids, strategy="bayes", seed=3)
    for s in ranks:
        original.submit(s.rater, list(s.ordered), require_open=False)
    assert rebuilt.scores() != original.scores()  # the edit and the deletion did count
