"""Small deterministic backends for engine tests (not shipped): a known-shift registration and a
threshold region-growing segmenter."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from LinGuinELib.registration.base import Registration, as_points
from LinGuinELib.segmentation.base import Segmenter


class ShiftRegistration(Registration):
    """Maps source points by a known per-scan offset: p_target = p_source - offset[source] + offset[target]."""

    name = "shift"

    def __init__(self, offsets: dict[str, np.ndarray]):
        self.offsets = {k: np.asarray(v, float) for k, v in offsets.items()}
        self.pairs = []

    def register(self, source, target):
        self.pairs.append((source.scan_id, target.scan_id))
        delta = self.offsets.get(target.scan_id, 0) - self.offsets.get(source.scan_id, 0)
        return lambda pts: as_points(pts) + delta


class ThresholdSegmenter(Segmenter):
    """Connected region of voxels above ``level`` HU containing the first positive point."""

    name = "threshold"

    def __init__(self, level: float = -300.0):
        self.level = level
        self.calls = []

    def _segment(self, scan, positive, negative):
        self.calls.append((scan.scan_id, tuple(positive[0])))
        fg = scan.array > self.level
        labels, _ = ndimage.label(fg)
        out = np.zeros(scan.shape, bool)
        for p in positive:
            if labels[tuple(p)]:
                out |= labels == labels[tuple(p)]
        return out
