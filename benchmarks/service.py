"""``slicerank bench service``: simulated clinicians rank through a real Label Studio while the
scheduler keeps up; measures its own time per submission, readiness of the next task, and the
audit of log against Label Studio."""

from __future__ import annotations

import argparse


def _write_bench_media(media_root, n_images: int, seed: int = 0) -> list[dict]:
    """Tiny PNG slices + manifest rows for the benchmark (the images are never looked at)."""
    import random

    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    (media_root / "slices").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        scan, k = divmod(i, 12)
        image_id = f"b{rng.getrandbits(48):012x}"
        path = f"slices/{image_id}.png"
        Image.fromarray(np.full((32, 32), (k * 20) % 255, np.uint8)).save(media_root / path)
        rows.append(
            {
                "image_id": image_id,
                "scan_id": f"s{scan:05d}",
                "slice_index": k,
                "n_slices": 12,
                "path": path,
                "position": k / 11,
            }
        )
    return rows


def run_bench(
    *,
    raters: int = 10,
    batches: int = 1000,
    images: int = 3323,
    strategy: str = "bayes",
    think_s: float = 3.0,
    out: str = "runs/bench-service",
    progress: bool = True,
    ls_db: str = "sqlite",
) -> dict:
    """Start a real Label Studio and the scheduler, let ``raters`` simulated clinicians (real
    accounts, the UI's REST calls) submit ``batches`` rankings concurrently, and measure.

    Returns the scheduler's own processing time per submission (p50/p95/max, ms), the share
    of submissions after which that rater's next Rank task was already waiting, throughput,
    and the audit: log vs Label Studio annotations (lost, double-counted, order mismatches).
    """
    import random
    import secrets
    import shutil
    import threading
    import time
    import uuid
    from pathlib import Path

    from tqdm import tqdm

    from ls_config.provision import provision
    from ls_config.server import LabelStudioServer, free_port
    from ls_config.webclient import LabelStudioWebUser, ranker_result

    if raters < 1 or batches < 1:
        raise ValueError(f"need at least one rater and one batch, got {raters} and {batches}")
    work = Path(out).resolve()
    shutil.rmtree(work, ignore_errors=True)
    media = work / "files" / "media"
    rows = _write_bench_media(media, images)
    positions = {r["image_id"]: float(r["position"]) for r in rows}
    port = free_port()
    secret = secrets.token_urlsafe(18)
    dashboard_token = secrets.token_urlsafe(18)  # the reads; the secret only posts webhooks
    result: dict = {
        "raters": raters,
        "batches": batches,
        "images": images,
        "strategy": strategy,
        "think_s": think_s,
    }
    from benchmarks.harness import label_studio_db_env

    result["ls_db"] = ls_db
    with (
        label_studio_db_env(ls_db) as db_env,
        LabelStudioServer(
            media, data_dir=work / "ls-data", open_signup=True, extra_env=db_env
        ) as ls,
    ):
        client = ls.client()
        t0 = time.perf_counter()
        report = provision(
            client,
            media_root=media,
            manifest_rows=rows,
            scheduler_url=f"http://127.0.0.1:{port}",
            secret=secret,
        )
        result["provision_s"] = time.perf_counter() - t0
        import os
        import sys

        import httpx

        from slicerank_base.procs import ChildProcess

        db_url = f"sqlite:///{work / 'scheduler.db'}"
        env = {
            **os.environ,
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": ls.api_key,
            "SCHEDULER_WEBHOOK_SECRET": secret,
            "SCHEDULER_DASHBOARD_TOKEN": dashboard_token,
            "SCHEDULER_DB_URL": db_url,
            "SCHEDULER_OUT_DIR": str(work / "out"),
            "SCHEDULER_STRATEGY": strategy,
        }
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {dashboard_token}"},
            timeout=60,
        )

        def service_stats() -> dict:
            return api.get("/api/stats").json()["service"]

        def ready() -> bool:  # listening, and the first reconciliation is done
            try:
                return api.get("/health").status_code == 200 and service_stats()["queue"] == 0
            except httpx.HTTPError:
                return False

        # Its own process, as deployed: the simulated raters must not share its interpreter.
        # (A child process dies with the bench, so an error here leaves no scheduler behind.)
        scheduler = ChildProcess(
            "scheduler",
            [sys.executable, "-m", "slicerank.cli", "scheduler", "--port", str(port)],
            log_path=work / "scheduler.log",
            env=env,
            health=ready,
        )
        t0 = time.perf_counter()
        scheduler.start().wait_healthy(timeout=300)
        result["scheduler_start_s"] = time.perf_counter() - t0
        users = [
            LabelStudioWebUser(ls.url, f"r{i}-{uuid.uuid4().hex[:6]}@bench.test", "pw-bench-12345")
            for i in range(raters)
        ]
        for user in users:
            user.signup()
        rank_pid = report.projects["Rank"]
        lock = threading.Lock()
        state = {
            "left": batches,
            "ready": 0,
            "waited": 0,
            "wait_s": 0.0,
            "errors": [],
            "unanswered_when_missed": [],
            "missed_at": [],
        }
        bar = tqdm(total=batches, desc="submissions", disable=not progress)

        def rater_loop(user: LabelStudioWebUser, seed: int) -> None:
            rng = random.Random(seed)
            task = None
            while True:
                with lock:
                    if state["left"] <= 0:
                        return
                    state["left"] -= 1
                try:
                    t_wait = time.perf_counter()
                    while task is None:
                        task = user.next_task(rank_pid)
                        if task is None:
                            time.sleep(0.05)
                    waited = time.perf_counter() - t_wait
                    if think_s > 0:
                        time.sleep(rng.uniform(0.5, 1.5) * think_s)
                    ids = [item["id"] for item in task["data"]["images"]]
                    # A slightly noisy clinician: true position plus a small error.
                    order = sorted(ids, key=lambda i: positions[i] + rng.gauss(0, 0.05))
                    user.submit(task["id"], rank_pid, ranker_result(order))
                    task = user.next_task(rank_pid)  # what the UI loads right after Submit
                    if task is None:
                        # Was the scheduler behind, or did Label Studio's /next refuse a task
                        # that was there? Count the unanswered tasks right now.
                        project = client.projects.get(rank_pid)
                        unanswered = project.task_number - project.num_tasks_with_annotations
                        with lock:
                            state["unanswered_when_missed"].append(unanswered)
                            state["missed_at"].append(round(time.perf_counter() - t0, 2))
                    with lock:
                        state["ready"] += task is not None
                        state["wait_s"] += waited
                        state["waited"] += waited > 0.5
                    bar.update()
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        state["errors"].append(repr(exc)[:300])
                    task = None

        threads = [
            threading.Thread(target=rater_loop, args=(u, i), daemon=True)
            for i, u in enumerate(users)
        ]
        t0 = time.perf_counter()
        result["raters_started_at"] = time.time()  # missed_at_s counts from here
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        bar.close()
        stats = service_stats()
        deadline = time.monotonic() + 300
        while stats["queue"] and time.monotonic() < deadline:
            time.sleep(0.5)
            stats = service_stats()
        engine_batches = api.get("/api/stats").json()["headline"]["batches_done"]
        api.close()
        # Audit after a clean stop (SIGTERM): the log must equal Label Studio's annotations.
        scheduler.stop(timeout=60)
        ls_annotations = {}
        for task in client.tasks.list(project=rank_pid, fields="all", page_size=500):
            for ann in task.annotations or []:
                ann = ann if isinstance(ann, dict) else ann.dict()
                if not ann.get("was_cancelled"):
                    ls_annotations[ann["id"]] = ann["result"][0]["value"]["ranker"]["order"]
        from ranking_scheduler.service.store import SubmissionStore

        with SubmissionStore(db_url) as store:
            subs = {s.annotation_id: list(s.ordered) for s in store.effective_submissions("rank")}
            log_events = store.event_count()
        done_ok = batches - len(state["errors"])
        result.update(
            {
                "submitted": done_ok,
                "errors": state["errors"][:5],
                "wall_s": wall,
                "submissions_per_s": done_ok / wall if wall else None,
                "own_ms_p50": stats["own_ms_p50"],
                "own_ms_p95": stats["own_ms_p95"],
                "own_ms_max": stats["own_ms_max"],
                "timed_submissions": stats["submissions_timed"],
                "next_task_ready_share": state["ready"] / done_ok if done_ok else None,
                "mean_wait_before_task_s": state["wait_s"] / done_ok if done_ok else None,
                "next_task_missed": len(state["unanswered_when_missed"]),
                "missed_with_unanswered_tasks_waiting": sum(
                    1 for n in state["unanswered_when_missed"] if n > raters
                ),
                "label_studio_annotations": len(ls_annotations),
                "log_submissions": len(subs),
                "lost": len(set(ls_annotations) - set(subs)),
                "unknown_in_log": len(set(subs) - set(ls_annotations)),
                "order_mismatches": sum(
                    1 for a, o in subs.items() if a in ls_annotations and ls_annotations[a] != o
                ),
                "log_events": log_events,
                "applied_by_watch_or_reconcile": stats["submissions_timed"] < done_ok,
                "missed_at_s": state["missed_at"],
                "worker": stats.get("worker"),
                "wanted_open_rank_tasks_at_end": stats.get("wanted_open_rank_tasks"),
                "label_studio_calls": stats.get("label_studio_calls"),
                "import_ms": (stats.get("label_studio_calls") or {}).get("create_rank_tasks"),
                "counts": stats["counts"],
            }
        )
        result["engine_batches"] = engine_batches
        # An event beyond one per annotation, or an engine count above the log, is a double count.
        result["double_counted"] = (
            result["log_events"]
            - result["log_submissions"]
            + max(0, engine_batches - result["log_submissions"])
        )
    return result


def main(args: argparse.Namespace) -> int:
    """Handler of ``slicerank bench service``."""
    import json
    import logging

    from slicerank_base.jsonout import write_json

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = run_bench(
        raters=args.raters,
        batches=args.batches,
        images=args.images,
        strategy=args.strategy,
        think_s=args.think_s,
        out=args.out,
        ls_db=args.ls_db,
    )
    hidden = ("counts", "label_studio_calls", "missed_at_s")
    print(json.dumps({k: v for k, v in result.items() if k not in hidden}, indent=2))
    if args.json:
        write_json(args.json, result)
    ok = result["lost"] == 0 and result["double_counted"] == 0 and not result["errors"]
    return 0 if ok else 1
