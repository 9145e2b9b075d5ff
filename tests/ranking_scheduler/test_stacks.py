"""Stack geometry: the per-scan prior, monotone classes, batches of distinct scans, replay,
validation, and the stack-aware one-at-a-time baseline."""

from __future__ import annotations

import numpy as np
import pytest

from ranking_scheduler import RankingEngine
from ranking_scheduler.engine.stacks import monotone_classes, stack_layout
from ranking_scheduler.simulator.raters import RaterPanel, RaterParams
from ranking_scheduler.simulator.simulate import score, simulate, stack_cohort
from ranking_scheduler.simulator.stack_labels import StackLabeller
from slicerank_base import CLASSES


@pytest.fixture(scope="module")
def cohort():
    return stack_cohort(400, seed=2)


def _drive(engine, panel, batches, log=None):
    for b in range(batches):
        rater = panel.raters[b % len(panel.raters)]
        batch = engine.next_batch(rater.name)
        if not batch:
            return b
        ordered = rater.rank(batch)
        engine.submit(rater.name, ordered)
        if log is not None:
            log.append((rater.name, ordered))
    return batches


def _reads_in_order(classes, cohort):
    """Every scan's classes, base to apex, never step back."""
    by_scan = {}
    for i, (scan, z) in cohort.stacks.items():
        by_scan.setdefault(scan, []).append((z, CLASSES.index(classes[i])))
    for members in by_scan.values():
        read = [c for _, c in sorted(members)]
        if any(b < a for a, b in zip(read, read[1:], strict=False)):
            return False
    return True


def test_stack_cohort_has_whole_scans_with_gaps_and_different_spacing():
    c = stack_cohort(3323, seed=0)
    scans = {}
    for i, (scan, z) in c.stacks.items():
        scans.setdefault(scan, []).append((z, c.positions[i]))
    assert len(c.ids) == 3323 and 280 <= len(scans) <= 360
    gaps, spacings = 0, set()
    for members in scans.values():
        members.sort()
        steps = np.diff([z for z, _ in members])
        # Anatomy rises monotonically from base to apex along every stack.
        assert all(b > a for (_, a), (_, b) in zip(members, members[1:], strict=False))
        if steps.size:
            gaps += int((steps > 1.5 * steps.min()).sum())
            spacings.add(round(float(steps.min()), 1))
    assert gaps > 50 and len(spacings) > 20
    mix = [sum(v == k for v in c.classes.values()) / 3323 for k in CLASSES]
    assert abs(mix[0] - 0.20) < 0.03 and abs(mix[2] - 0.074) < 0.03


def test_stack_layout_validates_and_normalises_spacing():
    ids = ["a", "b", "c", "d"]
    layout = stack_layout(ids, {"a": ("s1", 20.0), "b": ("s1", 0.0), "c": ("s1", 10.0)})
    assert layout.n_scans == 2  # "d" has no geometry and stands alone
    assert list(layout.groups[0]) == [1, 2, 0]  # base to apex by z
    assert np.allclose(layout.u[0], [0.0, 1.0, 2.0])  # one unit = the typical spacing
    bad = [
        ({"x": ("s1", 0.0)}, "not in the pool"),
        ({"a": ("s1",)}, "expected \\(scan_id, z\\)"),
        ({"a": ("", 1.0)}, "scan_id"),
        ({"a": ("s1", "top")}, "is not a number"),
        ({"a": ("s1", float("nan"))}, "not finite"),
        ({"a": ("s1", 1.0), "b": ("s1", 1.0)}, "two slices at z"),
    ]
    for stacks, message in bad:
        with pytest.raises(ValueError, match=message):
            RankingEngine(ids, stacks=stacks, batch_size=2, n_anchors=0)


def test_monotone_classes_never_step_back():
    padded = np.array([[0, 1, 2, 3], [4, 5, -1, -1]])
    # Slice 1 alone looks too_basal between two lv slices; the decoding must not read
    # lv, too_basal, lv.
    p = np.array(
        [
            [0.6, 0.4, 0.0],
            [0.1, 0.9, 0.0],
            [0.7, 0.3, 0.0],
            [0.0, 0.2, 0.8],
            [0.0, 0.2, 0.8],
            [0.0, 0.6, 0.4],
        ]
    )
    out = monotone_classes(np.log(p + 1e-12), padded)
    # Best ordered reading: 0.6 x 0.9 x 0.3 x 0.8 (too_basal, lv, lv, too_apical) beats
    # 0.6 x 0.1 x 0.7 x 0.8 (three too_basal) and every other ordered sequence.
    assert list(out[:4]) == [0, 1, 1, 2]
    # Slice-by-slice argmax would read too_apical, lv; ordered: 0.8 x 0.4 beats 0.2 x 0.6.
    assert list(out[4:]) == [2, 2]


def test_batches_hold_distinct_scans_and_classes_read_in_order(cohort):
    engine = RankingEngine(cohort.ids, strategy="bayes", seed=1, stacks=cohort.stacks)
    panel = RaterPanel.from_positions(cohort.positions, seed=1)
    for b in range(60):
        rater = panel.raters[b % 3]
        batch = engine.next_batch(rater.name)
        assert len({cohort.stacks[i][0] for i in batch}) == len(batch) == 8
        engine.submit(rater.name, rater.rank(batch))
        if b % 6 == 5:
            q = engine.next_boundary_query()
            if q is not None:
                engine.submit_boundary(q, panel.raters[0].classify(q))
    assert _reads_in_order(engine.classes(), cohort)
    # Slices never shown get a place from their scan's shown neighbours.
    views = engine.view_counts()
    unseen = [i for i in cohort.ids if views[i] == 0]
    sd = engine.scores()
    assert unseen and np.mean([sd[i][1] for i in unseen]) < 0.6


def test_random_with_stacks_also_uses_distinct_scans(cohort):
    engine = RankingEngine(cohort.ids, strategy="random", seed=3, stacks=cohort.stacks)
    for _ in range(20):
        batch = engine.next_batch("r1")
        assert len({cohort.stacks[i][0] for i in batch}) == 8
        engine.submit("r1", sorted(batch, key=cohort.positions.__getitem__))


def test_stacks_place_a_pool_better_than_no_stacks_at_the_same_effort(cohort):
    panel = RaterPanel.from_positions(
        cohort.positions, seed=4, params=RaterParams(abs_difficulty=1.0, cuts=cohort.cuts)
    )
    taus = {}
    for name, stacks in (("stacks", cohort.stacks), ("none", None)):
        engine = RankingEngine(cohort.ids, strategy="bayes", seed=4, stacks=stacks)
        _drive(engine, panel, 25)  # half a view per image
        taus[name] = score(cohort, engine.classes(), engine.ranking())["kendall_tau"]
    assert taus["stacks"] > taus["none"] + 0.1


def test_replay_with_stacks_gives_identical_scores(cohort):
    panel = RaterPanel.from_positions(cohort.positions, seed=5)
    live = RankingEngine(cohort.ids, strategy="bayes", seed=5, stacks=cohort.stacks)
    log = []
    _drive(live, panel, 40, log)
    rebuilt = RankingEngine(cohort.ids, strategy="bayes", seed=5, stacks=cohort.stacks)
    for rater, ordered in log:
        rebuilt.submit(rater, ordered, require_open=False)
    assert rebuilt.scores() == live.scores()


def test_without_stacks_nothing_changes(cohort):
    """``stacks=None`` is today's engine: same batches and scores as not passing it."""
    panel = RaterPanel.from_positions(cohort.positions, seed=6)
    a = RankingEngine(cohort.ids, strategy="bayes", seed=6)
    b = RankingEngine(cohort.ids, strategy="bayes", seed=6, stacks=None)
    _drive(a, panel, 15)
    panel = RaterPanel.from_positions(cohort.positions, seed=6)
    _drive(b, panel, 15)
    assert a.scores() == b.scores() and a.open_batches() == b.open_batches()


def test_stack_labeller_asks_where_a_scan_is_uncertain_and_decodes_in_order(cohort):
    panel = RaterPanel.from_positions(cohort.positions, seed=7)
    lab = StackLabeller(cohort.ids, cohort.stacks, seed=7)
    asked = []
    for j in range(200):
        rater = panel.raters[j % 3]
        q = lab.next_query(rater.name)
        asked.append(q)
        lab.submit(q, rater.name, rater.classify(q))
    classes = lab.classes()
    assert _reads_in_order(classes, cohort)
    # Half a label per slice, but asked near the transitions: better than labelling at random.
    acc = score(cohort, classes, None)["accuracy"]
    assert acc > 0.85
    # A rater is never asked about a slice twice.
    for r in range(3):
        mine = asked[r::3]
        assert len(set(mine)) == len(mine)
    with pytest.raises(ValueError, match="cls"):
        lab.submit(cohort.ids[0], "r1", "apex")


def test_simulate_with_stacks_runs_every_strategy(cohort):
    for strategy in ("one_at_a_time", "bayes", "random"):
        r = simulate(cohort, strategy, seed=1, stacks=True, hours_cap=0.5)
        assert r["final"]["hours"] <= 0.5 + 1e-9 and r["final"]["accuracy"] > 0.7
    with pytest.raises(ValueError, match="no stack geometry"):
        from ranking_scheduler.simulator.simulate import study_cohort

        simulate(study_cohort(50), "bayes", stacks=True)


def test_simulate_cli_with_stacks_writes_the_agreed_json(tmp_path):
    import json

    from slicerank.cli import main

    out = tmp_path / "sim.json"
    args = ["simulate", "--stacks", "--strategy", "bayes", "--images", "200", "--seed", "2"]
    assert main([*args, "--hours-cap", "0.3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {
        "strategy",
        "seed",
        "curve",
        "final",
        "stop_reason",
        "advice",
        "provenance",
    }
    assert result["final"]["batches"] > 0 and result["final"]["hours"] <= 0.3 + 1e-9
