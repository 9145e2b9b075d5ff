"""``benchmarks.engine``: the strategy study's table and the panel's ceiling (small cohorts)."""

from __future__ import annotations

import numpy as np

from benchmarks.engine import BUDGETS, panel_ceiling, strategy_study, strategy_table


def test_the_ceiling_is_below_one_and_rises_when_comparisons_are_easier():
    """Persistent misreadings cap what any budget buys; at the study's premise (comparisons
    1.5 times less noisy) the cap is higher on the same cohort and panel."""
    eq = panel_ceiling(300, [3, 4], 1.0)["accuracy"]
    study = panel_ceiling(300, [3, 4], 1.5)["accuracy"]
    assert all(0.85 < a < 1.0 for a in eq)
    assert np.mean(study) > np.mean(eq)


def test_strategy_study_reports_every_budget_and_the_ceiling():
    st = strategy_study(150, [5], 1.0, min_views=(1,))
    (row,) = st["rows"]
    for name in ("ranking", "single", "hybrid", "stack_labeller"):
        assert len(row[name]) == len(BUDGETS)
        assert all(0.0 <= a <= 1.0 for a in row[name])
        # Not past what the panel's readings allow (but for a little the geometry adds).
        assert max(row[name]) <= row["ceiling"] + 0.03
    assert row["hybrid_m1"]["provenance"]["inferred"] == 0  # m = 1: every slice seen
    table = strategy_table(st)
    assert "panel's readings allow" in table and "min_views=1" in table
    assert "knowing the stacks" in table and "the strongest of all" in table
