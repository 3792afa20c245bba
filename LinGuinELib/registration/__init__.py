"""Registration backends behind :class:`~LinGuinELib.registration.base.Registration`."""

from LinGuinELib.registration.base import PointMap, Registration, RegistrationCache

__all__ = ["PointMap", "Registration", "RegistrationCache"]
