"""An enhanced (multi-frame) MR file: per-frame geometry and windows from functional groups."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from cmr_ingest import ids
from cmr_ingest.ingest import ingest
from cmr_ingest.manifest import read_manifest
from cmr_ingest.synth import TRUTH_NAME

from .conftest import SALT

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def _enhanced_from_series(files, path, rng):
    """Pack single-frame slices into one enhanced MR file, frames in shuffled order."""
    slices = [pydicom.dcmread(f) for f in files]
    order = rng.permutation(len(slices))
    first = slices[0]
    ds = pydicom.dcmread(files[0])
    for kw in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "SliceLocation",
        "InstanceNumber",
        "WindowCenter",
        "WindowWidth",
        "PixelSpacing",
        "SliceThickness",
    ):
        if kw in ds:
            delattr(ds, kw)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = len(slices)
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = first.ImageOrientationPatient
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for i in order:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = slices[i].ImagePositionPatient
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = slices[i].WindowCenter, slices[i].WindowWidth
        item.PlanePositionSequence = Sequence([pos])
        item.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = b"".join(slices[i].PixelData for i in order)
    ds.save_as(path, enforce_file_format=True)
    return [slices[i].SOPInstanceUID for i in order], ds.SOPInstanceUID


def test_enhanced_mr_frames_ordered_like_single_frame_files(dicom_cohort, ingested, tmp_path):
    rng = np.random.default_rng(0)
    files = sorted((dicom_cohort / "ST00002" / "SE000012").iterdir())
    src = tmp_path / "src"
    src.mkdir()
    frame_sops, mf_uid = _enhanced_from_series(files, src / "enhanced", rng)
    report = ingest(src, tmp_path / "out", salt=SALT)
    assert report.bad_files == [] and len(report.stacks) == 1
    rows = sorted(read_manifest(tmp_path / "out"), key=lambda r: r["slice_index"])
    assert len(rows) == len(files)

    with (dicom_cohort / TRUTH_NAME).open(newline="") as fh:
        truth = {r["sop_instance_uid"]: r for r in csv.DictReader(fh)}
    by_frame_id = {ids.image_id(SALT, mf_uid, f): sop for f, sop in enumerate(frame_sops)}
    got_sops = [by_frame_id[r["image_id"]] for r in rows]
    assert [int(truth[s]["slice_index"]) for s in got_sops] == list(range(len(files)))

    # Same pixels as the single-frame ingest of the same slices.
    single_root, _ = ingested
    single = {r["image_id"]: r for r in read_manifest(single_root)}
    for r, sop in zip(rows, got_sops, strict=True):
        ref = single[ids.image_id(SALT, sop, 0)]
        a = np.asarray(Image.open(tmp_path / "out" / r["path"]))
        b = np.asarray(Image.open(single_root / ref["path"]))
        assert np.array_equal(a, b)
