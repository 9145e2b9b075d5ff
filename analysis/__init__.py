"""Compare labelling strategies and models with the study's statistics, tables and plots.

Public surface (see ``__all__``): read inputs with :func:`read_truth` /
:func:`read_predictions` / :func:`read_curves`, or build :class:`Predictions` in memory,
then :func:`build_report` writes ``report.md`` + ``report.html`` + PNGs and returns a
:class:`ReportResult` whose ``summary`` holds every number. The metric and test functions
live in small modules: ``metrics``, ``intervals``, ``mcnemar``, ``agreement``.

The names are loaded lazily (PEP 562) because ``slicerank --help`` imports ``analysis.cli``
and must not pay for SciPy.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name → the module that defines it.
_EXPORTS = {
    "AnalysisInputError": "analysis.io",
    "BinaryTable": "analysis.metrics",
    "Kappa": "analysis.agreement",
    "McNemar": "analysis.mcnemar",
    "Predictions": "analysis.predictions",
    "ReportResult": "analysis.report",
    "build_report": "analysis.report",
    "cohen_kappa": "analysis.agreement",
    "evaluate": "analysis.evaluation",
    "kappa_from_table": "analysis.agreement",
    "mcnemar_from_correct": "analysis.mcnemar",
    "mcnemar_test": "analysis.mcnemar",
    "read_curves": "analysis.io",
    "read_predictions": "analysis.io",
    "read_truth": "analysis.io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
