"""Garbage never stops a run, is never dropped silently, and good files still come through."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from cmr_ingest.errors import REASONS
from cmr_ingest.ingest import ingest, locate_files
from cmr_ingest.manifest import read_manifest
from cmr_ingest.synth import cohort_patients

from .conftest import SALT, SEED


def _files(series_dir):
    return sorted(p for p in series_dir.iterdir() if p.is_file())


@pytest.fixture()
def messy(dicom_cohort, tmp_path):
    """Two good scans plus one of each kind of bad file; returns (src, expected reasons)."""
    src = tmp_path / "src"
    shutil.copytree(dicom_cohort / "ST00001", src / "ST00001")
    shutil.copytree(dicom_cohort / "ST00002", src / "ST00002")
    good = len(_files(src / "ST00001" / "SE000012")) + len(_files(src / "ST00002" / "SE000012"))
    # A folder named after the patient, as some exports do: must be redacted in the report.
    patient = cohort_patients(6, SEED)[2]
    family = patient.name.split("^")[0]
    # (lower-case "x_" sorts after "ST…", so the original files are read first)
    odd = src / f"x_{family}_{patient.patient_id}"
    odd.mkdir()
    expected = {}

    (odd / "notes.dcm").write_text("Referral letter: please scan the heart.\n")
    expected["notes.dcm"] = "not_dicom"

    third = _files(dicom_cohort / "ST00003" / "SE000012")
    data = third[0].read_bytes()
    (odd / "truncated.dcm").write_bytes(data[: len(data) - 5000])
    expected["truncated.dcm"] = "decode_failed"

    ds = pydicom.dcmread(third[1])
    del ds.PixelData
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(odd / "nopixels.dcm")
    expected["nopixels.dcm"] = "no_pixel_data"
    shutil.copy(get_testdata_file("rtplan.dcm"), odd / "rtplan")
    expected["rtplan"] = "no_pixel_data"

    # Mixed series: a slice of scan 3 (other orientation and matrix) claiming scan 1's series.
    s1 = pydicom.dcmread(_files(src / "ST00001" / "SE000012")[0], stop_before_pixels=True)
    ds = pydicom.dcmread(third[2])
    ds.SeriesInstanceUID = s1.SeriesInstanceUID
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(odd / "mixed.dcm")
    expected["mixed.dcm"] = "inconsistent_series"

    # The same instance twice (a copy of a good file).
    shutil.copy(_files(src / "ST00002" / "SE000012")[0], odd / "copy_of_good")
    expected["copy_of_good"] = "duplicate_instance"

    # Pixel data declared in a syntax no decoder handles (MPEG-2 video).
    ds = pydicom.dcmread(third[3])
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = encapsulate([ds.PixelData])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.save_as(odd / "mpeg.dcm")
    expected["mpeg.dcm"] = "unsupported_transfer_syntax"
    return src, expected, good, patient


def test_bad_files_reported_with_reasons_and_good_files_through(messy, tmp_path):
    src, expected, good, patient = messy
    report = ingest(src, tmp_path / "out", salt=SALT)
    # Files are named by hashed ids (no folder name: it may be the patient's); the operator
    # finds them again with the salt.
    where = locate_files(src, SALT, {b["file"] for b in report.bad_files})
    got = {where[b["file"]].name: b["reason"] for b in report.bad_files}
    # The mpeg file is alone in its series, so its stack is dropped after decoding: listed too.
    assert got == expected
    for b in report.bad_files:
        assert b["reason"] in REASONS
        assert b["file"].startswith("file-") and where[b["file"]].parent.name.startswith("x_")
    unsupported = next(b for b in report.bad_files if b["reason"] == "unsupported_transfer_syntax")
    assert "MPEG2" in unsupported["detail"] and "JPEG 2000" in unsupported["detail"]
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == good
    assert len({r["scan_id"] for r in rows}) == 2
    assert report.counts()["by_reason"]["decode_failed"] == 1
    text = (tmp_path / "out-ingest_report.txt").read_text()
    blob = (tmp_path / "out-ingest_report.json").read_text()
    for secret in patient.identifiers():
        assert secret.lower() not in text.lower()
        assert secret.lower() not in blob.lower()
    assert json.loads(blob)["counts"]["bad_files"] == len(expected)


def test_truncated_slice_leaves_rest_of_stack_in_order(dicom_cohort, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dicom_cohort / "ST00002", src)
    files = _files(src / "SE000012")
    victim = files[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[:-3000])
    report = ingest(src, tmp_path / "out", salt=SALT, truth=dicom_cohort / "synth_truth.csv")
    rows = sorted(read_manifest(tmp_path / "out"), key=lambda r: r["slice_index"])
    assert len(rows) == len(files) - 1
    assert [r["n_slices"] for r in rows] == [len(files) - 1] * len(rows)
    assert [r["position"] for r in rows] == sorted(r["position"] for r in rows)
    assert [b["reason"] for b in report.bad_files] == ["decode_failed"]


def test_empty_and_missing_source(tmp_path):
    (tmp_path / "empty").mkdir()
    report = ingest(tmp_path / "empty", tmp_path / "out", salt=SALT)
    assert report.slices_written == 0 and report.files == 0
    assert read_manifest(tmp_path / "out") == []
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ingest(tmp_path / "nowhere", tmp_path / "out2", salt=SALT)
