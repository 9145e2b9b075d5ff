"""What the scheduler's worker thread spends its time on, and the replacement lags that size
the spare Rank tasks (thread-safe snapshots for ``/api/stats``)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

PROCESSING_SAMPLES = 20000
"""How many recent per-submission processing times (and replacement lags) are kept."""


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; None if empty."""
    if not values:
        return None
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


class WorkerStats:
    """What the worker thread spends its time on (thread-safe snapshots for ``/api/stats``):
    per kind of event its count, total and worst duration; the deepest queue seen; the lowest
    number of spare Rank tasks seen before a top-up; the replacement lag (a submission's webhook
    queued until the top-up after it has created the new tasks in Label Studio); the largest
    number of open Rank tasks aimed at."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: dict[str, list[float]] = {}
        self.queue_max = 0
        self.spare_low: int | None = None
        self.wanted_high = 0
        self.lags: deque[float] = deque(maxlen=PROCESSING_SAMPLES)

    def record(self, kind: str, seconds: float) -> None:
        """One worker event of ``kind`` took ``seconds``."""
        with self._lock:
            n, total, worst = self.events.get(kind, (0, 0.0, 0.0))
            self.events[kind] = [n + 1, total + seconds, max(worst, seconds)]

    def saw_depth(self, depth: int) -> None:
        """The queue held ``depth`` events."""
        self.queue_max = max(self.queue_max, depth)

    def saw_spare(self, spare: int) -> None:
        """A top-up found ``spare`` open Rank tasks beyond one per active rater."""
        with self._lock:
            self.spare_low = spare if self.spare_low is None else min(self.spare_low, spare)

    def recent_lags(self, n: int) -> list[float]:
        """The last ``n`` replacement lags (seconds)."""
        with self._lock:
            return list(self.lags)[-n:]

    def saw_wanted(self, wanted: int) -> None:
        """A top-up aimed at ``wanted`` open Rank tasks."""
        self.wanted_high = max(self.wanted_high, wanted)

    def replaced(self, lag_s: float) -> None:
        """A top-up finished ``lag_s`` after the oldest submission it replaces was queued."""
        with self._lock:
            self.lags.append(lag_s)

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON values (ms for times)."""
        with self._lock:
            lags = list(self.lags)
            events = {
                kind: {"n": n, "total_s": round(total, 3), "max_ms": round(worst * 1000, 1)}
                for kind, (n, total, worst) in sorted(self.events.items())
            }
        p95 = percentile(lags, 0.95)
        return {
            "events": events,
            "queue_max": self.queue_max,
            "spare_low": self.spare_low,
            "wanted_open_high": self.wanted_high,
            "replacement_lag_ms_p50": None if not lags else 1000 * percentile(lags, 0.5),
            "replacement_lag_ms_p95": None if p95 is None else 1000 * p95,
            "replacement_lag_ms_max": None if not lags else 1000 * max(lags),
        }
