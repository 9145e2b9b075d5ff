"""Pure stack geometry: is a series short-axis, and in which order do its slices go?

All vectors are in DICOM patient coordinates (LPS: +x towards the patient's left, +y
posterior, +z towards the head), in millimetres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Base → apex direction of the LV long axis in a typical heart: the apex lies to the
#: patient's left, anterior and inferior of the base. Short-axis slices are (nearly)
#: perpendicular to it.
TYPICAL_LONG_AXIS_LPS: tuple[float, float, float] = (0.62, -0.55, -0.56)

#: Default largest angle (degrees) between a stack's normal and the typical long axis for
#: the stack to count as short-axis. Axial, coronal and sagittal planes are 51–57° away,
#: long-axis views (2/3/4-chamber) about 90°.
DEFAULT_TOLERANCE_DEG = 40.0

#: Two slices closer than this along the normal (mm) occupy the same position.
DUPLICATE_MM = 0.05


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit normal (row × column direction) of a slice with ImageOrientationPatient ``iop``.

    Raises ``ValueError`` when the six values do not give two unit, orthogonal directions.
    """
    if len(iop) != 6:
        raise ValueError(f"ImageOrientationPatient needs 6 values, got {len(iop)}")
    row = np.asarray(iop[:3], dtype=float)
    col = np.asarray(iop[3:], dtype=float)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    if norm < 0.9 or abs(float(np.dot(row, col))) > 0.05:
        raise ValueError(f"ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors")
    return n / norm


def angle_to_long_axis(
    normal: Sequence[float], long_axis: Sequence[float] = TYPICAL_LONG_AXIS_LPS
) -> float:
    """Angle in degrees (0..90) between the line of ``normal`` and the long axis."""
    a = np.asarray(long_axis, dtype=float)
    c = abs(float(np.dot(normal, a / np.linalg.norm(a))))
    return math.degrees(math.acos(min(1.0, c)))


def is_short_axis(normal: Sequence[float], tolerance_deg: float = DEFAULT_TOLERANCE_DEG) -> bool:
    """True when a plane with this normal is within ``tolerance_deg`` of a short-axis plane."""
    return angle_to_long_axis(normal) <= tolerance_deg


def same_orientation(a: Sequence[float], b: Sequence[float], tol_deg: float = 2.0) -> bool:
    """True when two slice normals are parallel within ``tol_deg`` (either sign)."""
    c = abs(float(np.dot(a, b)))
    return math.degrees(math.acos(min(1.0, c))) <= tol_deg


def base_to_apex_direction(normal: Sequence[float]) -> np.ndarray:
    """``normal`` or its opposite, whichever points from base towards apex."""
    n = np.asarray(normal, dtype=float)
    return n if float(np.dot(n, TYPICAL_LONG_AXIS_LPS)) >= 0.0 else -n


def order_base_to_apex(
    positions: Sequence[Sequence[float]], normal: Sequence[float]
) -> tuple[list[int], list[float]]:
    """Order slices base → apex by their ImagePositionPatient along the stack direction.

    Returns the indices of ``positions`` in that order and each slice's distance (mm)
    along the base → apex direction, in the same order.
    """
    d = base_to_apex_direction(normal)
    dist = [float(np.dot(np.asarray(p, dtype=float), d)) for p in positions]
    order = sorted(range(len(dist)), key=lambda i: dist[i])
    return order, [dist[i] for i in order]


def duplicates(sorted_dist: Sequence[float], tol_mm: float = DUPLICATE_MM) -> list[int]:
    """Indices (into the sorted list) of slices at the same position as the one before."""
    return [i for i in range(1, len(sorted_dist)) if sorted_dist[i] - sorted_dist[i - 1] < tol_mm]


def spacing_summary(sorted_dist: Sequence[float]) -> tuple[float | None, bool]:
    """Median gap between neighbouring slices (mm) and whether the gaps are uneven (>20%)."""
    if len(sorted_dist) < 2:
        return None, False
    gaps = np.diff(np.asarray(sorted_dist, dtype=float))
    med = float(np.median(gaps))
    uneven = bool(med > 0 and np.max(np.abs(gaps - med)) > 0.2 * med)
    return med, uneven
