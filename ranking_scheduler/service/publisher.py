"""The publisher: the consensus (ranking, scores, classes) out to disk and Label Studio.

:meth:`Publisher.consensus` is the export of INTERFACES.md; :meth:`Publisher.maybe_publish`
writes ``consensus.json``/``.csv`` and the Classify predictions once the engine is done and no
boundary question is open, and again, as a new ``version``, whenever the classes change after
that (a late answer, an edit, a deletion), so the files, ``/api/consensus`` and the predictions
the ML backend trains on never go stale.

Publishing is idempotent: Label Studio is brought to the wanted state (one ``ranking-consensus``
prediction per Classify task, holding its class) rather than sent a batch of new predictions,
so a crash between the import and saving the state, and the republish after it, leaves no
duplicates. A republish reads only the tasks whose class changed since the last complete sync;
the first publish, and the one after an interrupted sync, read every Classify task.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ranking_scheduler.service.ls_adapter import MODEL_VERSION, PROVENANCE_KEYS
from ranking_scheduler.service.settings import SchedulerSettings
from ranking_scheduler.service.store import SubmissionStore
from slicerank_base import CLASSES

log = logging.getLogger(__name__)

PUBLISHING_KEY = "publishing"
"""Store state key set while a sync of the predictions is under way (None once it finished)."""

CLASSES_KEY = "published_classes"
"""Store state key of the image -> class map the last complete sync left in Label Studio."""


class Publisher:
    """Consensus and predictions. ``engine`` returns the live engine, ``lock`` guards it;
    ``images`` returns the image pool (``image_id`` -> ``PoolImage``)."""

    def __init__(
        self,
        settings: SchedulerSettings,
        store: SubmissionStore,
        ls: Any,
        *,
        engine: Callable[[], Any],
        lock: threading.RLock,
        images: Callable[[], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.ls = ls
        self._engine = engine
        self.lock = lock
        self._images = images
        self.published: dict | None = None
        self._checked: int | None = None  # the engine generation last compared
        # The class of each image that Label Studio holds after the last complete sync; None
        # when not known for sure (never published, or a sync was interrupted): read it all.
        self._known: dict[str, str] | None = None

    def load(self) -> None:
        """Read what was published before a restart, and whether its sync finished."""
        self.published = self.store.get_state("published")
        finished = self.published is not None and self.store.get_state(PUBLISHING_KEY) is None
        self._known = self.store.get_state(CLASSES_KEY) if finished else None

    def consensus(self) -> dict[str, Any]:
        """The consensus export (INTERFACES.md): ranking, scores, views, classes, thresholds,
        and each image's provenance (``source`` seen/inferred/prior, ``ranked_by``,
        ``labelled_by``: distinct raters, ``labels``: single labels)."""
        with self.lock:
            engine = self._engine()
            ranking = engine.ranking()
            scores = engine.scores()
            views = engine.view_counts()
            classes = engine.classes()
            probs = engine.class_probabilities()
            thresholds = engine.thresholds()
            done = engine.done
            provenance = engine.provenance()
        images = []
        for rank, image_id in enumerate(ranking, start=1):
            mean, sd = scores[image_id]
            p = probs[image_id]
            images.append(
                {
                    "image_id": image_id,
                    "rank": rank,
                    "score_mean": float(mean),
                    "score_sd": float(sd),
                    "views": int(views[image_id]),
                    "class": classes[image_id],
                    "p_too_basal": float(p[0]),
                    "p_lv": float(p[1]),
                    "p_too_apical": float(p[2]),
                    # Where the class comes from: seen by raters (how many ranked it, how many
                    # labelled it), or inferred from its scan between seen neighbours.
                    **{
                        k: provenance[image_id][k]
                        for k in ("source", "ranked_by", "labelled_by", "labels")
                    },
                }
            )
        return {
            "model_version": MODEL_VERSION,
            "thresholds": thresholds,
            "done": bool(done),
            "published": self.published,
            "images": images,
        }

    def maybe_publish(self, *, questions_open: bool, generation: int | None = None) -> bool:
        """Once the engine is done and no boundary question is open (``questions_open``), write
        consensus.json/csv and the Classify predictions if the classes differ from what was
        published last (a new ``version``); returns whether it published. ``generation``
        changes whenever the engine does: an unchanged one skips the comparison."""
        if questions_open:
            return False
        if generation is not None and generation == self._checked:
            return False
        consensus = self.consensus()
        order = {c: i for i, c in enumerate(CLASSES)}
        classes = {
            im["image_id"]: (im["class"], im[f"p_{im['class']}"])
            for im in consensus["images"]
            if im["class"] in order
        }
        digest = classes_digest(classes)
        if self.published is not None and self.published.get("classes_digest") == digest:
            self._checked = generation
            return False
        version = int((self.published or {}).get("version", 0)) + 1
        consensus["version"] = version
        out = Path(self.settings.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "consensus.json.tmp"
        tmp.write_text(json.dumps(consensus, indent=2))
        tmp.replace(out / "consensus.json")
        columns = list(consensus["images"][0])
        with open(out / "consensus.csv.tmp", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(consensus["images"])
        (out / "consensus.csv.tmp").replace(out / "consensus.csv")
        # Marked before Label Studio is touched and cleared after the state is saved: a sync
        # that did not finish (a crash, an error) is followed by one that reads every task.
        self.store.set_state(PUBLISHING_KEY, {"version": version})
        known, self._known = self._known, None
        provenance = {
            im["image_id"]: {k: im[k] for k in PROVENANCE_KEYS} for im in consensus["images"]
        }
        changes = self.ls.sync_predictions(
            classes, list(self._images().values()), known=known, provenance=provenance
        )
        record = {
            "at": datetime.now(UTC).isoformat(),
            "version": version,
            "classes_digest": digest,
            "predictions": len(classes),
            "changes": changes,
            "path": str(out / "consensus.json"),
        }
        held = {image_id: c[0] for image_id, c in classes.items()}
        self.store.set_state(CLASSES_KEY, held)
        self.store.set_state("published", record)
        self.store.set_state(PUBLISHING_KEY, None)
        self.published, self._known = record, held
        self._checked = generation
        log.info(
            "published consensus version %d (%d classes; Label Studio: %s) to %s",
            version,
            len(classes),
            changes,
            out,
        )
        return True


def classes_digest(classes: dict[str, tuple[str, float]]) -> str:
    """A fingerprint of the image -> class map (the probabilities do not count: they move with
    every answer, while the predictions only need to follow the classes)."""
    blob = json.dumps(sorted((image_id, c[0]) for image_id, c in classes.items()))
    return hashlib.sha256(blob.encode()).hexdigest()
