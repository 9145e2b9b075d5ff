"""The strategies ``single`` and ``hybrid`` through a real Label Studio.

Label Studio Community cannot give a task to a person, so the scheduler delivers its choice by
what it keeps open: single questions are tasks in the Boundary project (``meta.single``), batches
Rank tasks. These tests drive real accounts through the labelling stream and time how soon the
next question is waiting after an answer.
"""

from __future__ import annotations

import json
import time

from ls_config.webclient import choices_result
from ranking_scheduler.service.pool import SINGLE_QUESTION
from tests.ranking_scheduler.test_service_harness import (
    InProcessScheduler,
    make_raters,
    provision_setup,
)


def _open_unlabelled(client, project_id) -> int:
    return sum(1 for t in client.tasks.list(project=project_id) if not t.is_labeled)


def test_single_serves_questions_not_batches_and_each_answer_teaches(label_studio, tmp_path):
    setup = provision_setup(
        label_studio,
        tmp_path,
        n_scans=4,
        n_slices=6,
        SCHEDULER_STRATEGY="single",
        SCHEDULER_MIN_OPEN_TASKS=2,
        SCHEDULER_BOUNDARY_BUDGET=0,
    )
    client = label_studio.client()
    truth = {r["image_id"]: r["true_class"] for r in setup.rows}
    sched = InProcessScheduler(setup)
    service = sched.service
    try:
        assert _open_unlabelled(client, setup.projects["Rank"]) == 0  # single: no batch, ever
        (rater,) = make_raters(label_studio, 1)
        waits, answered = [], []
        for _ in range(6):
            t0 = time.monotonic()
            task = None
            while task is None and time.monotonic() - t0 < 15:
                task = rater.next_task(setup.projects["Boundary"])
                if task is None:
                    time.sleep(0.05)
            assert task is not None, "no single question was waiting"
            waits.append(time.monotonic() - t0)
            assert task["data"]["boundary"] == SINGLE_QUESTION
            image = task["data"]["image_id"]
            rater.submit(task["id"], setup.projects["Boundary"], choices_result(truth[image]))
            assert service.wait_idle()
            answered.append(image)
        with service.lock:
            progress = service.engine.progress()
            prov = service.engine.provenance()
        assert progress["batches"] == 0 and progress["single_labels"] == 6
        assert all(prov[i]["source"] == "seen" and prov[i]["labelled_by"] == 1 for i in answered)
        # One open question per slice at a time.
        open_images = [
            t.data["image_id"]
            for t in client.tasks.list(project=setup.projects["Boundary"])
            if not t.is_labeled
        ]
        assert len(open_images) == len(set(open_images)) >= 1
        assert _open_unlabelled(client, setup.projects["Rank"]) == 0
        # Rebuilt from the log, the engine holds the same answers (the store passes the rater).
        service.rebuild()
        with service.lock:
            assert service.engine.progress()["single_labels"] == 6
        print(f"single question waiting after an answer: max {max(waits[1:]):.2f} s")
        stats = service.stats()
        assert stats["provenance"]["labelled_only"] == len(set(answered))
        assert stats["tasks"]["open_single"] >= 1
    finally:
        sched.stop()


def test_hybrid_keeps_both_kinds_open_and_publishes_provenance(label_studio, tmp_path):
    setup = provision_setup(
        label_studio,
        tmp_path,
        n_scans=10,
        n_slices=6,
        SCHEDULER_STRATEGY="hybrid",
        SCHEDULER_MIN_OPEN_TASKS=12,
    )
    client = label_studio.client()
    sched = InProcessScheduler(setup)
    service = sched.service
    try:
        deadline = time.monotonic() + 60
        while True:  # the creator threads import the Rank tasks in the background
            assert service.wait_idle()
            rank_open = _open_unlabelled(client, setup.projects["Rank"])
            single_open = sum(
                1
                for t in client.tasks.list(project=setup.projects["Boundary"])
                if t.data.get("boundary") == SINGLE_QUESTION and not t.is_labeled
            )
            if rank_open + single_open >= 12 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # The engine values both kinds for the pooled raters (prior times 11.4 s and 5.4 s).
        assert rank_open + single_open >= 12, (service.tasks.open_counts(), service.stats())
        assert rank_open > 0 and single_open > 0
        consensus = service.publisher.consensus()
        first = consensus["images"][0]
        assert {"source", "ranked_by", "labelled_by", "labels"} <= set(first)
        assert json.dumps(consensus)  # serialisable as written to consensus.json
    finally:
        sched.stop()
