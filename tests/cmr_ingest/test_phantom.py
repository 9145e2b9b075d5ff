"""The phantom: class mix, stack shape, and anatomy that matches the SCMR definitions."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from cmr_ingest import phantom
from cmr_ingest.synth import plan_scan

#: The study's mix (Zaman et al. 2023: 20.0% too basal, 7.4% too apical) and the slack
#: allowed over 400 synthetic scans (~4,800 slices).
STUDY_MIX = {"too_basal": 0.20, "lv": 0.73, "too_apical": 0.07}
MIX_TOLERANCE = 0.03


def test_default_class_mix_and_stack_sizes_match_the_study():
    plans = [plan_scan(0, i) for i in range(400)]
    counts = Counter(c for p in plans for c in p.classes)
    total = sum(counts.values())
    for cls, share in STUDY_MIX.items():
        assert abs(counts[cls] / total - share) < MIX_TOLERANCE, (cls, counts[cls] / total)
    sizes = [len(p.us) for p in plans]
    assert min(sizes) >= 8 and max(sizes) <= 16
    assert 10.5 < np.mean(sizes) < 13.0  # the study: 3,552 images / 300 scans = 11.8


def test_every_stack_runs_base_to_apex_with_classes_in_order():
    rank = {"too_basal": 0, "lv": 1, "too_apical": 2}
    for i in range(100):
        p = plan_scan(7, i)
        assert p.positions == sorted(p.positions)
        assert [rank[c] for c in p.classes] == sorted(rank[c] for c in p.classes)
        assert p.classes[0] == "too_basal" and "lv" in p.classes
        lo, hi = phantom.POSITION_CUTS
        for pos, cls in zip(p.positions, p.classes, strict=True):
            assert cls == ("too_basal" if pos < lo else "too_apical" if pos > hi else "lv")


def test_scans_vary():
    plans = [plan_scan(1, i) for i in range(30)]
    for attr in ("radius_mm", "wall_mm", "apex_mm"):
        values = [getattr(p.anatomy, attr) for p in plans]
        assert np.std(values) > 0.1 * np.mean(values) / 3
    assert len({p.view.matrix for p in plans}) > 1
    assert len({round(p.spacing_mm, 1) for p in plans}) > 10
    assert any(p.anatomy.scar for p in plans) and not all(p.anatomy.scar for p in plans)


def _lv_centre_px(a, u, view):
    z = a.z_of(u)
    ax, ay = a.drift[0] * z, a.drift[1] * z
    c, s = math.cos(view.rotation), math.sin(view.rotation)
    x = c * ax - s * ay + view.offset_mm[0]
    y = s * ax + c * ay + view.offset_mm[1]
    n = view.matrix
    return n / 2 - 0.5 - y / view.pixel_mm, n / 2 - 0.5 + x / view.pixel_mm


def _myocardium(a, u, view):
    """Pixels that change when the myocardium's signal changes: where myocardium is visible."""
    quiet = replace(view, noise=0.0, bias=(0.0, 0.0, 0.0))
    rng = np.random.default_rng(0)
    base = phantom.render_slice(a, u, quiet, rng)
    bright = phantom.render_slice(replace(a, myocardium=0.9), u, quiet, rng)
    return np.abs(bright - base) > 0.15


def _coverage(mask, centre, radius_px, bins=72):
    """Fraction of directions from the LV centre along which myocardium lies within radius."""
    ii, jj = np.nonzero(mask)
    r = np.hypot(ii - centre[0], jj - centre[1])
    keep = r <= radius_px
    ang = np.arctan2(-(ii[keep] - centre[0]), jj[keep] - centre[1])
    hit = np.unique(((ang + np.pi) / (2 * np.pi) * bins).astype(int) % bins)
    return len(hit) / bins


@pytest.mark.parametrize("seed", range(6))
def test_myocardium_coverage_per_class(seed):
    rng = np.random.default_rng(seed)
    a = phantom.sample_anatomy(rng)
    view = phantom.sample_view(rng, 10.0)
    radius_px = (a.radius_mm * (1 + a.ellipticity) + 1.0) / view.pixel_mm
    for u, cls in [
        (-0.45, "too_basal"),
        (-0.15, "too_basal"),
        (0.12, "lv"),
        (0.5, "lv"),
        (0.9, "lv"),
        (1.12, "too_apical"),
        (1.35, "too_apical"),
    ]:
        assert phantom.true_class(u) == cls
        mask = _myocardium(a, u, view)
        cov = _coverage(mask, _lv_centre_px(a, u, view), radius_px)
        if cls == "too_basal":
            assert cov < 0.5, (u, cov)
        elif cls == "lv":
            assert cov > 0.5, (u, cov)
            if 0.3 < u < 0.7:
                assert cov > 0.9
        else:
            assert mask.sum() == 0, (u, int(mask.sum()))


def test_lge_contrast_blood_bright_myocardium_dark():
    rng = np.random.default_rng(5)
    a = replace(phantom.sample_anatomy(rng), scar=None)
    view = replace(phantom.sample_view(rng, 10.0), noise=0.0, bias=(0.0, 0.0, 0.0))
    img = phantom.render_slice(a, 0.5, view, rng)
    ci, cj = (int(round(v)) for v in _lv_centre_px(a, 0.5, view))
    quiet = np.random.default_rng(0)
    bright = phantom.render_slice(replace(a, myocardium=0.9), 0.5, view, quiet)
    myo = (bright - img) > 0.8 * (0.9 - a.myocardium)  # pixels that are all myocardium
    assert myo.sum() > 500
    assert img[ci, cj] > 0.6  # blood pool centre
    assert np.median(img[myo]) < 0.3 * img[ci, cj]


def test_noise_is_rician_and_bias_field_varies():
    rng = np.random.default_rng(2)
    a = phantom.sample_anatomy(rng)
    view = replace(phantom.sample_view(rng, 10.0), noise=0.05)
    img = phantom.render_slice(a, 0.5, view, rng)
    assert img.dtype == np.float32 and img.shape == (view.matrix, view.matrix)
    assert img.min() >= 0.0  # a magnitude image
    corner = img[:20, :20]  # air: Rician noise floor, mean sigma*sqrt(pi/2)
    assert 0.3 * 0.05 < corner.mean() < 3 * 0.05
