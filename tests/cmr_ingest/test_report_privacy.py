"""The ingest report leaks no patient detail and is not served (issue 21, item 8): source files
are named by hashed ids, short name parts and dates in any format are redacted, and the
report lies outside the media root."""

from __future__ import annotations

import re
import shutil

import pydicom
import pytest

from cmr_ingest.dicom_io import phi_tokens
from cmr_ingest.ingest import REPORT_JSON, _Redactor, ingest, report_paths
from slicerank.cli import main

from .conftest import SALT


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".csv")


@pytest.fixture
def wu_li(dicom_cohort, tmp_path):
    """A scan in a folder named after its patient (WU^LI, born 1970-01-02), as some exports
    do, with a duplicated file and a file that is not DICOM beside it."""
    src = tmp_path / "src"
    folder = src / "WU_LI_1970-01-02" / "MR"
    folder.mkdir(parents=True)
    for i, f in enumerate(_files(dicom_cohort / "ST00001")):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientBirthDate = "WU^LI", "19700102"
        ds.save_as(folder / f"WU_LI_{i:03d}.dcm")
    shutil.copy(folder / "WU_LI_000.dcm", folder / "WU_LI_copy.dcm")
    (folder / "WU LI 02.01.1970 notes.txt").write_text("not an image")
    return src


def _leaks(text: str) -> list[str]:
    words = r"(?<![^\W_])(wu|li)(?![^\W_])"
    return re.findall(words, text, re.IGNORECASE) + re.findall(
        r"1970.?01.?02|02.?01.?1970|01.?02.?1970", text
    )


def test_a_folder_named_after_the_patient_does_not_reach_the_report(wu_li, tmp_path):
    out = tmp_path / "media"
    report = ingest(wu_li, out, salt=SALT)
    assert report.slices_written > 0
    reasons = sorted(b["reason"] for b in report.bad_files)
    assert reasons == ["duplicate_instance", "not_dicom"]
    report_json, report_text = report_paths(out)
    for path in (report_json, report_text):
        text = path.read_text()
        assert not _leaks(text), (path.name, _leaks(text))
    # The duplicate names the file it repeats by its id, not its path.
    dup = next(b for b in report.bad_files if b["reason"] == "duplicate_instance")
    assert re.search(r"file-[0-9a-f]{12}", dup["detail"])


def test_the_report_lies_outside_the_media_root(wu_li, tmp_path):
    out = tmp_path / "media"
    out.mkdir()
    (out / REPORT_JSON).write_text("{}")  # left there by an earlier version
    ingest(wu_li, out, salt=SALT)
    assert not list(out.glob("ingest_report*")), "a report in the media root is served by LS"
    assert (tmp_path / "media-ingest_report.json").is_file()
    assert (tmp_path / "media-ingest_report.txt").is_file()
    with pytest.raises(ValueError, match="inside the media root"):
        ingest(wu_li, out, salt=SALT, report_dir=out / "reports")
    ingest(wu_li, out, salt=SALT, report_dir=tmp_path / "reports")
    assert (tmp_path / "reports" / "media-ingest_report.json").is_file()


def test_the_operator_finds_a_reported_file_again(wu_li, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLICERANK_ID_SALT", SALT)
    assert main(["ingest", str(wu_li), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "outside the media root" in out
    fid = re.search(r"file-[0-9a-f]{12}", out).group(0)
    assert main(["ingest", str(wu_li), "--locate", fid]) == 0
    assert "WU LI 02.01.1970 notes.txt" in capsys.readouterr().out
    assert main(["ingest", str(wu_li), "--out", str(tmp_path / "m"),
                 "--report", str(tmp_path / "m" / "r")]) == 2  # fmt: skip
    assert "inside the media root" in capsys.readouterr().err


def test_short_name_parts_and_dates_in_any_format_are_redacted():
    ds = pydicom.Dataset()
    ds.PatientName, ds.PatientBirthDate, ds.StudyID = "WU^LI", "19700102", "1"
    redact = _Redactor()
    redact.add(phi_tokens(ds))
    text = "WU_LI_1970-01-02/a.dcm: frame 1 of slice Li, wu (02.01.1970, 01/02/1970, 19700102)"
    assert redact(text) == (
        "[redacted]_[redacted]_[redacted]/a.dcm: frame 1 of slice [redacted], [redacted] "
        "([redacted], [redacted], [redacted])"
    )
    # A date no header gave is redacted too; UIDs and transfer syntaxes are not dates.
    assert redact("born 1981/7/30") == "born [redacted]"
    assert redact("1.2.840.10008.1.2.4.100") == "1.2.840.10008.1.2.4.100"
