"""slicerank: expert labels for cardiac MRI short-axis slices by multiple-image ranking.

This package is the top of the import graph: the ``slicerank`` console script, which gathers
each package's subcommands, and the demo. What every package shares lives in
``slicerank_base``; nothing below imports ``slicerank``.
"""

from slicerank_base import CLASSES, __version__

__all__ = ["CLASSES", "__version__"]
