"""pydicom's own sample files: compressed syntaxes, colour, multi-frame, no geometry."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cmr_ingest.ingest import ingest
from cmr_ingest.manifest import read_manifest
from cmr_ingest.pixels import window_to_uint8

from .conftest import SALT


def _one(tmp_path, name, tag="", **kwargs):
    src = tmp_path / f"{name}{tag}".replace(".", "_")
    src.mkdir()
    shutil.copy(get_testdata_file(name), src / "file")
    out = tmp_path / f"out_{name}{tag}"
    # These files are DERIVED\SECONDARY or secondary captures, which ingest excludes by default
    # as burned-in text risks (test_burned_in.py); here they test decoding, so keep them.
    kwargs.setdefault("include_burned_in", True)
    report = ingest(src, out, salt=SALT, **kwargs)
    return out, report


def test_axial_mr_is_not_short_axis_unless_overridden(tmp_path):
    out, report = _one(tmp_path, "MR_small.dcm")
    assert report.slices_written == 0
    assert report.skipped_series[0]["reason"] == "not_short_axis"
    out, report = _one(tmp_path, "MR_small.dcm", tag="any", any_orientation=True)
    rows = read_manifest(out)
    assert len(rows) == 1 and rows[0]["slice_index"] == 0 and rows[0]["n_slices"] == 1
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    png = np.asarray(Image.open(out / rows[0]["path"]))
    assert report.stacks[0]["window"] == "header"
    expected = window_to_uint8(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    assert np.array_equal(png, expected)


def test_percentile_window_when_header_has_none(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    src = tmp_path / "src"
    src.mkdir()
    ds.save_as(src / "nowindow.dcm")
    report = ingest(src, tmp_path / "out", salt=SALT, any_orientation=True, include_burned_in=True)
    assert report.stacks[0]["window"] == "percentiles"
    png = np.asarray(Image.open(tmp_path / "out" / read_manifest(tmp_path / "out")[0]["path"]))
    assert png.min() == 0 and png.max() == 255
    assert np.corrcoef(png.ravel().astype(float), ds.pixel_array.ravel())[0, 1] > 0.9


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
    ],
)
def test_compressed_and_big_endian_match_uncompressed(tmp_path, name):
    ref_out, _ = _one(tmp_path, "MR_small.dcm", tag="ref", any_orientation=True)
    out, report = _one(tmp_path, name, any_orientation=True)
    assert report.bad_files == []
    a = np.asarray(Image.open(ref_out / read_manifest(ref_out)[0]["path"]))
    b = np.asarray(Image.open(out / read_manifest(out)[0]["path"]))
    assert np.array_equal(a, b)


def test_jpeg_baseline_colour_without_geometry(tmp_path):
    out, report = _one(tmp_path, "SC_rgb_jpeg_dcmtk.dcm")
    assert report.skipped_series[0]["reason"] == "no_geometry"
    out, report = _one(tmp_path, "SC_rgb_jpeg_dcmtk.dcm", tag="any", any_orientation=True)
    rows = read_manifest(out)
    assert len(rows) == 1
    assert report.stacks[0]["ordered_by"] == "instance_number"
    img = Image.open(out / rows[0]["path"])
    assert img.mode == "L" and img.size == (100, 100)


def test_legacy_multiframe_ordered_along_normal(tmp_path):
    # rtdose.dcm: 15 frames, axial, GridFrameOffsetVector 0..70 mm along +z (towards the
    # head). Base → apex runs towards the feet, so the last frame comes first.
    out, report = _one(tmp_path, "rtdose.dcm", any_orientation=True)
    rows = sorted(read_manifest(out), key=lambda r: r["slice_index"])
    assert len(rows) == 15 and report.stacks[0]["spacing_mm"] == 5.0
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    frames = ds.pixel_array.astype(np.float32) * float(ds.get("DoseGridScaling", 1) or 1)
    pngs = [np.asarray(Image.open(out / r["path"])).astype(float) for r in rows]
    # Match each written slice to the frame it correlates with best.
    order = [
        int(np.argmax([np.corrcoef(p.ravel(), f.ravel())[0, 1] if f.std() else -1 for f in frames]))
        for p in pngs
    ]
    assert order == list(range(14, -1, -1))


def test_window_from_header_is_applied(tmp_path, dicom_cohort):
    f = sorted((dicom_cohort / "ST00001" / "SE000012").iterdir())[0]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(f, src / "a")
    out = tmp_path / "out"
    report = ingest(src, out, salt=SALT)
    ds = pydicom.dcmread(f)
    expected = window_to_uint8(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    got = np.asarray(Image.open(out / read_manifest(out)[0]["path"]))
    assert report.stacks[0]["window"] == "header"
    assert np.array_equal(got, expected)
