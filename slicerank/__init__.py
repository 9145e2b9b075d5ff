"""slicerank: expert labels for cardiac MRI short-axis slices by multiple-image ranking.

This small package holds only what every other package shares: the ``slicerank`` console
script that gathers each package's subcommands, and the class names.
"""

__all__ = ["CLASSES", "__version__"]

__version__ = "0.1.0"

#: The three classes, most basal first. The names are a contract (see ARCHITECTURE.md).
CLASSES: tuple[str, str, str] = ("too_basal", "lv", "too_apical")
