"""``identity`` registration: trust the scanner coordinates (a baseline; no image is read)."""

from __future__ import annotations


from LinGuinELib.core.study import Scan
from LinGuinELib.registration.base import PointMap, Registration, as_points


class IdentityRegistration(Registration):
    """Maps every LPS point to itself: the same scanner position on the target."""

    name = "identity"

    def register(self, source: Scan, target: Scan) -> PointMap:
        return lambda points: as_points(points).copy()

    def register_both(self, source: Scan, target: Scan):
        return self.register(source, target), self.register(target, source)
