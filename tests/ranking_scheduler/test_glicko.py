"""Glicko-2 (the study's heuristic): golden rating updates and the batch rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ranking_scheduler.engine.glicko import PaperModel, glicko2_update

GOLDEN = json.loads((Path(__file__).parent / "data" / "rating_updates.json").read_text())
RATING_TOL = 0.01
"""Glickman's worked example prints ratings and deviations to two decimals."""
VOL_TOL = 1e-5
"""... and the volatility to five."""


@pytest.mark.parametrize("case", GOLDEN["glicko2"], ids=lambda c: c["desc"][:50])
def test_golden_glicko2_updates(case):
    r, rd, vol = glicko2_update(
        *case["player"], [tuple(o) for o in case["opponents"]], case["outcomes"], tau=case["tau"]
    )
    assert r == pytest.approx(case["expected"][0], abs=RATING_TOL)
    assert rd == pytest.approx(case["expected"][1], abs=RATING_TOL)
    assert vol == pytest.approx(case["expected"][2], abs=VOL_TOL)


def test_mismatched_outcomes_are_rejected():
    with pytest.raises(ValueError, match="outcomes"):
        glicko2_update(1500, 350, 0.06, [(1500, 350)], [1.0, 0.0])


def test_a_batch_is_one_rating_period_of_28_games():
    model = PaperModel(10)
    model.update([3, 1, 4, 0, 5, 9, 2, 6])
    r = model.rating
    # Placed more basal = more wins = higher rating, strictly, and symmetric around 1500.
    placed = [3, 1, 4, 0, 5, 9, 2, 6]
    assert all(r[a] > r[b] for a, b in zip(placed, placed[1:], strict=False))
    assert r[placed[0]] - 1500 == pytest.approx(1500 - r[placed[-1]], abs=1e-6)
    # Images outside the batch keep their state (no deviation inflation for idle images).
    assert r[7] == 1500 and model.rd[7] == 350 and model.rd[3] < 350


def test_ratings_stay_in_the_papers_range():
    model = PaperModel(8)
    for _ in range(200):
        model.update(list(range(8)))
    assert model.rating.max() <= 3000 and model.rating.min() >= 0


def test_priority_is_low_views_then_high_volatility():
    model = PaperModel(6)
    model.volatility[:] = [0.06, 0.09, 0.07, 0.2, 0.06, 0.06]
    views = np.array([0, 1, 1, 3, 2, 0])
    available = np.ones(6, dtype=bool)
    picked = model.select(4, views, available, np.zeros(6))
    # Within one view of the least-viewed image (0 or 1 views): by volatility; 3 views is last.
    assert list(picked) == [1, 2, 0, 5]
