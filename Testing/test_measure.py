"""Measurements a radiologist reads: volume, RECIST diameters, centre, % change from baseline and nadir."""

import math

import numpy as np

from conftest import make_scan
from LinGuinELib.core.measure import axial_diameters, measure_mask, percent_changes


def test_sphere_volume_diameters_and_centre():
    scan = make_scan(shape=(40, 60, 60), spacing=(0.5, 0.5, 1.0), blobs=(((20, 30, 30), 10.0),))
    m = measure_mask(scan.label == 1, scan)
    assert abs(m["volume_ml"] - 4 / 3 * math.pi * 10 ** 3 / 1000) < 0.05 * 4.19
    assert 19.5 <= m["longest_diameter_mm"] <= 21.5, "edge-to-edge diameter of a 20 mm sphere"
    assert 19.0 <= m["short_axis_mm"] <= 21.0
    assert np.allclose(m["centre_lps"], scan.kji_to_lps(np.array([[20, 30, 30]]))[0], atol=0.05)


def test_ellipse_long_and_short_axes_follow_an_oblique_lesion():
    scan = make_scan(shape=(3, 100, 100), spacing=(1, 1, 5), blobs=())
    jj, ii = np.mgrid[:100, :100].astype(float) - 50
    u, v = (ii + jj) / math.sqrt(2), (ii - jj) / math.sqrt(2)  # 45 degree ellipse, semi-axes 30 and 10
    mask = np.zeros(scan.shape, bool)
    mask[1] = (u / 30) ** 2 + (v / 10) ** 2 <= 1
    longest, short, k = axial_diameters(mask, scan)
    assert k == 1
    assert 59 <= longest <= 62.5 and 19 <= short <= 22.5


def test_volume_is_spacing_aware():
    a = make_scan(shape=(10, 10, 10), spacing=(1, 1, 1), blobs=())
    b = make_scan(shape=(10, 10, 10), spacing=(0.5, 0.5, 5), blobs=())
    mask = np.zeros((10, 10, 10), bool)
    mask[2:6, 2:6, 2:6] = True
    assert measure_mask(mask, a)["volume_ml"] == 0.064
    assert measure_mask(mask, b)["volume_ml"] == 0.08


def test_percent_change_from_baseline_and_nadir():
    changes = percent_changes([None, 10.0, 5.0, 8.0, None, 4.0])
    assert changes[0] == (None, None) and changes[4] == (None, None)
    assert changes[1] == (0.0, 0.0), "first measured scan is the baseline"
    assert changes[2] == (-50.0, -50.0)
    assert changes[3] == (-20.0, 60.0), "nadir is the smallest earlier volume (5 mL)"
    assert changes[5] == (-60.0, -20.0)
