"""Burned-in text: identifiers drawn into the pixels, which no header clean-up removes.

Two checks, both pure:

* :func:`header_risk` reads what the DICOM header says about a file: ``BurnedInAnnotation``
  = YES, a secondary-capture SOP class (a picture of a screen), or ``ImageType``
  DERIVED\\SECONDARY (screen captures, rendered reports and some reformats) — the types that
  are known to carry text. An explicit ``BurnedInAnnotation`` = NO clears the ImageType rule
  (the creator vouches for the pixels) but not a screen capture's.
* :func:`text_near_borders` (opt-in) looks for text in the pixels themselves: scanners and
  viewers write names, dates and ids in the corners and along the edges as thin, saturated
  strokes on a dark background. It counts short bright runs flanked by dark pixels (glyph
  strokes; anatomy gives wide blobs instead) in bands along the four borders, and reports a
  band where a text line's worth of them lie within a few rows.
"""

from __future__ import annotations

import numpy as np

#: SOP classes of secondary capture (single frame, multi-frame bit/byte/word/true colour).
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
#: Fraction of the image side that counts as the border band (text sits in the margins).
BORDER_FRACTION = 0.18
#: Rows in which one line of text lies (small fonts are 7-13 px tall).
LINE_ROWS = 16
#: Glyph-stroke runs within one line window that mean "text" (a short word has ~20).
MIN_STROKES = 24
#: Longest bright run that counts as a glyph stroke, in pixels.
MAX_STROKE = 4
#: A pixel this bright (of 255) is "ink"; this dark is "background".
INK, BACKGROUND = 200, 150


def _values(ds, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    return [str(v).strip().upper() for v in value]


def header_risk(ds) -> str | None:
    """Why the header says ``ds`` may carry burned-in text, or None."""
    burned = _values(ds, "BurnedInAnnotation")
    if burned[:1] == ["YES"]:
        return "BurnedInAnnotation is YES"
    sop = str(ds.get("SOPClassUID", ""))
    if sop.startswith(SECONDARY_CAPTURE_PREFIX):
        return f"secondary capture (SOP class {sop}): a picture of a screen"
    image_type = _values(ds, "ImageType")
    if image_type[:2] == ["DERIVED", "SECONDARY"] and burned[:1] != ["NO"]:
        return "ImageType is DERIVED\\SECONDARY (screen captures and rendered images carry text)"
    return None


def _stroke_rows(band: np.ndarray) -> np.ndarray:
    """Per row of ``band`` (uint8), how many short bright runs have dark pixels within two
    pixels on both sides (a glyph stroke, not the edge of a bright blob)."""
    h, w = band.shape
    ink = np.zeros((h, w + 2), dtype=np.int8)
    ink[:, 1:-1] = band >= INK
    # Dark flanks, padded with "not dark" so runs touching the image edge do not count.
    dark = np.zeros((h, w + 4), dtype=bool)
    dark[:, 2:-2] = band <= BACKGROUND
    diff = np.diff(ink, axis=1)
    # Row-major order pairs each run's start with its end (every run ends inside the padding).
    rows, starts = np.nonzero(diff == 1)
    _, ends = np.nonzero(diff == -1)
    short = (ends - starts) <= MAX_STROKE
    # In ``dark`` coordinates pixel x is at x + 2: left flank x-2..x-1, right flank e..e+1.
    left = dark[rows, starts] | dark[rows, starts + 1]
    right = dark[rows, ends + 2] | dark[rows, ends + 3]
    return np.bincount(rows[short & left & right], minlength=h)


def text_near_borders(img: np.ndarray) -> str | None:
    """Where ``img`` (2-D uint8, as written to the PNG) seems to have text in its margins, or
    None. A heuristic: it finds typical scanner/viewer overlays, not every possible text."""
    if img.ndim != 2 or min(img.shape) < 32:
        return None
    h, w = img.shape
    bh, bw = max(int(h * BORDER_FRACTION), LINE_ROWS), max(int(w * BORDER_FRACTION), 8)
    bands = {
        "top": img[:bh, :],
        "bottom": img[h - bh :, :],
        "left": img[:, :bw],
        "right": img[:, w - bw :],
    }
    for name, band in bands.items():
        rows = _stroke_rows(band)
        if rows.sum() < MIN_STROKES:
            continue
        window = np.convolve(rows, np.ones(LINE_ROWS, dtype=np.int32), mode="valid")
        best = int(window.max()) if window.size else 0
        if best >= MIN_STROKES:
            return f"{best} text-like strokes in one line of the {name} margin"
    return None
