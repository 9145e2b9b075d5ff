"""Threshold finding: probabilistic bisection on the ordinal list."""

from __future__ import annotations

import numpy as np
import pytest

from ranking_scheduler import RankingEngine
from ranking_scheduler.engine.boundary import (
    MAX_LABELS,
    MIN_LABELS_PER_CUT,
    cut_posterior,
    query_information,
)
from ranking_scheduler.simulator.raters import true_class

N = 400
CUTS = (0.31, 0.88)
"""Deliberately not the study's class mix, so the prior alone cannot find them."""


def _engine_with_true_order() -> tuple[RankingEngine, list[str]]:
    """An engine whose ranking is the true order and well known: three raters ranked the whole
    pool the same way 21 times (after one ranking every place would still be uncertain by
    about 25 ranks, and answers about such images cannot pin a cut exactly). Every view counts
    as fresh (``persistent_share=0``): with persistent errors three raters can never know the
    order this well, whatever they repeat, and these tests are about the cut finder."""
    ids = [f"s{k:04d}" for k in range(N)]
    engine = RankingEngine(ids, strategy="bayes", seed=0, persistent_share=0.0)
    for rep in range(21):
        engine.submit(f"r{rep % 3 + 1}", ids, require_open=False)  # s0000 most basal
    assert engine.ranking() == ids
    return engine, ids


def _oracle(image_id: str) -> str:
    return true_class(int(image_id[1:]) / N, CUTS)


def _near(found: tuple[int, int], want: tuple[int, int], places: int = 3) -> bool:
    """Within ``places`` ranks: every answer is also evidence about the slice it labels, so it
    moves that slice to its side of the cut as the cut stood then, and the list near the cuts
    shifts by a few places while the search goes on."""
    return all(abs(f - w) <= places for f, w in zip(found, want, strict=True))


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
    assert _near((th["basal_lv"]["position"], th["lv_apical"]["position"]), _true_positions())
    assert asked <= MAX_LABELS
    # Ranks known to about 10 of 400 cannot concentrate a cut within 1% of the list: the
    # finder uses its budget and ends on the right place.
    assert {s["state"] for s in engine.boundary_status().values()} <= {"settled", "budget_spent"}
    classes = engine.classes()
    assert sum(classes[i] == _oracle(i) for i in classes) >= 0.98 * N  # (see _near)


@pytest.mark.parametrize("wrong_at", [0, 1, 3])
def test_one_wrong_answer_is_survived(wrong_at):
    engine, _ = _engine_with_true_order()
    asked = _run(engine, wrong={wrong_at})
    th = engine.thresholds()
    # Within the places' own uncertainty (about 10 ranks here): bent, not broken.
    found = (th["basal_lv"]["position"], th["lv_apical"]["position"])
    assert all(abs(f - t) <= 4 for f, t in zip(found, _true_positions(), strict=True))
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
    assert _near((th["basal_lv"]["position"], th["lv_apical"]["position"]), _true_positions())


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


def test_both_cuts_get_their_minimum_of_answers():
    engine, _ = _engine_with_true_order()
    _run(engine)
    status = engine.boundary_status()
    assert all(s["queries"] >= MIN_LABELS_PER_CUT for s in status.values())
    assert sum(s["queries"] for s in status.values()) == status["basal_lv"]["labels"]


def test_late_answers_to_forgotten_questions_stay_within_the_budget():
    ids = [f"s{k:04d}" for k in range(N)]
    engine = RankingEngine(ids, strategy="bayes", seed=0, boundary_budget=6)
    for rep in range(21):
        engine.submit(f"r{rep % 3 + 1}", ids, require_open=False)
    unanswered = [engine.next_boundary_query() for _ in range(6)]  # 4 pending + 2 forgotten
    assert None not in unanswered
    assert engine.next_boundary_query() is None  # all six still count against the budget
    for q in unanswered:  # every one of them is answered after all, late
        engine.submit_boundary(q, _oracle(q))
    _run(engine)
    assert engine.boundary_status()["basal_lv"]["labels"] == 6


def test_per_cut_counts_are_rebuilt_from_the_labels():
    engine, ids = _engine_with_true_order()
    for _ in range(10):
        q = engine.next_boundary_query()
        engine.submit_boundary(q, _oracle(q))
    replay = RankingEngine(ids, strategy="bayes", seed=0, persistent_share=0.0)
    for rep in range(21):
        replay.submit(f"r{rep % 3 + 1}", ids, require_open=False)
    for image, cls in [(engine.image_ids[i], c) for i, c in engine._finder.labels]:
        replay.submit_boundary(image, cls)
    assert replay.boundary_status() == engine.boundary_status()


def test_an_answer_about_a_poorly_placed_image_counts_less():
    ranks = [40, 60, 45, 55, 48]
    sides = [True, False, True, False, True]
    settled = cut_posterior(100, ranks, sides, prior_center=0.5)
    # A contradicting answer far below: from a well-placed image it drags the cut, from an
    # image whose own place is uncertain by 30 ranks it hardly moves it.
    sure = cut_posterior(
        100, [*ranks, 20], [*sides, False], prior_center=0.5, label_sd=[0.0] * 5 + [0.0]
    )
    vague = cut_posterior(
        100, [*ranks, 20], [*sides, False], prior_center=0.5, label_sd=[0.0] * 5 + [0.3]
    )
    assert abs(vague.median - settled.median) <= abs(sure.median - settled.median)
    assert vague.probs[:40].sum() < sure.probs[:40].sum()
    with pytest.raises(ValueError, match="label_sd"):
        cut_posterior(100, ranks, sides, prior_center=0.5, label_sd=[0.1])


def test_query_information_prefers_near_and_well_placed():
    info = query_information(np.array([0.0, 10.0, 0.0]), np.array([5.0, 5.0, 50.0]))
    assert info[0] > info[1] and info[0] > info[2]
    assert np.isclose(info[0] * 25.0, 2 / np.pi)  # phi(0)^2 / (1/4) at width 1


def test_questions_are_paced_by_the_share_of_images_seen_until_final():
    ids = [f"s{k:04d}" for k in range(N)]
    engine = RankingEngine(ids, strategy="bayes", seed=0, boundary_budget=20)
    half = ids[: N // 2]  # only half the pool has been seen
    for rep in range(21):
        engine.submit(f"r{rep % 3 + 1}", half, require_open=False)
    while_ranking = _run(engine)
    assert while_ranking == 10  # 20 x 1.0 x 50% seen
    assert engine.next_boundary_query() is None
    at_the_end = 0
    while (q := engine.next_boundary_query(final=True)) is not None:
        engine.submit_boundary(q, _oracle(q))
        at_the_end += 1
    assert while_ranking + at_the_end == 20


def test_questions_open_across_a_restart_keep_the_budget():
    ids = [f"s{k:04d}" for k in range(N)]
    engine = RankingEngine(ids, strategy="bayes", seed=0, boundary_budget=5)
    for rep in range(21):
        engine.submit(f"r{rep % 3 + 1}", ids, require_open=False)
    asked = [engine.next_boundary_query() for _ in range(5)]
    for q in asked[:3]:
        engine.submit_boundary(q, _oracle(q))
    # Restart: a new engine replays the answers; two questions are still open in Label Studio.
    again = RankingEngine(ids, strategy="bayes", seed=0, boundary_budget=5)
    for rep in range(21):
        again.submit(f"r{rep % 3 + 1}", ids, require_open=False)
    for q in asked[:3]:
        again.submit_boundary(q, _oracle(q))
    for q in asked[3:]:
        again.restore_pending(q)
    assert again.next_boundary_query(final=True) is None
    assert again.boundary_status()["basal_lv"]["labels"] == 3
    with pytest.raises(ValueError, match="unknown image id"):
        again.restore_pending("nope")
