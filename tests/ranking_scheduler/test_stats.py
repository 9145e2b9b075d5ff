"""Dashboard numbers from an engine and a real store (SQLite file; the store itself is tested on
both backends in test_store.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from ranking_scheduler.service.stats import compute_stats, jsonable, rater_pace
from ranking_scheduler.service.store import SubmissionStore

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


class ScriptedEngine:
    """The engine API of INTERFACES.md with fixed answers, so each figure can be checked."""

    strategy = "bayes"

    def __init__(self, views, scores, *, classes=None, left=10, done=False, cut_state="searching"):
        self._views, self._scores, self._classes = views, scores, classes
        self._cut_state = cut_state
        self._left, self._done = left, done

    def view_counts(self):
        return dict(self._views)

    def scores(self):
        return dict(self._scores)

    def ranking(self):
        return sorted(self._scores, key=lambda i: self._scores[i][0])

    def progress(self):
        return {
            "batches": 30,
            "views": sum(self._views.values()),
            "estimated_batches_left": self._left,
            "done": self._done,
        }

    def expected_misclassified(self):
        return 4.25

    def boundary_status(self):
        return {"basal": {"state": self._cut_state, "queries": 3, "estimate": None}}

    def thresholds(self):
        if self._classes is None:
            raise ValueError("thresholds are not known yet")
        return {"basal": -1.0, "apical": 1.0}

    def classes(self):
        if self._classes is None:
            raise ValueError("thresholds are not known yet")
        return dict(self._classes)

    def rater_noise(self):
        return {"r1": 0.3}


@pytest.fixture
def store(tmp_path):
    s = SubmissionStore(f"sqlite:///{tmp_path / 'log.db'}")
    yield s
    s.close()


def _engine(**kw):
    views = {f"i{k}": v for k, v in enumerate([0, 1, 1, 2, 3, 3, 3, 4, 6, 9])}
    scores = {f"i{k}": (k - 5.0, 0.1 * (k + 1)) for k in range(10)}
    return ScriptedEngine(views, scores, **kw)


def _fill(store):
    # r1 works steadily (60 s, 90 s), takes a 30-minute break, then 120 s: median of 60/90/120.
    times = [
        T0,
        T0 + timedelta(seconds=60),
        T0 + timedelta(seconds=150),
        T0 + timedelta(seconds=1950),
        T0 + timedelta(seconds=2070),
    ]
    for n, t in enumerate(times):
        store.append_ranking(100 + n, ["i1", "i2"], rater="r1", created_at=t)
    store.append_ranking(200, ["i3", "i4"], rater="r2", created_at=T0)
    store.append_boundary(300, "i5", "lv", rater="r2", created_at=T0 + timedelta(seconds=10))
    store.append_ranking(201, ["i3", "i4"], rater="r2", created_at=T0 + timedelta(seconds=30))
    store.delete_annotation(201)  # a deleted batch does not count
    store.record_rejection(
        "ranking has 7 items, expected 8", annotation_id=400, rater="r2", kind="rank"
    )
    store.record_rejection("task 9 was not created by the scheduler", annotation_id=401, task_id=9)
    store.add_task(1, "rank", ["i1", "i2"], created_at=NOW - timedelta(minutes=5))
    store.add_task(2, "rank", ["i3", "i4"], created_at=NOW - timedelta(minutes=1))
    store.add_task(3, "boundary", ["i5"], created_at=NOW - timedelta(minutes=2))
    store.add_task(4, "rank", ["i6", "i7"], created_at=NOW - timedelta(minutes=9))
    store.set_task_status(4, "answered")


def test_figures_match_engine_and_log(store):
    _fill(store)
    s = compute_stats(_engine(), store, target_views=3, now=NOW)
    assert json.loads(json.dumps(s, allow_nan=False)) == s  # strict JSON, no NaN
    h = s["headline"]
    assert h["batches_done"] == 30 and h["batches_left"] == 10
    assert h["progress_pct"] == pytest.approx(75.0) and s["progress"]["percent_basis"] == "batches"
    assert h["images_at_target"] == 6 and h["share_at_target"] == pytest.approx(0.6)
    assert h["expected_misclassified"] == 4.25 and h["done"] is False
    # Views: one bar per count 0..2*target, the last one "≥6" collecting 6 and 9.
    bars = {b["label"]: b["count"] for b in s["views"]["histogram"]}
    assert bars == {"0": 1, "1": 2, "2": 1, "3": 3, "4": 1, "5": 0, "≥6": 2}
    assert s["views"]["max"] == 9 and s["views"]["min"] == 0
    unc = s["uncertainty"]
    assert sum(b["count"] for b in unc["histogram"]) == 10
    assert unc["max_sd"] == pytest.approx(1.0) and unc["median_sd"] == pytest.approx(0.55)
    assert [p[0] for p in unc["by_rank"]] == list(range(10)) and unc["by_rank"][0][1] == -5.0
    assert s["classes"] == {"known": False, "provisional": False, "counts": None}
    assert set(s["unavailable"]) == {"classes", "thresholds", "provenance", "misreads"}
    assert s["boundary"]["status"]["basal"]["queries"] == 3 and s["boundary"]["labels"] == 1
    raters = {r["rater"]: r for r in s["raters"]}
    assert raters["r1"]["batches"] == 5 and raters["r1"]["median_s_per_batch"] == 90.0
    assert raters["r1"]["noise"] == 0.3
    assert raters["r2"]["batches"] == 1 and raters["r2"]["boundary_labels"] == 1
    assert raters["r2"]["median_s_per_batch"] is None  # one batch: no pace yet
    assert raters["r1"]["idle_s"] == pytest.approx(3600 - 2070)
    assert s["rejections"]["total"] == 2
    assert [r["reason"] for r in s["rejections"]["latest"]] == [
        "task 9 was not created by the scheduler",
        "ranking has 7 items, expected 8",
    ]
    t = s["tasks"]
    assert t["open"] == {"rank": 2, "boundary": 1}
    assert t["by_status"] == {"open": 3, "answered": 1, "retired": 0, "skipped": 0}
    assert t["oldest_open_age_s"] == pytest.approx(300.0)
    assert [x["task_id"] for x in t["open_list"]] == [1, 3, 2]


def test_class_counts_once_thresholds_known(store):
    classes = {
        f"i{k}": ("too_basal" if k < 2 else "lv" if k < 8 else "too_apical") for k in range(10)
    }
    s = compute_stats(_engine(classes=classes, left=0, done=True), store, target_views=3, now=NOW)
    # The scripted boundary search is still "searching": counts are there but provisional.
    assert s["classes"] == {
        "known": False,
        "provisional": True,
        "counts": {"too_basal": 2, "lv": 6, "too_apical": 2},
    }
    assert s["headline"]["progress_pct"] == 100.0 and s["headline"]["done"] is True
    settled = compute_stats(
        _engine(classes=classes, done=True, cut_state="settled"), store, target_views=3, now=NOW
    )
    assert settled["classes"]["known"] is True and settled["classes"]["provisional"] is False
    assert s["uncertainty"]["thresholds"] == {"basal": -1.0, "apical": 1.0}
    assert s["unavailable"] == ["misreads", "provenance"]  # the stand-in has neither


def test_degrades_without_engine_methods(store):
    _fill(store)

    class Bare:  # a strategy that only knows view counts and scores
        def view_counts(self):
            return {"a": 3, "b": 1}

        def scores(self):
            return {"a": (0.0, 1.0), "b": (1.0, 2.0)}

    s = compute_stats(Bare(), store, target_views=3, now=NOW)
    assert s["headline"]["expected_misclassified"] is None
    assert s["headline"]["progress_pct"] == pytest.approx(50.0)
    assert s["progress"]["percent_basis"] == "views"
    assert s["headline"]["batches_done"] == 6  # counted from the log
    assert s["uncertainty"]["by_rank"] is None
    assert {"progress", "expected_misclassified", "rater_noise", "ranking"} <= set(s["unavailable"])
    nothing = compute_stats(None, store, target_views=3, now=NOW)
    assert nothing["views"] is None and nothing["headline"]["progress_pct"] is None
    json.dumps(nothing, allow_nan=False)


def test_engine_lock_is_held_only_while_the_engine_is_read(store):
    import threading

    lock = threading.Lock()
    seen = []

    class Watched(ScriptedEngine):
        def view_counts(self):
            seen.append(("engine", lock.locked()))
            return super().view_counts()

    class WatchedStore:
        def __getattr__(self, name):
            seen.append(("store", lock.locked()))
            return getattr(store, name)

    eng = _engine()
    eng.__class__ = Watched
    compute_stats(eng, WatchedStore(), target_views=3, now=NOW, engine_lock=lock)
    assert ("engine", True) in seen and ("store", True) not in seen and ("store", False) in seen
    assert not lock.locked()


def test_rejects_bad_target(store):
    with pytest.raises(ValueError, match="target_views"):
        compute_stats(_engine(), store, target_views=0, now=NOW)


def test_rater_pace_ignores_breaks_and_ties():
    t = [
        T0,
        T0,
        T0 + timedelta(seconds=40),
        T0 + timedelta(hours=2),
        T0 + timedelta(hours=2, seconds=80),
    ]
    assert rater_pace({"r": t}) == {"r": 60.0}
    assert rater_pace({"r": t}, break_s=30) == {"r": None}


def test_jsonable_converts_numpy_and_nan():
    import numpy as np

    out = jsonable(
        {
            "a": np.float64(1.5),
            "b": np.int64(2),
            ("c"): (np.nan, float("inf")),
            "d": np.arange(2),
            "t": T0,
        }
    )
    assert out == {
        "a": 1.5,
        "b": 2,
        "c": [None, None],
        "d": [0, 1],
        "t": "2026-01-05T09:00:00+00:00",
    }


@pytest.mark.parametrize("strategy", ["paper", "bayes"])
def test_stats_from_the_real_engine(store, strategy):
    import random

    from ranking_scheduler.engine.ranking import RankingEngine
    from ranking_scheduler.service.dashboard import render_dashboard

    ids = [f"img{i:03d}" for i in range(96)]
    rng = random.Random(0)
    engine = RankingEngine(ids, strategy=strategy, target_views=3, seed=1)
    for k in range(30):
        rater = f"r{k % 2}"
        batch = engine.next_batch(rater)
        ordered = sorted(batch, key=lambda i: int(i[3:]) + rng.gauss(0, 3))
        engine.submit(rater, ordered)
        store.append_ranking(k + 1, ordered, rater=rater, created_at=T0 + timedelta(seconds=50 * k))
    s = compute_stats(engine, store, target_views=3, now=NOW)
    json.dumps(s, allow_nan=False)
    assert s["strategy"] == strategy and s["n_images"] == 96
    assert s["headline"]["batches_done"] == 30 == s["progress"]["batches_logged"]
    assert sum(b["count"] for b in s["views"]["histogram"]) == 96
    assert s["views"]["total"] == 30 * 8
    assert sum(b["count"] for b in s["uncertainty"]["histogram"]) == 96
    assert s["headline"]["expected_misclassified"] == pytest.approx(engine.expected_misclassified())
    assert s["headline"]["batches_left"] == engine.progress()["estimated_batches_left"]
    assert 0 <= s["headline"]["progress_pct"] <= 100
    assert sum(s["classes"]["counts"].values()) == 96  # from the current cut estimates
    assert set(s["boundary"]["status"]) == set(engine.boundary_status())
    assert {r["rater"]: r["median_s_per_batch"] for r in s["raters"]} == {"r0": 100.0, "r1": 100.0}
    assert s["unavailable"] == []
    assert "data-stat" in render_dashboard(s)


def _sub(kind, rater, lead_time):
    from types import SimpleNamespace

    return SimpleNamespace(kind=kind, rater=rater, lead_time=lead_time)


def test_labelling_time_medians_per_strategy_and_rater_and_cohort_hours():
    from ranking_scheduler.service.stats import STUDY_PARITY, labelling_time

    subs = [
        _sub("rank", "r1", 10.0),
        _sub("rank", "r1", 14.0),
        _sub("rank", "r2", 20.0),
        _sub("rank", "r2", None),  # no lead time recorded: not a measurement
        _sub("rank", "r2", 4000.0),  # the task was left open over a break
        _sub("boundary", "r1", 5.0),
        _sub("boundary", "r2", 7.0),
        _sub("boundary", "r2", float("nan")),
    ]
    t = labelling_time(subs, n_images=3323)
    rank, single = t["by_strategy"]["ranking"], t["by_strategy"]["single_label"]
    assert (rank["n"], rank["median_s"], rank["not_measured"]) == (3, 14.0, 2)
    assert (single["n"], single["median_s"], single["not_measured"]) == (2, 6.0, 1)
    rows = {r["rater"]: r for r in t["by_rater"]}
    assert rows["r1"]["median_s_per_batch"] == 12.0 and rows["r1"]["median_s_per_label"] == 5.0
    assert rows["r2"]["batches_timed"] == 1 and rows["r2"]["labels_timed"] == 1
    cohort = t["cohort"]
    # The study's parity for 3,323 images is 1,575 batches.
    assert cohort["batches"] == 1575 == STUDY_PARITY["batches"]
    assert cohort["batches_basis"] == "study_ratio"
    assert cohort["hours_ranking"] == pytest.approx(1575 * 14.0 / 3600)
    assert cohort["hours_single_label"] == pytest.approx(3323 * 6.0 / 3600)
    assert cohort["ranking_to_single_ratio"] == pytest.approx((1575 * 14.0) / (3323 * 6.0))
    # At the study's own pace both take 5 hours.
    assert t["study"]["s_per_batch"] * 1575 == pytest.approx(5 * 3600)
    assert t["study"]["s_per_single_label"] * 3323 == pytest.approx(5 * 3600)
    # Once the engine is done its real batch count replaces the study's ratio.
    done = labelling_time(subs, n_images=3323, engine_batches=1200)["cohort"]
    assert done["batches"] == 1200 and done["batches_basis"] == "engine"


def test_labelling_time_without_measurements():
    from ranking_scheduler.service.stats import labelling_time

    t = labelling_time([_sub("rank", "r1", None)], n_images=None)
    assert t["by_strategy"]["ranking"]["median_s"] is None
    assert t["cohort"]["hours_ranking"] is None and t["cohort"]["ranking_to_single_ratio"] is None
    with pytest.raises(ValueError, match="n_images"):
        labelling_time([], n_images=-1)


def test_webhook_health_says_when_deliveries_stop():
    from ranking_scheduler.service.stats import webhook_health

    now = NOW
    ago = lambda s: now - timedelta(seconds=s)  # noqa: E731
    assert webhook_health(last_delivery_at=None, now=now)["status"] == "waiting"
    ok = webhook_health(last_delivery_at=ago(5).timestamp(), now=now)
    assert ok["status"] == "ok" and ok["last_delivery_age_s"] == pytest.approx(5)
    # One webhook lost now and then, later ones arrive: "missed", not an outage.
    missed = webhook_health(
        last_delivery_at=ago(5), found_by_reconciliation=2, last_found_at=ago(60), now=now
    )
    assert missed["status"] == "missed"
    # The reconciliation found an answer a moment before its webhook arrived: no alarm yet.
    moment = webhook_health(
        last_delivery_at=ago(30), found_by_reconciliation=1, last_found_at=ago(1), now=now
    )
    assert moment["status"] == "missed"
    stopped = webhook_health(
        last_delivery_at=ago(1800).isoformat(),
        found_by_reconciliation=12,
        last_found_at=ago(20),
        now=now,
    )
    assert stopped["status"] == "stopped" and "30 min" in stopped["message"]
    assert "Webhooks" in stopped["message"]
    never = webhook_health(
        last_delivery_at=None, found_by_reconciliation=3, last_found_at=ago(9), now=now
    )
    assert never["status"] == "stopped"


def test_stats_carry_labelling_time_and_webhooks(store):
    _fill(store)
    s = compute_stats(
        _engine(),
        store,
        target_views=3,
        now=NOW,
        webhooks={"last_delivery_at": (NOW - timedelta(hours=1)).timestamp(),
                  "found_by_reconciliation": 4, "last_found_at": NOW.isoformat()},
    )  # fmt: skip
    assert s["webhooks"]["status"] == "stopped"
    assert s["labelling_time"]["cohort"]["images"] == 10
    assert "webhooks" not in compute_stats(_engine(), store, target_views=3, now=NOW)


def test_stats_from_a_snapshot_while_the_worker_changes_the_engine(store):
    """The dashboard reads a snapshot: with the engine lock given, a worker thread submitting
    and rebuilding meanwhile never breaks a refresh (no dict changes size under it)."""
    import random
    import threading

    from ranking_scheduler.engine.ranking import RankingEngine
    from ranking_scheduler.service.stats import EngineFigures, read_engine

    ids = [f"img{i:03d}" for i in range(200)]
    lock = threading.Lock()
    engine = RankingEngine(ids, strategy="bayes", target_views=3, seed=1)
    stop = threading.Event()
    errors = []

    def worker():
        rng = random.Random(0)
        k = 0
        while not stop.is_set():
            with lock:
                batch = engine.next_batch(f"r{k % 3}")
                if not batch:
                    return
                engine.submit(
                    f"r{k % 3}", sorted(batch, key=lambda i: int(i[3:]) + rng.gauss(0, 3))
                )
            k += 1

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        for _ in range(40):
            snap = read_engine(engine, lock)
            assert isinstance(snap, EngineFigures) and snap.unavailable == ()
            # The snapshot is a copy: later submissions do not change it.
            before = dict(snap.view_counts)
            s = compute_stats(snap, store, target_views=3, now=NOW)
            assert snap.view_counts == before
            assert sum(b["count"] for b in s["views"]["histogram"]) == 200
            assert s["views"]["total"] == sum(before.values())
    except Exception as exc:  # noqa: BLE001 - reported below
        errors.append(exc)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors


def test_labelling_time_from_the_lead_times_in_the_log(store):
    # Label Studio's lead_time travels with each answer into the log; the stats read it there.
    for n, lead in enumerate([10.0, 12.0, 20.0]):
        store.append_ranking(500 + n, ["i1", "i2"], rater="r1", created_at=T0, lead_time=lead)
    store.append_ranking(510, ["i1", "i2"], rater="r2", created_at=T0)  # no lead time
    store.append_boundary(520, "i5", "lv", rater="r2", created_at=T0, lead_time=6.5)
    store.append_ranking(503, ["i3", "i4"], rater="r1", created_at=T0, lead_time=30.0)
    store.delete_annotation(503)  # a deleted answer's time does not count
    t = compute_stats(_engine(), store, target_views=3, now=NOW)["labelling_time"]
    rank = t["by_strategy"]["ranking"]
    assert (rank["n"], rank["median_s"], rank["not_measured"]) == (3, 12.0, 1)
    assert t["by_strategy"]["single_label"]["median_s"] == 6.5
    rows = {r["rater"]: r for r in t["by_rater"]}
    assert rows["r1"]["median_s_per_batch"] == 12.0 and rows["r2"]["median_s_per_label"] == 6.5
    assert t["cohort"]["images"] == 10 and t["cohort"]["batches"] == round(10 * 1575 / 3323)
