"""``ingest`` edge cases (issue 22): a truth file that is missing or lacks columns, a bad
tolerance variable, PNGs left by an earlier run, and an empty salt through the Python API."""

from __future__ import annotations

import shutil

import pytest

from cmr_ingest.errors import IngestInputError
from cmr_ingest.ingest import ingest
from cmr_ingest.synth import generate_cohort
from slicerank.cli import main
from tests.cmr_ingest.conftest import SALT


@pytest.fixture(scope="module")
def one_scan_dicom(tmp_path_factory):
    """One synthetic DICOM scan (a few MB, a second or two to write)."""
    return generate_cohort(1, tmp_path_factory.mktemp("one"), seed=5, dicom=True, workers=1)


@pytest.fixture
def salted(monkeypatch):
    monkeypatch.setenv("SLICERANK_ID_SALT", SALT)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("uid,position,true_class\n1.2.3,0.5,lv\n", "lacks column(s) sop_instance_uid"),
        ("sop_instance_uid,frame\n1.2.3,0\n", "lacks column(s) position, true_class"),
        ("sop_instance_uid,frame,position,true_class\n1.2.3,0,high,lv\n", "line 2"),
    ],
)
def test_a_truth_file_with_wrong_columns_exits_2_naming_them(
    tmp_path, one_scan_dicom, salted, capsys, content, expected
):
    truth = tmp_path / "truth.csv"
    truth.write_text(content)
    out = tmp_path / "media"
    assert main(["ingest", str(one_scan_dicom), "--out", str(out), "--truth", str(truth)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(truth) in err and "Traceback" not in err
    assert not (out / "manifest.csv").exists()  # nothing written


def test_a_missing_truth_file_exits_2(tmp_path, one_scan_dicom, salted, capsys):
    missing = tmp_path / "nope.csv"
    assert (
        main(["ingest", str(one_scan_dicom), "--out", str(tmp_path / "m"), "--truth", str(missing)])
        == 2
    )
    assert f"--truth {missing}: no such file" in capsys.readouterr().err


def test_a_bad_tolerance_variable_is_named(tmp_path, one_scan_dicom, salted, monkeypatch, capsys):
    monkeypatch.setenv("SLICERANK_ORIENTATION_TOLERANCE", "abc")
    assert main(["ingest", str(one_scan_dicom), "--out", str(tmp_path / "m")]) == 2
    assert "SLICERANK_ORIENTATION_TOLERANCE='abc' is not a number" in capsys.readouterr().err
    monkeypatch.delenv("SLICERANK_ORIENTATION_TOLERANCE")
    monkeypatch.setenv("SLICERANK_PNG_COMPRESS_LEVEL", "max")
    assert main(["ingest", str(one_scan_dicom), "--out", str(tmp_path / "m")]) == 2
    assert "SLICERANK_PNG_COMPRESS_LEVEL='max'" in capsys.readouterr().err


def test_stale_pngs_are_reported_then_removed_with_clean(tmp_path, one_scan_dicom, salted, capsys):
    out = tmp_path / "media"
    assert main(["ingest", str(one_scan_dicom), "--out", str(out)]) == 0
    capsys.readouterr()
    # An earlier run's slices (a PNG the new manifest does not list) in the same folder.
    first = sorted((out / "images").glob("*.png"))[0]
    shutil.copy(first, out / "images" / "0123456789abcdef.png")
    assert main(["ingest", str(one_scan_dicom), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 PNGs of an earlier run" in text and "--clean" in text
    assert (out / "images" / "0123456789abcdef.png").exists()
    assert main(["ingest", str(one_scan_dicom), "--out", str(out), "--clean"]) == 0
    assert "removed 1 PNGs of an earlier run" in capsys.readouterr().out
    assert not (out / "images" / "0123456789abcdef.png").exists()
    assert first.exists()  # the manifest's own slices stay


@pytest.mark.parametrize("salt", ["", "short"])
def test_the_python_api_refuses_a_short_salt_like_the_cli(tmp_path, one_scan_dicom, salt):
    with pytest.raises(IngestInputError, match="at least 8 characters"):
        ingest(one_scan_dicom, tmp_path / "m", salt=salt)
    assert not (tmp_path / "m").exists()
