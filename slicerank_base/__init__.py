"""What every slicerank package shares, and nothing else: the class names, the version, JSON
output and child-process helpers.

This package imports nothing of ours, so the arrows between packages run one way:
``slicerank_base`` ← ``cmr_ingest``, ``ranking_scheduler``, ``ml_backend``, ``analysis``,
``ls_config`` ← ``slicerank`` (the console script and the demo).
"""

__all__ = ["CLASSES", "__version__"]

__version__ = "0.1.0"

#: The three classes, most basal first. The names are a contract (see docs/INTERFACES.md).
CLASSES: tuple[str, str, str] = ("too_basal", "lv", "too_apical")
