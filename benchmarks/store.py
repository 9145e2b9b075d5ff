"""``ranking_scheduler.service.store`` benchmark: appends, re-deliveries, reads and replays of
a submission log on SQLite or PostgreSQL (docs/bench/store.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ranking_scheduler.service.store import SubmissionStore


class _NullEngine:
    """Accepts every submission and does nothing: isolates the store's own replay cost."""

    def submit(self, rater, ordered, *, require_open=True):  # noqa: D102 - protocol method
        pass

    def submit_boundary(self, image_id, cls):  # noqa: D102 - protocol method
        pass


def bench(
    url: str,
    n_batches: int = 2000,
    *,
    n_images: int = 3323,
    batch_size: int = 8,
    seed: int = 0,
    engine_factory: Callable[[], Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Time appending ``n_batches`` ranked batches to a fresh store at ``url`` and rebuilding.

    The database at ``url`` should be empty (a throw-away file or database). Returns a
    JSON-serialisable dict: ``backend``, ``n_batches``, ``append_s``, ``appends_per_s``,
    ``duplicate_s`` (re-delivering every batch, all no-ops), ``read_s`` (reading the effective
    submissions), ``rebuild_null_s`` (replay into an engine that does nothing: the store's own
    cost) and, when an engine is available, ``rebuild_s`` (replay into ``engine_factory()``, by
    default ``RankingEngine(image_ids, strategy="bayes")`` if that module exists).
    """
    import random

    from tqdm import tqdm

    if n_batches < 1:
        raise ValueError(f"n_batches must be at least 1, got {n_batches}")
    rng = random.Random(seed)
    image_ids = [f"img{i:06d}" for i in range(n_images)]
    batches = [rng.sample(image_ids, batch_size) for _ in range(n_batches)]
    raters = [f"r{i}" for i in range(3)]
    store = SubmissionStore(url)
    try:
        if store.event_count():
            raise ValueError(f"bench needs an empty database, {url!r} already holds a log")
        t0 = time.perf_counter()
        for i, ordered in enumerate(tqdm(batches, desc="append", disable=not progress)):
            store.append_ranking(1000 + i, ordered, rater=raters[i % 3], task_id=i)
        append_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, ordered in enumerate(batches):
            store.append_ranking(1000 + i, ordered, rater=raters[i % 3], task_id=i)
        duplicate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_read = sum(1 for _ in store.effective_submissions())
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.rebuild(_NullEngine)
        rebuild_null_s = time.perf_counter() - t0
        result: dict[str, Any] = {
            "backend": store.engine.dialect.name,
            "n_batches": n_batches,
            "n_images": n_images,
            "append_s": append_s,
            "appends_per_s": n_batches / append_s,
            "duplicate_s": duplicate_s,
            "read_s": read_s,
            "rebuild_null_s": rebuild_null_s,
        }
        assert n_read == n_batches, (n_read, n_batches)
        if engine_factory is None:
            from ranking_scheduler.engine import RankingEngine

            result["engine"] = "RankingEngine(strategy='bayes')"

            def engine_factory():
                return RankingEngine(image_ids, strategy="bayes", seed=seed)

        if engine_factory is not None:
            t0 = time.perf_counter()
            store.rebuild(engine_factory)
            result["rebuild_s"] = time.perf_counter() - t0
        return result
    finally:
        store.close()
