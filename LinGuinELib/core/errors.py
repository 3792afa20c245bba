"""Exceptions with messages a user can act on (they name the file, scan or value)."""


class LinGuinEError(Exception):
    """Any user-facing failure: bad input, missing weights, impossible request."""


class InputError(LinGuinEError, ValueError):
    """Bad input data or arguments (file, scan, value named in the message)."""


class TrackingCancelled(LinGuinEError):
    """Raised when the caller's cancel callback asked the tracker to stop."""
