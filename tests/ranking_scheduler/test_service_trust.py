"""Trust the log, not the messenger (issue 21), against a real Label Studio.

A webhook is a notification: the scheduler reads what it names back from Label Studio with its
own token, so forged webhooks (the secret header is readable by every Label Studio user) count
nothing and delete nothing. Deletes are never resurrected by a listing read before them; tasks
deleted in Label Studio (which sends only ``TASKS_DELETED``) stop counting; a bulk delete
rebuilds the engine once; a lead accepts a refused reconciliation pass on purpose.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import httpx
import pytest

from ls_config.provision import SECRET_HEADER
from ls_config.webclient import ranker_result
from tests.ranking_scheduler.test_service_harness import (
    InProcessScheduler,
    make_raters,
    provision_setup,
    rank_next,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Forged webhooks this test sends (the bench sends 500: ``slicerank bench faults --case forged``).
N_FORGED = 120


def _positions(setup) -> dict[str, float]:
    return {r["image_id"]: float(r["position"]) for r in setup.rows}


def _ls_answers(client, project_id) -> dict[int, tuple[str, list[str]]]:
    """Label Studio's own record: annotation id -> (rater, order)."""
    out = {}
    for task in client.tasks.list(project=project_id, fields="all", page_size=500):
        for ann in task.annotations or []:
            ann = ann if isinstance(ann, dict) else ann.dict()
            if not ann.get("was_cancelled"):
                rater = f"ls-user-{ann['completed_by']}"
                out[ann["id"]] = (rater, ann["result"][0]["value"]["ranker"]["order"])
    return out


def _logged(store) -> dict[int, tuple[str, list[str]]]:
    return {
        s.annotation_id: (s.rater, list(s.ordered)) for s in store.effective_submissions("rank")
    }


def test_forged_webhooks_count_nothing_and_delete_nothing(label_studio, tmp_path):
    setup = provision_setup(label_studio, tmp_path, SCHEDULER_MIN_OPEN_TASKS=3)
    client = label_studio.client()
    positions = _positions(setup)
    rank_pid = setup.projects["Rank"]
    rater, clinician = make_raters(label_studio, 2)
    sched = InProcessScheduler(setup)
    service, store = sched.service, sched.store
    try:
        real = [rank_next(rater, setup, positions) for _ in range(3)]
        assert service.wait_idle()
        truth = _ls_answers(client, rank_pid)
        assert _logged(store) == truth and len(truth) == 3
        open_tasks = [t.task_id for t in store.tasks(status="open", kind="rank")]
        answered = [task["id"] for task, _ in real]

        # A clinician who read the secret from GET /api/webhooks/ forges, with the right header:
        rng = random.Random(21)
        hdr = {SECRET_HEADER: setup.secret}
        top = max(a["id"] for _, a in real)
        forged = []
        for k in range(N_FORGED):
            task_id = rng.choice(open_tasks + answered)
            task = client.tasks.get(str(task_id)) if k < 3 else None
            images = [i["id"] for i in (task.data["images"] if task else [])] or ["x"]
            kind = k % 5
            if kind in (0, 1):  # an invented annotation on a real (open or answered) task
                ann = {
                    "id": top + 1000 + k,
                    "task": task_id,
                    "completed_by": rng.randrange(1, 10_000),
                    "result": ranker_result(images),
                }
                body = {"action": "ANNOTATION_CREATED", "annotation": ann,
                        "task": {"id": task_id, "project": rank_pid}, "project": {"id": rank_pid}}  # fmt: skip
            elif kind == 2:  # a real annotation, credited to someone else with another order
                _, ann = real[k % 3]
                ann = {**ann, "completed_by": rng.randrange(1, 10_000),
                       "result": ranker_result(list(reversed(truth[ann["id"]][1])))}  # fmt: skip
                body = {"action": "ANNOTATION_UPDATED", "annotation": ann,
                        "project": {"id": rank_pid}}  # fmt: skip
            elif kind == 3:  # a delete of a real answer
                body = {"action": "ANNOTATIONS_DELETED", "project": {"id": rank_pid},
                        "annotations": [{"id": real[k % 3][1]["id"]}]}  # fmt: skip
            else:  # a delete of real tasks
                body = {"action": "TASKS_DELETED", "project": {"id": rank_pid},
                        "tasks": [{"id": t} for t in answered + open_tasks[:2]]}  # fmt: skip
            forged.append(body)
            r = httpx.post(f"{setup.url}/webhook", json=body, headers=hdr, timeout=10)
            assert r.status_code == 200
        assert service.wait_idle(120)

        # Counted: exactly Label Studio's answers, with Label Studio's raters and orders.
        assert _logged(store) == truth
        assert service.engine.progress()["batches"] == 3
        assert {t.task_id for t in store.tasks(status="open", kind="rank")} >= set(open_tasks)
        counts = service.service_stats()["counts"]
        assert counts["not_in_label_studio"] == 2 * N_FORGED // 5
        assert counts["deleted"] == 0 and counts["tasks_deleted"] == 0
        assert counts["delete_not_confirmed"] >= 2 * N_FORGED // 5
        assert store.rejections() == []  # forgeries do not fill the rejections table

        # The real thing still works: a clinician's answer and edit count as Label Studio has them.
        _, ann = rank_next(clinician, setup, positions)
        assert service.wait_idle()
        assert _logged(store) == _ls_answers(client, rank_pid)
        assert len(_logged(store)) == 4
    finally:
        sched.stop()


def test_deletes_are_final_and_deleted_tasks_are_noticed(label_studio, tmp_path):
    setup = provision_setup(label_studio, tmp_path, SCHEDULER_MIN_OPEN_TASKS=3)
    client = label_studio.client()
    positions = _positions(setup)
    rank_pid = setup.projects["Rank"]
    raters = make_raters(label_studio, 2)
    sched = InProcessScheduler(setup)
    service, store = sched.service, sched.store
    http = httpx.Client(
        base_url=label_studio.url,
        headers={"Authorization": f"Token {label_studio.api_key}"},
        timeout=60,
    )
    try:
        answers = [rank_next(raters[k % 2], setup, positions) for k in range(10)]
        assert service.wait_idle()
        assert len(_logged(store)) == 10

        # 1) A full listing read before a delete, applied after it, does not bring it back.
        listing = service.reconciler.read_full()
        gone = answers[0][1]["id"]
        client.annotations.delete(gone)  # Label Studio's own ANNOTATIONS_DELETED webhook
        assert service.wait_idle()
        assert gone not in _logged(store)
        service.reconcile(read=listing)
        assert gone not in _logged(store)
        assert service.engine.progress()["batches"] == 9

        # 2) A bulk delete (Data Manager: delete the annotations of two tasks) rebuilds once.
        rebuilds = service.service_stats()["counts"]["rebuilds"]
        bulk = [answers[1], answers[2]]
        r = http.post(
            "/api/dm/actions",
            params={"id": "delete_tasks_annotations", "project": rank_pid},
            json={"selectedItems": {"all": False, "included": [t["id"] for t, _ in bulk]}},
        )
        r.raise_for_status()
        assert service.wait_idle()
        assert not {a["id"] for _, a in bulk} & set(_logged(store))
        assert service.service_stats()["counts"]["rebuilds"] == rebuilds + 1
        assert service.engine.progress()["batches"] == 7

        # 3) Tasks deleted in Label Studio (TASKS_DELETED only): their answers stop counting,
        # with no refused pass.
        task, ann = answers[3]
        client.tasks.delete(str(task["id"]))
        assert service.wait_idle()
        assert ann["id"] not in _logged(store)
        assert store.get_task(task["id"]).status == "retired"
        assert service.engine.progress()["batches"] == 6
        service.reconcile()
        assert service.service_stats()["reconcile_refused"] is None
        assert set(_logged(store)) == set(_ls_answers(client, rank_pid))

        # 4) With the webhooks off, a lead deletes four answered tasks: more than one pass may
        # drop, so the pass is refused; the lead lists it, accepts it, the next pass drops them.
        hooks = list(client.webhooks.list(project=rank_pid))
        client.webhooks.update(hooks[0].id, is_active=False, actions=hooks[0].actions)
        removed = answers[4:8]
        for t, _ in removed:
            client.tasks.delete(str(t["id"]))
        service.reconcile()
        refused = service.service_stats()["reconcile_refused"]
        assert refused["would_delete"] == 4
        assert len(_logged(store)) == 6  # nothing dropped yet

        def accept(*extra):
            env = {**os.environ, **setup.env}
            cmd = [sys.executable, "-m", "slicerank.cli", "scheduler", "--accept-reconcile"]
            return subprocess.run(
                cmd + list(extra), env=env, capture_output=True, text=True, timeout=120
            )

        shown = accept()
        assert shown.returncode == 0, shown.stderr
        for _, a in removed:
            assert f"annotation {a['id']} (rank)" in shown.stdout
        assert "Nothing changed" in shown.stdout
        service.reconcile()
        assert len(_logged(store)) == 6  # a listing is not an acceptance
        done = accept("--yes")
        assert done.returncode == 0 and "Accepted: 4 annotation(s)" in done.stdout
        service.reconcile()
        assert set(_logged(store)) == set(_ls_answers(client, rank_pid))
        assert len(_logged(store)) == 2
        assert service.service_stats()["reconcile_refused"] is None
        assert service.engine.progress()["batches"] == 2
        client.webhooks.update(hooks[0].id, is_active=True, actions=hooks[0].actions)
    finally:
        http.close()
        sched.stop()
