"""Demo stage: one model per label source, trained through the RQ queue the worker serves."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from slicerank.demo_config import Layout
from slicerank.demo_progress import progress_bar


def stage_train(
    conn,
    queue_name: str,
    *,
    label_source: str,
    project_id: int,
    consensus_path: str | None = None,
    val_scans: tuple[str, ...] | None = None,
    layout: Layout,
    preset: str,
    device: str,
    epochs: int | None,
    check_alive: Callable[[], None],
    timeout_s: float,
) -> dict[str, Any]:
    """Enqueue one training job on the RQ queue the worker serves and wait for its model.

    ``label_source`` ``classify`` trains on the one-at-a-time labels of the Classify project,
    ``ranking`` on consensus classes (published there, or ``consensus_path``). ``val_scans``:
    the scans of the validation set (every other labelled scan trains), shared by both arms. The job writes the new
    model's predictions back onto the Classify tasks.
    """
    from rq.exceptions import NoSuchJobError

    from ml_backend.jobs import TrainRequest, enqueue_training, job_summary

    request = TrainRequest(
        label_source=label_source,
        project_id=project_id,
        consensus_path=consensus_path,
        val_scans=tuple(val_scans) if val_scans is not None else None,
        preset=preset,
        media_root=str(layout.media),
        model_dir=str(layout.models),
        device=device,
        epochs=epochs,
        write_predictions=True,
    )
    queued = enqueue_training(conn, request, queue_name=queue_name)
    if not queued.created:
        raise RuntimeError(f"training {label_source}: {queued.message}")
    bar = progress_bar(0, f"train {label_source}", unit="epoch")
    deadline = time.monotonic() + timeout_s
    last_postfix = ""
    try:
        while True:
            check_alive()
            try:
                summary = job_summary(conn, queued.job_id)
            except NoSuchJobError:
                raise RuntimeError(
                    f"training job {queued.job_id} vanished from Redis (was the database "
                    "flushed by someone else?); run the demo again"
                ) from None
            meta = summary.get("meta") or {}
            epochs_total = int(meta.get("epochs") or 0) * max(1, len(meta.get("seeds") or [1]))
            if epochs_total and bar.total != epochs_total:
                bar.total = epochs_total
                bar.refresh()
            done = len(meta.get("history") or [])
            if done > bar.n:
                bar.update(done - bar.n)
            # rq's JobStatus is a str Enum: str() of it may read "JobStatus.FINISHED".
            status = str(summary["status"]).rsplit(".", 1)[-1].lower()
            loss = meta.get("val_loss")
            postfix = f"{meta.get('stage', status)}" + (f" val_loss={loss:.3f}" if loss else "")
            if postfix != last_postfix:
                bar.set_postfix_str(postfix)
                last_postfix = postfix
            if status == "finished":
                break
            if status in ("failed", "stopped", "canceled"):
                raise RuntimeError(
                    f"training on {label_source} labels {status}: "
                    f"{summary.get('error') or meta.get('error') or 'see logs/worker.log'}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"training on {label_source} labels took over {timeout_s:.0f} s")
            time.sleep(0.5)
    finally:
        bar.close()
    result = summary.get("result") or {}
    return {
        "job_id": queued.job_id,
        "label_source": label_source,
        "model_version": result.get("model_version") or meta.get("model_version"),
        "predictions_written": result.get("predictions_written"),
        "metrics": result.get("metrics"),
    }
