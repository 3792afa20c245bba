"""Registration backends behind :class:`~LinGuinELib.registration.base.Registration`."""

from .base import PointMap, Registration, RegistrationCache

__all__ = ["PointMap", "Registration", "RegistrationCache"]
