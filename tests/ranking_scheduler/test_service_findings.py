"""The review findings of issue 14, each against a real Label Studio: nothing a rater submitted
is lost by a wrong project, a stale rejection, a deleted task or a consensus that went stale.

Each test failed before its fix (see the issue): the log wiped by another project with the
same title or another prefix, a rejection kept after the clinician fixed the ranking, a task
deleted under a rater, a consensus published once and never again.
"""

from __future__ import annotations

import pytest

from ls_config.provision import RANK, label_config, project_title
from ls_config.webclient import choices_result, ranker_result
from ranking_scheduler.service.ls_adapter import MODEL_VERSION, LabelStudioAdapter
from ranking_scheduler.service.service import SchedulerService
from ranking_scheduler.service.store import SubmissionStore
from tests.ranking_scheduler.test_service_harness import (
    InProcessScheduler,
    make_raters,
    provision_setup,
    rank_next,
    true_order,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _positions(setup) -> dict[str, float]:
    return {r["image_id"]: float(r["position"]) for r in setup.rows}


def _logged(store, kind="rank") -> list[int]:
    return [s.annotation_id for s in store.effective_submissions(kind)]


def _service(
    setup, db_url: str, prefix: str, **changes
) -> tuple[SchedulerService, SubmissionStore]:
    """A scheduler without threads (``start(background=False)`` reconciles at once)."""
    from label_studio_sdk import LabelStudio

    ls = setup.label_studio
    store = SubmissionStore(db_url)
    client = LabelStudio(base_url=ls.url, api_key=ls.api_key)
    settings = setup.settings(project_prefix=prefix, **changes)
    return SchedulerService(settings, store, LabelStudioAdapter(client, prefix)), store


# ----------------------------------------------------------------------------- finding 1
def test_the_log_is_pinned_to_its_projects(label_studio, tmp_path):
    setup = provision_setup(label_studio, tmp_path, SCHEDULER_MIN_OPEN_TASKS=2)
    client = label_studio.client()
    positions = _positions(setup)
    (rater,) = make_raters(label_studio, 1)
    sched = InProcessScheduler(setup)
    try:
        # More than RECONCILE_DELETE_FLOOR: a pass may always drop that many.
        anns = [rank_next(rater, setup, positions)[1]["id"] for _ in range(4)]
        assert sched.service.wait_idle()
        assert _logged(sched.store) == anns
    finally:
        sched.stop()

    # A copy of the Rank project with the same title (a colleague's test, an export/import).
    title = project_title(RANK, setup.prefix)
    copy = client.projects.create(title=title, label_config=label_config(RANK))
    try:
        # A scheduler with a fresh log cannot know which one is meant: it refuses, naming both.
        fresh, fresh_store = _service(setup, f"sqlite:///{tmp_path / 'fresh.db'}", setup.prefix)
        with pytest.raises(LookupError, match=r"2 projects titled .*Rank.* \(ids \["):
            fresh.start(background=False)
        fresh_store.close()

        # The scheduler whose log is pinned keeps to its projects: nothing is taken for deleted.
        sched = InProcessScheduler(setup)
        try:
            assert sched.service.ls.projects == setup.projects
            assert _logged(sched.store) == anns
            assert sched.service.service_stats()["counts"]["deleted"] == 0
        finally:
            sched.stop()
    finally:
        client.projects.delete(copy.id)

    # Another prefix against the same log: refused with a clear error, nothing touched.
    other = provision_setup(label_studio, tmp_path)
    svc, store = _service(setup, setup.db_url, other.prefix)
    with pytest.raises(ValueError, match="SCHEDULER_REBIND_PROJECTS=1") as err:
        svc.start(background=False)
    assert f"Rank={setup.projects['Rank']}" in str(err.value)
    assert f"Rank={other.projects['Rank']}" in str(err.value)
    assert _logged(store) == anns
    store.close()

    # Rebinding on purpose is allowed, but the reconciliation that would then drop every
    # logged annotation (none is in those projects) is refused and reported, not applied.
    svc, store = _service(setup, setup.db_url, other.prefix, rebind_projects=True)
    svc.start(background=False)
    try:
        assert _logged(store) == anns
        refused = svc.service_stats()["reconcile_refused"]
        assert refused["would_delete"] == 4 and refused["logged"] == 4
        assert refused["projects"] == other.projects
    finally:
        svc.stop()
        store.close()

    # A deletion a reconciliation made by mistake in the past is undone as soon as Label
    # Studio shows the annotation again.
    with SubmissionStore(setup.db_url) as store:
        store.delete_annotation(anns[0])
    svc, store = _service(setup, setup.db_url, setup.prefix, rebind_projects=True)
    svc.start(background=False)
    try:
        assert _logged(store) == anns  # back, in its first place
        assert svc.engine.progress()["batches"] == 4
    finally:
        svc.stop()
        store.close()


# ----------------------------------------------------------------------------- finding 2
def test_a_ranking_the_clinician_completes_after_its_rejection_is_counted(label_studio, tmp_path):
    setup = provision_setup(label_studio, tmp_path, SCHEDULER_MIN_OPEN_TASKS=2)
    positions = _positions(setup)
    rank_pid = setup.projects["Rank"]
    (rater,) = make_raters(label_studio, 1)
    sched = InProcessScheduler(setup)
    service, store = sched.service, sched.store
    try:
        task = rater.next_task(rank_pid)
        order = true_order(task, positions)
        ann = rater.submit(task["id"], rank_pid, ranker_result(order[:-1]))  # one left out
        assert service.wait_idle()
        (rej,) = store.rejections()
        assert rej.annotation_id == ann["id"] and "missing" in rej.reason
        assert _logged(store) == []

        rater.update(ann["id"], ranker_result(order))  # the clinician completes the ranking
        assert service.wait_idle()
        assert _logged(store) == [ann["id"]]
        assert list(store.latest_version(ann["id"]).ordered) == order
        assert service.engine.progress()["batches"] == 1
        # Listing the same annotation again changes nothing; the refusal stays on record.
        events = store.event_count()
        service.reconcile()
        assert store.event_count() == events and len(store.rejections()) == 1
    finally:
        sched.stop()


# ----------------------------------------------------------------------------- finding 3
def test_a_task_retired_while_a_rater_holds_it_keeps_the_answer(label_studio, tmp_path):
    # Every open task is stale after 1 ms: each reconciliation pass retires them all.
    setup = provision_setup(
        label_studio, tmp_path, SCHEDULER_MIN_OPEN_TASKS=2, SCHEDULER_STALE_AFTER_S=0.001
    )
    client = label_studio.client()
    positions = _positions(setup)
    rank_pid = setup.projects["Rank"]
    holder, other = make_raters(label_studio, 2)
    sched = InProcessScheduler(setup)
    service, store = sched.service, sched.store
    try:
        held = holder.next_task(rank_pid)  # on the clinician's screen now
        service.request_reconcile(full=False)
        assert service.wait_idle()
        assert store.get_task(held["id"]).status == "retired"
        # Out of the labelling stream for everyone else, but still in Label Studio.
        assert client.tasks.get(held["id"]).is_labeled
        nxt = other.next_task(rank_pid)
        assert nxt is not None and nxt["id"] != held["id"]

        ann = holder.submit(held["id"], rank_pid, ranker_result(true_order(held, positions)))
        assert service.wait_idle()
        assert _logged(store) == [ann["id"]]
        assert store.rejections() == []
        assert service.engine.progress()["batches"] == 1
        (kept,) = client.tasks.get(held["id"]).annotations
        assert (kept["id"] if isinstance(kept, dict) else kept.id) == ann["id"]
    finally:
        sched.stop()


# ----------------------------------------------------------------------------- finding 4
def _consensus_predictions(client, project_id) -> dict[str, list[str]]:
    """image id -> the classes of its ``ranking-consensus`` predictions in Label Studio."""
    out: dict[str, list[str]] = {}
    for task in client.tasks.list(project=project_id, fields="all", page_size=500):
        d = task if isinstance(task, dict) else task.dict()
        out[d["data"]["image_id"]] = [
            p["result"][0]["value"]["choices"][0]
            for p in (p if isinstance(p, dict) else p.dict() for p in d.get("predictions") or [])
            if p.get("model_version") == MODEL_VERSION
        ]
    return out


def _consensus_metas(client, project_id) -> dict[str, dict]:
    """image id -> the ``meta`` of its ``ranking-consensus`` prediction's result."""
    out: dict[str, dict] = {}
    for task in client.tasks.list(project=project_id, fields="all", page_size=500):
        d = task if isinstance(task, dict) else task.dict()
        for p in d.get("predictions") or []:
            p = p if isinstance(p, dict) else p.dict()
            if p.get("model_version") == MODEL_VERSION:
                out[d["data"]["image_id"]] = p["result"][0]["meta"]
    return out


def test_the_consensus_is_republished_when_the_classes_change(label_studio, tmp_path):
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
    (rater,) = make_raters(label_studio, 1)
    sched = InProcessScheduler(setup)
    service = sched.service
    try:
        for _ in range(20):
            if service.engine.done:
                break
            rank_next(rater, setup, positions)
            assert service.wait_idle()
        answers = []
        for _ in range(10):
            task = rater.next_task(setup.projects["Boundary"])
            if task is None:
                break
            cls = truth[task["data"]["image_id"]]
            answers.append(
                rater.submit(task["id"], setup.projects["Boundary"], choices_result(cls))
            )
            assert service.wait_idle()
        assert service.published["version"] == 1
        first = {im["image_id"]: im["class"] for im in service.consensus()["images"]}
        ls = _consensus_predictions(client, setup.projects["Classify"])
        assert ls == {image_id: [c] for image_id, c in first.items()}
        # Each prediction says where its class came from, as consensus.json does.
        where = {im["image_id"]: im for im in service.consensus()["images"]}
        metas = _consensus_metas(client, setup.projects["Classify"])
        assert set(metas) == set(first)
        for image_id, meta in metas.items():
            assert meta["provenance"]["source"] == where[image_id]["source"]
            assert meta["provenance"]["ranked_by"] == where[image_id]["ranked_by"]
            assert meta["text"][0].startswith("consensus: ")

        # The save after the import fails once (a crash between the two): the import must not
        # be repeated as duplicates when the publisher tries again.
        real_set_state = service.store.set_state
        failed = []

        def crash_once(key, value):
            if key == "published" and not failed:
                failed.append(value)
                raise RuntimeError("killed between the import and the save")
            real_set_state(key, value)

        service.store.set_state = crash_once
        # Late second thoughts: every boundary answer becomes too_apical. The cuts move.
        for ann in answers:
            rater.update(ann["id"], choices_result("too_apical"))
            assert service.wait_idle()
        assert failed, "the classes did not change: the edits should have moved the cuts"
        service.request_reconcile()
        assert service.wait_idle()
        now = {im["image_id"]: im["class"] for im in service.consensus()["images"]}
        assert now != first
        # (Each edit that moved a class published anew: at least one version after the first.)
        assert service.published["version"] >= 2
        assert service.store.get_state("published") == service.published
        # One prediction per Classify task, holding the class of the consensus now.
        ls = _consensus_predictions(client, setup.projects["Classify"])
        assert ls == {image_id: [c] for image_id, c in now.items()}

        # A republish reads only the tasks whose class changed since the last complete sync.
        held = service.store.get_state("published_classes")
        assert held == now
        pool = list(service.pool.values())
        image = pool[0].image_id
        flipped = {i: (c, 0.5) for i, c in now.items()}
        flipped[image] = ("lv" if now[image] != "lv" else "too_basal", 0.5)
        full_reads = service.ls.call_stats()["list_classify"]["calls"]
        changes = service.ls.sync_predictions(flipped, pool, known=held)
        assert changes == {"kept": len(pool) - 1, "deleted": 1, "created": 1}
        assert service.ls.call_stats()["list_classify"]["calls"] == full_reads
        ls = _consensus_predictions(client, setup.projects["Classify"])
        assert ls == {image_id: [c] for image_id, (c, _) in flipped.items()}
    finally:
        sched.stop()
