"""One settings object for every front end: the CLI, the engine service and the Slicer module.

A :class:`Settings` names the two backends and the tracking options of a run. The CLI fills it from
its arguments (:func:`add_arguments` / :meth:`Settings.from_args`), the Slicer module from its parameter
node, the engine service from a request's JSON (:meth:`Settings.from_dict`); all of them build backends
and trackers through it, so an option means the same everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from LinGuinELib.backends import (DEFAULT_LESION_CLASS, DEFAULT_REGISTRATION, DEFAULT_SEGMENTATION, REGISTRATIONS,
                                  SEGMENTERS, VISTA3D_LESION_CLASSES as LESION_CLASSES, backend_settings,
                                  make_registration, make_segmenter)
from LinGuinELib.core.errors import InputError


@dataclass(frozen=True)
class Settings:
    """Backends and tracking options of one run (hashable: backends are reused while they match).

    ``radius_mm``: component search radius in mm; ``device``: auto|cpu|cuda|cuda:N; ``weights``: a local
    weights file or folder (None: the model cache); ``io_steps``: GradICON instance-optimisation steps;
    ``lesion_class``: the Vista3D prompt class (lesion: any organ; lung; liver).
    """

    registration: str = DEFAULT_REGISTRATION
    segmentation: str = DEFAULT_SEGMENTATION
    boost: bool = False
    chain: bool = False
    radius_mm: float = 10.0
    device: str = "auto"
    weights: str | None = None
    io_steps: int = 0
    lesion_class: str = DEFAULT_LESION_CLASS

    def __post_init__(self):
        if self.registration not in REGISTRATIONS:
            raise InputError(f"unknown registration backend {self.registration!r}; choose one of: {', '.join(REGISTRATIONS)}")
        if self.segmentation not in SEGMENTERS:
            raise InputError(f"unknown segmentation backend {self.segmentation!r}; choose one of: {', '.join(SEGMENTERS)}")
        if not self.radius_mm > 0:
            raise InputError(f"radius_mm must be > 0 mm, not {self.radius_mm}")
        if self.io_steps < 0:
            raise InputError(f"io_steps must be >= 0, not {self.io_steps}")
        if self.lesion_class not in LESION_CLASSES:
            raise InputError(f"unknown lesion_class {self.lesion_class!r}; choose one of: {', '.join(LESION_CLASSES)}")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        """From the options :func:`add_arguments` defines."""
        return cls(registration=args.registration, segmentation=args.segmentation, boost=args.boost,
                   chain=args.chain, radius_mm=args.radius_mm, device=args.device, weights=args.weights,
                   io_steps=args.io_steps, lesion_class=args.lesion_class)

    @classmethod
    def from_dict(cls, data: dict) -> "Settings":
        """From JSON (e.g. a service request); unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"bad settings: {exc}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- backends ------------------------------------------------------------------------------
    def options(self, kind: str) -> dict:
        """Keyword options for the chosen ``kind`` ("registration" | "segmentation") backend's constructor:
        only the settings that backend takes (e.g. no ``device`` for the CPU backends)."""
        return {name: getattr(self, name) for name in backend_settings(kind, getattr(self, kind))}

    def make_registration(self):
        return make_registration(self.registration, **self.options("registration"))

    def make_segmenter(self):
        return make_segmenter(self.segmentation, **self.options("segmentation"))

    def tracker_options(self) -> dict:
        """Keyword options for :class:`~LinGuinELib.core.tracking.Tracker`."""
        return {"boost": self.boost, "chain": self.chain, "radius_mm": self.radius_mm}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The backend and tracking options shared by track, evaluate, demo and batch."""
    d = Settings()
    g = parser.add_argument_group("backends and options")
    g.add_argument("--registration", default=d.registration, choices=sorted(REGISTRATIONS),
                   help=f"registration backend (default: {d.registration})")
    g.add_argument("--segmentation", default=d.segmentation, choices=sorted(SEGMENTERS),
                   help=f"segmentation backend (default: {d.segmentation})")
    g.add_argument("--boost", action="store_true", help="re-prompt at the interior centre of the first mask")
    g.add_argument("--chain", action="store_true", help="propagate scan to scan outward from the source")
    g.add_argument("--radius-mm", type=float, default=d.radius_mm,
                   help=f"keep the nearest mask component within this distance of the point (default {d.radius_mm:g} mm)")
    g.add_argument("--device", default=d.device, help="auto|cpu|cuda|cuda:N (deep-learning backends)")
    g.add_argument("--weights", default=d.weights, help="local model weights file or folder (or $LINGUINE_WEIGHTS)")
    g.add_argument("--io-steps", type=int, default=d.io_steps, help="instance-optimisation steps (GradICON backends)")
    g.add_argument("--lesion-class", default=d.lesion_class, choices=list(LESION_CLASSES),
                   help="Vista3D prompt class: lesion (any organ, default), lung (lung tumour), liver (hepatic tumour)")
