"""Settings of ``slicerank analyze``, read once from the environment when the command starts.

Command-line flags override them; nothing is read at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from analysis.intervals import PROPORTION_METHODS

__all__ = ["AnalysisSettings"]


@dataclass(frozen=True)
class AnalysisSettings:
    """Defaults of the report's statistics (environment variable in brackets).

    ``n_boot`` (SLICERANK_ANALYSIS_N_BOOT): bootstrap resamples for F1 and averaged-AUC CIs;
    ``seed`` (SLICERANK_ANALYSIS_SEED): seed of those resamples; ``ci_method``
    (SLICERANK_ANALYSIS_CI_METHOD): ``clopper-pearson`` or ``wilson`` for proportions;
    ``confidence`` (SLICERANK_ANALYSIS_CONFIDENCE): level of every interval.
    """

    n_boot: int = 2000
    seed: int = 0
    ci_method: str = "clopper-pearson"
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.n_boot < 1:
            raise ValueError(f"SLICERANK_ANALYSIS_N_BOOT={self.n_boot} must be at least 1")
        if self.ci_method not in PROPORTION_METHODS:
            raise ValueError(
                f"SLICERANK_ANALYSIS_CI_METHOD={self.ci_method!r} is not one of "
                f"{', '.join(PROPORTION_METHODS)}"
            )
        if not 0 < self.confidence < 1:
            raise ValueError(
                f"SLICERANK_ANALYSIS_CONFIDENCE={self.confidence} must lie strictly between 0 and 1"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AnalysisSettings:
        """Read the settings from ``environ`` (pass ``os.environ``); unset or empty = default."""

        def get(name: str, convert, default):
            raw = environ.get(name, "")
            if raw == "":
                return default
            try:
                return convert(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid {convert.__name__}") from None

        return cls(
            n_boot=get("SLICERANK_ANALYSIS_N_BOOT", int, cls.n_boot),
            seed=get("SLICERANK_ANALYSIS_SEED", int, cls.seed),
            ci_method=get("SLICERANK_ANALYSIS_CI_METHOD", str, cls.ci_method),
            confidence=get("SLICERANK_ANALYSIS_CONFIDENCE", float, cls.confidence),
        )
