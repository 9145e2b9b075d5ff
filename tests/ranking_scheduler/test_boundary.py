"""Threshold finding: probabilistic bisection on the ordinal list."""

from __future__ import annotations

import pytest

from ranking_scheduler import RankingEngine
from ranking_scheduler.boundary import MAX_LABELS, cut_posterior
from ranking_scheduler.raters import true_class

N = 400
CUTS = (0.31, 0.88)
"""Deliberately not the study's class mix, so the prior alone cannot find them."""


def _engine_with_true_order() -> tuple[RankingEngine, list[str]]:
    """An engine whose ranking is the true order: one ranking of the whole pool."""
    ids = [f"s{k:04d}" for k in range(N)]
    engine = RankingEngine(ids, strategy="bayes", seed=0)
    engine.submit("r1", ids, require_open=False)  # s0000 most basal
    assert engine.ranking() == ids
    return engine, ids


def _oracle(image_id: str) -> str:
    return true_class(int(image_id[1:]) / N, CUTS)


def _true_positions() -> tuple[int, int]:
    classes = [_oracle(f"s{k:04d}") for k in range(N)]
    return classes.count("too_basal"), N - classes.count("too_apical")


def _run(engine: RankingEngine, wrong: set[int] = frozenset()) -> int:
    asked = 0
    while (q := engine.next_boundary_query()) is not None:
        answer = _oracle(q)
        if asked in wrong:  # a confidently wrong answer: the far class
            answer = "too_apical" if answer == "too_basal" else "too_basal"
        engine.submit_boundary(q, answer)
        asked += 1
    return asked


def test_noiseless_oracle_finds_both_cuts_exactly():
    engine, _ = _engine_with_true_order()
    asked = _run(engine)
    th = engine.thresholds()
    assert (th["basal_lv"]["position"], th["lv_apical"]["position"]) == _true_positions()
    assert asked <= MAX_LABELS
    assert all(s["state"] == "settled" for s in engine.boundary_status().values())
    classes = engine.classes()
    assert all(classes[i] == _oracle(i) for i in classes)


@pytest.mark.parametrize("wrong_at", [0, 1, 3])
def test_one_wrong_answer_is_survived(wrong_at):
    engine, _ = _engine_with_true_order()
    asked = _run(engine, wrong={wrong_at})
    th = engine.thresholds()
    assert (th["basal_lv"]["position"], th["lv_apical"]["position"]) == _true_positions()
    assert asked <= MAX_LABELS


def test_answers_may_come_late_out_of_order_or_never():
    engine, _ = _engine_with_true_order()
    pending = [engine.next_boundary_query() for _ in range(3)]
    assert len(set(pending)) == 3  # never the same image twice while unanswered
    engine.submit_boundary(pending[2], _oracle(pending[2]))
    engine.submit_boundary(pending[0], _oracle(pending[0]))
    # pending[1] never comes back; the search still converges
    _run(engine)
    th = engine.thresholds()
    assert (th["basal_lv"]["position"], th["lv_apical"]["position"]) == _true_positions()


def test_budget_is_respected_with_a_hopeless_oracle():
    engine, _ = _engine_with_true_order()
    flip = 0
    while (q := engine.next_boundary_query()) is not None:
        flip += 1
        engine.submit_boundary(q, ("too_basal", "too_apical")[flip % 2])
    assert flip <= MAX_LABELS
    assert {s["state"] for s in engine.boundary_status().values()} <= {"settled", "budget_spent"}


def test_no_question_before_anything_is_seen():
    engine = RankingEngine([f"i{k}" for k in range(50)], seed=0)
    assert engine.next_boundary_query() is None
    assert engine.boundary_status()["basal_lv"]["state"] == "waiting"


def test_posterior_moves_past_a_single_contradiction():
    # Five consistent answers around position 60 and one contradicting one.
    ranks = [50, 70, 55, 65, 58, 20]
    sides = [True, False, True, False, True, False]  # the last says the cut is above 20
    post = cut_posterior(100, ranks, sides, prior_center=0.5)
    assert 58 < post.median <= 65
