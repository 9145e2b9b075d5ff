"""The synthetic DICOM is proper MR DICOM whose geometry matches its pixels' anatomy."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import MRImageStorage

from cmr_ingest import geometry
from cmr_ingest.synth import TRUTH_NAME, cohort_patients

from .conftest import N_SCANS, SEED


def test_files_are_valid_mr_with_fake_identifiers(dicom_cohort):
    patients = cohort_patients(N_SCANS, SEED)
    with (dicom_cohort / TRUTH_NAME).open(newline="") as fh:
        truth = {r["sop_instance_uid"]: r for r in csv.DictReader(fh)}
    files = sorted((dicom_cohort / "ST00001" / "SE000012").iterdir())
    assert any(f.suffix == ".dcm" for f in dicom_cohort.rglob("IM*"))
    assert any(f.suffix == "" for f in dicom_cohort.rglob("IM*"))
    slices = [pydicom.dcmread(f) for f in files]
    for ds in slices:
        assert ds.preamble is not None and ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MR" and ds.BitsStored == 12 and ds.HighBit == 11
        assert ds.pixel_array.max() <= 4095 and ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert float(ds.WindowWidth) > 1 and len(ds.PixelSpacing) == 2
        assert str(ds.PatientName) == patients[0].name and ds.PatientID == patients[0].patient_id
        assert ds.AccessionNumber and ds.PatientBirthDate and ds.InstitutionName
        normal = geometry.slice_normal(ds.ImageOrientationPatient)
        assert geometry.angle_to_long_axis(normal) < 30  # oblique short-axis
        assert abs(float(ds.SliceLocation) - float(np.dot(ds.ImagePositionPatient, normal))) < 1e-3
    # One study, one series, one frame of reference; InstanceNumber is acquisition order.
    assert (
        len({(d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID) for d in slices}) == 1
    )
    order, dist = geometry.order_base_to_apex([d.ImagePositionPatient for d in slices], normal)
    truth_idx = [int(truth[slices[i].SOPInstanceUID]["slice_index"]) for i in order]
    assert truth_idx == list(range(len(slices)))
    gaps = np.diff(dist)
    assert np.allclose(gaps, float(slices[0].SpacingBetweenSlices), atol=0.01)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(2, 16),
    spacing=st.floats(2.0, 15.0),
    tilt=st.tuples(*[st.floats(-0.3, 0.3)] * 3),
    flip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_order_recovers_any_shuffled_stack(n, spacing, tilt, flip, seed):
    axis = np.asarray(geometry.TYPICAL_LONG_AXIS_LPS) + np.asarray(tilt)
    axis /= np.linalg.norm(axis)
    origin = np.array([12.0, -30.0, 40.0])
    true_positions = [origin + k * spacing * axis for k in range(n)]  # base → apex
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [true_positions[i] for i in perm]
    order, _ = geometry.order_base_to_apex(shuffled, -axis if flip else axis)
    assert [int(perm[i]) for i in order] == list(range(n))
