"""Opaque identifiers: salted hashes that carry no patient information.

``image_id`` and ``scan_id`` are keyed HMAC-SHA256 digests of DICOM UIDs (which are
themselves identifiers that de-identification must replace). Without the salt nobody can
link an id back to the source study; with the same salt, re-ingesting the same files gives
the same ids.
"""

from __future__ import annotations

import hashlib
import hmac

#: Hex characters kept from each digest (64 bits for images, 48 for scans: collisions are
#: negligible at the scale of a labelling study).
IMAGE_ID_CHARS = 16
SCAN_ID_CHARS = 12


def _digest(salt: str, kind: str, value: str) -> str:
    return hmac.new(salt.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def image_id(salt: str, sop_instance_uid: str, frame: int = 0) -> str:
    """Id of one slice image: a frame of a (possibly multi-frame) SOP instance."""
    return _digest(salt, "image", f"{sop_instance_uid}/{frame}")[:IMAGE_ID_CHARS]


def scan_id(salt: str, series_instance_uid: str) -> str:
    """Id of one short-axis stack (a DICOM series)."""
    return _digest(salt, "series", series_instance_uid)[:SCAN_ID_CHARS]


#: Hex characters kept for a source file's id in the ingest report.
FILE_ID_CHARS = 12


def file_id(salt: str, relative_path: str) -> str:
    """Id of a source file, as the ingest report names it: its path (relative to the ingested
    folder) hashed, so no folder or file name (often a patient's name or birth date) is
    written anywhere; ``slicerank ingest SRC --locate ID`` finds the file again."""
    return "file-" + _digest(salt, "file", relative_path)[:FILE_ID_CHARS]
