"""The ranking scheduler in three rooms:

* ``ranking_scheduler.engine``: the pure rating/ranking engine (no I/O): pooled ratings, the
  ordinal list, batch choice, the two class cuts;
* ``ranking_scheduler.simulator``: simulated raters and the label-efficiency study;
* ``ranking_scheduler.service``: the scheduler service around the engine: the submission log,
  the Label Studio edge, the coverage dashboard.

The public surface is listed in ``__all__``; the simulator and service are imported on demand.
"""

from __future__ import annotations

from ranking_scheduler.engine import STRATEGIES, RankingEngine

__all__ = ["STRATEGIES", "RankingEngine"]
