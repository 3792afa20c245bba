"""Lesion identity (LinGuinELib/core/lesion.py): ids, default names and colours, and a TrackingUID that
survives the summary.json round trip (every timepoint's DICOM-SEG must carry the same one)."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from LinGuinELib.core.lesion import PALETTE, Lesion, colour_for


def test_defaults_name_and_colour_from_the_id():
    lesion = Lesion(3)
    assert lesion.name == "Lesion 3" and lesion.colour == PALETTE[2]
    assert Lesion(3, "Nodule").name == "Nodule"
    assert Lesion("2").lesion_id == 2  # ids read back from text files are ints


def test_colours_cycle_through_the_palette_and_differ_for_neighbours():
    assert colour_for(1) == colour_for(1 + len(PALETTE)) == PALETTE[0]
    assert len({colour_for(i) for i in range(1, len(PALETTE) + 1)}) == len(PALETTE)
    assert Lesion(1, colour=(1, 0, 0)).colour == (1, 0, 0)


@pytest.mark.parametrize("bad", [0, -1])
def test_ids_start_at_one(bad):
    with pytest.raises(ValueError, match=f"lesion id must be >= 1, got {bad}"):
        Lesion(bad)


def test_tracking_uid_is_a_valid_dicom_uid_unique_per_lesion():
    a, b = Lesion(1), Lesion(1)
    assert a.tracking_uid != b.tracking_uid
    assert UID(a.tracking_uid).is_valid and len(a.tracking_uid) <= 64


def test_dict_round_trip_keeps_the_identity():
    lesion = Lesion(4, "Liver met", colour=(0.1, 0.2, 0.3))
    data = lesion.to_dict()
    assert data == {"lesion_id": 4, "name": "Liver met", "colour": [0.1, 0.2, 0.3],
                    "tracking_uid": lesion.tracking_uid}
    assert Lesion.from_dict(data) == lesion
    old = Lesion.from_dict({"lesion_id": 5})  # an older summary without name, colour or UID
    assert (old.name, old.colour) == ("Lesion 5", PALETTE[4]) and UID(old.tracking_uid).is_valid
