"""The scheduler service end to end against a real Label Studio.

Raters are real Label Studio accounts making the labelling UI's own REST calls; Label Studio
delivers real webhooks to the service. The log (the store) is checked against Label Studio's
annotations: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from ls_config.provision import SECRET_HEADER
from ls_config.webclient import choices_result, ranker_result
from ranking_scheduler.service.intake import parse_boundary, parse_ranking, rater_name
from tests.ranking_scheduler.test_service_harness import (
    InProcessScheduler,
    SubprocessScheduler,
    make_raters,
    provision_setup,
    rank_next,
    true_order,
)

IDS = [f"i{k}" for k in range(8)]


# ----------------------------------------------------------------------------- pure parsing
def test_parse_ranking_accepts_the_ranker_result_shape():
    result = ranker_result(list(reversed(IDS)))
    assert parse_ranking(result, IDS) == list(reversed(IDS))


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        (IDS[:7], "missing ['i7']"),
        (IDS[:7] + ["zz"], "extra ['zz']"),
        (IDS + ["zz"], "holds 9 items, more than the task's 8 images"),
        (IDS[:7] + ["i0"], "repeated ['i0']"),
    ],
)
def test_parse_ranking_names_what_is_wrong(order, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_ranking(ranker_result(order), IDS)


def test_parse_ranking_refuses_no_ranking_and_buckets():
    with pytest.raises(ValueError, match="expected one ranker result, found 0"):
        parse_ranking([], IDS)
    bucketed = ranker_result(IDS)
    bucketed[0]["value"]["ranker"]["other"] = []
    with pytest.raises(ValueError, match="exactly one ordered list"):
        parse_ranking(bucketed, IDS)


def test_parse_boundary_and_rater_name():
    assert parse_boundary(choices_result("lv")) == "lv"
    with pytest.raises(ValueError, match="not one of"):
        parse_boundary(choices_result("middle"))
    assert rater_name(7) == rater_name({"id": 7}) == "ls-user-7"
    with pytest.raises(ValueError, match="names no rater"):
        rater_name(None)


# ----------------------------------------------------------------------------- helpers
def _ls_rank_annotations(client, project_id) -> dict[int, list[str]]:
    """Label Studio's own record: annotation id -> submitted order, for the Rank project."""
    out = {}
    for task in client.tasks.list(project=project_id, fields="all", page_size=500):
        for ann in task.annotations or []:
            ann = ann if isinstance(ann, dict) else ann.dict()
            if not ann.get("was_cancelled"):
                out[ann["id"]] = (
                    ann["result"][0]["value"]["ranker"]["order"] if ann["result"] else []
                )
    return out


def _open_unlabelled(client, project_id) -> int:
    return sum(1 for t in client.tasks.list(project=project_id, page_size=500) if not t.is_labeled)


def _positions(setup) -> dict[str, float]:
    return {r["image_id"]: float(r["position"]) for r in setup.rows}


# ----------------------------------------------------------------------------- in-process
@pytest.mark.integration
@pytest.mark.slow
def test_webhooks_drive_the_stream(label_studio, tmp_path):
    setup = provision_setup(label_studio, tmp_path, SCHEDULER_MIN_OPEN_TASKS=3)
    client = label_studio.client()
    positions = _positions(setup)
    sched = InProcessScheduler(setup)
    service, store = sched.service, sched.store
    try:
        rank_pid = setup.projects["Rank"]
        assert _open_unlabelled(client, rank_pid) == 3  # topped up at start
        raters = make_raters(label_studio, 2)

        # Raters rank through the UI's REST calls; every submission is applied once.
        submitted = []
        for k in range(4):
            task, ann = rank_next(raters[k % 2], setup, positions)
            submitted.append(ann["id"])
        assert service.wait_idle()
        log_ids = [s.annotation_id for s in store.effective_submissions("rank")]
        assert log_ids == submitted
        assert service.engine.progress()["batches"] == 4
        # Two active raters x OPEN_PER_RATER open tasks each: the stream never runs dry.
        assert _open_unlabelled(client, rank_pid) == 2 * service.settings.open_per_rater

        # The exact order submitted is what the log holds.
        last = store.latest_version(submitted[-1])
        assert list(last.ordered) == true_order(task, positions)

        # A duplicate delivery of the same webhook counts once.
        payload = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": rank_pid},
            "task": {"id": task["id"], "project": rank_pid},
            "annotation": ann,
        }
        hdr = {SECRET_HEADER: setup.secret}
        events_before = store.event_count()
        for _ in range(2):
            assert httpx.post(f"{setup.url}/webhook", json=payload, headers=hdr).status_code == 200
        assert service.wait_idle()
        assert store.event_count() == events_before
        assert service.engine.progress()["batches"] == 4

        # Without the secret (or with a wrong one) the webhook is refused and nothing queued.
        assert httpx.post(f"{setup.url}/webhook", json=payload).status_code == 401
        bad_hdr = {SECRET_HEADER: "wrong"}
        assert httpx.post(f"{setup.url}/webhook", json=payload, headers=bad_hdr).status_code == 401

        # A bad ranking (an image left out) is rejected with its reason; the stream goes on.
        task = raters[0].next_task(rank_pid)
        order = true_order(task, positions)
        raters[0].submit(task["id"], rank_pid, ranker_result(order[:-1]))
        rank_next(raters[1], setup, positions)
        assert service.wait_idle()
        (rej,) = store.rejections()
        assert rej.task_id == task["id"] and f"missing ['{order[-1]}']" in rej.reason
        assert service.engine.progress()["batches"] == 5

        # A task the scheduler did not create is refused too.
        foreign = client.tasks.create(project=rank_pid, data=dict(task["data"]))
        raters[1].submit(foreign.id, rank_pid, ranker_result(order))
        assert service.wait_idle()
        assert "was not created by the scheduler" in store.rejections()[0].reason
        client.tasks.delete(foreign.id)

        # A skipped task is withdrawn and replaced; an edited ranking rebuilds the engine.
        task = raters[0].next_task(rank_pid)
        raters[0].skip(task["id"], rank_pid)
        assert service.wait_idle()
        assert store.get_task(task["id"]).status == "skipped"
        task, ann = rank_next(raters[0], setup, positions)
        assert service.wait_idle()
        rebuilds = service.service_stats()["counts"]["rebuilds"]
        raters[0].update(ann["id"], ranker_result(list(reversed(true_order(task, positions)))))
        assert service.wait_idle()
        assert store.latest_version(ann["id"]).version == 2
        assert service.service_stats()["counts"]["rebuilds"] == rebuilds + 1
        assert service.engine.progress()["batches"] == 6

        # Webhooks switched off: submissions are missed, reconciliation catches up.
        hooks = list(client.webhooks.list(project=rank_pid))
        # (A PATCH without "actions" would clear them: Label Studio replaces the list.)
        client.webhooks.update(hooks[0].id, is_active=False, actions=hooks[0].actions)
        missed = [rank_next(raters[k % 2], setup, positions)[1]["id"] for k in range(2)]
        assert service.wait_idle()
        assert service.engine.progress()["batches"] == 6
        # The cheap watch sees Label Studio has fewer unanswered tasks than are open: reconcile.
        assert service.watch() is False  # could be a webhook still on its way
        assert service.watch() is True  # the same shortfall again: reconcile
        assert service.watch() is False  # in step again
        client.webhooks.update(hooks[0].id, is_active=True, actions=hooks[0].actions)
        assert service.engine.progress()["batches"] == 8
        log_ids = {s.annotation_id for s in store.effective_submissions("rank")}
        assert set(missed) <= log_ids
        assert log_ids == set(_ls_rank_annotations(client, rank_pid)) - {rej.annotation_id}

        # Stats and the dashboard need the dashboard token (not the webhook secret); the
        # figures match the log.
        assert httpx.get(f"{setup.url}/api/stats").status_code == 401
        webhook_secret = {"Authorization": f"Bearer {setup.secret}"}
        assert httpx.get(f"{setup.url}/api/stats", headers=webhook_secret).status_code == 401
        stats = httpx.get(
            f"{setup.url}/api/stats", headers={"Authorization": f"Bearer {setup.dashboard_token}"}
        ).json()
        assert stats["headline"]["batches_done"] == 8
        assert stats["rejections"]["total"] == 2
        assert stats["service"]["own_ms_p95"] is not None
        with httpx.Client(base_url=setup.url) as browser:
            login = browser.post("/login", data={"token": setup.dashboard_token})
            assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
            assert browser.get("/dashboard").status_code == 200
        assert httpx.get(f"{setup.url}/dashboard").status_code == 303  # to /login
    finally:
        sched.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_done_engine_asks_boundaries_then_publishes(label_studio, tmp_path):
    # 'paper' with one view per image is done after a handful of batches.
    setup = provision_setup(
        label_studio,
        tmp_path,
        n_scans=4,
        n_slices=6,
        SCHEDULER_STRATEGY="paper",
        SCHEDULER_TARGET_VIEWS=1,
        SCHEDULER_BOUNDARY_BUDGET=4,
        SCHEDULER_MIN_OPEN_TASKS=2,
    )
    client = label_studio.client()
    positions = _positions(setup)
    truth = {r["image_id"]: r["true_class"] for r in setup.rows}
    sched = InProcessScheduler(setup)
    service = sched.service
    try:
        (rater,) = make_raters(label_studio, 1)
        for _ in range(20):
            if service.engine.done:
                break
            rank_next(rater, setup, positions)
            assert service.wait_idle()
        assert service.engine.done
        assert _open_unlabelled(client, setup.projects["Rank"]) == 0  # no more Rank work
        answered = 0
        for _ in range(10):
            task = rater.next_task(setup.projects["Boundary"])
            if task is None:
                break
            cls = truth[task["data"]["image_id"]]
            rater.submit(task["id"], setup.projects["Boundary"], choices_result(cls))
            answered += 1
            assert service.wait_idle()
        assert answered >= 1  # the engine decides how many (its budget: 4 answered labels)
        assert service.published is not None
        consensus = json.loads((setup.out_dir / "consensus.json").read_text())
        assert consensus["model_version"] == "ranking-consensus"
        assert {im["image_id"] for im in consensus["images"]} == set(truth)
        assert (setup.out_dir / "consensus.csv").read_text().startswith("image_id,rank,")
        assert service.ls.consensus_predictions() == len(truth)
        api = httpx.get(
            f"{setup.url}/api/consensus",
            headers={"Authorization": f"Bearer {setup.dashboard_token}"},
        ).json()
        assert [im["image_id"] for im in api["images"]] == [
            im["image_id"] for im in consensus["images"]
        ]
    finally:
        sched.stop()


def test_a_task_of_ours_that_landed_after_a_restart_is_adopted_not_rejected(label_studio, tmp_path):
    # An import still in flight when the previous scheduler died can land in Label Studio
    # after the new one reconciled: the task carries our meta but the log does not know it.
    setup = provision_setup(label_studio, tmp_path, SCHEDULER_MIN_OPEN_TASKS=2)
    positions = _positions(setup)
    sched = InProcessScheduler(setup)
    try:
        service = sched.service
        images = list(service.pool.values())[:8]
        late = service.ls.create_rank_task("landed-late", images)  # bypasses the log
        assert service.store.get_task(late) is None
        (rater,) = make_raters(label_studio, 1)
        order = sorted((im.image_id for im in images), key=positions.get)
        before = service.engine.progress()["batches"]
        rater.submit(late, setup.projects["Rank"], ranker_result(order))
        assert service.wait_idle()
        assert service.store.rejections() == []
        assert service.engine.progress()["batches"] == before + 1
        assert service.store.get_task(late).status == "answered"
        (sub,) = [s for s in service.store.effective_submissions("rank") if s.task_id == late]
        assert list(sub.ordered) == order
    finally:
        sched.stop()


@pytest.mark.slow
def test_boundary_budget_holds_across_a_restart_with_questions_open(label_studio, tmp_path):
    # Budget 4: two answered and two questions open in Label Studio when the scheduler
    # restarts. The rebuilt engine must count the open two, or it would ask a fifth.
    setup = provision_setup(
        label_studio,
        tmp_path,
        n_scans=4,
        n_slices=6,
        SCHEDULER_STRATEGY="paper",
        SCHEDULER_TARGET_VIEWS=1,
        SCHEDULER_BOUNDARY_BUDGET=4,
        SCHEDULER_MIN_OPEN_TASKS=2,
    )
    positions = _positions(setup)
    truth = {r["image_id"]: r["true_class"] for r in setup.rows}
    (rater,) = make_raters(label_studio, 1)

    def answer_one(service) -> bool:
        task = rater.next_task(setup.projects["Boundary"])
        if task is None:
            return False
        cls = truth[task["data"]["image_id"]]
        rater.submit(task["id"], setup.projects["Boundary"], choices_result(cls))
        assert service.wait_idle()
        return True

    sched = InProcessScheduler(setup)
    try:
        for _ in range(20):
            if sched.service.engine.done:
                break
            rank_next(rater, setup, positions)
            assert sched.service.wait_idle()
        assert answer_one(sched.service) and answer_one(sched.service)  # 2 answered, 2 open
    finally:
        sched.stop()
    sched = InProcessScheduler(setup)
    try:
        answered = 2
        while answered < 10 and answer_one(sched.service):
            answered += 1
        assert answered == 4
        assert sched.service.engine.boundary_status()["basal_lv"]["labels"] == 4
    finally:
        sched.stop()


# ----------------------------------------------------------------------------- subprocess
@pytest.mark.integration
@pytest.mark.slow
def test_killed_scheduler_loses_and_double_counts_nothing(label_studio, tmp_path):
    import threading

    from ranking_scheduler.service.store import SubmissionStore

    setup = provision_setup(label_studio, tmp_path, SCHEDULER_MIN_OPEN_TASKS=6)
    client = label_studio.client()
    positions = _positions(setup)
    raters = make_raters(label_studio, 2)
    log_path = tmp_path / "scheduler.log"
    sched = SubprocessScheduler(setup, log_path)
    stop = threading.Event()
    errors: list[str] = []
    submitted_at: list[float] = []

    def work(rater):
        while not stop.is_set():
            try:
                rank_next(rater, setup, positions, wait_s=30)
                submitted_at.append(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=work, args=(r,)) for r in raters]
    try:
        for t in threads:
            t.start()
        time.sleep(4)
        sched.kill()  # SIGKILL mid-stream: webhooks sent meanwhile are lost
        killed_at = time.monotonic()
        time.sleep(3)
        sched = SubprocessScheduler(setup, log_path)  # restart: rebuild + reconcile
        restarted_at = time.monotonic()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(60)
        assert not errors, errors
        # Raters went on working while the scheduler was down (from the open tasks).
        assert any(killed_at < t < restarted_at for t in submitted_at)
        # The final webhooks reach the restarted service; then a reconciliation pass settles.
        headers = {"Authorization": f"Bearer {setup.dashboard_token}"}
        deadline = time.monotonic() + 60
        ls_annotations = _ls_rank_annotations(client, setup.projects["Rank"])
        while time.monotonic() < deadline:
            stats = httpx.get(f"{setup.url}/api/stats", headers=headers).json()
            if stats["headline"]["batches_done"] == len(ls_annotations):
                break
            time.sleep(0.5)
        assert stats["headline"]["batches_done"] == len(ls_annotations)
        assert len(ls_annotations) >= 4
    finally:
        stop.set()
        sched.stop()
    with SubmissionStore(setup.db_url) as store:
        subs = list(store.effective_submissions("rank"))
        assert sorted(s.annotation_id for s in subs) == sorted(ls_annotations)
        for s in subs:
            assert list(s.ordered) == ls_annotations[s.annotation_id]
        # Appended exactly once each: no update or duplicate events.
        assert store.event_count() == len(subs)
    assert "Traceback" not in log_path.read_text()


# ----------------------------------------------------------------------------- settings
def test_settings_from_env_validate_and_hide_secrets():
    from ranking_scheduler.service.settings import SchedulerSettings

    env = {
        "LABEL_STUDIO_API_KEY": "k" * 40,
        "SCHEDULER_WEBHOOK_SECRET": "a-long-shared-secret",
        "SCHEDULER_DASHBOARD_TOKEN": "a-long-reader-token",
        "SCHEDULER_OPEN_PER_RATER": "3",
        "SCHEDULER_STRATEGY": "paper",
    }
    settings = SchedulerSettings.from_env(env)
    settings.require_secrets()
    assert settings.open_per_rater == 3 and settings.strategy == "paper"
    assert "a-long-shared-secret" not in repr(settings) and "k" * 40 not in repr(settings)
    assert "a-long-reader-token" not in repr(settings)
    with pytest.raises(ValueError, match="SCHEDULER_OPEN_PER_RATER='two' is not an integer"):
        SchedulerSettings.from_env({**env, "SCHEDULER_OPEN_PER_RATER": "two"})
    with pytest.raises(ValueError, match="SCHEDULER_STRATEGY='best'"):
        SchedulerSettings.from_env({**env, "SCHEDULER_STRATEGY": "best"})
    with pytest.raises(ValueError, match="set LABEL_STUDIO_API_KEY and SCHEDULER_WEBHOOK_SECRET"):
        SchedulerSettings.from_env({}).require_secrets()


def test_settings_for_the_project_pin_and_the_reconcile_guard():
    from ranking_scheduler.service.settings import SchedulerSettings

    s = SchedulerSettings.from_env({})
    assert (s.rebind_projects, s.reconcile_max_delete_share) == (False, 0.05)
    s = SchedulerSettings.from_env(
        {"SCHEDULER_REBIND_PROJECTS": "1", "SCHEDULER_RECONCILE_MAX_DELETE_SHARE": "0.2"}
    )
    assert (s.rebind_projects, s.reconcile_max_delete_share) == (True, 0.2)
    with pytest.raises(ValueError, match="SCHEDULER_REBIND_PROJECTS='maybe' is not a yes/no"):
        SchedulerSettings.from_env({"SCHEDULER_REBIND_PROJECTS": "maybe"})
    with pytest.raises(ValueError, match="SCHEDULER_RECONCILE_MAX_DELETE_SHARE=1.5 must be"):
        SchedulerSettings.from_env({"SCHEDULER_RECONCILE_MAX_DELETE_SHARE": "1.5"})
