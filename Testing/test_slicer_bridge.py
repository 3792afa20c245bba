"""Slicer geometry, DICOM values, views and segment tags as the Slicer module reads them
(LinGuinELib/frontend/slicer_bridge.py), without Slicer: RAS/LPS/IJK conversions of oblique and transformed
volumes, DICOM dates, the review layout and the DICOM-SEG tags of a segment."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from LinGuinELib.core import coords
from LinGuinELib.core.errors import InputError
from LinGuinELib.frontend import slicer_bridge as bridge


def rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def ijk_to_ras_matrix(rot, spacing, origin_ras):
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(spacing)
    m[:3, 3] = origin_ras
    return m


# -- geometry ----------------------------------------------------------------------------------------
def test_scan_from_oblique_volume_maps_voxels_like_slicer():
    rot = rotation(0.2, -0.3, 0.7)
    m = ijk_to_ras_matrix(rot, [0.7, 0.8, 2.5], [10.0, -20.0, 30.0])
    array = np.random.default_rng(0).normal(size=(6, 7, 8))  # [k, j, i]
    scan = bridge.scan_from_volume("t0", array, m, dt.datetime(2020, 1, 1))
    ijk = np.array([[0, 0, 0], [7, 6, 5], [3.5, 2.0, 1.25]])
    ras_slicer = ijk @ m[:3, :3].T + m[:3, 3]  # what Slicer displays for those voxels
    assert np.allclose(scan.kji_to_lps(ijk[:, ::-1]), coords.ras_to_lps(ras_slicer))
    assert np.allclose(bridge.kji_to_ras(ijk[:, ::-1], scan), ras_slicer)
    assert np.allclose(bridge.ras_to_kji(ras_slicer, scan), ijk[:, ::-1])
    assert np.allclose(scan.spacing, [0.7, 0.8, 2.5])
    assert np.allclose(bridge.ijk_to_ras_from_scan(scan), m)  # and back to Slicer for addVolumeFromArray
    array[0, 0, 0] = 99.0
    assert scan.array[0, 0, 0] != 99.0  # the worker never reads VTK-owned memory


def test_parent_transform_gives_world_geometry_on_the_same_voxel_grid():
    m = ijk_to_ras_matrix(np.eye(3) * [-1, -1, 1], [1.0, 1.0, 2.0], [0, 0, 0])
    parent = np.eye(4)
    parent[:3, :3] = rotation(0, 0, 0.5)
    parent[:3, 3] = [5.0, -3.0, 12.0]
    scan = bridge.scan_from_volume("t", np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4), m,
                                   dt.datetime(2020, 1, 1), parent_to_world=parent)
    local = np.array([3.0, 2.0, 1.0, 1.0]) @ m.T  # voxel (i, j, k) = (3, 2, 1) in the volume's own frame
    assert np.allclose(bridge.kji_to_ras([[1, 2, 3]], scan)[0], (parent @ local)[:3])


def test_sheared_or_non_affine_geometry_is_rejected_with_advice():
    shear = np.eye(4)
    shear[0, 1] = 0.3
    with pytest.raises(InputError, match="sheared"):
        bridge.geometry_from_ijk_to_ras(shear)
    perspective = np.eye(4)
    perspective[3, 0] = 0.1
    with pytest.raises(InputError, match="harden"):
        bridge.world_ijk_to_ras(np.eye(4), perspective)
    with pytest.raises(InputError, match="spacing"):
        bridge.geometry_from_ijk_to_ras(np.diag([1.0, 0.0, 1.0, 1.0]))


# -- dates and DICOM ---------------------------------------------------------------------------------
def test_dicom_dates_study_date_first_then_series_with_times():
    values = {"StudyDate": "20200101", "StudyTime": "080000", "SeriesDate": "20200102", "SeriesTime": "101530.25"}
    assert bridge.date_from_dicom_values(values) == dt.datetime(2020, 1, 1, 8, 0, 0)
    del values["StudyDate"]
    assert bridge.date_from_dicom_values(values) == dt.datetime(2020, 1, 2, 10, 15, 30)
    assert bridge.date_from_dicom_values({"SeriesDate": "2020", "AcquisitionDate": "20191231"}) == dt.datetime(2019, 12, 31)
    assert bridge.date_from_dicom_values({"StudyDate": "20201340"}) is None
    assert bridge.date_from_dicom_values({}) is None


def test_the_dicom_reader_and_the_slicer_bridge_date_a_timepoint_alike():
    """One rule: a series read from files (pydicom) and the same attributes read from Slicer's database."""
    import pydicom

    from LinGuinELib.io.dicom import _datetime

    values = {"StudyDate": "20190305", "SeriesDate": "20190306", "SeriesTime": "120000", "AcquisitionDate": "20190307"}
    ds = pydicom.Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    assert _datetime(ds) == bridge.date_from_dicom_values(values) == dt.datetime(2019, 3, 5)


def test_dates_in_volume_names():
    assert bridge.date_from_name("CT_2021-03-04 lung") == dt.datetime(2021, 3, 4)
    assert bridge.date_from_name("baseline_20190930") == dt.datetime(2019, 9, 30)
    assert bridge.date_from_name("series 123456789") is None
    assert bridge.date_from_name("CT 2021-02-30") is None


def test_dicom_tags_match_the_dicom_dictionary():
    from pydicom.datadict import tag_for_keyword

    for keyword, tag in bridge.DICOM_TAGS.items():
        assert f"{tag_for_keyword(keyword):08X}" == tag.replace(",", "").upper(), keyword


def test_dicom_meta_is_what_the_seg_exporter_reads():
    values = {"PatientID": "P1", "SeriesNumber": "3", "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"}
    meta = bridge.dicom_meta(values, ["/a/1.dcm", "/a/2.dcm"], ["1.2.3.1", "1.2.3.2"])
    assert meta["files"] == ["/a/1.dcm", "/a/2.dcm"] and meta["SOPInstanceUIDs"] == ["1.2.3.1", "1.2.3.2"]
    assert meta["SeriesNumber"] == 3 and meta["other_series"] == [] and meta["PatientID"] == "P1"
    with pytest.raises(InputError):
        bridge.dicom_meta(values, ["/a/1.dcm"], ["1", "2"])


# -- views and segments ------------------------------------------------------------------------------
def test_the_view_a_point_was_placed_in_is_found_by_its_plane():
    red = np.eye(4)
    red[2, 3] = 40.0  # axial plane z = 40
    yellow = np.array([[0, 0, 1, 7.0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # sagittal plane x = 7
    views = {"Red": red, "Yellow": yellow}
    assert bridge.slice_view_containing([3.0, -8.0, 40.1], views) == "Red"
    assert bridge.slice_view_containing([7.0, 100.0, -3.0], views) == "Yellow"
    assert bridge.slice_view_containing([1.0, 1.0, 1.0], views) is None


def test_review_layout_has_one_axial_view_per_timepoint_in_rows():
    names = [f"LinGuinE{n}" for n in range(1, 7)]
    root = ET.fromstring(bridge.review_layout_xml(names, ["T1", "T2", "T3", "T4", "T5", "T<6>"]))
    views = root.findall(".//view")
    assert [v.get("singletontag") for v in views] == names
    assert all(v.find("property[@name='orientation']").text == "Axial" for v in views)
    rows = root.findall("./item/layout")
    assert [len(r.findall("./item")) for r in rows] == [4, 2]
    assert views[-1].find("property[@name='viewlabel']").text == "T<6>"


def test_segment_tags_mark_hand_edits_manual():
    lesion = make_lesion(3, "Nodule")
    auto = bridge.segment_tags(lesion, "found", "", "LinGuinE")
    manual = bridge.segment_tags(lesion, "found", bridge.EDIT_MANUAL, "LinGuinE")
    assert auto[bridge.TAG_ALGORITHM_TYPE] == "SEMIAUTOMATIC" and auto[bridge.TAG_ALGORITHM_NAME] == "LinGuinE"
    assert manual[bridge.TAG_ALGORITHM_TYPE] == "MANUAL" and manual[bridge.TAG_EDIT] == "manual"
    assert auto[bridge.TAG_TRACKING_UID] == manual[bridge.TAG_TRACKING_UID] == lesion.tracking_uid
    assert auto[bridge.TAG_LESION_ID] == "3"
    fields = bridge.TERMINOLOGY_TUMOUR.split("~")
    assert len(fields) == 7 and fields[2] == "SCT^108369006^Neoplasm" and fields[1].startswith("SCT^49755003^")


def make_lesion(lid, name):
    from LinGuinELib.core.lesion import Lesion

    return Lesion(lid, name)
