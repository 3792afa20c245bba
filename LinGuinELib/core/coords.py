"""Coordinate conversions between LPS millimetres, RAS millimetres and voxel indices.

* LPS: DICOM/ITK patient coordinates (x to the patient's Left, y Posterior, z Superior).
* RAS: Slicer's world coordinates (x Right, y Anterior, z Superior): x and y flip sign.
* ``ijk``: ITK/Slicer voxel index order (column i, row j, slice k).
* ``kji``: NumPy array index order of :attr:`Scan.array` (slice, row, column).

A geometry is given by a 4x4 ``index_to_lps`` matrix that maps homogeneous (i, j, k, 1)
to (x, y, z, 1) in LPS mm: ``M[:3, :3] = direction @ diag(spacing)``, ``M[:3, 3] = origin``.
All functions take and return float arrays of shape (N, 3) (or (3,) for one point).
"""

from __future__ import annotations

import numpy as np

_FLIP = np.array([-1.0, -1.0, 1.0])


def fmt_point(point, digits: int = 1) -> str:
    """``(x, y, z)`` with plain rounded numbers (no numpy reprs), for messages."""
    return "(" + ", ".join(f"{round(float(v), digits):g}" for v in np.ravel(point)) + ")"


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """LPS mm -> RAS mm (flip x and y). Works for (3,) or (N, 3)."""
    return np.asarray(points, dtype=float) * _FLIP


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """RAS mm -> LPS mm (flip x and y). Works for (3,) or (N, 3)."""
    return np.asarray(points, dtype=float) * _FLIP


def index_to_lps_matrix(origin, spacing, direction) -> np.ndarray:
    """4x4 matrix mapping homogeneous ijk to LPS mm (ITK convention)."""
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = direction @ np.diag(np.asarray(spacing, dtype=float))
    m[:3, 3] = np.asarray(origin, dtype=float)
    return m


def ijk_to_lps(ijk: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Continuous ijk index -> LPS mm through a 4x4 ``index_to_lps`` matrix."""
    ijk = np.asarray(ijk, dtype=float)
    return ijk @ matrix[:3, :3].T + matrix[:3, 3]


def lps_to_ijk(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """LPS mm -> continuous ijk index (not rounded) through a 4x4 ``index_to_lps`` matrix."""
    points = np.asarray(points, dtype=float)
    inv = np.linalg.inv(matrix[:3, :3])
    return (points - matrix[:3, 3]) @ inv.T


def ijk_to_kji(ijk: np.ndarray) -> np.ndarray:
    """Reverse the last axis: (i, j, k) <-> (k, j, i). Its own inverse."""
    return np.asarray(ijk)[..., ::-1]


kji_to_ijk = ijk_to_kji


def ras_matrix_from_lps(matrix: np.ndarray) -> np.ndarray:
    """An ``index_to_lps`` 4x4 matrix -> Slicer's ``IJKToRAS`` 4x4 matrix."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ np.asarray(matrix, dtype=float)


def lps_matrix_from_ras(matrix: np.ndarray) -> np.ndarray:
    """Slicer's ``IJKToRAS`` 4x4 matrix -> an ``index_to_lps`` 4x4 matrix."""
    return ras_matrix_from_lps(matrix)
