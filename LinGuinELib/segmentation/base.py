"""Segmentation interface: point prompts on one scan -> a binary mask on that scan's grid.

Voxel points are array indices in ``(k, j, i)`` order (the axis order of ``Scan.array``), as
integer arrays of shape ``(N, 3)``. A backend may also say how sure it is of a mask
(:meth:`Segmenter.segment_with_confidence`): "high", "low" (returned, but uncertain) or "" (no opinion,
or nothing found). Each :meth:`Segmenter.segment` call is independent: it
starts from a fresh interaction state (backends may still cache per-scan preprocessing such as
a loaded image, keyed by ``scan.scan_id``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from LinGuinELib.core.errors import InputError
from LinGuinELib.core.study import Scan

HIGH, LOW = "high", "low"  # a backend's confidence in a returned mask; "" = no opinion
CONFIDENCES = (HIGH, LOW, "")


class Segmenter(ABC):
    """A point-prompted 3-D segmentation backend. Subclasses set ``name``, implement ``_segment``."""

    name: str = ""

    def segment(self, scan: Scan, positive: np.ndarray, negative: np.ndarray | None = None) -> np.ndarray:
        """Segment the object under the positive points; returns a bool array shaped ``scan.shape``.

        ``positive``/``negative``: (N, 3) voxel indices in (k, j, i) order, inside the scan.
        """
        return self.segment_with_confidence(scan, positive, negative)[0]

    def segment_with_confidence(self, scan: Scan, positive: np.ndarray,
                                negative: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """(mask as :meth:`segment`, confidence "high" / "low" / "")."""
        positive = check_voxels(positive, scan, "positive")
        negative = check_voxels(negative, scan, "negative") if negative is not None and len(negative) else \
            np.zeros((0, 3), dtype=int)
        mask, confidence = self._segment_with_confidence(scan, positive, negative)
        mask = np.asarray(mask)
        if mask.shape != scan.shape:
            raise RuntimeError(f"{self.name} returned a mask of shape {mask.shape} for scan '{scan.scan_id}' "
                               f"of shape {scan.shape}")
        return mask.astype(bool, copy=False), confidence

    def _segment_with_confidence(self, scan: Scan, positive: np.ndarray, negative: np.ndarray):
        """(mask, confidence); backends that judge their masks override this (default: no opinion)."""
        return self._segment(scan, positive, negative), ""

    @abstractmethod
    def _segment(self, scan: Scan, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        """Backend work; points already validated as int (N, 3) (k, j, i) inside the scan."""

    def forget(self, scan_id: str) -> None:
        """Drop any per-scan cache held for ``scan_id`` (e.g. when the scan is unloaded)."""


def check_voxels(points: np.ndarray, scan: Scan, what: str) -> np.ndarray:
    """(N, 3) int voxel indices (k, j, i); raises InputError naming the scan if any lies outside."""
    arr = np.atleast_2d(np.asarray(points))
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0:
        raise InputError(f"scan '{scan.scan_id}': {what} points must be a non-empty (N, 3) array, got shape {arr.shape}")
    arr = np.rint(arr).astype(int)
    bad = np.any((arr < 0) | (arr >= np.asarray(scan.shape)), axis=1)
    if bad.any():
        raise InputError(f"scan '{scan.scan_id}': {what} point (k, j, i) {tuple(int(v) for v in arr[bad][0])} lies outside the image "
                         f"of shape {scan.shape}")
    return arr
