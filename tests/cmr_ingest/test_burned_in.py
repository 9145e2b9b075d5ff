"""Burned-in text (issue 15): files whose header says their pixels may carry text are excluded
by default with a report line; an opt-in pixel check finds text drawn into a synthetic slice."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file

from cmr_ingest.burned_in import header_risk, text_near_borders
from cmr_ingest.ingest import ingest, locate_files
from cmr_ingest.manifest import read_manifest
from slicerank.cli import main

from .conftest import SALT

#: What a scanner overlay might say (the fake identifiers of a synthetic patient).
OVERLAY = "DOE^JANE  1970-01-01  ID 0012345"


def _copy_sample(tmp_path, name: str, **changes):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    ds = pydicom.dcmread(get_testdata_file(name))
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(src / name)
    return src


def test_derived_secondary_mr_is_excluded_by_default_with_a_report_line(tmp_path):
    # pydicom's MR_small.dcm is an MR image whose ImageType is DERIVED\SECONDARY.
    src = _copy_sample(tmp_path, "MR_small.dcm")
    report = ingest(src, tmp_path / "out", salt=SALT, any_orientation=True)
    assert report.slices_written == 0
    (bad,) = report.bad_files
    assert bad["reason"] == "burned_in_annotation" and "DERIVED\\SECONDARY" in bad["detail"]
    assert report.counts()["burned_in_excluded"] == 1
    assert "excluded 1 files/slices that may show burned-in text" in report.summary()
    assert "--include-burned-in" in report.summary()

    kept = ingest(src, tmp_path / "kept", salt=SALT, any_orientation=True, include_burned_in=True)
    assert kept.slices_written == 1 and kept.counts()["burned_in_kept"] == 1
    assert "WARNING: kept 1" in kept.summary()


def test_secondary_capture_is_excluded_even_when_it_says_no(tmp_path):
    src = _copy_sample(tmp_path, "SC_rgb_jpeg_dcmtk.dcm", BurnedInAnnotation="NO")
    report = ingest(src, tmp_path / "out", salt=SALT, any_orientation=True)
    assert report.slices_written == 0
    assert report.bad_files[0]["reason"] == "burned_in_annotation"
    assert "secondary capture" in report.bad_files[0]["detail"]


def test_burned_in_annotation_yes_and_no(tmp_path):
    # An explicit NO clears the ImageType rule: the creator vouches for the pixels.
    src = _copy_sample(tmp_path, "MR_small.dcm", BurnedInAnnotation="NO")
    assert ingest(src, tmp_path / "no", salt=SALT, any_orientation=True).slices_written == 1
    src = _copy_sample(tmp_path, "MR_small.dcm", BurnedInAnnotation="YES",
                       ImageType=["ORIGINAL", "PRIMARY", "M"])  # fmt: skip
    report = ingest(src, tmp_path / "yes", salt=SALT, any_orientation=True)
    assert report.slices_written == 0
    assert report.bad_files[0]["detail"] == "BurnedInAnnotation is YES"


def test_header_rules():
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM"]
    assert header_risk(ds) is None
    ds.ImageType = ["DERIVED ", "SECONDARY", "OTHER"]  # padded, as some writers do
    assert "DERIVED" in header_risk(ds)
    ds.BurnedInAnnotation = "NO"
    assert header_risk(ds) is None
    ds.BurnedInAnnotation = "YES"
    assert header_risk(ds) == "BurnedInAnnotation is YES"
    del ds.BurnedInAnnotation
    ds.ImageType = "ORIGINAL"  # single-valued
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.2"  # multi-frame grayscale byte SC
    assert "secondary capture" in header_risk(ds)


def draw_text_into(path, text: str = OVERLAY, corner: str = "top") -> None:
    """Draw ``text`` into a DICOM file's pixels at their maximum value, as an overlay would be."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.copy()
    mask = Image.new("L", (arr.shape[1], arr.shape[0]), 0)
    y = 4 if corner == "top" else arr.shape[0] - 14
    ImageDraw.Draw(mask).text((4, y), text, fill=255)
    arr[np.asarray(mask) > 0] = (1 << int(ds.BitsStored)) - 1
    ds.PixelData = arr.astype(arr.dtype).tobytes()
    ds.save_as(path)


@pytest.fixture
def cohort_with_text(dicom_cohort, tmp_path):
    """A copy of the shared synthetic DICOM cohort with an overlay drawn into two slices."""
    src = tmp_path / "dicom"
    shutil.copytree(dicom_cohort, src)
    files = sorted(src.rglob("*.dcm"))
    draw_text_into(files[0], corner="top")
    draw_text_into(files[len(files) // 2], text="ST. ELSEWHERE 12:03", corner="bottom")
    return src, {files[0].name, files[len(files) // 2].name}


def test_pixel_check_finds_text_drawn_into_a_slice(cohort_with_text, tmp_path):
    src, marked = cohort_with_text
    # The header says nothing: without the pixel check (opted out) the text would go through.
    plain = ingest(src, tmp_path / "plain", salt=SALT, check_pixels_for_text=False)
    checked = ingest(src, tmp_path / "checked", salt=SALT)  # the check is on by default
    flagged = [b for b in checked.bad_files if b["reason"] == "burned_in_text"]
    where = locate_files(src, SALT, {b["file"] for b in flagged})
    assert sorted(p.name for p in where.values()) == sorted(marked)
    assert all("margin" in b["detail"] for b in flagged)
    # No false alarm on the other slices of the cohort.
    assert checked.slices_written == plain.slices_written - 2
    assert len(read_manifest(tmp_path / "checked")) == checked.slices_written
    kept = ingest(src, tmp_path / "kept", salt=SALT, check_pixels_for_text=True,
                  include_burned_in=True)  # fmt: skip
    assert kept.slices_written == plain.slices_written
    assert kept.counts()["burned_in_kept"] == 2


def test_pixel_check_on_pngs_written_without_text(ingested):
    out, _ = ingested
    rows = read_manifest(out)
    assert rows
    for row in rows:
        assert text_near_borders(np.asarray(Image.open(out / row["path"]))) is None, row["path"]


def test_cli_flags(cohort_with_text, tmp_path, monkeypatch, capsys):
    src, _ = cohort_with_text
    monkeypatch.setenv("SLICERANK_ID_SALT", SALT)
    for flags in ([], ["--check-pixels-for-text"]):  # on by default
        assert main(["ingest", str(src), "--out", str(tmp_path / "a"), *flags]) == 0
        out = capsys.readouterr().out
        assert "burned_in_text: 2" in out and "excluded 2 files/slices" in out
    # The opt-out, by flag or environment.
    assert (
        main(["ingest", str(src), "--out", str(tmp_path / "n"), "--no-check-pixels-for-text"]) == 0
    )
    assert "burned_in_text" not in capsys.readouterr().out
    monkeypatch.setenv("SLICERANK_CHECK_PIXELS_FOR_TEXT", "0")
    assert main(["ingest", str(src), "--out", str(tmp_path / "m")]) == 0
    assert "burned_in_text" not in capsys.readouterr().out
    monkeypatch.setenv("SLICERANK_CHECK_PIXELS_FOR_TEXT", "1")
    assert main(["ingest", str(src), "--out", str(tmp_path / "b"), "--include-burned-in"]) == 0
    assert "WARNING: kept 2" in capsys.readouterr().out
    monkeypatch.setenv("SLICERANK_CHECK_PIXELS_FOR_TEXT", "maybe")
    assert main(["ingest", str(src), "--out", str(tmp_path / "c")]) == 2
    assert "SLICERANK_CHECK_PIXELS_FOR_TEXT='maybe'" in capsys.readouterr().err


def test_text_check_bench_counts(tmp_path):
    from benchmarks.ingest import run_text_check_bench

    out = run_text_check_bench(2, seed=1, workdir=str(tmp_path))
    assert out["slices"] > 10 and out["false_alarms"] == 0
    assert out["with_overlay_detected"] == out["slices"] and out["with_overlay_missed"] == []
