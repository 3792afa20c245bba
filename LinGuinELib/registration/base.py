"""Registration interface: map physical points (LPS mm) from a source scan to a target scan.

A backend's :meth:`Registration.register` returns a :class:`PointMap`, a callable taking an
``(N, 3)`` array of LPS points on the source and returning the corresponding ``(N, 3)`` LPS
points on the target (vectorised). :class:`RegistrationCache` memoises maps per (source, target)
scan-id pair so that every lesion of a study shares one registration per pair.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from LinGuinELib.core.study import Scan

PointMap = Callable[[np.ndarray], np.ndarray]


class Registration(ABC):
    """A registration backend. Subclasses set ``name`` and implement :meth:`register`."""

    name: str = ""

    @abstractmethod
    def register(self, source: Scan, target: Scan) -> PointMap:
        """Compute the source -> target mapping of LPS points."""

    def register_both(self, source: Scan, target: Scan) -> tuple[PointMap, PointMap | None]:
        """(source -> target, target -> source or None). Backends that get both directions from one
        computation (e.g. a symmetric network) override this so the cache stores the reverse too."""
        return self.register(source, target), None

    def forget(self, scan_id: str) -> None:
        """Drop any per-scan cache held for ``scan_id`` (e.g. downsampled images)."""


def as_points(points: np.ndarray) -> np.ndarray:
    """Validate and reshape points to a float (N, 3) array."""
    arr = np.asarray(points, dtype=float)
    if arr.ndim == 1:
        arr = arr.reshape(1, 3)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {arr.shape}")
    return arr


class RegistrationCache:
    """Memoises point maps per (source scan id, target scan id); thread-safe; counts computations.

    ``computed`` counts backend computations (one per ``register``/``register_both`` call),
    ``seconds`` their total wall time.
    """

    def __init__(self, backend: Registration):
        self.backend = backend
        self._maps: dict[tuple[str, str], PointMap] = {}
        self._lock = threading.Lock()
        self.computed = 0
        self.seconds = 0.0

    def get(self, source: Scan, target: Scan) -> PointMap:
        key = (source.scan_id, target.scan_id)
        with self._lock:
            if key in self._maps:
                return self._maps[key]
        start = time.perf_counter()
        forward, backward = self.backend.register_both(source, target)
        with self._lock:
            self.computed += 1
            self.seconds += time.perf_counter() - start
            self._maps[key] = forward
            if backward is not None:
                self._maps.setdefault((target.scan_id, source.scan_id), backward)
        return forward

    def has(self, source_id: str, target_id: str) -> bool:
        return (source_id, target_id) in self._maps
