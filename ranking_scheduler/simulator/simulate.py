"""The label-efficiency study: simulated raters label a cohort under each strategy.

Effort is labelling time at the study's exchange rate (``raters.SECONDS_PER_LABEL`` per single
label, boundary labels included; ``raters.SECONDS_PER_BATCH`` per ranked batch). At every
``checkpoint_hours`` the current classes are scored against the true classes (images not
labelled yet count as ``lv``, the majority class, for every strategy alike). The point is
taken before the first task that would carry the time past the checkpoint, so a budget's
point is what that budget buys, whatever the strategy's task costs (``_Checkpoints``).

Strategies: ``one_at_a_time`` (each image once, by one rater in turn, in random order, as in
the study), and the engine's ``paper``, ``random``, ``bayes`` (= ``ranking``), ``single`` and
``hybrid``. ``single`` and ``hybrid`` are served through ``next_task`` (a batch costs
``SECONDS_PER_BATCH``, a single label ``SECONDS_PER_LABEL``); ``single`` is the product's
one-at-a-time strategy that knows the stacks. ``paper`` probes the cuts
after its ranking is complete, as the study did; the probit strategies ask a boundary question
after each batch whenever the engine's pacing (``next_boundary_query``) offers one, as the
scheduler service does, and use what is left of the budget at the end. (Until 2026-12-06 the
simulator waited until a fifth of the images had been seen and then asked one question per 8
batches, a schedule the service never had: the cuts stayed at the class-mix prior for the first
tenth of the budget, and accuracy there dipped below what the stacks' geometry alone gives.)
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from ranking_scheduler.engine.ranking import RankingEngine
from ranking_scheduler.simulator.raters import (
    SECONDS_PER_BATCH,
    SECONDS_PER_LABEL,
    RaterPanel,
    RaterParams,
    cuts_from_classes,
    study_positions,
    true_class,
)
from ranking_scheduler.simulator.stack_labels import single_labeller
from slicerank_base import CLASSES

SIM_STRATEGIES = ("one_at_a_time", "paper", "random", "bayes", "ranking", "single", "hybrid")
"""Strategies the simulator runs."""
CURVE_KEYS = ("batches", "views", "hours", "boundary_labels", "accuracy", "macro_f1", "kendall_tau")
"""Keys of every curve point and of ``final``."""


@dataclass(frozen=True)
class Cohort:
    """Images with true positions (0 basal .. 1 apical) and true classes; ``stacks`` maps each
    image to ``(scan_id, z)`` (mm along its stack, base to apex) where the geometry is known."""

    ids: list[str]
    positions: dict[str, float]
    classes: dict[str, str]
    stacks: dict[str, tuple[str, float]] | None = None

    @property
    def cuts(self) -> tuple[float, float]:
        """The true cut positions implied by positions and classes."""
        return cuts_from_classes(self.positions, self.classes)


def study_cohort(n: int = 3323, seed: int = 0) -> Cohort:
    """A synthetic study-like cohort (uniform positions, the study's 20/73/7 class mix)."""
    pos = study_positions(n, seed)
    return Cohort(list(pos), pos, {i: true_class(x) for i, x in pos.items()})


STACK_SPACING_MM = (7.0, 10.5)
"""Slice spacing of a simulated scan (thickness plus gap), uniform in this range."""
STACK_MISSING = 0.05
"""Chance that a planned slice is missing from its stack (a gap)."""
HEART_MM = (105.0, 12.0)
"""Mean and sd of the mm one unit of true position spans in a scan (the heart's size)."""


INCOMPLETE_SHARE = 0.14
"""Share of UK Biobank short-axis stacks that miss the base or the apex (Tarroni et al. 2020,
"Learning-based quality control for cardiac MR images", IEEE TMI)."""


def stack_cohort(n: int = 3323, seed: int = 0, incomplete: float = 0.0) -> Cohort:
    """A study-like cohort of whole short-axis stacks (about 300 scans for 3,323 slices).

    Each scan covers true positions ``a ~ U(0, 0.25)`` (from above the base) to
    ``b ~ U(0.89, 1)`` (past the apex) over ``(b - a) L`` mm, ``L ~ N(105, 12)`` mm (the
    heart's size), at its own slice spacing (7-10.5 mm, so 7-14 slices); each planned slice
    goes missing with probability 0.05 (gaps). Along a stack the true position rises
    monotonically but not linearly: ``x = a + (b - a) w(t)`` with ``t`` the planned slice's
    place in 0..1 and a scan-specific warp ``w(t) = (t + c t (1 - t))^g``,
    ``c ~ U(-0.8, 0.8)``, ``log g ~ N(0.3, 0.25)``. With the study's cuts the class mix is
    about 19/75/6 (the study: 20/73/7). Image ids are shuffled so that nothing but ``stacks``
    tells which slices share a scan.

    ``incomplete``: the share of scans whose coverage is incomplete (``INCOMPLETE_SHARE`` is
    UK Biobank's): half of them start below the base (``a ~ U(0.3, 0.45)``: no too_basal slice,
    or hardly one), half stop above the apex (``b ~ U(0.75, 0.9)``: no too_apical slice), so
    the geometry prior's "every stack runs base to apex" is wrong for them.
    """
    if n < 1:
        raise ValueError(f"n: need at least 1 image, got {n}")
    if not 0 <= incomplete <= 1:
        raise ValueError(f"incomplete: must be a share in 0..1, got {incomplete}")
    rng = np.random.default_rng([seed, 13])
    rows: list[tuple[str, float, float]] = []
    scan = 0
    while len(rows) < n:
        a = rng.uniform(0.0, 0.25)
        b = rng.uniform(0.89, 1.0)
        if incomplete and rng.random() < incomplete:
            if rng.random() < 0.5:
                a = rng.uniform(0.3, 0.45)  # misses the base
            else:
                b = rng.uniform(0.75, 0.9)  # misses the apex
        c = rng.uniform(-0.8, 0.8)
        g = rng.lognormal(0.3, 0.25)
        heart = max(60.0, rng.normal(*HEART_MM))
        spacing = rng.uniform(*STACK_SPACING_MM)
        planned = max(3, round((b - a) * heart / spacing) + 1)
        z0 = rng.uniform(-30.0, 30.0)  # where the stack starts in the scanner's frame
        t = np.linspace(0.0, 1.0, planned)
        x = a + (b - a) * (t + c * t * (1 - t)) ** g
        keep = rng.random(planned) >= STACK_MISSING
        for k in np.flatnonzero(keep):
            rows.append((f"scan{scan:04d}", float(z0 + spacing * k), float(x[k])))
        scan += 1
    rows = rows[:n]
    names = [f"img{k:05d}" for k in rng.permutation(n)]
    pos = {name: x for name, (_, _, x) in zip(names, rows, strict=True)}
    stacks = {name: (sid, z) for name, (sid, z, _) in zip(names, rows, strict=True)}
    ids = sorted(pos)
    return Cohort(
        ids,
        {i: pos[i] for i in ids},
        {i: true_class(pos[i]) for i in ids},
        {i: stacks[i] for i in ids},
    )


def read_cohort(manifest: str | Path) -> Cohort:
    """Positions and true classes from a ``cmr_ingest`` manifest (synthetic data)."""
    path = Path(manifest)
    if not path.is_file():
        raise ValueError(f"manifest: {path} is not a file")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"manifest: {path} has no rows")
    missing = {"image_id", "position", "true_class"} - set(rows[0])
    if missing:
        raise ValueError(f"manifest: {path} lacks columns {sorted(missing)} (synthetic data only)")
    pos, cls, stacks = {}, {}, {}
    # The manifest gives each slice's scan and its index from the base; the index stands in
    # for z (the engine only needs the order and the relative spacing within a scan).
    geometry = {"scan_id", "slice_index"} <= set(rows[0])
    for n, row in enumerate(rows, start=2):
        try:
            pos[row["image_id"]] = float(row["position"])
        except ValueError:
            raise ValueError(f"manifest: {path} line {n}: position {row['position']!r}") from None
        if row["true_class"] not in CLASSES:
            raise ValueError(f"manifest: {path} line {n}: true_class {row['true_class']!r}")
        cls[row["image_id"]] = row["true_class"]
        if geometry and row["scan_id"] and row["slice_index"]:
            try:
                stacks[row["image_id"]] = (row["scan_id"], float(row["slice_index"]))
            except ValueError:
                raise ValueError(
                    f"manifest: {path} line {n}: slice_index {row['slice_index']!r}"
                ) from None
    return Cohort(list(pos), pos, cls, stacks or None)


def score(
    cohort: Cohort, predicted: Mapping[str, str], order: Sequence[str] | None
) -> dict[str, float]:
    """Accuracy and macro F1 of ``predicted`` classes; Kendall tau of ``order`` (basal first)
    against the true positions, or of the class ordinal when there is no order."""
    truth = np.array([CLASSES.index(cohort.classes[i]) for i in cohort.ids])
    pred = np.array([CLASSES.index(predicted.get(i, "lv")) for i in cohort.ids])
    acc = float((truth == pred).mean())
    f1s = []
    for c in range(3):
        tp = float(((pred == c) & (truth == c)).sum())
        denom = float((pred == c).sum() + (truth == c).sum())
        f1s.append(2 * tp / denom if denom else 1.0)
    x = np.array([cohort.positions[i] for i in cohort.ids])
    if order is not None:
        rank = {i: k for k, i in enumerate(order)}
        tau = kendalltau([rank[i] for i in cohort.ids], x).statistic
    else:
        tau = kendalltau(pred, x).statistic
    return {"accuracy": acc, "macro_f1": float(np.mean(f1s)), "kendall_tau": float(tau)}


def simulate(
    cohort: Cohort,
    strategy: str,
    *,
    n_raters: int = 3,
    seed: int = 0,
    params: RaterParams | None = None,
    batch_cap: int | None = None,
    hours_cap: float | None = None,
    checkpoint_hours: float = 0.25,
    engine_options: Mapping[str, Any] | None = None,
    progress: Any = None,
    stacks: bool = False,
) -> dict[str, Any]:
    """Run one strategy on ``cohort`` with a simulated panel; returns the JSON-ready result.

    ``progress`` is an optional tqdm-like bar (``update(n)``) advanced per batch or label.
    ``stacks``: use the cohort's stack geometry (the engine gets ``stacks=``; one-at-a-time
    becomes the stack-aware ``StackLabeller``, which asks where a scan's classes are least
    certain, until the hours cap or 5 hours).
    """
    if strategy not in SIM_STRATEGIES:
        raise ValueError(f"strategy: {strategy!r} is not one of {', '.join(SIM_STRATEGIES)}")
    if checkpoint_hours <= 0:
        raise ValueError(f"checkpoint_hours: must be > 0, got {checkpoint_hours}")
    if params is None:
        params = RaterParams(cuts=cohort.cuts)
    if stacks and cohort.stacks is None:
        raise ValueError("stacks: this cohort has no stack geometry (use stack_cohort)")
    panel = RaterPanel.from_positions(cohort.positions, n_raters, seed, params)
    info: dict[str, Any] = {}
    if strategy == "one_at_a_time" and stacks:
        curve = _stack_labels(cohort, panel, seed, hours_cap, checkpoint_hours, progress)
    elif strategy == "one_at_a_time":
        curve = _one_at_a_time(cohort, panel, seed, hours_cap, checkpoint_hours, progress)
    elif strategy in ("single", "hybrid"):
        curve = _task_run(
            cohort,
            panel,
            strategy,
            seed,
            batch_cap,
            hours_cap,
            checkpoint_hours,
            {**(engine_options or {}), **({"stacks": cohort.stacks} if stacks else {})},
            progress,
            info,
        )
    else:
        curve = _engine_run(
            cohort,
            panel,
            strategy,
            seed,
            batch_cap,
            hours_cap,
            checkpoint_hours,
            {**(engine_options or {}), **({"stacks": cohort.stacks} if stacks else {})},
            progress,
            info,
        )
    return {"strategy": strategy, "seed": seed, "curve": curve, "final": curve[-1], **info}


def _point(
    batches: int, views: int, singles: int, boundary: int, metrics: dict[str, float]
) -> dict[str, Any]:
    """One curve point; ``singles`` one-at-a-time labels and ``boundary`` labels cost time."""
    hours = (batches * SECONDS_PER_BATCH + (singles + boundary) * SECONDS_PER_LABEL) / 3600
    return {
        "batches": batches,
        "views": views,
        "hours": round(hours, 4),
        "boundary_labels": boundary,
        **metrics,
    }


class _Checkpoints:
    """The curve of a run: a point before the first task that would carry the clinician time past
    the next multiple of ``step`` hours, and one at the end.

    A point taken after such a task would score the state of a budget that was overspent, by
    up to one task, and a study reading "the last point within the budget" would then read the
    point before it, up to a whole step early (batches and labels cost different times, so
    strategies drifted apart by different amounts).
    """

    def __init__(self, step: float, hours: Any, snapshot: Any) -> None:
        self._step = step
        self._next = step
        self._hours = hours
        self._snapshot = snapshot
        self.curve: list[dict[str, Any]] = [snapshot()]

    def before(self, seconds: float) -> None:
        """Call before a task of ``seconds``: take the checkpoints it would step past."""
        spent = self._hours()
        crossed = False
        while spent + seconds / 3600 > self._next + 1e-12:
            self._next += self._step
            crossed = True
        if crossed and self.curve[-1]["hours"] < round(spent, 4):
            self.curve.append(self._snapshot())

    def end(self) -> list[dict[str, Any]]:
        """The curve with the final state appended."""
        self.curve.append(self._snapshot())
        return self.curve


def _one_at_a_time(
    cohort: Cohort,
    panel: RaterPanel,
    seed: int,
    hours_cap: float | None,
    checkpoint_hours: float,
    progress: Any,
) -> list[dict[str, Any]]:
    order = [cohort.ids[k] for k in np.random.default_rng([seed, 11]).permutation(len(cohort.ids))]
    limit = len(order)
    if hours_cap is not None:
        limit = min(limit, int(hours_cap * 3600 / SECONDS_PER_LABEL))
    labels: dict[str, str] = {}
    points = _Checkpoints(
        checkpoint_hours,
        lambda: len(labels) * SECONDS_PER_LABEL / 3600,
        lambda: _point(0, len(labels), len(labels), 0, score(cohort, labels, None)),
    )
    for j, image_id in enumerate(order[:limit], start=1):
        points.before(SECONDS_PER_LABEL)
        labels[image_id] = panel.raters[(j - 1) % len(panel.raters)].classify(image_id)
        if progress is not None:
            progress.update(1)
    return points.end()


def _stack_labels(
    cohort: Cohort,
    panel: RaterPanel,
    seed: int,
    hours_cap: float | None,
    checkpoint_hours: float,
    progress: Any,
) -> list[dict[str, Any]]:
    """One label at a time, each where a scan's classes are least certain (``stack_labels``)."""
    labeller = single_labeller(cohort.ids, cohort.stacks or {}, seed=seed)
    limit = int((hours_cap if hours_cap is not None else 5.0) * 3600 / SECONDS_PER_LABEL)
    done = 0
    points = _Checkpoints(
        checkpoint_hours,
        lambda: done * SECONDS_PER_LABEL / 3600,
        lambda: _point(0, done, done, 0, score(cohort, labeller.classes(), None)),
    )
    for j in range(1, limit + 1):
        rater = panel.raters[(j - 1) % len(panel.raters)]
        points.before(SECONDS_PER_LABEL)
        image_id = labeller.next_query(rater.name)
        if image_id is None:
            break
        labeller.submit(image_id, rater.name, rater.classify(image_id))
        done = j
        if progress is not None:
            progress.update(1)
    return points.end()


def _stopped(engine: RankingEngine, info: dict[str, Any], reason: str | None) -> None:
    """What the engine said when the run stopped serving (``reason``), its advice and where
    its labels come from."""
    progress = engine.progress()
    info["stop_reason"] = reason
    info["advice"] = progress["advice"]
    sources = [p["source"] for p in engine.provenance().values()]
    info["provenance"] = {s: sources.count(s) for s in ("seen", "inferred", "prior")}


def _task_run(
    cohort: Cohort,
    panel: RaterPanel,
    strategy: str,
    seed: int,
    batch_cap: int | None,
    hours_cap: float | None,
    checkpoint_hours: float,
    options: dict[str, Any],
    progress: Any,
    info: dict[str, Any],
) -> list[dict[str, Any]]:
    """``single`` / ``hybrid``: each rater in turn asks ``next_task`` and answers it (a batch
    or a single label); boundary questions as ``_engine_run`` asks them, while batches come."""
    engine = RankingEngine(cohort.ids, strategy=strategy, seed=seed, **options)
    raters = panel.raters
    batches = labels = views = tasks = 0

    def hours() -> float:
        return (batches * SECONDS_PER_BATCH + labels * SECONDS_PER_LABEL) / 3600

    def snapshot() -> dict[str, Any]:
        return _point(batches, views, 0, labels, score(cohort, engine.classes(), engine.ranking()))

    points = _Checkpoints(checkpoint_hours, hours, snapshot)

    def ask(final: bool = False) -> bool:
        nonlocal labels
        q = engine.next_boundary_query(final=final)
        if q is None:
            return False
        points.before(SECONDS_PER_LABEL)
        rater = raters[labels % len(raters)]
        engine.submit_boundary(q, rater.classify(q), rater.name)
        labels += 1
        return True

    while True:
        if batch_cap is not None and batches >= batch_cap:
            break
        if hours_cap is not None and hours() + SECONDS_PER_LABEL / 3600 > hours_cap:
            break
        rater = raters[tasks % len(raters)]
        task = engine.next_task(rater.name)
        if task is None:
            break
        tasks += 1
        if task.kind == "rank":
            if hours_cap is not None and hours() + SECONDS_PER_BATCH / 3600 > hours_cap:
                engine.release(list(task.image_ids))
                break
            points.before(SECONDS_PER_BATCH)
            engine.submit(rater.name, rater.rank(list(task.image_ids)))
            batches += 1
            views += len(task.image_ids)
            ask()  # when the engine's pacing offers a question, as the service asks
        else:
            image = task.image_ids[0]
            points.before(SECONDS_PER_LABEL)
            engine.submit_boundary(image, rater.classify(image), rater.name)
            labels += 1
        if progress is not None:
            progress.update(1)
    reason = engine.progress()["stop_reason"]
    while (hours_cap is None or hours() + SECONDS_PER_LABEL / 3600 <= hours_cap) and ask(True):
        pass
    _stopped(engine, info, reason)
    return points.end()


def _engine_run(
    cohort: Cohort,
    panel: RaterPanel,
    strategy: str,
    seed: int,
    batch_cap: int | None,
    hours_cap: float | None,
    checkpoint_hours: float,
    options: dict[str, Any],
    progress: Any,
    info: dict[str, Any],
) -> list[dict[str, Any]]:
    engine = RankingEngine(cohort.ids, strategy=strategy, seed=seed, **options)
    raters = panel.raters
    batches = labels = 0

    def snapshot() -> dict[str, Any]:
        views = int(sum(engine.view_counts().values()))
        return _point(batches, views, 0, labels, score(cohort, engine.classes(), engine.ranking()))

    def hours() -> float:
        return (batches * SECONDS_PER_BATCH + labels * SECONDS_PER_LABEL) / 3600

    points = _Checkpoints(checkpoint_hours, hours, snapshot)

    def ask(final: bool = False) -> bool:
        nonlocal labels
        q = engine.next_boundary_query(final=final)
        if q is None:
            return False
        points.before(SECONDS_PER_LABEL)
        engine.submit_boundary(q, raters[labels % len(raters)].classify(q))
        labels += 1
        return True

    while True:
        if batch_cap is not None and batches >= batch_cap:
            break
        if hours_cap is not None and hours() + SECONDS_PER_BATCH / 3600 > hours_cap:
            break
        rater = raters[batches % len(raters)]
        batch = engine.next_batch(rater.name)
        if not batch:
            break
        points.before(SECONDS_PER_BATCH)
        engine.submit(rater.name, rater.rank(batch))
        batches += 1
        if progress is not None:
            progress.update(1)
        if strategy != "paper":
            ask()  # when the engine's pacing offers a question, as the service asks
    # The rest of the boundary budget (all of it for paper: the study probed at the end).
    reason = engine.progress()["stop_reason"]
    while (hours_cap is None or hours() + SECONDS_PER_LABEL / 3600 <= hours_cap) and ask(True):
        pass
    _stopped(engine, info, reason)
    return points.end()
