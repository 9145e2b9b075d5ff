"""Write one synthetic scan as an MR DICOM series (plus, sometimes, an axial localiser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from cmr_ingest.fakephi import FakePatient
from cmr_ingest.synth import ScanPlan, scan_rng, slice_geometry


def _uid(seed: int, *parts: object) -> str:
    # Deterministic UIDs (2.25 + hash) so a cohort is reproducible byte for byte.
    return generate_uid(prefix=None, entropy_srcs=["slicerank-synth", str(seed), *map(str, parts)])


def _fmt(values: np.ndarray | list[float]) -> list[str]:
    return [f"{float(v):.6f}".rstrip("0").rstrip(".") for v in values]


def _dataset(
    patient: FakePatient, study_uid: str, series_uid: str, sop_uid: str, frame_uid: str
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = patient.study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = patient.accession
    ds.Modality = "MR"
    ds.Manufacturer = "slicerank synthetic phantom"
    ds.InstitutionName = patient.institution
    ds.InstitutionAddress = patient.address
    ds.ReferringPhysicianName = patient.referrer
    ds.StationName = "MRC40412"
    ds.PerformingPhysicianName = patient.performer
    ds.OperatorsName = patient.operator
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.OtherPatientIDs = patient.other_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = patient.age
    ds.MagneticFieldStrength = 1.5
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = patient.study_id
    ds.FrameOfReferenceUID = frame_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def write_scan_dicom(
    plan: ScanPlan, images: list[np.ndarray], patient: FakePatient, root: Path, seed: int
) -> list[dict[str, Any]]:
    """Write ``images`` (12-bit, base → apex) as one short-axis LGE series under ``root``.

    Returns one ground-truth row per slice (keyed by SOPInstanceUID) for the sidecar.
    """
    rng = scan_rng(seed, plan.index, stream=3)
    study_uid = _uid(seed, plan.index, "study")
    series_uid = _uid(seed, plan.index, "series", 1)
    frame_uid = _uid(seed, plan.index, "frame")
    folder = root / f"ST{plan.index + 1:05d}" / "SE000012"
    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir, ipps = slice_geometry(plan)
    normal = np.cross(row_dir, col_dir)
    n = len(images)
    acq_order = list(range(n))[::-1] if plan.apex_first else list(range(n))
    file_numbers = rng.permutation(n) + 1  # file names not in slice order
    with_ext = rng.random() < 0.5
    v = plan.view
    rows = []
    for acq, k in enumerate(acq_order):
        sop_uid = _uid(seed, plan.index, "sop", k)
        ds = _dataset(patient, study_uid, series_uid, sop_uid, frame_uid)
        ds.SeriesDescription = "SAX LGE PSIR mag"
        ds.ProtocolName = "LGE_SAX_stack"
        ds.SeriesNumber = 12
        ds.InstanceNumber = acq + 1
        ds.AcquisitionNumber = 1
        ds.ScanningSequence = ["GR", "IR"]
        ds.SequenceVariant = ["SP", "MP"]
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 700.0
        ds.EchoTime = 3.2
        ds.InversionTime = round(float(rng.uniform(250, 330)), 1)
        ds.FlipAngle = 25
        ds.SliceThickness = round(v.thickness_mm, 3)
        ds.SpacingBetweenSlices = round(plan.spacing_mm, 3)
        ds.ImagePositionPatient = _fmt(ipps[k])
        ds.ImageOrientationPatient = _fmt([*row_dir, *col_dir])
        ds.SliceLocation = _fmt([float(np.dot(ipps[k], normal))])[0]
        ds.Rows = ds.Columns = v.matrix
        ds.PixelSpacing = _fmt([v.pixel_mm, v.pixel_mm])
        ds.WindowCenter, ds.WindowWidth = plan.window
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PixelData = images[k].tobytes()
        name = f"IM{int(file_numbers[acq]):05d}" + (".dcm" if with_ext else "")
        ds.save_as(folder / name, enforce_file_format=True)
        rows.append(
            {
                "sop_instance_uid": sop_uid,
                "frame": 0,
                "scan": plan.index,
                "slice_index": k,
                "position": plan.positions[k],
                "true_class": plan.classes[k],
            }
        )
    if plan.index % 4 == 3:
        _write_localiser(plan, images[n // 2], patient, root, seed, study_uid, frame_uid)
    return sorted(rows, key=lambda r: r["slice_index"])


def _write_localiser(plan, image, patient, root, seed, study_uid, frame_uid) -> None:
    """An axial localiser in the same study: not short-axis, so ingestion must skip it."""
    folder = root / f"ST{plan.index + 1:05d}" / "SE000001"
    folder.mkdir(parents=True, exist_ok=True)
    sop_uid = _uid(seed, plan.index, "localiser")
    ds = _dataset(patient, study_uid, _uid(seed, plan.index, "series", 0), sop_uid, frame_uid)
    ds.SeriesDescription = "localiser axial"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    v = plan.view
    half = (v.matrix / 2 - 0.5) * v.pixel_mm
    ds.ImagePositionPatient = _fmt([-half, -half, plan.annulus_lps[2]])
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = _fmt([plan.annulus_lps[2]])[0]
    ds.SliceThickness = 10
    ds.Rows = ds.Columns = v.matrix
    ds.PixelSpacing = _fmt([v.pixel_mm, v.pixel_mm])
    ds.WindowCenter, ds.WindowWidth = plan.window
    ds.PixelData = image.tobytes()
    ds.save_as(folder / "IM00001", enforce_file_format=True)
