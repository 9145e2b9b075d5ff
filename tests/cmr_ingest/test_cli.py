"""``slicerank synth`` and ``slicerank ingest`` through the real console-script entry."""

from __future__ import annotations

import json

import pytest

from cmr_ingest.manifest import read_manifest
from slicerank.cli import main


def test_synth_png_then_json(tmp_path):
    rc = main(
        [
            "synth",
            "--scans",
            "2",
            "--out",
            str(tmp_path / "png"),
            "--seed",
            "4",
            "--workers",
            "1",
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    assert rc == 0
    rows = read_manifest(tmp_path / "png")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["slices"] == len(rows) and summary["scans"] == 2
    assert sum(summary["classes"].values()) == len(rows)
    assert all((tmp_path / "png" / r["path"]).is_file() for r in rows)


def test_synth_dicom_then_ingest(tmp_path, monkeypatch, capsys):
    assert main(["synth", "--scans", "2", "--out", str(tmp_path / "dcm"), "--dicom"]) == 0
    monkeypatch.delenv("SLICERANK_ID_SALT", raising=False)
    rc = main(["ingest", str(tmp_path / "dcm"), "--out", str(tmp_path / "media")])
    assert rc == 2
    assert "SLICERANK_ID_SALT is not set" in capsys.readouterr().err
    monkeypatch.setenv("MY_SALT", "cli-test-salt-value")
    rc = main(
        [
            "ingest",
            str(tmp_path / "dcm"),
            "--out",
            str(tmp_path / "media"),
            "--salt-env",
            "MY_SALT",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    rows = read_manifest(tmp_path / "media")
    assert f"ingested {len(rows)} slices in 2 short-axis stacks" in out
    assert all(r["true_class"] for r in rows)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"]["slices_written"] == len(rows)
    assert report["truth"]["matched"] == len(rows)


def test_ingest_of_nothing_useful_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLICERANK_ID_SALT", "cli-test-salt-value")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("hello")
    assert main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert "no short-axis slice" in captured.err and "not_dicom" in captured.out
    assert main(["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["synth", "--scans", "0", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_bench_ingest_smoke(tmp_path):
    rc = main(
        [
            "bench",
            "ingest",
            "--scans",
            "2",
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    assert rc == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["ingest_slices"] == result["synth_png_slices"] > 0
    assert result["bare_frames"] == result["dicom_files"] >= result["ingest_slices"]
    assert result["ingest_over_bare"] > 0 and result["synth_png_slices_per_s"] > 0
