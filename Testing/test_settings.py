"""One settings object for every front end (LinGuinELib/frontend/settings.py): the CLI's options, a
service request's JSON and the Slicer module's values give the same Settings, and bad values are refused
naming them. Which backend gets which setting: Testing/test_backends.py."""

from __future__ import annotations

import argparse

import pytest

from LinGuinELib.core.errors import InputError
from LinGuinELib.frontend.settings import Settings, add_arguments


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return Settings.from_args(parser.parse_args(list(argv)))


def test_cli_defaults_are_the_settings_defaults():
    assert parse() == Settings()
    assert Settings().registration == "sitk" and Settings().segmentation == "classic"


def test_cli_options_reach_the_settings():
    s = parse("--registration", "unigradicon", "--segmentation", "vista3d", "--boost", "--chain", "--radius-mm", "7.5",
              "--device", "cuda:1", "--weights", "/w", "--io-steps", "3", "--lesion-class", "liver")
    assert s == Settings("unigradicon", "vista3d", boost=True, chain=True, radius_mm=7.5, device="cuda:1",
                         weights="/w", io_steps=3, lesion_class="liver")
    assert s.tracker_options() == {"boost": True, "chain": True, "radius_mm": 7.5}


def test_json_round_trip_and_unknown_keys_named():
    s = Settings(registration="identity", radius_mm=4.0, lesion_class="lung")
    assert Settings.from_dict(s.to_dict()) == s
    assert hash(Settings.from_dict(s.to_dict())) == hash(s)  # the service reuses backends by settings
    with pytest.raises(InputError, match=r"unknown setting\(s\): io_step, radius; known: boost, chain, device"):
        Settings.from_dict({"io_step": 2, "radius": 3})


@pytest.mark.parametrize("field,value,message", [
    ("registration", "elastix", "unknown registration backend 'elastix'; choose one of: sitk, identity"),
    ("segmentation", "nnunet", "unknown segmentation backend 'nnunet'; choose one of: classic"),
    ("radius_mm", 0.0, "radius_mm must be > 0 mm, not 0.0"),
    ("io_steps", -1, "io_steps must be >= 0, not -1"),
    ("lesion_class", "kidney", "unknown lesion_class 'kidney'; choose one of: lesion, lung, liver"),
])
def test_bad_values_are_refused_naming_them(field, value, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**{field: value})
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_dict({field: value})
