"""Name -> backend class lookup for registration and segmentation, imported lazily.

Heavy dependencies (torch, model packages) are only imported when their backend is built.
``options`` given to :func:`make_registration`/:func:`make_segmenter` are passed to the backend's
constructor; options it does not accept are dropped (e.g. ``device`` for a CPU-only backend).
"""

from __future__ import annotations

import importlib
import inspect

from LinGuinELib.core.errors import InputError

REGISTRATIONS = {
    "sitk": ("LinGuinELib.registration.sitk", "SitkRegistration"),
    "identity": ("LinGuinELib.registration.identity", "IdentityRegistration"),
    "unigradicon": ("LinGuinELib.registration.gradicon", "UniGradICONRegistration"),
    "multigradicon": ("LinGuinELib.registration.gradicon", "MultiGradICONRegistration"),
    "lunggradicon": ("LinGuinELib.registration.gradicon", "LungGradICONRegistration"),
}

SEGMENTERS = {
    "classic": ("LinGuinELib.segmentation.classic", "ClassicSegmenter"),
    "nninteractive": ("LinGuinELib.segmentation.nninteractive", "NNInteractiveSegmenter"),
    "vista3d": ("LinGuinELib.segmentation.vista3d", "Vista3DSegmenter"),
}

DEFAULT_REGISTRATION = "sitk"
DEFAULT_SEGMENTATION = "classic"

# Vista3D prompt classes, name -> Vista3D class id (None: class-agnostic lesion prompt); see
# segmentation/vista3d.py. Kept here so front ends can list them without importing the backend.
VISTA3D_LESION_CLASSES = {"lesion": None, "lung": 23, "liver": 26}
DEFAULT_LESION_CLASS = "lesion"


def _build(table: dict, kind: str, name: str, options: dict):
    if name not in table:
        raise InputError(f"unknown {kind} backend {name!r}; choose one of: {', '.join(table)}")
    module_name, class_name = table[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    params = {} if cls.__init__ is object.__init__ else inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = dict(options)
    else:
        accepted = {k: v for k, v in options.items() if k in params and v is not None}
    return cls(**accepted)


def make_registration(name: str = DEFAULT_REGISTRATION, **options):
    """A :class:`~LinGuinELib.registration.base.Registration` backend by name."""
    return _build(REGISTRATIONS, "registration", name, options)


def make_segmenter(name: str = DEFAULT_SEGMENTATION, **options):
    """A :class:`~LinGuinELib.segmentation.base.Segmenter` backend by name."""
    return _build(SEGMENTERS, "segmentation", name, options)
