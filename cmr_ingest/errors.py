"""Why a file or a series did not make it into the media root.

::

    IngestError                       (code)
    ├── NotDicomError                 not_dicom
    ├── NoPixelDataError              no_pixel_data
    ├── UnsupportedTransferSyntaxError unsupported_transfer_syntax
    ├── DecodeError                   decode_failed
    └── InconsistentSeriesError       inconsistent_series

Series-level reasons that are not errors of a single file are plain codes in
:data:`REASONS` (``not_short_axis``, ``no_geometry``, ``duplicate_position``,
``duplicate_instance``, ``burned_in_annotation``, ``burned_in_text``).
Ingestion never raises these to the caller: each becomes an entry of the ingest report.
What it does raise is :class:`IngestInputError`: an argument it cannot work with (an empty or
short salt, a ground-truth file that is missing or lacks columns), before anything is written.
"""

from __future__ import annotations

#: Every reason code the ingest report uses, with what the user can do about it.
REASONS: dict[str, str] = {
    "not_dicom": "not a DICOM file (no 'DICM' preamble and not readable as raw DICOM)",
    "no_pixel_data": "DICOM object without pixel data (report, DICOMDIR, presentation state…)",
    "unsupported_transfer_syntax": "pixel data compressed with a transfer syntax no installed "
    "decoder handles",
    "decode_failed": "pixel data present but could not be decoded (truncated or corrupt)",
    "inconsistent_series": "slice geometry (orientation or matrix) differs from the rest of its "
    "series",
    "duplicate_instance": "the same SOP instance (SOPInstanceUID) appears in another file too",
    "duplicate_position": "another slice of the series lies at the same position",
    "not_short_axis": "series orientation is not short-axis (override with --any-orientation "
    "or a larger --orientation-tolerance)",
    "no_geometry": "no ImagePositionPatient/ImageOrientationPatient: cannot tell whether the "
    "series is short-axis (override with --any-orientation)",
    "burned_in_annotation": "the header says the pixels may carry burned-in text "
    "(BurnedInAnnotation YES, secondary capture or DERIVED\\SECONDARY); excluded so no "
    "identifier drawn into an image leaves ingestion (keep with --include-burned-in)",
    "burned_in_text": "text-like strokes found in the image margins by --check-pixels-for-text "
    "(keep with --include-burned-in)",
}


class IngestError(Exception):
    """A file could not be ingested; ``code`` is a key of :data:`REASONS`."""

    code = "ingest_error"


class NotDicomError(IngestError):
    """The file is not DICOM. Check that it is not a report, archive or viewer file."""

    code = "not_dicom"


class NoPixelDataError(IngestError):
    """A DICOM object without an image (nothing to ingest; usually harmless)."""

    code = "no_pixel_data"


class UnsupportedTransferSyntaxError(IngestError):
    """No installed decoder handles the pixel encoding; the message lists the ones that do."""

    code = "unsupported_transfer_syntax"


class DecodeError(IngestError):
    """The pixel data could not be decoded (truncated or corrupt file)."""

    code = "decode_failed"


class InconsistentSeriesError(IngestError):
    """The file's geometry disagrees with the rest of its series."""

    code = "inconsistent_series"


class IngestInputError(ValueError):
    """An argument of :func:`cmr_ingest.ingest.ingest` is unusable (the salt, the truth file);
    the message names it and says what to give instead. ``slicerank ingest`` exits 2."""
