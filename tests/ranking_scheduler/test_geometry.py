"""The scheduler hands the manifest's stack geometry to the engine (SCHEDULER_MANIFEST)."""

from __future__ import annotations

import csv

import pytest

from ranking_scheduler.service.geometry import load_stacks
from tests.ranking_scheduler.test_service_harness import InProcessScheduler, provision_setup

COLUMNS = ["image_id", "scan_id", "slice_index", "n_slices", "path", "position", "true_class"]


def _write(path, rows, columns=COLUMNS):
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def test_load_stacks_reads_scan_and_slice_order_never_the_true_position(tmp_path):
    rows = [
        {"image_id": "a", "scan_id": "s1", "slice_index": 0, "position": 0.9},
        {"image_id": "b", "scan_id": "s1", "slice_index": 3, "position": 0.1},
        {"image_id": "c", "scan_id": "s2", "slice_index": 1, "position": 0.5},
        {"image_id": "x", "scan_id": "s2", "slice_index": 2, "position": 0.5},
    ]
    path = _write(tmp_path / "manifest.csv", rows)
    # Only pool images; z is the slice index (the synthetic position is the answer key).
    assert load_stacks(path, ["a", "b", "c"]) == {
        "a": ("s1", 0.0),
        "b": ("s1", 3.0),
        "c": ("s2", 1.0),
    }
    assert load_stacks(tmp_path, ["a"]) == {"a": ("s1", 0.0)}  # the media root works too
    # A manifest with millimetres uses them.
    mm = [{**r, "z_mm": 10.0 * r["slice_index"] + 2.5} for r in rows]
    path_mm = _write(tmp_path / "mm.csv", mm, [*COLUMNS, "z_mm"])
    assert load_stacks(path_mm, ["b"]) == {"b": ("s1", 32.5)}


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        ([{"image_id": "a", "scan_id": "s1"}], ["image_id", "scan_id"], "lacks column"),
        ([{"image_id": "a", "scan_id": "s1", "slice_index": "top"}], COLUMNS, "line 2"),
        ([{"image_id": "a", "scan_id": "", "slice_index": 0}], COLUMNS, "empty scan_id"),
    ],
)
def test_load_stacks_names_what_is_wrong(tmp_path, rows, columns, message):
    path = _write(tmp_path / "manifest.csv", rows, columns)
    with pytest.raises(ValueError, match=message):
        load_stacks(path, ["a"])
    with pytest.raises(ValueError, match="is not a file"):
        load_stacks(tmp_path / "nowhere.csv", ["a"])


def test_scheduler_ranks_with_the_manifests_stacks(label_studio, tmp_path):
    setup = provision_setup(
        label_studio, tmp_path, n_scans=10, n_slices=4, SCHEDULER_MIN_OPEN_TASKS=2
    )
    manifest = _write(tmp_path / "manifest.csv", setup.rows)
    sched = InProcessScheduler(setup, manifest=str(manifest))
    try:
        engine = sched.service.engine
        scan_of = {r["image_id"]: r["scan_id"] for r in setup.rows}
        # The engine got the geometry: 10 scans, each slice's order from the manifest.
        layout = engine._posterior.layout
        assert layout is not None and layout.n_scans == 10
        for group in layout.groups:
            indices = [int(engine.image_ids[k].rsplit("-", 1)[1]) for k in group]
            assert indices == sorted(indices)
        # And uses it: every batch handed out shows 8 slices of 8 different scans.
        batches = engine.open_batches()
        assert batches
        for batch in batches:
            assert len({scan_of[i] for i in batch}) == len(batch) == 8
    finally:
        sched.stop()
