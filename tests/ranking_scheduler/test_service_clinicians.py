"""No wasted views: three clinicians working at once against a real Label Studio and the
scheduler. Label Studio Community cannot assign tasks, so the scheduler relies on its task
lock in the labelling stream (``/api/projects/{id}/next`` locks the task it hands out to that
user, and the Rank project takes one annotation per task) and keeps a slice ranked in the
last minutes out of the tasks it creates (``SCHEDULER_RECENT_VIEW_S``).

Label Studio runs on PostgreSQL here, as the compose deployment does: its lock takes the task
row with ``SELECT ... FOR UPDATE SKIP LOCKED``. On SQLite (the embedded demo) that clause is
a no-op, and three requests in the same instant were all handed the same task (seen in this
test); docs/guide/label-studio.md says so.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from ls_config.webclient import ranker_result, typed_result
from ranking_scheduler.service.typed_order import MARKS
from tests.ls_server import LabelStudioHandle
from tests.ranking_scheduler.test_service_harness import (
    InProcessScheduler,
    make_raters,
    provision_setup,
    true_order,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 3
"""Batches each clinician ranks."""


@pytest.fixture(scope="module")
def label_studio_pg(tmp_path_factory):
    """A Label Studio of its own on a fresh PostgreSQL database (dropped afterwards)."""
    from benchmarks.harness import label_studio_db_env
    from ls_config.server import LabelStudioServer

    base = tmp_path_factory.mktemp("label-studio-pg")
    media = base / "files" / "media"
    media.mkdir(parents=True)
    with label_studio_db_env("postgresql") as env:
        server = LabelStudioServer(
            media, data_dir=base / "data", open_signup=True, extra_env=env,
            log_path=base / "label-studio.log",
        )  # fmt: skip
        server.start()
        try:
            yield LabelStudioHandle(
                server.url, server.api_key, server.username, server.password,
                server.document_root, server.media_root, server.log_path,
            )  # fmt: skip
        finally:
            server.stop()


def test_three_clinicians_at_once_never_share_a_batch_or_see_a_slice_again(
    label_studio_pg, tmp_path
):
    label_studio = label_studio_pg
    # 128 slices: the open tasks and the slices ranked in the test stay well below the pool, so
    # the scheduler never has to reuse a slice for want of others.
    setup = provision_setup(
        label_studio, tmp_path, n_scans=16, n_slices=8,
        SCHEDULER_MIN_OPEN_TASKS=4, SCHEDULER_OPEN_PER_RATER=1, SCHEDULER_RECENT_VIEW_S=900,
    )  # fmt: skip
    sched = InProcessScheduler(setup)
    positions = {r["image_id"]: float(r["position"]) for r in setup.rows}
    raters = make_raters(label_studio, 3)
    served: list[tuple[str, int, tuple[str, ...]]] = []  # (rater, task id, images) as opened
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(len(raters))

    def clinician(k: int, rater) -> None:
        rng = random.Random(k)
        try:
            start.wait()
            for n in range(ROUNDS):
                deadline = time.monotonic() + 60
                while (task := rater.next_task(setup.projects["Rank"])) is None:
                    assert time.monotonic() < deadline, f"clinician {k} found no task"
                    time.sleep(0.2)
                ids = tuple(item["id"] for item in task["data"]["images"])
                with lock:
                    served.append((rater.email, task["id"], ids))
                time.sleep(rng.uniform(0.2, 0.8))  # looking at the slices meanwhile
                order = true_order(task, positions)
                # Half the answers typed as letters, half dragged: both count.
                result = (
                    typed_result("".join(MARKS[ids.index(i)] for i in order[:7]))
                    + ranker_result(list(ids))
                    if n % 2
                    else ranker_result(order)
                )
                rater.submit(task["id"], setup.projects["Rank"], result, lead_time=1.0)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test thread
            errors.append(exc)

    threads = [threading.Thread(target=clinician, args=(k, r)) for k, r in enumerate(raters)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        assert sched.service.wait_idle()
        assert len(served) == 3 * ROUNDS
        # No batch was open for two clinicians at once: every task went to one of them.
        by_task: dict[int, set[str]] = {}
        for email, task_id, _ in served:
            by_task.setdefault(task_id, set()).add(email)
        shared = {t: r for t, r in by_task.items() if len(r) > 1}
        assert not shared, f"tasks served to two clinicians: {shared}"
        # Nobody was shown a slice they had ranked before.
        seen: dict[str, set[str]] = {}
        for email, task_id, ids in served:
            again = seen.setdefault(email, set()) & set(ids)
            assert not again, f"{email} was shown {sorted(again)} again in task {task_id}"
            seen[email] |= set(ids)
        # The scheduler logged each answer once, in the true order, typed or dragged.
        subs = list(sched.store.effective_submissions("rank"))
        assert len(subs) == 3 * ROUNDS
        assert len({s.task_id for s in subs}) == len(subs)
        for s in subs:
            assert list(s.ordered) == sorted(s.ordered, key=positions.__getitem__)
    finally:
        sched.stop()
