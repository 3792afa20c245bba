"""Backend lookup (LinGuinELib/backends/__init__.py): a misspelt or foreign option is an error naming it and
the backend, each backend gets only the settings it takes, and every front end builds every backend.

The torch backends are built, not loaded: their constructors resolve the device and nothing else (weights
load on first use), so these tests need torch installed but no weights."""

from __future__ import annotations

import argparse
import inspect

import numpy as np
import pytest

from LinGuinELib import backends
from LinGuinELib.backends import REGISTRATIONS, SEGMENTERS, make_registration, make_segmenter
from LinGuinELib.core.errors import InputError
from LinGuinELib.frontend import settings as settings_module
from LinGuinELib.frontend.settings import Settings

TORCH_BACKENDS = {"unigradicon", "multigradicon", "lunggradicon", "nninteractive", "vista3d"}
PAIRS = [("registration", name) for name in REGISTRATIONS] + [("segmentation", name) for name in SEGMENTERS]


def backend_class(kind, name):
    import importlib

    entry = backends.backend_entry(kind, name)
    return getattr(importlib.import_module(entry.module), entry.cls)


def test_a_misspelt_option_is_an_error_naming_it_and_the_backend():
    with pytest.raises(InputError, match=r"the segmentation backend 'vista3d' has no option 'lesion_clas'; "
                                         r"it takes: device, weights, lesion_class, progress"):
        make_segmenter("vista3d", device="cpu", lesion_clas="lung")
    with pytest.raises(InputError, match=r"the registration backend 'sitk' has no option 'deformable'; "
                                         r"it takes: no options"):
        make_registration("sitk", deformable="none")
    with pytest.raises(InputError, match=r"the segmentation backend 'classic' has no option 'device'"):
        make_segmenter("classic", device="cuda:3")
    with pytest.raises(InputError, match=r"the registration backend 'identity' has no option 'io_steps'; "
                                         r"it takes: no options"):
        make_registration("identity", io_steps=3)
    # a real option still reaches its backend
    assert make_segmenter("vista3d", device="cpu", lesion_class="lung").lesion_class == "lung"


def test_an_unknown_backend_lists_the_choices():
    with pytest.raises(InputError, match="unknown segmentation backend 'nnunet'; choose one of: classic, "
                                         "nninteractive, vista3d"):
        make_segmenter("nnunet")


@pytest.mark.parametrize("kind,name", PAIRS)
def test_the_settings_a_backend_takes_are_constructor_parameters(kind, name):
    """A table entry naming a setting its constructor lacks would fail every run of that backend."""
    fields = {f for f in Settings.__dataclass_fields__}
    params = set(inspect.signature(backend_class(kind, name).__init__).parameters)
    taken = set(backends.backend_settings(kind, name))
    assert taken <= fields and taken <= params
    # and every Settings field the constructor has is passed (none silently left at its default)
    assert (fields & params) - {"registration", "segmentation"} == taken


def test_cpu_backends_are_not_given_device_and_torch_ones_are():
    s = Settings(registration="sitk", segmentation="classic", device="cuda:3", io_steps=5, lesion_class="lung")
    assert s.options("registration") == {} and s.options("segmentation") == {}
    assert Settings(registration="identity").options("registration") == {}
    g = Settings(registration="unigradicon", segmentation="vista3d", device="cpu", weights="/w", io_steps=5,
                 lesion_class="lung")
    assert g.options("registration") == {"device": "cpu", "weights": "/w", "io_steps": 5}
    assert g.options("segmentation") == {"device": "cpu", "weights": "/w", "lesion_class": "lung"}
    assert Settings(segmentation="nninteractive", device="cpu").options("segmentation") == {"device": "cpu",
                                                                                             "weights": None}


def test_classic_with_a_gpu_device_setting_segments_as_the_default(scan_factory):
    """``--segmentation classic --device cuda:3`` on a machine without that GPU: the setting is not the
    classic backend's, so it gives the default backend's mask."""
    from LinGuinELib.segmentation.classic import ClassicSegmenter

    scan = scan_factory(shape=(24, 48, 48), spacing=(1.0, 1.0, 1.5), blobs=(((12, 24, 24), 7.0),))
    mask = Settings(segmentation="classic", device="cuda:3").make_segmenter().segment(scan, [[12, 24, 24]])
    assert np.array_equal(mask, ClassicSegmenter().segment(scan, [[12, 24, 24]]))
    assert mask.sum() > 0.8 * (scan.label == 1).sum()


def cli_settings(registration, segmentation):
    parser = argparse.ArgumentParser()
    settings_module.add_arguments(parser)
    return Settings.from_args(parser.parse_args(["--registration", registration, "--segmentation", segmentation,
                                                 "--device", "cpu"]))


def service_backends(engine, registration, segmentation):
    """What the engine service (the Slicer module's and ``linguine track --server``'s engine) builds from a
    request's settings (the service sets the device itself)."""
    s = engine.settings(Settings(registration=registration, segmentation=segmentation).to_dict())
    return engine._backend("registration", s)[1], engine._backend("segmentation", s)[1]


def batch_settings(registration, segmentation):
    """The batch runner's workers get the settings as a dict (Settings.to_dict -> from_dict)."""
    return Settings.from_dict(Settings(registration=registration, segmentation=segmentation, device="cpu").to_dict())


@pytest.mark.parametrize("front_end", ["cli", "service", "batch"])
def test_every_front_end_builds_every_backend(front_end):
    if not all(__import__("importlib").util.find_spec(m) for m in ("torch", "nnInteractive", "unigradicon", "monai")):
        pytest.skip("deep-learning extra not installed (pip install '.[gpu]')")
    from LinGuinELib.service.server import Engine, ServiceConfig

    engine = Engine(ServiceConfig(token="t", device="cpu")) if front_end == "service" else None
    names = list(zip(REGISTRATIONS, list(SEGMENTERS) + ["classic"] * (len(REGISTRATIONS) - len(SEGMENTERS))))
    for registration, segmentation in names:
        if engine is not None:
            reg, seg = service_backends(engine, registration, segmentation)
        else:
            s = (cli_settings if front_end == "cli" else batch_settings)(registration, segmentation)
            reg, seg = s.make_registration(), s.make_segmenter()
        assert type(reg).__name__ == REGISTRATIONS[registration].cls
        assert type(seg).__name__ == SEGMENTERS[segmentation].cls
        for backend, name in ((reg, registration), (seg, segmentation)):
            if name in TORCH_BACKENDS:
                assert str(backend.device) == "cpu", name  # the device setting reached it
                for attribute in ("network", "_network", "_artifacts"):  # the loaded model, by backend
                    assert getattr(backend, attribute, None) is None, f"{name} loaded its model while being built"
