"""The publisher: the consensus (ranking, scores, classes) out to disk and Label Studio.

:meth:`Publisher.consensus` is the export of INTERFACES.md; :meth:`Publisher.maybe_publish`
writes ``consensus.json``/``.csv`` and the Classify predictions once the engine is done and no
boundary question is open.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ranking_scheduler.service.ls_adapter import MODEL_VERSION
from ranking_scheduler.service.settings import SchedulerSettings
from ranking_scheduler.service.store import SubmissionStore
from slicerank_base import CLASSES

log = logging.getLogger(__name__)


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

    def load(self) -> None:
        """Read what was published before a restart."""
        self.published = self.store.get_state("published")

    def consensus(self) -> dict[str, Any]:
        """The consensus export (INTERFACES.md): ranking, scores, views, classes, thresholds."""
        with self.lock:
            engine = self._engine()
            ranking = engine.ranking()
            scores = engine.scores()
            views = engine.view_counts()
            classes = engine.classes()
            probs = engine.class_probabilities()
            thresholds = engine.thresholds()
            done = engine.done
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
                }
            )
        return {
            "model_version": MODEL_VERSION,
            "thresholds": thresholds,
            "done": bool(done),
            "published": self.published,
            "images": images,
        }

    def maybe_publish(self, *, questions_open: bool) -> bool:
        """Once the engine is done and no boundary question is open (``questions_open``), write
        consensus.json/csv and the Classify predictions (once)."""
        if self.published is not None:
            return False
        if questions_open:
            return False
        consensus = self.consensus()
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
        order = {c: i for i, c in enumerate(CLASSES)}
        classes = {
            im["image_id"]: (im["class"], im[f"p_{im['class']}"])
            for im in consensus["images"]
            if im["class"] in order
        }
        n = self.ls.publish_predictions(classes, list(self._images().values()))
        self.published = {
            "at": datetime.now(UTC).isoformat(),
            "predictions": n,
            "path": str(out / "consensus.json"),
        }
        self.store.set_state("published", self.published)
        log.info("published %d consensus classes to %s and Label Studio", n, out)
        return True
