"""Pure pieces: pixel transforms, geometry, ids, manifest, settings."""

from __future__ import annotations

import numpy as np
import pytest

from cmr_ingest import geometry, ids, pixels
from cmr_ingest.manifest import ManifestError, read_manifest, write_manifest
from cmr_ingest.settings import IngestSettings

AXIAL = (1, 0, 0, 0, 1, 0)
CORONAL = (1, 0, 0, 0, 0, -1)
SAGITTAL = (0, 1, 0, 0, 0, -1)


def test_linear_window_follows_dicom_formula():
    # PS3.3 C.11.2.1.2.1 with c=100, w=51: x <= 74.5 -> 0, x > 124.5 -> 255, linear between.
    x = np.array([0, 74, 75, 100, 124, 125, 4000], dtype=np.uint16)
    y = pixels.window_to_uint8(x, 100, 51)
    expected = np.clip(np.rint(((x - 99.5) / 50 + 0.5) * 255), 0, 255)
    assert y.dtype == np.uint8
    assert y.tolist() == expected.astype(int).tolist()
    assert y[0] == 0 and y[-1] == 255
    with pytest.raises(ValueError, match="width"):
        pixels.window_to_uint8(x, 100, 0)


@pytest.mark.parametrize(
    ("dtype", "lo", "hi", "slope", "intercept"),
    [
        (np.uint16, 0, 4096, 1.0, 0.0),
        (np.int16, -2000, 3000, 1.0, -1024.0),
        (np.uint16, 100, 65535, 0.5, 3.0),
        (np.int32, -(2**20), 2**20, 2.0, 0.0),
    ],
)
def test_lookup_table_path_equals_float_path(dtype, lo, hi, slope, intercept):
    rng = np.random.default_rng(1)
    a = rng.integers(lo, hi, (64, 48)).astype(dtype)
    fast = pixels.rescale_window_to_uint8(a, slope, intercept, 700.0, 1500.0)
    slow = pixels.window_to_uint8(pixels.apply_rescale(a, slope, intercept), 700.0, 1500.0)
    assert fast.dtype == np.uint8 and np.array_equal(fast, slow)


def test_monochrome1_inverted_and_rgb_to_luminance():
    a = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    assert pixels.to_grayscale(a, "MONOCHROME1").tolist() == [[30, 20], [10, 0]]
    assert pixels.to_grayscale(a, "MONOCHROME2") is a
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 1] = 100
    assert np.allclose(pixels.to_grayscale(rgb, "RGB"), 58.7)


def test_percentile_window_ignores_hot_pixels():
    rng = np.random.default_rng(0)
    a = rng.normal(500, 50, (128, 128))
    a[0, :5] = 60000
    c, w = pixels.percentile_window(a)
    assert 450 < c < 550 and w < 600


def test_short_axis_test_rejects_standard_and_long_axis_planes():
    n_sax = np.asarray(geometry.TYPICAL_LONG_AXIS_LPS)
    assert geometry.is_short_axis(n_sax) and geometry.is_short_axis(-n_sax)
    for iop in (AXIAL, CORONAL, SAGITTAL):
        assert not geometry.is_short_axis(geometry.slice_normal(iop))
        assert geometry.is_short_axis(geometry.slice_normal(iop), tolerance_deg=60)
    four_chamber = np.cross(n_sax, (0, 0, 1))
    assert geometry.angle_to_long_axis(four_chamber / np.linalg.norm(four_chamber)) > 85
    with pytest.raises(ValueError, match="orthogonal"):
        geometry.slice_normal((1, 0, 0, 1, 0, 0))


def test_order_base_to_apex_follows_patient_geometry():
    axis = np.asarray(geometry.TYPICAL_LONG_AXIS_LPS) / np.linalg.norm(
        geometry.TYPICAL_LONG_AXIS_LPS
    )
    positions = [axis * d for d in (30.0, 0.0, 20.0, 10.0)]
    for normal in (axis, -axis):  # whichever way the scanner's normal points
        order, dist = geometry.order_base_to_apex(positions, normal)
        assert order == [1, 3, 2, 0]
        assert np.allclose(np.diff(dist), 10.0)
    assert geometry.duplicates([0.0, 10.0, 10.01, 20.0]) == [2]
    assert geometry.spacing_summary([0.0, 10.0, 20.0, 40.0]) == (10.0, True)


def test_ids_are_keyed_and_stable():
    a = ids.image_id("salt-one-xx", "1.2.3", 0)
    assert a == ids.image_id("salt-one-xx", "1.2.3", 0)
    assert a != ids.image_id("salt-two-xx", "1.2.3", 0)
    assert a != ids.image_id("salt-one-xx", "1.2.3", 1)
    assert len(a) == 16 and len(ids.scan_id("salt-one-xx", "1.2")) == 12
    assert "1.2.3" not in a


def test_manifest_round_trip_and_errors(tmp_path):
    rows = [
        {
            "image_id": "a",
            "scan_id": "s",
            "slice_index": 0,
            "n_slices": 2,
            "path": "images/a.png",
            "position": 0.25,
            "true_class": "too_basal",
        },
        {
            "image_id": "b",
            "scan_id": "s",
            "slice_index": 1,
            "n_slices": 2,
            "path": "images/b.png",
            "position": None,
            "true_class": None,
        },
    ]
    write_manifest(tmp_path / "manifest.csv", rows)
    back = read_manifest(tmp_path)
    assert back == rows
    (tmp_path / "bad.csv").write_text(
        "image_id,scan_id,slice_index,n_slices,path,position,true_class\na,s,0,2,x.png,0.1,middle\n"
    )
    with pytest.raises(ManifestError, match="line 2.*middle"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "short.csv").write_text("image_id,path\n")
    with pytest.raises(ManifestError, match="scan_id"):
        read_manifest(tmp_path / "short.csv")


def test_settings_from_env():
    s = IngestSettings.from_env(
        {"SLICERANK_ID_SALT": "a-long-secret", "SLICERANK_ORIENTATION_TOLERANCE": "55"}
    )
    assert s.orientation_tolerance_deg == 55.0 and s.png_compress_level == 1
    assert "a-long-secret" not in repr(s)
    with pytest.raises(ValueError, match="SLICERANK_ID_SALT is not set"):
        IngestSettings.from_env({})
    with pytest.raises(ValueError, match="at least 8"):
        IngestSettings.from_env({"SLICERANK_ID_SALT": "short"})
    with pytest.raises(ValueError, match="OTHER_SALT is not set"):
        IngestSettings.from_env({"SLICERANK_ID_SALT": "a-long-secret"}, salt_env="OTHER_SALT")
    with pytest.raises(ValueError, match="0..9"):
        IngestSettings(id_salt="a-long-secret", png_compress_level=12)
