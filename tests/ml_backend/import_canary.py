"""A module whose import leaves a mark: a job naming it (as function or callback) shows whether
a worker imported it. The mark goes to the file ``SLICERANK_TEST_IMPORT_MARKER`` names."""

import os
from pathlib import Path

_marker = os.environ.get("SLICERANK_TEST_IMPORT_MARKER")
if _marker:
    Path(_marker).write_text("imported")


def run(*args, **kwargs) -> str:
    """What a job or callback naming this module would call."""
    return "ran"
