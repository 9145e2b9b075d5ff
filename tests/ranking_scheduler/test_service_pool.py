"""Keeping the next Rank task ready: spare-pool sizing (pure) and task creation off the worker.

The service tests here use a fake Label Studio edge (same methods as ``LabelStudioAdapter``)
whose task import can be held, the way Label Studio's SQLite server holds an import for 3-9 s
on a write conflict; the log is a real SQLite ``SubmissionStore``.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import pytest

from ls_config.provision import BOUNDARY, CLASSIFY, RANK
from ls_config.webclient import ranker_result
from ranking_scheduler.service.ls_adapter import PoolImage
from ranking_scheduler.service.pool import CREATED_BY, spare_tasks, submission_rate, wanted_open
from ranking_scheduler.service.service import SchedulerService
from ranking_scheduler.service.settings import SchedulerSettings
from ranking_scheduler.service.store import SubmissionStore
from ranking_scheduler.service.worker_stats import WorkerStats


# ----------------------------------------------------------------------------- pure sizing
def test_spare_tasks_is_rate_times_lag_times_safety_rounded_up():
    assert spare_tasks(2.8, 9.2, 1.5) == 39  # 38.64: the bench's worst stall
    assert spare_tasks(2.0, 3.0, 1.0) == 6  # exact products are not rounded up
    assert spare_tasks(0.0, 9.0, 1.5) == 0  # nobody submitting: no spare needed
    assert spare_tasks(3.0, 0.0, 1.5) == 0
    assert spare_tasks(0.1, 0.1, 1.0) == 1


@pytest.mark.parametrize(("name", "args"), [("rate_per_s", (-1, 1, 1)), ("lag_s", (1, -1, 1))])
def test_spare_tasks_refuses_negative_inputs(name, args):
    with pytest.raises(ValueError, match=name):
        spare_tasks(*args)


def test_spare_tasks_refuses_nan():
    with pytest.raises(ValueError, match="safety"):
        spare_tasks(1.0, 1.0, float("nan"))


def test_wanted_open_takes_the_largest_rule_then_caps():
    kw = {"open_per_rater": 3, "min_open": 8, "max_open": 64}
    assert wanted_open(0, spare=0, **kw) == 8  # nobody seen yet: the floor
    assert wanted_open(10, spare=0, **kw) == 30  # the per-rater floor
    assert wanted_open(10, spare=39, **kw) == 49  # one on each screen plus the spare
    assert wanted_open(10, spare=200, **kw) == 64  # capped
    with pytest.raises(ValueError, match="max_open=4 is below min_open=8"):
        wanted_open(1, spare=0, open_per_rater=3, min_open=8, max_open=4)
    with pytest.raises(ValueError, match="active and spare"):
        wanted_open(-1, spare=0, **kw)


def test_submission_rate_counts_the_window_and_forgets_older():
    times = deque([0.0, 10.0, 50.0, 55.0, 59.0])
    assert submission_rate(times, 60.0, 60.0) == pytest.approx(5 / 60)
    assert submission_rate(times, 100.0, 60.0) == pytest.approx(3 / 60)
    assert list(times) == [50.0, 55.0, 59.0]
    with pytest.raises(ValueError, match="window_s"):
        submission_rate(times, 1.0, 0)


def test_worker_stats_keep_the_worst_and_the_low_water_mark():
    w = WorkerStats()
    w.record("webhook", 0.002)
    w.record("webhook", 3.1)
    w.saw_spare(20)
    w.saw_spare(4)
    w.saw_spare(12)
    for lag in (0.1, 0.2, 9.2):
        w.replaced(lag)
    w.saw_wanted(30)
    w.saw_wanted(12)
    d = w.as_dict()
    assert d["wanted_open_high"] == 30
    assert d["events"]["webhook"] == {"n": 2, "total_s": 3.102, "max_ms": 3100.0}
    assert d["spare_low"] == 4
    assert d["replacement_lag_ms_max"] == pytest.approx(9200.0)
    assert w.recent_lags(2) == [0.2, 9.2]


def test_settings_for_the_pool_validate():
    s = SchedulerSettings.from_env(
        {"SCHEDULER_SPARE_SAFETY": "2.5", "SCHEDULER_CREATE_CONCURRENCY": "4"}
    )
    assert (s.spare_safety, s.create_concurrency) == (2.5, 4)
    with pytest.raises(ValueError, match="SCHEDULER_CREATE_CONCURRENCY=0 must be at least 1"):
        SchedulerSettings.from_env({"SCHEDULER_CREATE_CONCURRENCY": "0"})
    with pytest.raises(ValueError, match="SCHEDULER_SPARE_SAFETY='x' is not a number"):
        SchedulerSettings.from_env({"SCHEDULER_SPARE_SAFETY": "x"})
    with pytest.raises(ValueError, match="SCHEDULER_SPARE_SAFETY=-1.0 must be at least 0"):
        SchedulerSettings.from_env({"SCHEDULER_SPARE_SAFETY": "-1"})


# ----------------------------------------------------------------------------- fake edge
class FakeLabelStudio:
    """The adapter's methods over in-memory tasks; ``hold()`` makes the next import wait."""

    def __init__(self, n_images: int = 64) -> None:
        self.projects = {RANK: 1, CLASSIFY: 2, BOUNDARY: 3}
        self.images = [
            PoolImage(f"img{i:03d}", f"/data/{i}.png", 1000 + i) for i in range(n_images)
        ]
        self.tasks: dict[int, dict] = {}
        self.next_id = 1
        self.lock = threading.Lock()
        self.imports = 0
        self._hold: threading.Event | None = None
        self.held: list[tuple[list[int], list]] = []  # (ids it will get, batches) while held
        self.read_delay = 0.0  # seconds each task listing takes
        self.reading = threading.Event()  # set while a listing is under way
        self.hidden: set[int] = set()  # tasks a full listing skips (a page shifted under it)
        self.retired: set[int] = set()  # out of the labelling stream (overlap 0), still there

    wait_s = 0.0

    def connect(self, prefer=None):
        return self.projects

    def pool(self):
        return list(self.images)

    def kind_of_project(self, project_id):
        return next((k for k, p in self.projects.items() if p == project_id), None)

    def call_stats(self):
        return {}

    def hold(self) -> threading.Event:
        """The next import blocks until the returned event is set."""
        self._hold = threading.Event()
        return self._hold

    def create_rank_tasks(self, batches):
        with self.lock:
            ids = list(range(self.next_id, self.next_id + len(batches)))
            self.next_id += len(batches)
            self.imports += 1
            hold, self._hold = self._hold, None
        if hold is not None:
            self.held.append((ids, batches))
            assert hold.wait(10), "the test never released the held import"
        with self.lock:
            for task_id, (batch_id, images) in zip(ids, batches, strict=True):
                self.tasks.setdefault(
                    task_id,
                    {
                        "id": task_id,
                        "images": [img.image_id for img in images],
                        "batch_id": batch_id,
                        "annotations": [],
                    },
                )
        return ids

    def delete_task(self, task_id):
        with self.lock:
            return self.tasks.pop(task_id, None) is not None

    def retire_task(self, task_id):
        with self.lock:
            self.retired.add(task_id)
            return task_id in self.tasks

    def unanswered(self) -> list[int]:
        """Tasks in the labelling stream: not answered, not retired."""
        with self.lock:
            return [
                t for t, d in self.tasks.items() if not d["annotations"] and t not in self.retired
            ]

    def unlabelled_tasks(self, kind):
        return len(self.unanswered()) if kind == RANK else 0

    def tasks_with_annotations(self, kind, task_ids=None):
        if kind != RANK:
            return []
        self.reading.set()
        time.sleep(self.read_delay)
        self.reading.clear()
        with self.lock:
            return [
                {"id": t, "annotations": list(d["annotations"]), "meta": {}, "data": {}}
                for t, d in self.tasks.items()
                if (t in task_ids if task_ids is not None else t not in self.hidden)
            ]

    def annotation(self, annotation_id):
        """An annotation by id, as the scheduler reads it back after a webhook, or None."""
        with self.lock:
            for task_id, d in self.tasks.items():
                for ann in d["annotations"]:
                    if ann["id"] == annotation_id:
                        return {**ann, "task": task_id, "project": self.projects[RANK]}
        return None

    def task(self, task_id):
        """A task by id as Label Studio returns it (ours carry the scheduler's meta)."""
        with self.lock:
            d = self.tasks.get(task_id)
            if d is None:
                return None
            meta = {"created_by": CREATED_BY} if "batch_id" in d else {}
            data = {"images": [{"id": i} for i in d["images"]], "batch_id": d.get("batch_id")}
            return {"id": task_id, "meta": meta, "data": data, "annotations": d["annotations"]}

    boundary_failures = 0  # how many boundary creations fail before they work

    def create_boundary_task(self, image, boundary):
        with self.lock:
            if self.boundary_failures > 0:
                self.boundary_failures -= 1
                raise RuntimeError("Label Studio answered 500")
            task_id = self.next_id
            self.next_id += 1
            self.tasks[task_id] = {"id": task_id, "images": [image.image_id], "annotations": []}
            self.retired.add(task_id)  # not a Rank task: keep it out of unanswered()
        return task_id

    def annotate(self, task_id: int, ann_id: int, rater: int, images: list[str]) -> dict:
        """A rater submits ``task_id`` (in image order); the webhook payload Label Studio sends."""
        ann = {
            "id": ann_id,
            "task": task_id,
            "completed_by": rater,
            "result": ranker_result(sorted(images)),
            "was_cancelled": False,
        }
        with self.lock:
            if task_id in self.tasks:
                self.tasks[task_id]["annotations"].append(ann)
        return {
            "action": "ANNOTATION_CREATED",
            "project": {"id": self.projects[RANK]},
            "task": {"id": task_id, "project": self.projects[RANK]},
            "annotation": ann,
        }


def _start(tmp_path, **changes):
    fake = FakeLabelStudio()
    store = SubmissionStore(f"sqlite:///{tmp_path / 'log.db'}")
    settings = SchedulerSettings(
        strategy="paper",
        target_views=50,
        min_open_tasks=4,
        open_per_rater=2,
        reconcile_interval_s=0,
        watch_interval_s=0,
        full_reconcile_interval_s=0,
        create_concurrency=2,
    ).with_(**changes)
    svc = SchedulerService(settings, store, fake)
    svc.start()
    svc.request_reconcile()
    assert svc.wait_idle(10)
    return svc, fake, store


@pytest.fixture
def service(tmp_path):
    svc, fake, store = _start(tmp_path)
    yield svc, fake, store
    svc.stop()
    store.close()


def _answer(svc, fake, task_id, ann_id, rater=1):
    svc.enqueue(
        "ANNOTATION_CREATED", fake.annotate(task_id, ann_id, rater, fake.tasks[task_id]["images"])
    )


def test_a_held_import_does_not_hold_up_the_replacements_after_it(service):
    svc, fake, store = service
    assert len(fake.unanswered()) == 4  # min_open_tasks at start
    release = fake.hold()
    first = fake.unanswered()
    _answer(svc, fake, first[0], 101, rater=1)  # its replacement's import is held
    deadline = time.monotonic() + 5
    while not fake.held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.held, "the top-up after the first submission never reached Label Studio"
    # While that import hangs, the next submissions still get replacements (another creator).
    _answer(svc, fake, first[1], 102, rater=2)
    _answer(svc, fake, first[2], 103, rater=3)
    deadline = time.monotonic() + 5
    while len(fake.unanswered()) < 3 + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # 1 left of the first 4, plus replacements that did not wait for the held import.
    assert len(fake.unanswered()) >= 3 + 2
    assert fake.imports >= 2
    release.set()
    assert svc.wait_idle(10)
    # Everything recorded once; three raters active -> 2 x 3 open tasks, none lost.
    assert [s.annotation_id for s in store.effective_submissions("rank")] == [101, 102, 103]
    assert store.event_count() == 3
    open_ids = {t.task_id for t in store.tasks(status="open", kind="rank")}
    assert open_ids == set(fake.unanswered())
    assert len(open_ids) == 6
    assert svc.service_stats()["creating_rank_tasks"] == 0
    assert svc.engine.progress()["batches"] == 3


def test_a_webhook_for_a_task_still_being_recorded_waits_instead_of_being_rejected(service):
    svc, fake, store = service
    release = fake.hold()
    _answer(svc, fake, fake.unanswered()[0], 201, rater=1)
    deadline = time.monotonic() + 5
    while not fake.held and time.monotonic() < deadline:
        time.sleep(0.01)
    ((ids, batches),) = fake.held
    # Label Studio already shows the task; a quick rater answers it before the import returns.
    images = [img.image_id for img in batches[0][1]]
    with fake.lock:
        fake.tasks[ids[0]] = {"id": ids[0], "images": images, "annotations": []}
    svc.enqueue("ANNOTATION_CREATED", fake.annotate(ids[0], 202, 2, images))
    time.sleep(0.2)
    assert not store.rejections()  # parked, not refused
    assert svc.queue_depth() == 1  # still to be applied: /health does not say settled
    release.set()
    assert svc.wait_idle(10)
    assert not store.rejections()
    assert [s.annotation_id for s in store.effective_submissions("rank")] == [201, 202]
    assert store.get_task(ids[0]).status == "answered"


def test_a_delete_that_races_a_parked_create_is_not_undone(service):
    # The create of an answer waits for its task's import; meanwhile it is deleted in Label
    # Studio. The delete finds nothing in the log; the parked create must not count afterwards.
    svc, fake, store = service
    release = fake.hold()
    _answer(svc, fake, fake.unanswered()[0], 211, rater=1)
    assert _wait_for(lambda: fake.held, 5)
    ((ids, batches),) = fake.held
    images = [img.image_id for img in batches[0][1]]
    with fake.lock:
        fake.tasks[ids[0]] = {"id": ids[0], "images": images, "annotations": []}
    svc.enqueue("ANNOTATION_CREATED", fake.annotate(ids[0], 212, 2, images))
    assert _wait_for(lambda: svc._parked, 5)  # read back from Label Studio, then parked
    with fake.lock:
        fake.tasks[ids[0]]["annotations"].clear()  # deleted in Label Studio
    svc.enqueue("ANNOTATIONS_DELETED", {"action": "ANNOTATIONS_DELETED",
                                        "annotations": [{"id": 212}]})  # fmt: skip
    time.sleep(0.2)
    release.set()
    assert svc.wait_idle(10)
    assert [s.annotation_id for s in store.effective_submissions("rank")] == [211]
    assert svc.engine.progress()["batches"] == 1
    # A read that begins after the delete is believed: had Label Studio still shown 212 (the
    # delete was forged), the next full pass would have counted it.
    assert svc.reconcile()["applied"] == 0


def test_a_failed_import_releases_its_batches_and_the_next_event_retries(service, monkeypatch):
    svc, fake, store = service
    real = fake.create_rank_tasks
    calls = {"n": 0}

    def flaky(batches):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("Label Studio answered 500")
        return real(batches)

    monkeypatch.setattr(fake, "create_rank_tasks", flaky)
    open_before = len(svc.engine.open_batches())
    _answer(svc, fake, fake.unanswered()[0], 301)
    assert svc.wait_idle(10)
    assert svc.service_stats()["counts"]["errors"] == 1
    assert len(svc.engine.open_batches()) == open_before - 1  # the failed batch was released
    _answer(svc, fake, fake.unanswered()[0], 302)
    assert svc.wait_idle(10)
    assert len(store.tasks(status="open", kind="rank")) == len(fake.unanswered()) == 4
    assert store.event_count() == 2


def test_an_import_that_fails_after_a_rebuild_still_returns_the_parked_answers(
    service, monkeypatch
):
    # Under load an import can time out after Label Studio created the tasks, and a rebuild
    # (an edit, a delete) meanwhile has forgotten its batches: releasing them must not fail,
    # and the answer parked for one of those tasks must still be looked at.
    svc, fake, store = service
    real = fake.create_rank_tasks
    failed = []

    def landed_but_timed_out(batches):
        ids = real(batches)
        if failed:
            return ids
        failed.append(ids)
        raise RuntimeError("the import timed out after 60 s")

    monkeypatch.setattr(fake, "create_rank_tasks", landed_but_timed_out)
    release = fake.hold()
    _answer(svc, fake, fake.unanswered()[0], 221, rater=1)
    assert _wait_for(lambda: fake.held, 5)
    ((ids, batches),) = fake.held
    images = [img.image_id for img in batches[0][1]]
    with fake.lock:
        fake.tasks[ids[0]] = {"id": ids[0], "images": images, "annotations": [],
                              "batch_id": batches[0][0]}  # fmt: skip
    svc.enqueue("ANNOTATION_CREATED", fake.annotate(ids[0], 222, 2, images))
    assert _wait_for(lambda: svc._parked, 5)
    svc.rebuild()  # what an edit or a delete does meanwhile
    release.set()
    assert svc.wait_idle(10)
    assert svc.service_stats()["counts"]["errors"] == 1  # the failed import, nothing else
    assert not svc._parked
    # Its task is Label Studio's and ours (meta): adopted, and the answer counts.
    assert [s.annotation_id for s in store.effective_submissions("rank")] == [221, 222]


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_light_reconciliation_reads_label_studio_off_the_worker(tmp_path):
    svc, fake, store = _start(tmp_path, reconcile_interval_s=0.3)
    try:
        logged = lambda: {s.annotation_id for s in store.effective_submissions("rank")}  # noqa: E731
        a, b = fake.unanswered()[:2]
        fake.read_delay = 1.5
        fake.annotate(a, 401, 1, fake.tasks[a]["images"])  # its webhook is lost
        assert fake.reading.wait(5), "no light reconciliation started"
        # While the tick thread waits for Label Studio, the worker applies webhooks at once.
        _answer(svc, fake, b, 402, rater=2)
        assert _wait_for(lambda: 402 in logged(), 0.8), "the worker waited for the read"
        assert fake.reading.is_set()
        # The read finishes and the lost submission is applied, once.
        assert _wait_for(lambda: 401 in logged(), 5)
        fake.read_delay = 0.0
        time.sleep(0.5)  # more passes over the same annotations: still one event each
        assert svc.wait_idle(10)
        assert store.event_count() == 2
        assert svc.engine.progress()["batches"] == 2
        assert store.get_task(a).status == "answered"
    finally:
        svc.stop()
        store.close()


def test_the_full_reconciliation_reads_off_the_worker_and_keeps_what_came_meanwhile(tmp_path):
    svc, fake, store = _start(tmp_path, full_reconcile_interval_s=0.5)
    try:
        logged = lambda: {s.annotation_id for s in store.effective_submissions("rank")}  # noqa: E731
        b = fake.unanswered()[0]
        fake.read_delay = 1.5
        assert fake.reading.wait(5), "no full reconciliation started"
        # The listing under way cannot show this submission; the worker applies it at once.
        _answer(svc, fake, b, 502, rater=2)
        assert _wait_for(lambda: 502 in logged(), 0.8), "the worker waited for the listing"
        assert fake.reading.is_set()
        fake.read_delay = 0.0
        time.sleep(2.0)  # that old listing is applied, and newer passes after it
        assert svc.wait_idle(10)
        # Not taken for deleted although the old listing did not have it.
        assert logged() == {502}
        assert store.event_count() == 1
        assert svc.service_stats()["counts"]["deleted"] == 0
        assert svc.service_stats()["counts"]["reconciles"] >= 2
    finally:
        svc.stop()
        store.close()


def test_a_task_a_paged_listing_skipped_is_read_again_before_anything_is_dropped(service):
    svc, fake, store = service
    a, b, c = fake.unanswered()[:3]
    for task_id, ann_id in ((a, 601), (b, 602)):
        _answer(svc, fake, task_id, ann_id)
    assert svc.wait_idle(10)
    fake.hidden = {a, c}  # a page shifted: the listing misses an answered and an open task
    with fake.lock:
        del fake.tasks[b]  # really deleted in Label Studio (with its annotation)
    assert svc.reconcile() == {"applied": 0, "deleted": 1}
    assert {s.annotation_id for s in store.effective_submissions("rank")} == {601}
    assert store.get_task(c).status == "open"  # still there: not retired
    assert svc.engine.progress()["batches"] == 1


def test_stop_waits_for_a_creation_only_up_to_its_timeout(tmp_path):
    svc, fake, store = _start(tmp_path)
    release = fake.hold()
    try:
        _answer(svc, fake, fake.unanswered()[0], 701)
        assert _wait_for(lambda: fake.held, 5)
        t0 = time.monotonic()
        svc.stop(timeout=0.5)
        assert time.monotonic() - t0 < 2.0  # did not wait for the held import
        assert [s.annotation_id for s in store.effective_submissions("rank")] == [701]
    finally:
        release.set()
        store.close()


def test_the_lead_time_of_a_submission_reaches_the_log(service):
    svc, fake, store = service
    task_id = fake.unanswered()[0]
    payload = fake.annotate(task_id, 801, 1, fake.tasks[task_id]["images"])
    payload["annotation"]["lead_time"] = 12.5  # seconds the rater spent, as LS measured it
    svc.enqueue("ANNOTATION_CREATED", payload)
    assert svc.wait_idle(10)
    (sub,) = store.effective_submissions("rank")
    assert (sub.annotation_id, sub.lead_time) == (801, 12.5)


def test_a_failed_boundary_question_does_not_use_up_the_label_budget(tmp_path):
    # 'paper' with one view per image is done after 8 batches of the 64 images; then the
    # engine asks boundary questions (at most 2 open), the first creation fails.
    svc, fake, store = _start(tmp_path, target_views=1, boundary_open=2)
    try:
        fake.boundary_failures = 1
        ann = 900
        while not svc.engine.done:
            task_id = fake.unanswered()[0]
            ann += 1
            _answer(svc, fake, task_id, ann)
            assert svc.wait_idle(10)
        pending = sum(c["pending"] for c in svc.engine.boundary_status().values())
        open_questions = store.tasks(kind="boundary", status="open")
        assert len(open_questions) == 2
        # Only the questions that exist in Label Studio count against the budget.
        assert pending == len(open_questions)
        assert svc.service_stats()["counts"]["errors"] == 1
    finally:
        svc.stop()
        store.close()


def test_a_rejection_that_depends_on_the_log_not_the_answer_is_looked_at_again(service):
    # A task whose creation the log learns late (an import that landed around a crash):
    # its answer is refused at first, and counted once the log knows the task.
    svc, fake, store = service
    images = [img.image_id for img in fake.images[:8]]
    with fake.lock:
        fake.tasks[999] = {"id": 999, "images": images, "annotations": []}
    svc.enqueue("ANNOTATION_CREATED", fake.annotate(999, 901, 1, images))
    assert svc.wait_idle(10)
    (rej,) = store.rejections()
    assert rej.annotation_id == 901 and "was not created by the scheduler" in rej.reason
    store.add_task(999, "rank", images)  # the log learns the task
    svc.reconcile()
    assert 901 in {s.annotation_id for s in store.effective_submissions("rank")}
    assert len(store.rejections()) == 1  # the refusal stays on record, once


def test_a_slice_ranked_recently_goes_into_no_new_task(tmp_path):
    # Label Studio picks which rater opens a task: a slice just ranked must not be in the
    # tasks created after it, or its rater may be shown it again straight away.
    svc, fake, store = _start(tmp_path, strategy="bayes", recent_view_s=600)
    try:
        ranked: set[str] = set()
        for k in range(3):
            before = set(fake.unanswered())
            task_id = sorted(before)[0]
            ranked |= set(fake.tasks[task_id]["images"])
            _answer(svc, fake, task_id, 900 + k)
            assert svc.wait_idle(10)
            new = set(fake.unanswered()) - before
            assert new, "the answered task was not replaced"
            for t in new:
                assert not set(fake.tasks[t]["images"]) & ranked, (t, fake.tasks[t]["images"])
    finally:
        svc.stop()
        store.close()
