"""Label sources: where a training job's classes come from.

* ``classify`` — the one-image-at-a-time labels: the ``slice_class`` choice of the newest
  (not cancelled) annotation on each task of the Classify project, exported through
  ``label_studio_sdk``.
* ``ranking`` — the scheduler's consensus (multiple-image ranking): either the
  ``consensus.json`` export (see docs/INTERFACES.md) or the predictions with model version
  ``ranking-consensus`` that the scheduler writes on the Classify tasks. The consensus carries
  class probabilities (``p_too_basal``, ``p_lv``, ``p_too_apical``, derived from each image's
  score mean and sd against the thresholds): with ``soft_targets`` the network learns those
  instead of hard classes — the study's own hypothesis for why ranked labels train better is
  that they carry this ordinal information. Each image also gets its continuous consensus
  ``position`` (:func:`consensus_position`), which the ordinal head regresses onto.

Everything here is pure (dicts in, :class:`LabelledImage` out) except :func:`export_tasks`,
which takes the SDK client as an argument.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from slicerank_base import CLASSES

#: The control tag of the Classify project's class choice.
CLASS_CONTROL = "slice_class"
#: The model version under which the scheduler writes its consensus classes.
CONSENSUS_MODEL_VERSION = "ranking-consensus"
LABEL_SOURCES = ("classify", "ranking")


class NoLabelsError(ValueError):
    """The chosen label source holds no usable labels; the message says where we looked."""


@dataclass(frozen=True)
class LabelledImage:
    """One training example: an image id, its class and (optionally) class probabilities."""

    image_id: str
    label: str
    #: Probabilities for (too_basal, lv, too_apical) when the source provides them.
    soft: tuple[float, float, float] | None = None
    #: The image's path relative to the Label Studio document root, when the task says.
    path_hint: str | None = None
    #: Continuous consensus position, apical increasing, with the class cuts at -1 and +1
    #: (:func:`consensus_position`); None for one-at-a-time labels.
    position: float | None = None

    def __post_init__(self) -> None:
        if self.label not in CLASSES:
            raise ValueError(
                f"image {self.image_id!r} has class {self.label!r}; expected one of {CLASSES}"
            )


def local_path_from_url(url: str) -> str | None:
    """``/data/local-files/?d=a/b.png`` → ``a/b.png``; None for other URLs."""
    parsed = urlparse(url)
    if "local-files" not in parsed.path:
        return None
    values = parse_qs(parsed.query).get("d")
    return values[0] if values else None


def _task_image_id(task: dict[str, Any]) -> str:
    data = task.get("data") or {}
    image_id = data.get("image_id")
    if not image_id:
        raise ValueError(f"task {task.get('id')} has no data.image_id (not a Classify task?)")
    return str(image_id)


def _path_hint(task: dict[str, Any]) -> str | None:
    image = (task.get("data") or {}).get("image")
    return local_path_from_url(image) if isinstance(image, str) else None


def _choice(results: Iterable[dict[str, Any]], task_id: Any) -> str | None:
    for r in results:
        if r.get("from_name") == CLASS_CONTROL and r.get("type") == "choices":
            choices = (r.get("value") or {}).get("choices") or []
            if len(choices) != 1:
                raise ValueError(
                    f"task {task_id}: expected one {CLASS_CONTROL} choice, got {choices}"
                )
            return str(choices[0])
    return None


def labels_from_classify_tasks(tasks: Iterable[dict[str, Any]]) -> list[LabelledImage]:
    """Labels from exported Classify tasks: the newest non-cancelled annotation per task.

    When several tasks show the same image, the newest annotation across them wins.
    """
    best: dict[str, tuple[str, LabelledImage]] = {}
    for task in tasks:
        annotations = [
            a for a in task.get("annotations") or [] if not a.get("was_cancelled", False)
        ]
        if not annotations:
            continue
        image_id = _task_image_id(task)
        annotations.sort(
            key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0)
        )
        newest = annotations[-1]
        label = _choice(newest.get("result") or [], task.get("id"))
        if label is None:
            continue
        stamp = str(newest.get("updated_at") or newest.get("created_at") or "")
        item = LabelledImage(image_id, label, None, _path_hint(task))
        if image_id not in best or stamp >= best[image_id][0]:
            best[image_id] = (stamp, item)
    return [item for _, item in best.values()]


def labels_from_consensus_predictions(tasks: Iterable[dict[str, Any]]) -> list[LabelledImage]:
    """The scheduler's consensus classes, read from ``ranking-consensus`` predictions on tasks."""
    out: dict[str, LabelledImage] = {}
    for task in tasks:
        for pred in task.get("predictions") or []:
            if pred.get("model_version") != CONSENSUS_MODEL_VERSION:
                continue
            label = _choice(pred.get("result") or [], task.get("id"))
            if label is not None:
                image_id = _task_image_id(task)
                out[image_id] = LabelledImage(image_id, label, None, _path_hint(task))
    return list(out.values())


#: Consensus positions are clipped here: a few extreme ranks should not dominate the loss.
POSITION_CLIP = 3.0


def consensus_position(score: float, thresholds: dict[str, Any]) -> float | None:
    """An image's consensus score mapped so the class cuts sit at -1 and +1, apex positive.

    The scheduler's score axis runs the other way (basal images score high; ``basal_lv`` is
    the higher cut): ``(mid - score) / half`` with ``mid``/``half`` the cuts' centre and
    half-distance. None when the thresholds lack scores or are not ordered.
    """
    try:
        upper = float(thresholds["basal_lv"]["score"])
        lower = float(thresholds["lv_apical"]["score"])
    except (KeyError, TypeError, ValueError):
        return None
    half = (upper - lower) / 2
    if not half > 0:
        return None
    u = ((upper + lower) / 2 - float(score)) / half
    return max(-POSITION_CLIP, min(POSITION_CLIP, u))


def labels_from_consensus(document: dict[str, Any], *, soft: bool = False) -> list[LabelledImage]:
    """Labels from a scheduler ``consensus.json`` document (images without a class are skipped)."""
    if document.get("model_version") not in (None, CONSENSUS_MODEL_VERSION):
        raise ValueError(
            f"consensus document has model_version {document.get('model_version')!r}, "
            f"expected {CONSENSUS_MODEL_VERSION!r}"
        )
    images = document.get("images")
    if not isinstance(images, list):
        raise ValueError("consensus document has no 'images' list")
    thresholds = document.get("thresholds") or {}
    out = []
    for row in images:
        label = row.get("class")
        if not label:
            continue
        position = None
        if row.get("score_mean") is not None:
            position = consensus_position(row["score_mean"], thresholds)
        probs = None
        if soft:
            try:
                raw = [float(row[f"p_{c}"]) for c in CLASSES]
            except (KeyError, TypeError, ValueError):
                raise ValueError(
                    f"consensus image {row.get('image_id')!r} lacks p_too_basal/p_lv/p_too_apical, "
                    "needed for soft targets"
                ) from None
            total = sum(raw)
            if total <= 0:
                raise ValueError(
                    f"consensus image {row.get('image_id')!r} has class probabilities summing to 0"
                )
            probs = tuple(p / total for p in raw)
        out.append(LabelledImage(str(row["image_id"]), str(label), probs, None, position))
    return out


def read_consensus(path: Path, *, soft: bool = False) -> list[LabelledImage]:
    """Read a ``consensus.json`` file."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NoLabelsError(f"consensus file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"consensus file {path} is not valid JSON ({exc})") from None
    return labels_from_consensus(document, soft=soft)


def export_tasks(client: Any, project_id: int) -> list[dict[str, Any]]:
    """All tasks of a project with annotations and predictions, through the SDK's JSON export."""
    chunks = client.projects.exports.download_sync(
        project_id, export_type="JSON", download_all_tasks=True
    )
    tasks = json.loads(b"".join(chunks))
    if not isinstance(tasks, list):
        raise ValueError(f"Label Studio export of project {project_id} is not a task list")
    return tasks


def collect_labels(
    source: str,
    *,
    tasks: Sequence[dict[str, Any]] | None = None,
    consensus_path: Path | None = None,
    soft: bool = False,
) -> list[LabelledImage]:
    """Labels for a training job from ``source``; raises :class:`NoLabelsError` if none."""
    if source not in LABEL_SOURCES:
        raise ValueError(f"label source {source!r} is not one of {LABEL_SOURCES}")
    if source == "classify":
        labels = labels_from_classify_tasks(tasks or [])
        where = f"{len(tasks or [])} Classify tasks (no submitted {CLASS_CONTROL} annotations)"
    elif consensus_path is not None:
        labels = read_consensus(consensus_path, soft=soft)
        where = f"consensus file {consensus_path}"
    else:
        if soft:
            raise ValueError(
                "soft targets need the consensus.json export (set SLICERANK_CONSENSUS or --consensus)"
            )
        labels = labels_from_consensus_predictions(tasks or [])
        where = f"{len(tasks or [])} Classify tasks (no '{CONSENSUS_MODEL_VERSION}' predictions)"
    if not labels:
        raise NoLabelsError(f"no labels for source {source!r}: found none in {where}")
    return labels
