"""A ranking typed as letters: each slice of a Rank task carries a mark (A-H, in task order) and
a clinician may type the marks from the most basal slice to the most apical instead of
dragging the list. Pure: no I/O.

Label Studio Community cannot turn keys into a drag of its Ranker without a script (it runs
none from a label config), so the typed order arrives as a separate TextArea result beside the
Ranker's, which Label Studio saves even when the list was never touched. A typed order
therefore counts over the list (rank.xml says so on screen); a typed order that cannot be read
is refused with the reason, never replaced by the untouched list.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MARKS = "ABCDEFGH"
"""The mark of each slice of a Rank task, in task order (shown in the grid and the list)."""

_SEPARATORS = re.compile(r"[\s,;.\-–—>→/|]+")


MAX_TYPED_CHARS = 200
"""Longest typed order read (the marks of a batch, with separators, fit many times over)."""


def read_typed_order(text: str, task_order: Sequence[str]) -> list[str]:
    """The image ids in the order ``text`` names them (most basal first).

    ``text`` holds the marks of the task's slices (``task_order``: the ids in the order the
    task shows them, mark ``MARKS[i]`` on ``task_order[i]``), in either case, with or without
    separators (spaces, commas, dashes, arrows). The last slice may be left out: the one not
    typed goes last. ``ValueError`` says what is wrong (an unknown or repeated mark, too few).
    """
    n = len(task_order)
    if not 1 <= n <= len(MARKS):
        raise ValueError(f"a typed order needs a task of 1 to {len(MARKS)} slices, got {n}")
    marks = MARKS[:n]
    if len(text) > MAX_TYPED_CHARS:  # before any work: a hostile text may be megabytes long
        raise ValueError(
            f"typed order is {len(text)} characters long; type the marks of the slices "
            f"({marks}), at most {MAX_TYPED_CHARS} characters"
        )
    letters = _SEPARATORS.sub("", text).upper()
    if not letters:
        raise ValueError(f"typed order {text!r} names no slice (type the marks {marks})")
    unknown = sorted({c for c in letters if c not in marks})
    if unknown:
        raise ValueError(
            f"typed order {text!r} has {', '.join(map(repr, unknown))}, which no slice carries "
            f"(the marks are {marks})"
        )
    seen: set[str] = set()
    repeated = sorted({c for c in letters if c in seen or seen.add(c)})
    if repeated:
        raise ValueError(f"typed order {text!r} names {', '.join(repeated)} more than once")
    if len(letters) < n - 1:
        missing = "".join(c for c in marks if c not in letters)
        raise ValueError(
            f"typed order {text!r} names {len(letters)} of {n} slices (missing {missing}); "
            f"type at least {n - 1}"
        )
    letters += "".join(c for c in marks if c not in letters)  # the one left out goes last
    return [task_order[marks.index(c)] for c in letters]


def typed_text(result: list) -> str | None:
    """The text of the one TextArea result in ``result``, or None when there is none.
    ``ValueError`` if there are several, or its value is not one piece of text."""
    typed = [r for r in result if isinstance(r, dict) and r.get("type") == "textarea"]
    if not typed:
        return None
    if len(typed) > 1:
        raise ValueError(f"expected at most one typed order, found {len(typed)}")
    value = typed[0].get("value")
    texts = value.get("text") if isinstance(value, dict) else None
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or len(texts) != 1 or not isinstance(texts[0], str):
        raise ValueError(f"a typed order must be one line of text, got {texts!r}")
    return texts[0]
