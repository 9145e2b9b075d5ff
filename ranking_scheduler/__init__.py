"""Rating/ranking engine, rater simulator and (elsewhere in the package) the scheduler service.

The public surface is listed in ``__all__``; modules are imported lazily where heavy.
"""

from __future__ import annotations

from ranking_scheduler.engine import STRATEGIES, RankingEngine

__all__ = ["STRATEGIES", "RankingEngine"]
