"""Pure pixel transforms: stored values → display values → 8-bit grey.

No file I/O here; :mod:`cmr_ingest.dicom_io` reads the arrays and the header values these
functions take. The VOI window follows DICOM PS3.3 C.11.2.1.2 (the "LINEAR" function).
"""

from __future__ import annotations

import numpy as np

#: Percentiles used for a window when the header has none (robust to a few hot pixels).
DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def apply_rescale(arr: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Modality LUT as a linear rescale: ``arr * slope + intercept`` as float32."""
    out = arr.astype(np.float32, copy=True)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def window_to_uint8(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map values through the DICOM linear VOI window onto 0..255 (uint8).

    Raises ``ValueError`` for a width below 1, which DICOM does not allow.
    """
    if not width >= 1.0:
        raise ValueError(f"window width must be >= 1, got {width!r}")
    x = arr.astype(np.float32, copy=False)
    if width == 1.0:
        return np.where(x > center - 0.5, 255, 0).astype(np.uint8)
    y = (x - np.float32(center - 0.5)) * np.float32(255.0 / (width - 1.0)) + np.float32(127.5)
    np.clip(y, 0.0, 255.0, out=y)
    return np.rint(y).astype(np.uint8)


#: Largest value range for which :func:`rescale_window_to_uint8` builds a lookup table.
MAX_LUT_SIZE = 1 << 17


def rescale_window_to_uint8(
    arr: np.ndarray, slope: float, intercept: float, center: float, width: float
) -> np.ndarray:
    """Rescale then window an integer array in one lookup-table pass (same result as
    ``window_to_uint8(apply_rescale(arr, slope, intercept), center, width)``).

    Stored values span at most 16 bits, so a table over their range is small and one
    indexing pass replaces half a dozen float passes over the image. Falls back to the
    float path for non-integer data or an unusually wide range.
    """
    if arr.dtype.kind not in "iu" or arr.size == 0:
        return window_to_uint8(apply_rescale(arr, slope, intercept), center, width)
    lo, hi = int(arr.min()), int(arr.max())
    if hi - lo + 1 > MAX_LUT_SIZE:
        return window_to_uint8(apply_rescale(arr, slope, intercept), center, width)
    # The same float32 arithmetic as the direct path, so both give identical bytes.
    lut = window_to_uint8(apply_rescale(np.arange(lo, hi + 1), slope, intercept), center, width)
    if arr.dtype.kind == "u" and lo == 0:
        return lut[arr]
    return lut[arr.astype(np.int32) - lo]


def percentile_window(
    arr: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """A (center, width) window spanning the given percentiles of ``arr``.

    Used when the header carries no window. Sub-sampled for speed: the percentiles of a
    smooth image barely move when every fourth pixel is used.
    """
    sample = arr.reshape(-1)[::4] if arr.size > 4096 else arr.reshape(-1)
    lo, hi = np.percentile(sample, percentiles)
    width = max(1.0, float(hi - lo))
    return float(lo + width / 2.0), width


def to_grayscale(arr: np.ndarray, photometric: str) -> np.ndarray:
    """One grey plane from a decoded frame.

    ``MONOCHROME1`` (white = low values) is inverted so that bright is always high;
    colour frames (already converted to RGB by the decoder) become luminance (ITU-R 601).
    """
    if arr.ndim == 3:
        rgb = arr.astype(np.float32)
        return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    if photometric == "MONOCHROME1":
        a = arr.astype(np.float32)
        return a.max() + a.min() - a
    return arr
