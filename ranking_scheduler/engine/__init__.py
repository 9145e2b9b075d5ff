"""The pure rating/ranking engine: no network, no disk, deterministic for a seed.

``ranking.py`` holds :class:`RankingEngine` (the bookkeeping every strategy shares);
``bayes.py`` and ``glicko.py`` the two rating models; ``boundary.py`` the cut finder.
"""

from __future__ import annotations

from ranking_scheduler.engine.ranking import STRATEGIES, RankingEngine

__all__ = ["STRATEGIES", "RankingEngine"]
