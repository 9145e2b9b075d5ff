"""The engine replays a fixed session exactly as recorded (``data/engine_replay.json``).

Every strategy, with and without stacks, is driven deterministically by simulated raters:
batches served, a second batch now and then with the first one released, boundary questions
asked while ranking goes on and answered a round late (some never), the rest of the budget at
the end. The batches, the questions and the final state (scores, ranking, classes,
probabilities, cuts, progress) must equal the recording; the same log replayed through the
service's store (``SubmissionStore.rebuild``) must give the live engine's classes and scores.

The recording was made before ``RankingEngine`` was split into its parts (posterior, task
chooser, cut finder, strategies), so it pins that the split changed no behaviour. A change
that is meant to change behaviour regenerates it and says so in its commit:

    PYTHONPATH=. python -m tests.ranking_scheduler.test_engine_replay
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from ranking_scheduler import RankingEngine
from ranking_scheduler.engine import STRATEGIES
from ranking_scheduler.service.store import SubmissionStore
from ranking_scheduler.simulator.raters import RaterPanel
from ranking_scheduler.simulator.simulate import stack_cohort, study_cohort

GOLDEN = Path(__file__).parent / "data" / "engine_replay.json"
DIGITS = 9
"""Floats are compared after rounding to this many decimals."""
STEPS = 120
"""next_batch rounds per session (the engine may stop earlier)."""
CASES = [(s, stacks) for s in STRATEGIES for stacks in (False, True)]
TASK_STRATEGIES = ("single", "hybrid")
"""Driven through ``next_task`` (the others through ``next_batch``, the original API)."""


def _r(x: Any) -> Any:
    """``x`` with every float rounded to ``DIGITS`` (tuples become lists, as in JSON)."""
    if isinstance(x, float):
        return round(x, DIGITS)
    if isinstance(x, dict):
        return {str(k): _r(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_r(v) for v in x]
    return x


def session(strategy: str, with_stacks: bool) -> tuple[dict[str, Any], RankingEngine, list]:
    """Drive one engine through the fixed session; returns (record, engine, submission log)."""
    cohort = stack_cohort(60, seed=5) if with_stacks else study_cohort(48, seed=5)
    engine = RankingEngine(
        cohort.ids,
        strategy=strategy,
        seed=7,
        target_views=8,
        stacks=cohort.stacks if with_stacks else None,
        boundary_budget=20,
    )
    raters = RaterPanel.from_positions(cohort.positions, n_raters=3, seed=7).raters
    log: list[tuple] = []  # ("rank", rater, ordered) | ("boundary", image, label, rater)
    served: list[list[str]] = []
    queries: list[str | None] = []
    checkpoints: list[dict[str, Any]] = []
    late: list[tuple[str, str]] = []  # answers held back one round
    unanswered: list[str] = []

    def answer(image: str, label: str, by: str) -> None:
        engine.submit_boundary(image, label, by)
        log.append(("boundary", image, label, by))

    for step in range(STEPS):
        rater = raters[step % len(raters)]
        if strategy in TASK_STRATEGIES:
            # next_task: a batch, or a single question answered at once.
            task = engine.next_task(rater.name)
            if task is not None and task.kind == "label":
                served.append(["label", *task.image_ids])
                answer(task.image_ids[0], rater.classify(task.image_ids[0]), rater.name)
                continue
            batch = list(task.image_ids) if task is not None else []
        else:
            batch = engine.next_batch(rater.name)
        served.append(batch)
        if not batch:
            break
        if step % 9 == 4:
            # A second batch for the same rater; the first one's task is deleted.
            second = engine.next_batch(rater.name)
            served.append(second)
            engine.release(batch)
            batch = second
        ordered = rater.rank(batch)
        engine.submit(rater.name, ordered)
        log.append(("rank", rater.name, ordered))
        if step >= 6 and step % 3 == 0:
            for image, label, by in late:
                answer(image, label, by)
            late = []
            q = engine.next_boundary_query()
            queries.append(q)
            if q is not None:
                if len(queries) % 3 == 0:
                    unanswered.append(q)  # never answered: pending, then forgotten
                else:
                    by = raters[len(queries) % len(raters)]
                    late.append((q, by.classify(q), by.name))
        if step % 10 == 9:
            checkpoints.append(
                {
                    "progress": engine.progress(),
                    "boundary": engine.boundary_status(),
                    "thresholds": engine.thresholds(),
                }
            )
    for image, label, by in late:
        answer(image, label, by)
    while (q := engine.next_boundary_query(final=True)) is not None:
        queries.append(q)
        by = raters[len(queries) % len(raters)]
        answer(q, by.classify(q), by.name)
    record = {
        "served": served,
        "queries": queries,
        "unanswered": unanswered,
        "checkpoints": checkpoints,
        "final": {
            "scores": engine.scores(),
            "ranking": engine.ranking(),
            "classes": engine.classes(),
            "class_probabilities": engine.class_probabilities(),
            "thresholds": engine.thresholds(),
            "boundary": engine.boundary_status(),
            "progress": engine.progress(),
            "views": engine.view_counts(),
            "open": engine.open_batches(),
            "rater_noise": engine.rater_noise(),
            "done": engine.done,
        },
    }
    return _r(record), engine, log


def rebuilt(strategy: str, with_stacks: bool, log: list, db_url: str) -> RankingEngine:
    """The log appended to a submission store and replayed through its ``rebuild``."""
    cohort = stack_cohort(60, seed=5) if with_stacks else study_cohort(48, seed=5)
    store = SubmissionStore(db_url)
    try:
        for ann, entry in enumerate(log, start=1):
            if entry[0] == "rank":
                store.append_ranking(ann, entry[2], rater=entry[1])
            else:
                store.append_boundary(ann, entry[1], entry[2], rater=entry[3])
        return store.rebuild(
            lambda: RankingEngine(
                cohort.ids,
                strategy=strategy,
                seed=7,
                target_views=8,
                stacks=cohort.stacks if with_stacks else None,
                boundary_budget=20,
            )
        )
    finally:
        store.close()


def _key(strategy: str, with_stacks: bool) -> str:
    return f"{strategy}{'_stacks' if with_stacks else ''}"


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize(("strategy", "with_stacks"), CASES)
def test_session_replays_exactly(golden, strategy, with_stacks, tmp_path):
    record, live, log = session(strategy, with_stacks)
    want = golden[_key(strategy, with_stacks)]
    # Compared piece by piece so a failure names what moved first.
    assert record["served"] == want["served"]
    assert record["queries"] == want["queries"]
    assert record["checkpoints"] == want["checkpoints"]
    for name, value in want["final"].items():
        assert record["final"][name] == value, name
    # The session is long enough to mean something: batches (or questions), releases, answers.
    assert sum(1 for b in record["served"] if b) >= 15
    assert record["final"]["progress"]["boundary_labels"] >= 8
    if strategy == "single":
        assert record["final"]["progress"]["batches"] == 0
    # The same log through the service's rebuild path gives the same classes and scores.
    again = rebuilt(strategy, with_stacks, log, f"sqlite:///{tmp_path / 'log.db'}")
    assert again.classes() == live.classes() == want["final"]["classes"]
    assert _r(again.scores()) == want["final"]["scores"]
    assert again.ranking() == live.ranking()
    assert again.progress()["batches"] == live.progress()["batches"]


def main() -> None:
    """Record the golden file from the engine as it is now."""
    out = {}
    for strategy, with_stacks in CASES:
        record, live, log = session(strategy, with_stacks)
        with tempfile.TemporaryDirectory() as tmp:
            again = rebuilt(strategy, with_stacks, log, f"sqlite:///{tmp}/log.db")
            assert again.classes() == live.classes(), (strategy, with_stacks)
        out[_key(strategy, with_stacks)] = record
        served = sum(1 for b in record["served"] if b)
        print(_key(strategy, with_stacks), served, "tasks", len(log), "submissions")
    GOLDEN.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
