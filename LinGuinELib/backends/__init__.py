"""Name -> backend class lookup for registration and segmentation, imported lazily.

Heavy dependencies (torch, model packages) are only imported when their backend is built.
``options`` given to :func:`make_registration`/:func:`make_segmenter` are passed to the backend's
constructor; an option it does not take is an :class:`~LinGuinELib.core.errors.InputError` naming the
option and the backend (a misspelt option never goes unnoticed). Each table entry also names the
front-end settings (:class:`~LinGuinELib.frontend.settings.Settings` fields) that backend takes, so
front ends pass ``device`` only to the torch backends, ``lesion_class`` only to Vista3D, and so on.
"""

from __future__ import annotations

import importlib
import inspect
from typing import NamedTuple

from LinGuinELib.core.errors import InputError


class Backend(NamedTuple):
    module: str
    cls: str
    settings: tuple[str, ...] = ()  # the Settings fields this backend's constructor takes


_TORCH = ("device", "weights")

REGISTRATIONS = {
    "sitk": Backend("LinGuinELib.registration.sitk", "SitkRegistration"),
    "identity": Backend("LinGuinELib.registration.identity", "IdentityRegistration"),
    "unigradicon": Backend("LinGuinELib.registration.gradicon", "UniGradICONRegistration", _TORCH + ("io_steps",)),
    "multigradicon": Backend("LinGuinELib.registration.gradicon", "MultiGradICONRegistration", _TORCH + ("io_steps",)),
    "lunggradicon": Backend("LinGuinELib.registration.gradicon", "LungGradICONRegistration", _TORCH + ("io_steps",)),
}

SEGMENTERS = {
    "classic": Backend("LinGuinELib.segmentation.classic", "ClassicSegmenter"),
    "nninteractive": Backend("LinGuinELib.segmentation.nninteractive", "NNInteractiveSegmenter", _TORCH),
    "vista3d": Backend("LinGuinELib.segmentation.vista3d", "Vista3DSegmenter", _TORCH + ("lesion_class",)),
}

DEFAULT_REGISTRATION = "sitk"
DEFAULT_SEGMENTATION = "classic"

# Vista3D prompt classes, name -> Vista3D class id (None: class-agnostic lesion prompt); see
# segmentation/vista3d.py. Kept here so front ends can list them without importing the backend.
VISTA3D_LESION_CLASSES = {"lesion": None, "lung": 23, "liver": 26}
DEFAULT_LESION_CLASS = "lesion"


def _table(kind: str) -> dict:
    if kind not in ("registration", "segmentation"):
        raise ValueError(f"backend kind must be 'registration' or 'segmentation', not {kind!r}")
    return REGISTRATIONS if kind == "registration" else SEGMENTERS


def backend_entry(kind: str, name: str) -> Backend:
    """The table entry of backend ``name`` of ``kind`` ("registration" | "segmentation")."""
    table = _table(kind)
    if name not in table:
        raise InputError(f"unknown {kind} backend {name!r}; choose one of: {', '.join(table)}")
    return Backend(*table[name])


def backend_settings(kind: str, name: str) -> tuple[str, ...]:
    """The front-end settings (Settings field names) that backend ``name`` takes."""
    return backend_entry(kind, name).settings


def _build(kind: str, name: str, options: dict):
    entry = backend_entry(kind, name)
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    params = {} if cls.__init__ is object.__init__ else dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            takes = ", ".join(params) or "no options"
            raise InputError(f"the {kind} backend {name!r} has no option {', '.join(map(repr, unknown))}; "
                             f"it takes: {takes}")
    return cls(**options)


def make_registration(name: str = DEFAULT_REGISTRATION, **options):
    """A :class:`~LinGuinELib.registration.base.Registration` backend by name."""
    return _build("registration", name, options)


def make_segmenter(name: str = DEFAULT_SEGMENTATION, **options):
    """A :class:`~LinGuinELib.segmentation.base.Segmenter` backend by name."""
    return _build("segmentation", name, options)
