"""synth --dicom → ingest gives back the stacks, the slice order and no identifier."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pydicom
from PIL import Image

from cmr_ingest import ids
from cmr_ingest.manifest import read_manifest
from cmr_ingest.synth import TRUTH_NAME, cohort_patients

from .conftest import N_SCANS, SALT, SEED


def _truth(dicom_cohort):
    with (dicom_cohort / TRUTH_NAME).open(newline="") as fh:
        return {
            ids.image_id(SALT, r["sop_instance_uid"], int(r["frame"])): r
            for r in csv.DictReader(fh)
        }


def test_same_stacks_and_slice_order_as_ground_truth(dicom_cohort, ingested):
    out, report = ingested
    truth = _truth(dicom_cohort)
    rows = read_manifest(out)
    assert len(rows) == len(truth)
    assert {r["image_id"] for r in rows} == set(truth)
    stacks = defaultdict(list)
    for r in rows:
        stacks[r["scan_id"]].append(r)
    assert len(stacks) == N_SCANS
    for stack in stacks.values():
        stack.sort(key=lambda r: r["slice_index"])
        t = [truth[r["image_id"]] for r in stack]
        assert len({x["scan"] for x in t}) == 1, "a stack mixes scans"
        assert [int(x["slice_index"]) for x in t] == list(range(len(stack)))
        assert [r["n_slices"] for r in stack] == [len(stack)] * len(stack)
        for r, x in zip(stack, t, strict=True):
            assert r["position"] == float(x["position"])
            assert r["true_class"] == x["true_class"]
        positions = [r["position"] for r in stack]
        assert positions == sorted(positions)
    # The localiser of scan 3 is reported, not dropped silently.
    assert [s["reason"] for s in report.skipped_series] == ["not_short_axis"]
    counts = report.counts()
    assert counts["files"] == len(truth) + counts["files_skipped_with_series"] + counts["bad_files"]
    assert counts["bad_files"] == 0


def test_ingested_pixels_equal_png_mode(png_cohort, ingested):
    out, _ = ingested
    direct = {(r["position"], r["slice_index"]): r for r in read_manifest(png_cohort)}
    for r in read_manifest(out):
        d = direct[(r["position"], r["slice_index"])]
        a = np.asarray(Image.open(png_cohort.parent / d["path"]))
        b = np.asarray(Image.open(out / r["path"]))
        assert a.shape == b.shape
        assert np.array_equal(a, b)


def _png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return out


def test_no_identifier_anywhere_in_output(dicom_cohort, ingested):
    out, report = ingested
    secrets = set()
    for p in cohort_patients(N_SCANS, SEED):
        secrets.update(p.identifiers())
    # UIDs identify studies too: none may survive either.
    for f in dicom_cohort.rglob("IM*"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        secrets.update({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID})
        secrets.add(str(ds.PatientName))
    secrets = {s for s in secrets if len(s) >= 4}
    assert len(secrets) > 50
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == report.slices_written + 1  # PNGs + manifest (the report is beside it)
    for f in files:
        blob = f.read_bytes().lower()
        name = str(f.relative_to(out)).lower()
        for s in secrets:
            assert s.lower().encode() not in blob, f"{s!r} found in {f}"
            assert s.lower() not in name
        if f.suffix == ".png":
            assert set(_png_chunks(f.read_bytes())) == {b"IHDR", b"IDAT", b"IEND"}
    for f in out.parent.glob(f"{out.name}-ingest_report.*"):  # the report, beside the root
        blob = f.read_text().lower()
        assert not [s for s in secrets if s.lower() in blob], f
    rep = json.loads((out.parent / f"{out.name}-ingest_report.json").read_text())
    assert rep["counts"]["slices_written"] == report.slices_written


def test_reingest_gives_same_ids_and_other_salt_different(dicom_cohort, ingested, tmp_path):
    from cmr_ingest.ingest import ingest

    out, _ = ingested
    first = {r["image_id"] for r in read_manifest(out)}
    one_scan = dicom_cohort / "ST00001"
    ingest(one_scan, tmp_path / "a", salt=SALT)
    ingest(one_scan, tmp_path / "b", salt="another-salt-value")
    a = {r["image_id"] for r in read_manifest(tmp_path / "a")}
    b = {r["image_id"] for r in read_manifest(tmp_path / "b")}
    assert a and a <= first
    assert not a & b
    # No truth sidecar inside ST00001: position and class are unknown, not invented.
    assert all(
        r["position"] is None and r["true_class"] is None for r in read_manifest(tmp_path / "a")
    )
