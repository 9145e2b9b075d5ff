"""Reading the analysis inputs: truth and prediction CSVs, and ``simulate --compare`` JSON.

Every error is an :class:`AnalysisInputError` whose message names the file and, for a bad
row, its line number (the header is line 1), and says what to fix.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from analysis.predictions import PROBABILITY_TOLERANCE, Predictions, check_same_images
from slicerank_base import CLASSES

__all__ = [
    "PROBABILITY_COLUMNS",
    "AnalysisInputError",
    "check_prediction_ids",
    "parse_prediction_spec",
    "read_curves",
    "read_predictions",
    "read_truth",
]

#: The probability columns of a prediction CSV, in ``CLASSES`` order.
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{c}" for c in CLASSES)

#: Keys every point of a label-efficiency curve must have (from ``simulate --compare``).
CURVE_POINT_KEYS = ("hours", "accuracy")


class AnalysisInputError(ValueError):
    """An input file of ``slicerank analyze`` is malformed; the message names file and row."""


def _open_rows(path: Path) -> tuple[list[str], csv.DictReader, Any]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise AnalysisInputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    reader = csv.DictReader(handle)
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        handle.close()
        raise AnalysisInputError(f"{path}: empty file, expected a header row")
    reader.fieldnames = header
    return header, reader, handle


def _label(raw: str | None, path: Path, line: int) -> str:
    label = (raw or "").strip().lower()
    if label not in CLASSES:
        raise AnalysisInputError(
            f"{path}, line {line}: unknown class {raw!r}; expected one of {', '.join(CLASSES)}"
        )
    return label


def _image_id(raw: str | None, path: Path, line: int, seen: dict[str, int]) -> str:
    image_id = (raw or "").strip()
    if not image_id:
        raise AnalysisInputError(f"{path}, line {line}: empty image_id")
    if image_id in seen:
        raise AnalysisInputError(
            f"{path}, line {line}: duplicate image_id {image_id!r} (first on line {seen[image_id]})"
        )
    seen[image_id] = line
    return image_id


def _keyed_rows(path: Path, columns: tuple[str, ...], what: str):
    """Rows of a CSV that must have ``columns`` (``image_id`` first, unique and non-empty):
    ``(line, image_id, row)`` each; ``what`` names the file in the error."""
    header, reader, handle = _open_rows(path)
    with handle:
        missing = [c for c in columns if c not in header]
        if missing:
            raise AnalysisInputError(
                f"{path}: missing column(s) {', '.join(missing)}; a {what} needs "
                f"{','.join(columns)} (found: {', '.join(header)})"
            )
        seen: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            yield line, _image_id(row.get("image_id"), path, line, seen), row


def read_truth(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``image_id,label`` rows into ``{image_id: class}``."""
    path = Path(path)
    truth = {
        image_id: _label(row.get("label"), path, line)
        for line, image_id, row in _keyed_rows(path, ("image_id", "label"), "truth file")
    }
    if not truth:
        raise AnalysisInputError(f"{path}: no rows after the header")
    return truth


def read_scans(path: str | os.PathLike[str], truth: Mapping[str, str]) -> dict[str, str]:
    """Read ``image_id,scan_id`` rows (a slicerank ``manifest.csv`` will do; other columns are
    ignored) into ``{image_id: scan_id}`` for every image of ``truth``; extra rows are
    ignored, a truth image without a scan is an error."""
    path = Path(path)
    scans: dict[str, str] = {}
    for line, image_id, row in _keyed_rows(path, ("image_id", "scan_id"), "scans file"):
        scan_id = (row.get("scan_id") or "").strip()
        if not scan_id:
            raise AnalysisInputError(f"{path}, line {line}: empty scan_id for {image_id}")
        scans[image_id] = scan_id
    lacking = [i for i in truth if i not in scans]
    if lacking:
        raise AnalysisInputError(
            f"{path}: no scan_id for {len(lacking)} of the truth's {len(truth)} images, e.g. "
            f"{', '.join(lacking[:3])}; pass the manifest of the scans the truth comes from"
        )
    return {i: scans[i] for i in truth}


def _probabilities(row: Mapping[str, str | None], path: Path, line: int) -> tuple[float, ...]:
    values = []
    for column in PROBABILITY_COLUMNS:
        raw = (row.get(column) or "").strip()
        try:
            value = float(raw)
        except ValueError:
            raise AnalysisInputError(
                f"{path}, line {line}: {column} is {raw!r}, not a number"
            ) from None
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise AnalysisInputError(
                f"{path}, line {line}: {column} = {raw} is not a probability in [0, 1]"
            )
        values.append(value)
    total = sum(values)
    if abs(total - 1) > PROBABILITY_TOLERANCE:
        raise AnalysisInputError(
            f"{path}, line {line}: probabilities sum to {total:.6g}, not 1 "
            f"(tolerance {PROBABILITY_TOLERANCE}); normalise the {', '.join(PROBABILITY_COLUMNS)} columns"
        )
    return tuple(values)


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read a prediction CSV: ``image_id`` plus ``label`` and/or ``p_too_basal,p_lv,p_too_apical``.

    With probabilities and no ``label`` column the label is the most probable class (the
    study's rule); with both, the given label is kept (a model may use other thresholds).
    Without ``label``, a ``class`` column is used instead, so the scheduler's
    ``consensus.csv`` (whose classes come from thresholds, not an argmax) reads as it is.
    Other columns are ignored.
    """
    path = Path(path)
    source = str(path)  # callers prefix the model name when they report a mismatch
    header, reader, handle = _open_rows(path)
    with handle:
        if "image_id" not in header:
            raise AnalysisInputError(
                f"{path}: missing column image_id (found: {', '.join(header)})"
            )
        present = [c for c in PROBABILITY_COLUMNS if c in header]
        if present and len(present) != len(PROBABILITY_COLUMNS):
            absent = [c for c in PROBABILITY_COLUMNS if c not in header]
            raise AnalysisInputError(
                f"{path}: has {', '.join(present)} but is missing {', '.join(absent)}"
            )
        label_column = "label" if "label" in header else ("class" if "class" in header else None)
        has_label = label_column is not None
        if not has_label and not present:
            raise AnalysisInputError(
                f"{path}: needs a label column or the columns {', '.join(PROBABILITY_COLUMNS)} "
                f"(found: {', '.join(header)})"
            )
        labels: dict[str, str] = {}
        probs: dict[str, tuple[float, ...]] = {}
        seen: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            image_id = _image_id(row.get("image_id"), path, line, seen)
            if has_label:
                labels[image_id] = _label(row.get(label_column), path, line)
            if present:
                probs[image_id] = _probabilities(row, path, line)
    if not seen:
        raise AnalysisInputError(f"{path}: no rows after the header")
    try:
        if present:
            return Predictions.from_probabilities(
                probs, labels=labels if has_label else None, source=source
            )
        return Predictions.from_labels(labels, source=source)
    except ValueError as exc:  # already validated row by row; kept so nothing escapes untyped
        raise AnalysisInputError(str(exc)) from exc


def check_prediction_ids(truth: Mapping[str, str], predictions: Predictions, name: str) -> None:
    """Raise :class:`AnalysisInputError` unless ``predictions`` cover exactly the truth's images."""
    try:
        check_same_images(set(truth), set(predictions.labels), f"{name} ({predictions.source})")
    except ValueError as exc:
        raise AnalysisInputError(str(exc)) from exc


def parse_prediction_spec(spec: str) -> tuple[str, Path]:
    """Split a ``NAME=FILE.csv`` command-line value; a bare path is named after its stem."""
    name, sep, file = spec.partition("=")
    if not sep:
        return Path(spec).stem, Path(spec)
    if not name.strip() or not file.strip():
        raise AnalysisInputError(f"--pred {spec!r}: expected NAME=FILE.csv")
    return name.strip(), Path(file.strip())


def _runs_in(document: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(document, dict) and "runs" in document:
        document = document["runs"]
        if isinstance(document, dict):
            # `simulate --compare` groups runs by run type ({"paper": [...], "bayes_capped":
            # [...]}); the key is the name to plot, since e.g. "bayes_capped" runs carry
            # strategy "bayes".
            grouped = document
            document = []
            for name, group in grouped.items():
                if not isinstance(group, list):
                    raise AnalysisInputError(f"{path}: runs[{name!r}] must be a list of runs")
                document += [
                    {**run, "strategy": name} if isinstance(run, dict) else run for run in group
                ]
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise AnalysisInputError(f"{path}: expected a list of runs (or one run object)")
    runs = []
    for i, run in enumerate(document):
        where = f"{path}, run {i}"
        if not isinstance(run, dict) or "strategy" not in run or "curve" not in run:
            raise AnalysisInputError(f"{where}: a run needs the keys strategy and curve")
        if not isinstance(run["curve"], list) or not run["curve"]:
            raise AnalysisInputError(f"{where}: curve must be a non-empty list of points")
        for j, point in enumerate(run["curve"]):
            missing = [k for k in CURVE_POINT_KEYS if not isinstance(point, dict) or k not in point]
            if missing:
                raise AnalysisInputError(f"{where}, point {j}: missing {', '.join(missing)}")
            for key in CURVE_POINT_KEYS:
                value = point[key]
                if (
                    not isinstance(value, int | float)
                    or isinstance(value, bool)
                    or not math.isfinite(value)
                ):
                    raise AnalysisInputError(
                        f"{where}, point {j}: {key} = {value!r} is not a number"
                    )
        runs.append(run)
    return runs


def read_curves(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Read label-efficiency runs from ``slicerank simulate --compare --json`` files.

    Each file holds a list of runs, ``{"runs": [...]}``, ``{"runs": {name: [...]}}`` (the
    ``compare.json`` of ``simulate --compare``, where ``name`` becomes the strategy shown),
    or one run; each run has
    ``strategy``, ``seed``, ``curve`` (points with at least ``hours`` and ``accuracy``; also
    ``batches``, ``views``, ``boundary_labels``, ``macro_f1``, ``kendall_tau``) and ``final``.
    """
    runs: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise AnalysisInputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise AnalysisInputError(
                f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})"
            ) from exc
        runs.extend(_runs_in(document, path))
    return runs
