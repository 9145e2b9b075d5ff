"""Reading DICOM files: headers (one :class:`SliceHeader` per frame) and decoded frames.

The only module of ``cmr_ingest`` that opens DICOM files. Patient identifiers read here
leave it only as :func:`phi_tokens` (for redacting paths and messages in the report),
never as ids, names or log lines.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, AllTransferSyntaxes

from cmr_ingest.burned_in import header_risk
from cmr_ingest.errors import (
    DecodeError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedTransferSyntaxError,
)

#: Header values that identify a patient, staff or site. Collected only to redact them
#: from the report's file paths and messages.
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StudyID",
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def supported_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes whose pixel data the installed decoders can read."""
    from pydicom.pixels import get_decoder

    out = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except NotImplementedError:
            continue
    return out


@dataclass(frozen=True)
class SliceHeader:
    """What ingestion needs to know about one frame, without its pixels."""

    path: Path
    frame: int
    n_frames: int
    sop_uid: str
    series_uid: str
    rows: int
    columns: int
    orientation: tuple[float, ...] | None  #: ImageOrientationPatient (6 values)
    position: tuple[float, float, float] | None  #: ImagePositionPatient
    instance_number: int
    transfer_syntax: str
    photometric: str
    window: tuple[float, float] | None  #: (center, width) from the header
    rescale: tuple[float, float]  #: (slope, intercept)
    has_modality_lut_sequence: bool
    has_voi_lut_sequence: bool
    #: Why the header says the pixels may carry burned-in text (None: it does not say so).
    burned_in: str | None = None


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's value warnings while reading.

    Its messages quote element values (names, dates), which must not reach logs; reading
    is lenient (invalid values are kept, not fatal) because bad values in one element do
    not spoil an image.
    """
    old = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_config.settings.reading_validation_mode = old


def _read(path: Path, **kwargs) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        pass
    except Exception as exc:  # pydicom raises many types on garbage
        raise NotDicomError(f"cannot parse as DICOM ({type(exc).__name__})") from exc
    # Some old exports lack the 128-byte preamble; accept them only if they parse into
    # something with an SOP instance, so text or archives are not mistaken for DICOM.
    try:
        ds = pydicom.dcmread(path, force=True, **kwargs)
        if "SOPInstanceUID" in ds and "SOPClassUID" in ds:
            return ds
    except Exception:  # noqa: BLE001 - any failure here means "not DICOM"
        pass
    raise NotDicomError("no DICOM preamble and not readable as raw DICOM")


def _float_pair(ds, kw_a: str, kw_b: str) -> tuple[float, float] | None:
    if kw_a not in ds or kw_b not in ds:
        return None
    a, b = ds[kw_a].value, ds[kw_b].value
    # Multi-valued windows: the first is the one the modality suggests by default.
    a = a[0] if isinstance(a, pydicom.multival.MultiValue) else a
    b = b[0] if isinstance(b, pydicom.multival.MultiValue) else b
    try:
        return float(a), float(b)
    except (TypeError, ValueError):
        return None


def _functional(ds, frame: int, seq: str) -> pydicom.Dataset | None:
    """Item ``seq`` of the per-frame functional group of ``frame``, else of the shared one."""
    for group, idx in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(group)
        if items and len(items) > idx and seq in items[idx] and len(items[idx][seq].value):
            return items[idx][seq].value[0]
    return None


def _tuple(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def read_headers(path: Path) -> tuple[list[SliceHeader], set[str]]:
    """Headers of every frame in ``path`` and the file's identifying values (for redaction).

    Raises :class:`NotDicomError` or :class:`NoPixelDataError`.
    """
    ds = _read(path, defer_size=2048)
    phi = phi_tokens(ds)
    burned_in = header_risk(ds)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise NoPixelDataError(f"{ds.get('SOPClassUID', 'unknown SOP class')!s} has no pixel data")
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    n_frames = int(ds.get("NumberOfFrames") or 1)
    iop = _tuple(ds.get("ImageOrientationPatient"), 6)
    ipp = _tuple(ds.get("ImagePositionPatient"), 3)
    offsets = ds.get("GridFrameOffsetVector")
    headers = []
    for f in range(n_frames):
        f_iop, f_ipp = iop, ipp
        window = _float_pair(ds, "WindowCenter", "WindowWidth")
        rescale = _float_pair(ds, "RescaleSlope", "RescaleIntercept") or (1.0, 0.0)
        if n_frames > 1:
            # Enhanced multi-frame: geometry and pixel transforms per frame (or shared).
            item = _functional(ds, f, "PlaneOrientationSequence")
            if item is not None:
                f_iop = _tuple(item.get("ImageOrientationPatient"), 6)
            item = _functional(ds, f, "PlanePositionSequence")
            if item is not None:
                f_ipp = _tuple(item.get("ImagePositionPatient"), 3)
            elif (
                offsets is not None
                and f_ipp is not None
                and f_iop is not None
                and len(offsets) == n_frames
            ):
                # Legacy multi-frame (e.g. RT dose): frames offset along the normal.
                normal = np.cross(f_iop[:3], f_iop[3:])
                f_ipp = tuple(float(v) for v in np.asarray(ipp) + float(offsets[f]) * normal)
            item = _functional(ds, f, "FrameVOILUTSequence")
            if item is not None:
                window = _float_pair(item, "WindowCenter", "WindowWidth") or window
            item = _functional(ds, f, "PixelValueTransformationSequence")
            if item is not None:
                rescale = _float_pair(item, "RescaleSlope", "RescaleIntercept") or rescale
        headers.append(
            SliceHeader(
                path=path,
                frame=f,
                n_frames=n_frames,
                sop_uid=str(ds.get("SOPInstanceUID", "")),
                series_uid=str(ds.get("SeriesInstanceUID", "")),
                rows=int(ds.get("Rows") or 0),
                columns=int(ds.get("Columns") or 0),
                orientation=f_iop,
                position=f_ipp,
                instance_number=int(ds.get("InstanceNumber") or 0),
                transfer_syntax=ts,
                photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
                window=window if window is not None and window[1] >= 1 else None,
                rescale=rescale,
                has_modality_lut_sequence="ModalityLUTSequence" in ds,
                has_voi_lut_sequence="VOILUTSequence" in ds,
                burned_in=burned_in,
            )
        )
    return headers, phi


def read_frames(path: Path) -> tuple[np.ndarray, pydicom.Dataset]:
    """Decoded pixel frames of ``path`` as ``(frames, rows, cols[, 3])`` and the dataset.

    Raises :class:`UnsupportedTransferSyntaxError` (naming the syntax and listing the
    supported ones) or :class:`DecodeError`.
    """
    ds = _read(path)
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and ts.is_compressed and ts not in supported_transfer_syntaxes():
        names = ", ".join(sorted(u.name for u in supported_transfer_syntaxes() if u.is_compressed))
        raise UnsupportedTransferSyntaxError(
            f"{ts.name} ({ts}) is not supported; supported compressed syntaxes: {names}"
        )
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise ValueError, RuntimeError, …
        raise DecodeError(f"{type(exc).__name__}: {_first_line(exc)}") from exc
    n_frames = int(ds.get("NumberOfFrames") or 1)
    spp = int(ds.get("SamplesPerPixel") or 1)
    if n_frames == 1:
        arr = arr[None, ...]
    if arr.ndim != (4 if spp > 1 else 3):
        raise DecodeError(f"unexpected pixel array shape {arr.shape}")
    return arr, ds


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""


def phi_tokens(ds: pydicom.Dataset) -> set[str]:
    """Identifying strings of ``ds``: whole values, every name component (short ones such as
    "LI" too: the redactor matches those as whole words only), and each date in the ways
    folders and notes write it (1970-01-02, 02.01.1970, ...), not only DICOM's 19700102."""
    out: set[str] = set()
    for kw in PHI_KEYWORDS:
        value = ds.get(kw)
        if value is None:
            continue
        values = value if isinstance(value, pydicom.multival.MultiValue) else [value]
        for v in values:
            s = str(v).strip()
            parts = s.replace("^", " ").replace(",", " ").replace("=", " ").split()
            # Short numbers (StudyID "1") identify nobody and are in every message; short
            # letters (a name "LI", an initial) are names.
            out |= {t for t in (s, *parts) if len(t) >= 3 or t.isalpha()}
            out |= date_variants(s)
    return out


def date_variants(text: str) -> set[str]:
    """A DICOM date (``YYYYMMDD``) as people write it: ISO, European and US orders with ``-``,
    ``.``, ``/``, ``_`` or nothing between the parts; empty for anything else."""
    if len(text) != 8 or not text.isdigit():
        return set()
    y, m, d = text[:4], text[4:6], text[6:]
    out = set()
    for sep in ("-", ".", "/", "_", ""):
        out |= {sep.join((y, m, d)), sep.join((d, m, y)), sep.join((m, d, y))}
    return out


def walk_files(src: Path, exclude: set[Path] | None = None) -> list[Path]:
    """Every regular file under ``src`` (any name, with or without ``.dcm``), sorted."""
    exclude = {p.resolve() for p in exclude or set()}
    if src.is_file():
        return [src]
    out = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            if p.is_file() and p.resolve() not in exclude:
                out.append(p)
    return out
