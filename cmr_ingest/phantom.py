"""A synthetic short-axis late-gadolinium (LGE) cardiac MR phantom, in pure NumPy.

One scan is an :class:`Anatomy` (heart size and shape, wall thickness, contrast, optional
scar) seen through a :class:`View` (matrix, pixel size, in-plane rotation and offset, slice
thickness, noise, coil bias field). :func:`render_slice` draws the slice at a normalised
long-axis coordinate ``u``:

* ``u < 0``: above the plane where LV myocardium surrounds half of the blood pool: a
  horseshoe of myocardium open towards the LV outflow tract and aortic root, becoming the
  left atrium (bright blood, thin wall) further up;
* ``0 <= u <= 1``: the LV: a full ring of nulled (dark) myocardium around bright blood, the
  RV crescent, papillary muscles, tapering to a solid apical cap at ``u = 1``;
* ``u > 1``: beyond the apex: no LV myocardium, only the apical fat pad, liver, chest wall
  and lung.

The class boundaries are the SCMR definitions quoted in the study (Zaman et al. 2023):
'too basal' when LV myocardium surrounds less than 50% of the blood pool, 'too apical'
when no LV myocardium is visible. Because ``u`` is normalised per heart (``u = 0`` at the
50%-coverage plane, ``u = 1`` at the epicardial apex), the classes are thresholds on
:func:`position`, the ground-truth ordinal axis shared by the whole population.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from cmr_ingest.geometry import TYPICAL_LONG_AXIS_LPS

#: Lowest and highest normalised long-axis coordinate a synthetic stack can reach;
#: ``position`` maps this range onto 0 (most basal) .. 1 (most apical).
U_MIN: float = -0.7
U_MAX: float = 1.5

#: Base→apex long-axis direction of a typical heart in DICOM patient coordinates (LPS:
#: +x patient left, +y posterior, +z head). The apex lies left, anterior and inferior.
LONG_AXIS_LPS: tuple[float, float, float] = TYPICAL_LONG_AXIS_LPS


def position(u: float) -> float:
    """Ground-truth position on the population axis: 0 most basal .. 1 most apical."""
    return float(min(1.0, max(0.0, (u - U_MIN) / (U_MAX - U_MIN))))


#: Positions of the two class boundaries (too_basal|lv and lv|too_apical).
POSITION_CUTS: tuple[float, float] = (position(0.0), position(1.0))


def true_class(u: float) -> str:
    """SCMR class of a slice at normalised coordinate ``u`` (see the module docstring)."""
    if u < 0.0:
        return "too_basal"
    if u > 1.0:
        return "too_apical"
    return "lv"


@dataclass(frozen=True)
class Scar:
    """A patch of late enhancement: a myocardial sector over a range of ``u``."""

    u_from: float
    u_to: float
    angle: float  #: centre of the sector (radians, image convention: 0 = lateral, pi/2 = anterior)
    half_width: float  #: radians
    transmurality: float  #: 0..1 of the wall, from the endocardium outwards


@dataclass(frozen=True)
class Anatomy:
    """One heart and its surroundings; all lengths in millimetres."""

    apex_mm: float  #: mitral annulus to epicardial apex along the long axis
    z50_mm: float  #: annulus to the plane where myocardium covers half the blood pool
    ramp_mm: float  #: coverage goes 0 → 1 over 2 * ramp_mm around z50_mm
    radius_mm: float  #: LV epicardial radius at the equator
    ellipticity: float  #: 0 = circular cross-section
    ellipse_angle: float
    wall_mm: float
    apex_wall_mm: float
    rv_scale: float
    drift: tuple[float, float]  #: in-plane drift of the LV centre per mm along the axis
    blood: float
    myocardium: float
    fat: float
    liver: float
    muscle: float
    lung: float
    scar: Scar | None

    @property
    def lv_length_mm(self) -> float:
        """Long-axis distance from the 50%-coverage plane (u = 0) to the apex (u = 1)."""
        return self.apex_mm - self.z50_mm

    def z_of(self, u: float) -> float:
        """Millimetres below the mitral annulus of the plane at normalised coordinate ``u``."""
        return self.z50_mm + u * self.lv_length_mm

    def coverage(self, u: float) -> float:
        """Fraction of the blood pool's circumference with LV myocardium around it at ``u``.

        Equals 0.5 at ``u = 0`` by construction; 0 in the atrium, 1 in the LV body, and
        undefined (returned as 1) at the solid apical cap, where there is no blood pool.
        """
        z = self.z_of(u)
        if z > self.apex_mm:
            return 0.0
        return float(min(1.0, max(0.0, 0.5 + (z - self.z50_mm) / (2.0 * self.ramp_mm))))


@dataclass(frozen=True)
class View:
    """How one scan is imaged: geometry of the matrix and the imperfections."""

    matrix: int  #: rows = columns of the written image
    pixel_mm: float
    rotation: float  #: in-plane rotation of the anatomy (radians)
    offset_mm: tuple[float, float]  #: position of the LV centre in the image plane
    thickness_mm: float
    noise: float  #: Rician noise sigma relative to a blood signal near 1
    bias: tuple[float, float, float]  #: coil bias field: x slope, y slope, radial term


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one heart: size, shape, wall, contrast, and (in about a third) a scar."""
    apex = rng.uniform(82.0, 102.0)
    z50 = rng.uniform(6.0, 12.0)
    scar = None
    if rng.random() < 0.35:
        a = rng.uniform(-0.05, 0.75)
        scar = Scar(
            u_from=a,
            u_to=min(1.0, a + rng.uniform(0.15, 0.6)),
            angle=rng.uniform(-math.pi, math.pi),
            half_width=rng.uniform(0.25, 0.8),
            transmurality=rng.uniform(0.3, 1.0),
        )
    blood = rng.uniform(0.75, 0.95)
    wall = rng.uniform(6.5, 13.0)
    return Anatomy(
        apex_mm=apex,
        z50_mm=z50,
        ramp_mm=rng.uniform(9.0, 14.0),
        radius_mm=rng.uniform(25.0, 35.0),
        ellipticity=rng.uniform(0.0, 0.12),
        ellipse_angle=rng.uniform(0.0, math.pi),
        wall_mm=wall,
        apex_wall_mm=wall * rng.uniform(0.5, 0.75),
        rv_scale=rng.uniform(0.85, 1.25),
        drift=(rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)),
        blood=blood,
        myocardium=rng.uniform(0.03, 0.14),
        fat=rng.uniform(0.45, 0.7),
        liver=rng.uniform(0.2, 0.34),
        muscle=rng.uniform(0.16, 0.28),
        lung=rng.uniform(0.015, 0.06),
        scar=scar,
    )


def sample_view(rng: np.random.Generator, spacing_mm: float) -> View:
    """Draw the imaging parameters for one scan whose slices are ``spacing_mm`` apart."""
    matrix = int(rng.choice([432, 448]))
    fov = rng.uniform(300.0, 400.0)
    # Keep the heart inside the central region the training crop keeps (the middle
    # 60% x 70% of the image, then a 256 px centre crop).
    pixel = fov / matrix
    max_off = 12.0 * pixel
    return View(
        matrix=matrix,
        pixel_mm=pixel,
        rotation=rng.uniform(-0.45, 0.45),
        offset_mm=(
            rng.uniform(-max_off, max_off) + 8.0 * pixel,
            rng.uniform(-max_off, max_off),
        ),
        thickness_mm=spacing_mm * rng.uniform(0.75, 1.0),
        noise=rng.uniform(0.015, 0.05),
        bias=(rng.uniform(-0.35, 0.35), rng.uniform(-0.35, 0.35), rng.uniform(-0.3, 0.1)),
    )


# --- drawing primitives (soft-edged, so edges are anti-aliased) ------------------------


def _ellipse(x, y, cx, cy, a, b, angle=0.0, edge=1.0):
    """Soft mask (0..1) of an ellipse with semi-axes ``a``, ``b`` (mm), edge ramp ``edge`` mm."""
    dx, dy = x - cx, y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    q = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    return np.clip(0.5 - (q - 1.0) * (min(a, b) / edge), 0.0, 1.0)


def _paint(img, mask, value):
    """Composite ``value`` over ``img`` with opacity ``mask`` (in place)."""
    img += mask * (value - img)


def _sector(theta, centre, half_width, soft=0.08):
    """Soft mask of the angles within ``half_width`` of ``centre`` (radians)."""
    d = np.abs(np.angle(np.exp(1j * (theta - centre))))
    return np.clip((half_width - d) / soft + 0.5, 0.0, 1.0)


def _background(a: Anatomy, z: float, x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
    """Signal of the thorax around the heart on the plane ``z`` mm below the mitral annulus.

    ``x`` (towards the patient's left) and ``y`` (anterior) are anatomy coordinates in mm,
    centred on the LV axis at the annulus.
    """
    apex = a.apex_mm
    img = np.full(x.shape, a.lung, dtype=np.float32)
    # Thorax: subcutaneous fat, chest-wall muscle, then lung. The plane moves anteriorly
    # and inferiorly towards the apex, so the anterior chest wall approaches the heart.
    wall_y = 105.0 - 0.45 * z
    bx, by = 200.0, 150.0
    cy = wall_y - by
    body = _ellipse(x, y, -30.0, cy, bx, by, edge=edge)
    img *= body
    _paint(img, body, a.fat * 0.95)
    _paint(img, _ellipse(x, y, -30.0, cy, bx - 10, by - 10, edge=edge), a.muscle)
    _paint(img, _ellipse(x, y, -30.0, cy, bx - 24, by - 22, edge=edge), a.lung)
    # Spine and descending aorta, posterior.
    sy = cy - by + 60.0
    _paint(img, _ellipse(x, y, -30.0, sy, 24.0, 20.0, edge=edge), a.muscle * 1.4)
    _paint(img, _ellipse(x, y, 0.0, sy + 34.0, 11.0, 11.0, edge=edge), a.blood * 0.9)
    # Liver (the patient's right, inferior): rises into the plane towards the apex.
    t = min(1.6, max(0.0, z / apex))
    liver = _ellipse(x, y, -75.0 + 15.0 * t, -150.0 + 80.0 * t, 115.0, 70.0, angle=0.3, edge=edge)
    _paint(img, liver, a.liver)
    # Stomach (patient's left, inferior) beyond mid-ventricle.
    if t > 0.5:
        _paint(img, _ellipse(x, y, 75.0, -70.0 + 25.0 * t, 30.0, 22.0, edge=edge), a.liver * 0.6)
    return img


def epicardial_radius(a: Anatomy, z: float) -> float:
    """LV epicardial radius (mm) on the plane ``z`` mm below the annulus: slightly narrower
    at the base, an ellipsoidal taper to 0 at the apex."""
    apex = a.apex_mm
    z_eq = 0.38 * apex
    if z <= z_eq:
        return a.radius_mm * (0.9 + 0.1 * max(0.0, z) / z_eq)
    if z < apex:
        return a.radius_mm * math.sqrt(1.0 - ((z - z_eq) / (apex - z_eq)) ** 2)
    return 0.0


def _heart(
    a: Anatomy, z: float, x: np.ndarray, y: np.ndarray, img: np.ndarray, edge: float
) -> None:
    """Paint the heart on the plane ``z`` mm below the mitral annulus over ``img`` (in place)."""
    apex = a.apex_mm
    cx, cyl = a.drift[0] * z, a.drift[1] * z
    z_eq = 0.38 * apex
    r_epi = epicardial_radius(a, z)
    frac_apex = min(1.0, max(0.0, (z - z_eq) / (apex - z_eq)))
    wall = a.wall_mm + (a.apex_wall_mm - a.wall_mm) * frac_apex
    r_endo = r_epi - wall
    ea, eb = 1.0 + a.ellipticity, 1.0 - a.ellipticity
    u = (z - a.z50_mm) / a.lv_length_mm

    # Apical fat pad: what is left beyond the apex is a bright smudge, no myocardium.
    pad = max(0.0, 1.0 - max(0.0, z - apex + 8.0) / 30.0)
    if pad > 0 and z > 0.6 * apex:
        _paint(img, _ellipse(x, y, cx - 4.0, cyl + 6.0, 24.0, 18.0, edge=edge) * pad, a.fat)

    # RV: a crescent wrapped round the septum (image left and anterior), ending before the
    # LV apex; above the base it continues as the right atrium / outflow tract.
    rv_end = 0.88 * apex
    if z < rv_end:
        k = max(0.0, z - 0.3 * apex) / (rv_end - 0.3 * apex)
        s = a.rv_scale * math.sqrt(max(0.0, 1.0 - k * k))
        ra, rb = 0.75 * a.radius_mm * s + 3.0, 1.3 * a.radius_mm * s + 3.0
        rcx = cx - 0.55 * a.radius_mm - 0.45 * ra
        rcy = cyl + 0.15 * a.radius_mm
        if ra > 3.5:
            _paint(img, _ellipse(x, y, rcx, rcy, ra + 5.0, rb + 5.0, -0.35, edge), a.fat)
            _paint(
                img, _ellipse(x, y, rcx, rcy, ra + 2.5, rb + 2.5, -0.35, edge), a.myocardium * 1.8
            )
            _paint(img, _ellipse(x, y, rcx, rcy, ra, rb, -0.35, edge), a.blood * 0.92)

    if z < 0.0:
        # Left atrium: bright blood, thin wall, drifting posteriorly above the annulus.
        la_y = cyl + 0.5 * z
        la_r = a.radius_mm * (1.0 + 0.004 * -z)
        _paint(img, _ellipse(x, y, cx, la_y, la_r + 5, (la_r + 5) * 0.85, edge=edge), a.fat)
        _paint(img, _ellipse(x, y, cx, la_y, la_r + 2, (la_r + 2) * 0.85, edge=edge), a.muscle)
        _paint(img, _ellipse(x, y, cx, la_y, la_r, la_r * 0.85, edge=edge), a.blood)
    if r_epi <= 0.0:
        return
    theta = np.arctan2(y - cyl, x - cx)
    cov = a.coverage(u)
    _paint(
        img,
        _ellipse(x, y, cx, cyl, r_epi * ea + 3.0, r_epi * eb + 3.0, a.ellipse_angle, edge),
        a.fat,
    )
    epi = _ellipse(x, y, cx, cyl, r_epi * ea, r_epi * eb, a.ellipse_angle, edge)
    if cov < 1.0:
        # The myocardial horseshoe opens towards the LVOT (anteroseptal, image upper
        # left); the gap is blood continuous with the outflow tract.
        gap = _sector(theta, 2.2, math.pi * (1.0 - cov))
        myo_mask = epi * (1.0 - gap)
        _paint(img, epi * gap, a.blood)
    else:
        myo_mask = epi
    _paint(img, myo_mask, a.myocardium)
    if r_endo > 0.5:
        endo = _ellipse(x, y, cx, cyl, r_endo * ea, r_endo * eb, a.ellipse_angle, edge)
        _paint(img, endo, a.blood)
        # Papillary muscles in the mid ventricle.
        pm = min(1.0, max(0.0, (z - a.z50_mm - a.ramp_mm) / 10.0)) * min(
            1.0, max(0.0, (0.78 * apex - z) / 10.0)
        )
        if pm > 0:
            pr = max(2.0, 0.2 * r_endo)
            for ang in (0.7, -1.9):
                px = cx + 0.58 * r_endo * math.cos(ang)
                py = cyl + 0.58 * r_endo * math.sin(ang)
                _paint(img, _ellipse(x, y, px, py, pr, pr * 0.8, ang, edge) * pm, a.myocardium)
        sc = a.scar
        if sc is not None and sc.u_from <= u <= sc.u_to:
            r_sc = r_endo + sc.transmurality * wall
            ring = _ellipse(x, y, cx, cyl, r_sc * ea, r_sc * eb, a.ellipse_angle, edge) - endo
            patch = np.clip(ring, 0.0, 1.0) * _sector(theta, sc.angle, sc.half_width) * myo_mask
            _paint(img, patch, a.blood * 1.08)
    if cov < 1.0:
        # Aortic root beside the gap, growing as the plane rises to the valve.
        k = 1.0 - cov
        ar = 9.0 + 5.0 * k
        d = r_epi + ar * 0.6
        ax_, ay_ = cx + d * math.cos(2.2), cyl + d * math.sin(2.2)
        _paint(img, _ellipse(x, y, ax_, ay_, ar + 2.0, ar + 2.0, edge=edge) * k, a.muscle)
        _paint(img, _ellipse(x, y, ax_, ay_, ar, ar, edge=edge) * k, a.blood)


#: Half-width (mm) of the window around the LV axis in which the heart is drawn.
_HEART_HALF_MM = 105.0


@functools.lru_cache(maxsize=8)
def _bias_field(view: View) -> np.ndarray:
    """Smooth multiplicative coil sensitivity over the image (1 at the centre)."""
    h = w = view.matrix
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    bx, by, br = view.bias
    return np.exp(bx * xx + by * yy + br * (xx * xx + yy * yy)).astype(np.float32)


def render_slice(a: Anatomy, u: float, view: View, rng: np.random.Generator) -> np.ndarray:
    """Magnitude image (float32, ``view.matrix`` square, blood near 1) of the slice at ``u``.

    The anatomy is drawn at half resolution on three sub-planes across the slice thickness
    (partial volume along the slice), blurred in-plane, given complex Gaussian noise (so
    the magnitude is Rician), upsampled to the matrix like a zero-filled reconstruction,
    and multiplied by a coil bias field.
    """
    n = view.matrix // 2
    px = view.pixel_mm * 2.0
    idx = (np.arange(n, dtype=np.float32) - n / 2 + 0.5) * px
    gx = idx[None, :] - view.offset_mm[0]
    gy = -idx[:, None] - view.offset_mm[1]
    c, s = math.cos(view.rotation), math.sin(view.rotation)
    x = (c * gx + s * gy).astype(np.float32)
    y = (-s * gx + c * gy).astype(np.float32)
    z = a.z_of(u)
    # The thorax barely changes across one slice: draw it once. The heart is drawn on
    # three sub-planes across the slice thickness, only in a window around the LV axis.
    base = _background(a, z, x, y, edge=px)
    half = int(_HEART_HALF_MM / px)
    ci = int(round(n / 2 - view.offset_mm[1] / px))
    cj = int(round(n / 2 + view.offset_mm[0] / px))
    win = (slice(max(0, ci - half), ci + half), slice(max(0, cj - half), cj + half))
    xw, yw = x[win], y[win]
    acc = base.copy()
    heart = np.zeros_like(xw)
    for dz in (-view.thickness_mm / 3.0, 0.0, view.thickness_mm / 3.0):
        layer = base[win].copy()
        _heart(a, z + dz, xw, yw, layer, edge=px)
        heart += layer
    acc[win] = heart / 3.0
    acc = ndimage.gaussian_filter(acc, 0.6)
    re = acc + rng.standard_normal(acc.shape, dtype=np.float32) * view.noise
    im = rng.standard_normal(acc.shape, dtype=np.float32) * view.noise
    mag = np.sqrt(re * re + im * im)
    big = np.asarray(Image.fromarray(mag).resize((view.matrix, view.matrix), Image.BILINEAR))
    return big * _bias_field(view)


# --- what a reader can see in a rendered slice (simulated raters, issue 19) ----------------
#
# Fixed from the anatomy and the imaging physics above, before any model was trained on
# labels drawn from it; only the raters' noise levels are calibrated afterwards (to the
# study's kappa: ranking_scheduler.simulator.raters.PHANTOM_PARAMS).

#: Rose criterion: a structure is seen when its contrast-to-noise ratio reaches about 5.
ROSE_K = 5.0
#: In-plane resolution in pixels: the anatomy is drawn at half resolution and blurred.
RESOLUTION_PX = 4.0
#: Population medians of the difficulty's three factors (noise over myocardium/blood
#: contrast, pixel size, wall thickness), computed from the sampling ranges above, so an
#: average scan has difficulty 1.
_MEDIAN_NOISE_CONTRAST = 0.043
_MEDIAN_PIXEL_MM = 0.80
_MEDIAN_WALL_MM = 9.8


def slab_coverage(a: Anatomy, u: float, thickness_mm: float) -> float:
    """Myocardial coverage of the blood pool averaged over the slice thickness, on the same
    three sub-planes :func:`render_slice` draws (partial volume)."""
    z = a.z_of(u)
    covs = [
        a.coverage((z + dz - a.z50_mm) / a.lv_length_mm)
        for dz in (-thickness_mm / 3.0, 0.0, thickness_mm / 3.0)
    ]
    return float(sum(covs) / len(covs))


def apparent_u(a: Anatomy, view: View, u: float) -> float:
    """Where on the long axis the slice at ``u`` *looks* to lie, judged at the nearer cut.

    * Basal half: a reader judges whether myocardium surrounds half the blood pool. The image
      shows the coverage averaged over the slab (:func:`slab_coverage`); the slice moves by
      the difference between that and a thin slice's coverage, read on the coverage ramp
      (nothing at the cut itself, where the ramp is linear across the slab).
    * Apical half: a reader judges whether any LV myocardium is visible. The apical cap is
      seen where its radius is at least the in-plane resolution (``RESOLUTION_PX`` pixels),
      up to ``z_vis``; within a slab it shows only if it fills at least the share
      ``f_min = ROSE_K * noise / contrast`` of the thickness (partial volume dilutes its
      contrast against the apical fat). So a slice centred just past the apex can still show
      myocardium, and a noisy one hides a thin cap: the apparent cut moves per scan.
    """
    if u < 0.5:
        # The coverage a slab shows, read back through the thin-slice ramp; only the shift
        # partial volume causes is kept, so slices past the ramp (coverage 0 or 1, where
        # other cues order them) keep their place. A linear ramp averages out at the cut.
        def thin(cov: float) -> float:
            return (cov - 0.5) * 2.0 * a.ramp_mm / a.lv_length_mm

        return u + thin(slab_coverage(a, u, view.thickness_mm)) - thin(a.coverage(u))
    apex = a.apex_mm
    z_eq = 0.38 * apex
    r_min = RESOLUTION_PX * view.pixel_mm
    s = math.sqrt(max(0.0, 1.0 - (r_min / a.radius_mm) ** 2))
    z_vis = z_eq + s * (apex - z_eq)
    contrast = max(1e-3, a.fat - a.myocardium)
    f_min = min(1.0, ROSE_K * view.noise / contrast)
    t = view.thickness_mm
    z = a.z_of(u)
    # Looks LV while the cap fills at least f_min of the slab [z - t/2, z + t/2].
    z_seen = z - t / 2.0 + f_min * t
    return 1.0 + (z_seen - z_vis) / a.lv_length_mm


def reading_difficulty(a: Anatomy, view: View) -> float:
    """How much harder than an average scan this one is to read (1 = the median scan).

    The geometric mean of noise over myocardium/blood contrast, pixel size (blur) and the
    thinness of the wall, each relative to its population median; the same for every slice
    of the scan and for every reader.
    """
    contrast = max(1e-3, a.blood - a.myocardium)
    parts = (
        (view.noise / contrast) / _MEDIAN_NOISE_CONTRAST,
        view.pixel_mm / _MEDIAN_PIXEL_MM,
        _MEDIAN_WALL_MM / a.wall_mm,
    )
    return float(math.prod(parts) ** (1.0 / len(parts)))
