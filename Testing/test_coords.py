"""LPS <-> RAS <-> voxel index conversions (LinGuinELib/core/coords.py) on an oblique geometry, checked
against SimpleITK's own index-to-physical mapping (an independent implementation of the ITK convention)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LinGuinELib.core import coords

ORIGIN = (-120.5, 80.25, -300.0)  # LPS mm
SPACING = (0.7, 0.8, 2.5)  # (i, j, k) mm


def oblique_direction() -> np.ndarray:
    """Rotations of 0.3, -0.2 and 0.6 rad about x, y and z, with the slice axis flipped (a proper direction
    matrix with no zero entry, so any swapped axis or sign shows)."""
    ax, ay, az = 0.3, -0.2, 0.6
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx @ np.diag([1.0, 1.0, -1.0])


@pytest.fixture
def geometry():
    direction = oblique_direction()
    image = sitk.Image(8, 7, 6, sitk.sitkUInt8)
    image.SetOrigin(ORIGIN)
    image.SetSpacing(SPACING)
    image.SetDirection(tuple(direction.ravel()))
    return coords.index_to_lps_matrix(ORIGIN, SPACING, direction), image


IJK = np.array([[0.0, 0.0, 0.0], [7.0, 6.0, 5.0], [3.5, 2.25, 1.75], [-0.5, 10.0, 4.0]])


def test_ijk_to_lps_is_what_itk_computes(geometry):
    matrix, image = geometry
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in IJK])
    np.testing.assert_allclose(coords.ijk_to_lps(IJK, matrix), expected, atol=1e-9)
    np.testing.assert_allclose(coords.ijk_to_lps(IJK[1], matrix), expected[1], atol=1e-9)  # one point, (3,)
    # one voxel step along i moves by spacing_i along the direction's first column
    step = coords.ijk_to_lps(IJK[1] + [1, 0, 0], matrix) - coords.ijk_to_lps(IJK[1], matrix)
    np.testing.assert_allclose(step, SPACING[0] * oblique_direction()[:, 0], atol=1e-12)


def test_lps_ijk_round_trip(geometry):
    matrix, image = geometry
    lps = coords.ijk_to_lps(IJK, matrix)
    np.testing.assert_allclose(coords.lps_to_ijk(lps, matrix), IJK, atol=1e-9)
    itk = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in lps])
    np.testing.assert_allclose(coords.lps_to_ijk(lps, matrix), itk, atol=1e-9)


def test_ras_flips_x_and_y_and_round_trips():
    lps = np.array([[10.0, -20.0, 30.0], [-1.5, 2.5, -3.5]])
    np.testing.assert_array_equal(coords.lps_to_ras(lps), [[-10.0, 20.0, 30.0], [1.5, -2.5, -3.5]])
    np.testing.assert_array_equal(coords.ras_to_lps(coords.lps_to_ras(lps)), lps)
    np.testing.assert_array_equal(coords.ras_to_lps([1.0, 2.0, 3.0]), [-1.0, -2.0, 3.0])


def test_slicer_ijk_to_ras_matrix_maps_voxels_to_ras(geometry):
    matrix, _ = geometry
    ijk_to_ras = coords.ras_matrix_from_lps(matrix)
    homogeneous = np.c_[IJK, np.ones(len(IJK))]
    np.testing.assert_allclose((homogeneous @ ijk_to_ras.T)[:, :3], coords.lps_to_ras(coords.ijk_to_lps(IJK, matrix)),
                               atol=1e-9)
    np.testing.assert_allclose(coords.lps_matrix_from_ras(ijk_to_ras), matrix, atol=1e-12)


def test_kji_is_ijk_reversed_and_its_own_inverse():
    kji = coords.ijk_to_kji(IJK)
    np.testing.assert_array_equal(kji[2], [1.75, 2.25, 3.5])
    np.testing.assert_array_equal(coords.kji_to_ijk(kji), IJK)
    np.testing.assert_array_equal(coords.ijk_to_kji([1, 2, 3]), [3, 2, 1])


def test_points_print_plainly():
    assert coords.fmt_point(np.array([1.25, -3.46, 300.0])) == "(1.2, -3.5, 300)"
    assert coords.fmt_point([1.256, 2.0, 3.0], digits=2) == "(1.26, 2, 3)"
