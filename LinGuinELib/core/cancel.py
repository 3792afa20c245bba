"""Cancellation reaching into long backend calls: a job sets a per-thread check with :func:`cancel_scope`,
and a backend's iteration callbacks poll :func:`requested` to stop early (the caller then raises
:class:`~LinGuinELib.core.errors.TrackingCancelled`)."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable

_local = threading.local()


@contextlib.contextmanager
def cancel_scope(requested_fn: Callable[[], bool]):
    """While the block runs on this thread, :func:`requested` returns ``requested_fn()``."""
    previous = getattr(_local, "fn", None)
    _local.fn = requested_fn
    try:
        yield
    finally:
        _local.fn = previous


def requested() -> bool:
    """True when the job running on this thread was asked to stop."""
    fn = getattr(_local, "fn", None)
    return bool(fn and fn())
