"""The Slicer module's computable parts, without Slicer: RAS/LPS/IJK conversions of Slicer geometry,
DICOM dates, the study table, install planning, and the tracking session's bookkeeping (lesions,
edits that are never overwritten silently, correction, re-tracking, measurements and plot data)."""

from __future__ import annotations

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_scan
from fakes import ShiftRegistration, ThresholdSegmenter
from LinGuinELib.core import coords
from LinGuinELib.frontend import install_plan
from LinGuinELib.frontend import slicer_bridge as bridge
from LinGuinELib.core.errors import InputError, TrackingCancelled
from LinGuinELib.frontend.settings import Settings
from LinGuinELib.core.measure import dice
from LinGuinELib.frontend.selftest_data import moving_lesion_study
from LinGuinELib.frontend.session import TrackingSession, measurement_table, volume_series
from LinGuinELib.core.study import Study
from LinGuinELib.frontend.timepoints import DICOM, Timepoint, TimepointTable

RESOURCES = REPO / "Resources"


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


# -- study table -------------------------------------------------------------------------------------
def test_study_table_keeps_user_order_and_labels_across_refreshes():
    table = TimepointTable()
    table.fill([Timepoint("v1", "CT a", "CT a"), Timepoint("v2", "CT a", "CT a", dt.datetime(2020, 5, 1), DICOM)])
    assert [r.label for r in table.rows] == ["CT a", "CT a (2)"]
    table.set_label(0, "baseline")
    table.set_date(0, "2020-01-01")
    table.move(1, -1)
    added = table.fill([Timepoint("v1", "CT a", "CT a"), Timepoint("v2", "CT a", "x"), Timepoint("v3", "CT b", "CT b")])
    assert [r.key for r in added] == ["v3"]
    assert [(r.key, r.label) for r in table.rows] == [("v2", "CT a (2)"), ("v1", "baseline"), ("v3", "CT b")]
    assert table.rows[1].date == dt.datetime(2020, 1, 1)  # a typed date survives a refresh
    with pytest.raises(InputError, match="from DICOM"):
        table.set_date(0, "2020-02-02")
    with pytest.raises(InputError, match="twice"):
        table.set_label(2, "baseline")
    table.fill([Timepoint("v2", "CT a", "x"), Timepoint("v3", "CT b", "CT b")])  # v1 was deleted
    assert table.keys() == ["v2", "v3"]


def test_study_table_validation_names_every_problem():
    table = TimepointTable([Timepoint("a", "A", "A", dt.datetime(2021, 1, 1)), Timepoint("b", "B", "B", dt.datetime(2020, 1, 1)),
                            Timepoint("c", "C", "C")])
    with pytest.raises(InputError) as err:
        table.validate()
    assert "date (YYYY-MM-DD) of 'C'" in str(err.value) and "'B' (2020-01-01) is placed after 'A'" in str(err.value)
    table.set_date(2, "2019-06-01")
    table.sort_by_date()
    assert table.keys() == ["c", "b", "a"]
    table.validate()
    with pytest.raises(InputError, match="at least 2"):
        TimepointTable([Timepoint("a", "A", "A", dt.datetime(2021, 1, 1))]).validate()


# -- installs ----------------------------------------------------------------------------------------
def _spec(requirement: str) -> tuple[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    req = Requirement(requirement)
    return canonicalize_name(req.name), str(req.specifier)


def test_requirements_files_agree_with_pyproject_and_spare_slicers_packages():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = dict(_spec(r) for r in project["dependencies"])
    base = dict(_spec(r) for r in install_plan.read_requirements(RESOURCES / "requirements.txt"))
    never = {_spec(n)[0] for n in install_plan.NEVER_INSTALL}
    assert not never & set(base), "Slicer's own packages must not be in requirements.txt"
    assert set(base) == set(runtime) - never - {"matplotlib"}
    assert all(base[n] == runtime[n] for n in base), "requirements.txt ranges differ from pyproject.toml"
    gpu = dict(_spec(r) for r in project["optional-dependencies"]["gpu"])
    assert gpu["torch"] == str(_spec("torch" + install_plan.TORCH_REQUIREMENT)[1])
    for extra in RESOURCES.glob("requirements-*.txt"):
        for name, spec in (_spec(r) for r in install_plan.read_requirements(extra)):
            assert name not in never and gpu.get(name) == spec, f"{extra.name}: {name}{spec} vs pyproject gpu extra"


def test_requirement_files_follow_the_chosen_backends():
    names = lambda reg, seg: [p.name for p in install_plan.requirement_files(RESOURCES, reg, seg)]
    assert names("sitk", "classic") == ["requirements.txt"]
    assert names("unigradicon", "classic") == ["requirements.txt", "requirements-gradicon.txt"]
    assert names("lunggradicon", "nninteractive") == ["requirements.txt", "requirements-gradicon.txt",
                                                      "requirements-nninteractive.txt"]
    assert not install_plan.needs_torch(RESOURCES, "identity", "classic")
    assert install_plan.needs_torch(RESOURCES, "sitk", "nninteractive")
    assert names("sitk", "vista3d") == ["requirements.txt", "requirements-vista3d.txt"]


def test_missing_requirements_and_the_confirmation_text():
    from importlib.metadata import PackageNotFoundError

    installed = {"scipy": "1.17.1", "scikit-image": "0.20.0"}

    def version_of(name):
        if name not in installed:
            raise PackageNotFoundError(name)
        return installed[name]

    reqs = ["scipy>=1.10,<2", "scikit-image>=0.21,<0.27", "connected-components-3d>=3.12,<5",
            "pywin32>=300; sys_platform == 'nonexistent'"]
    missing = install_plan.missing_requirements(reqs, version_of)
    assert missing == ["scikit-image>=0.21,<0.27", "connected-components-3d>=3.12,<5"]
    text, total = install_plan.install_summary(missing, torch_missing=True)
    assert "torch" in text.splitlines()[0] and "scikit-image" in text and "19 MB" in text
    assert total == install_plan.TORCH_APPROX_MB + 54 + 19


def test_models_to_download_skips_cached_and_local_weights(tmp_path):
    from LinGuinELib.backends.models import ModelManager

    manager = ModelManager(home=tmp_path / "home", offline=True)
    settings = Settings(registration="unigradicon", segmentation="nninteractive")
    assert [s.id for s in install_plan.models_to_download(manager, settings)] == ["unigradicon", "nninteractive"]
    assert install_plan.models_to_download(manager, Settings()) == []  # CPU backends need no weights
    cached = manager.model_dir("unigradicon") / "Step_2_final.trch"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    local = tmp_path / "local"
    for f in manager.spec("nninteractive").files:
        (local / "nninteractive" / f.path).parent.mkdir(parents=True, exist_ok=True)
        (local / "nninteractive" / f.path).write_bytes(b"x")
    assert install_plan.models_to_download(manager, Settings("unigradicon", "nninteractive", weights=str(local))) == []


# -- tracking session --------------------------------------------------------------------------------
OFFSETS = {"t0": np.zeros(3), "t1": np.array([6.0, 0.0, 0.0]), "t2": np.array([12.0, 4.0, 0.0])}


def fake_study():
    """Three scans; two lesions shifted by a known offset per scan (offsets in LPS mm, spacing 1 mm)."""
    scans = []
    for n, (sid, off) in enumerate(OFFSETS.items()):
        blobs = (((10 + off[2] / 2, 16 + off[1], 14 + off[0]), 4.0), ((10, 30 + off[1], 28 + off[0]), 3.0))
        scans.append(make_scan(sid, dt.datetime(2020, 1 + n, 1), shape=(20, 48, 48), blobs=blobs, seed=n))
    return Study("p", scans)


class FakeFactory:
    def __init__(self):
        self.registration = ShiftRegistration(OFFSETS)
        self.segmenter = ThresholdSegmenter()
        self.built = []

    def __call__(self, kind, name, options):
        self.built.append((kind, name))
        return self.registration if kind == "registration" else self.segmenter


def ras(scan, kji):
    return bridge.kji_to_ras([kji], scan)[0]


@pytest.fixture
def session():
    return TrackingSession(fake_study(), FakeFactory())


def track(session, name, scan_id, kji, settings=Settings()):
    lesion = session.next_lesion(name)
    job = session.track_job([session.point_prompt(lesion, scan_id, ras(session.study.scan(scan_id), kji))], settings)
    session.merge(job())
    return lesion


def truth(session, scan_id, label):
    return session.study.scan(scan_id).label == label


def test_tracking_a_lesion_names_it_on_every_timepoint_and_reuses_registrations(session):
    jobs_before = len(session._factory.built)
    a = track(session, "Tumour A", "t0", (10, 16, 14))
    assert [session.observations[a.lesion_id][s].status for s in ("t0", "t1", "t2")] == ["source", "found", "found"]
    for sid in ("t0", "t1", "t2"):
        assert dice(session.observations[a.lesion_id][sid].mask, truth(session, sid, 1)) > 0.95
    pairs = list(session._factory.registration.pairs)
    b = track(session, "Tumour B", "t0", (10, 30, 28))
    assert session._factory.registration.pairs == pairs  # the second lesion cost no registration
    assert session.registrations_computed() == 2
    assert len(session._factory.built) - jobs_before == 2  # backends built once, then reused
    rows = session.status_rows()
    assert [r["name"] for r in rows] == ["Tumour A", "Tumour B"]
    assert rows[1]["tracking_uid"] == b.tracking_uid != a.tracking_uid
    assert [c["text"] for c in rows[0]["cells"]] == ["found (prompt)", "found", "found"]
    labels = session.label_map("t2")
    assert set(np.unique(labels)) == {0, 1, 2}
    with pytest.raises(InputError, match="already exists"):
        session.next_lesion("Tumour A")


def test_a_job_changes_nothing_until_merged_and_cancel_leaves_the_session_untouched(session):
    lesion = session.next_lesion("A")
    job = session.track_job([session.point_prompt(lesion, "t0", ras(session.study.scan("t0"), (10, 16, 14)))], Settings())
    session.request_cancel()
    with pytest.raises(TrackingCancelled):
        job()
    assert session.lesions == {} and session.observations == {}
    job = session.track_job([session.point_prompt(lesion, "t0", ras(session.study.scan("t0"), (10, 16, 14)))], Settings())
    result = job()  # track_job cleared the cancel request
    assert session.observations == {}
    message, done, total = session.progress()
    assert message == "done" and done == total > 0
    session.merge(result)
    assert list(session.lesions) == [lesion.lesion_id]


def test_jobs_run_on_the_persistent_worker_thread(session):
    from LinGuinELib.backends.device import TorchWorker

    worker = TorchWorker("cpu", name="test-linguine")
    try:
        lesion = session.next_lesion("A")
        threads = []
        job = session.track_job([session.point_prompt(lesion, "t1", ras(session.study.scan("t1"), (10, 16, 20)))], Settings())
        future = worker.submit(lambda: (threads.append(__import__("threading").current_thread()), job())[1])
        session.merge(future.result(timeout=60))
        assert threads == [worker.thread]
        assert session.observations[lesion.lesion_id]["t0"].status == "found"
    finally:
        worker.shutdown()


def test_prompts_outside_their_timepoint_or_empty_are_rejected(session):
    lesion = session.next_lesion("A")
    with pytest.raises(InputError, match="outside timepoint 't1'"):
        session.point_prompt(lesion, "t1", [500.0, 500.0, 500.0])
    with pytest.raises(InputError, match="empty"):
        session.mask_prompt(lesion, "t1", np.zeros((20, 48, 48), bool))
    with pytest.raises(InputError, match="grid"):
        session.mask_prompt(lesion, "t1", np.ones((2, 2, 2), bool))


def test_hand_edits_are_kept_unless_overwrite_is_confirmed(session):
    a = track(session, "A", "t0", (10, 16, 14))
    edited = session.observations[a.lesion_id]["t2"].mask.copy()
    edited[:10] = False
    assert session.set_edited_mask(a.lesion_id, "t2", edited)
    assert not session.set_edited_mask(a.lesion_id, "t2", edited)  # unchanged: not a new edit
    assert session.manual_pairs() == {(a.lesion_id, "t2")}
    assert session.protected([a.lesion_id], keep_scan="t0") == [(a.lesion_id, "t2")]
    report = session.merge(session.retrack_job(a.lesion_id, "t0", Settings())())
    assert report.kept == [(a.lesion_id, "t2")] and (a.lesion_id, "t1") in report.updated
    assert np.array_equal(session.observations[a.lesion_id]["t2"].mask, edited)
    assert "edited" in session.status_rows()[0]["cells"][2]["text"]
    session.merge(session.retrack_job(a.lesion_id, "t0", Settings())(), overwrite_edits=True)
    assert dice(session.observations[a.lesion_id]["t2"].mask, truth(session, "t2", 1)) > 0.95
    assert session.manual_pairs() == set()


def test_an_unchanged_segment_of_overlapping_lesions_is_not_an_edit(session):
    a = track(session, "A", "t0", (10, 16, 14))
    b = track(session, "B", "t0", (10, 30, 28))
    grown = session.observations[b.lesion_id]["t1"].mask.copy()
    grown |= session.observations[a.lesion_id]["t1"].mask  # B's raw mask now also claims all of A
    session.observations[b.lesion_id]["t1"].mask = grown
    shown = session.label_map("t1")
    assert not session.set_edited_mask(a.lesion_id, "t1", shown == a.lesion_id)
    assert not session.set_edited_mask(b.lesion_id, "t1", shown == b.lesion_id)
    assert session.edits == {}


def test_erasing_a_segment_by_hand_records_not_found(session):
    a = track(session, "A", "t0", (10, 16, 14))
    assert session.set_edited_mask(a.lesion_id, "t1", np.zeros((20, 48, 48), bool))
    assert session.observations[a.lesion_id]["t1"].status == "not_found"
    assert session.measurement_rows()[1]["volume_ml"] is None


def test_correction_clicks_change_one_timepoint_and_retrack_starts_there(session):
    a = track(session, "A", "t0", (10, 16, 14))
    before = {s: o.mask.copy() for s, o in session.observations[a.lesion_id].items()}
    t1 = session.study.scan("t1")
    # a click on the other lesion on t1: the correction takes it (a visible, checkable change)
    obs = session.correction_job(a.lesion_id, "t1", [ras(t1, (10, 30, 34))], None, Settings())()
    assert np.array_equal(session.observations[a.lesion_id]["t1"].mask, before["t1"])  # not applied yet
    session.apply_correction(obs)
    assert dice(session.observations[a.lesion_id]["t1"].mask, truth(session, "t1", 2)) > 0.95
    for sid in ("t0", "t2"):
        assert np.array_equal(session.observations[a.lesion_id][sid].mask, before[sid])
    assert session.edits == {(a.lesion_id, "t1"): "clicks"} and session.manual_pairs() == set()
    report = session.merge(session.retrack_job(a.lesion_id, "t1", Settings())())
    assert report.kept == [(a.lesion_id, "t1")]
    assert session.observations[a.lesion_id]["t1"].status == "source"
    assert session.observations[a.lesion_id]["t2"].propagated_from == "t1"
    assert dice(session.observations[a.lesion_id]["t2"].mask, truth(session, "t2", 2)) > 0.95
    for nothing in (np.zeros((0, 3)), []):
        with pytest.raises(InputError, match="positive"):
            session.correction_job(a.lesion_id, "t1", nothing, [], Settings())


def test_checkpoint_and_rollback_restore_the_session(session):
    a = track(session, "A", "t0", (10, 16, 14))
    state = session.checkpoint()
    session.merge(session.retrack_job(a.lesion_id, "t1", Settings())())
    session.rename_lesion(a.lesion_id, "Renamed")
    session.set_edited_mask(a.lesion_id, "t2", np.zeros((20, 48, 48), bool))
    session.rollback(state)
    assert session.observations[a.lesion_id]["t0"].status == "source"
    assert session.observations[a.lesion_id]["t1"].status == "found"
    assert session.lesions[a.lesion_id].name == "A" and session.edits == {}


def test_measurement_table_and_volume_plot_data(session):
    a = track(session, "A", "t0", (10, 16, 14))
    session.set_edited_mask(a.lesion_id, "t2", np.zeros((20, 48, 48), bool))
    rows = session.measurement_rows()
    columns = {title: values for title, kind, values in measurement_table(rows)}
    assert columns["Lesion"] == ["A"] * 3 and columns["Timepoint"] == ["t0", "t1", "t2"]
    assert columns["Status"] == ["found (prompt)", "found", "not found"]
    assert columns["Edited"] == ["", "", "manual"]
    true_ml = truth(session, "t0", 1).sum() / 1000.0 * 2.0  # voxels are 1 x 1 x 2 mm
    assert columns["Volume (mL)"][0] == pytest.approx(true_ml, rel=1e-6)
    assert math.isnan(columns["Volume (mL)"][2]) and math.isnan(columns["Change from baseline (%)"][2])
    assert columns["Change from baseline (%)"][0] == 0.0
    kinds = {title: kind for title, kind, _ in measurement_table(rows)}
    assert kinds["Volume (mL)"] == "double" and kinds["Lesion"] == "string"
    series = volume_series(rows, session.days_from_baseline(), session.result().lesions)
    assert series[0]["x"] == [0.0, 31.0, 60.0] and series[0]["colour"] == a.colour
    assert series[0]["y"][:2] == [pytest.approx(columns["Volume (mL)"][0]), pytest.approx(columns["Volume (mL)"][1])]
    assert math.isnan(series[0]["y"][2])


def test_removing_and_renaming_lesions(session):
    a = track(session, "A", "t0", (10, 16, 14))
    b = track(session, "B", "t0", (10, 30, 28))
    with pytest.raises(InputError, match="already exists"):
        session.rename_lesion(b.lesion_id, "A")
    session.set_edited_mask(a.lesion_id, "t1", np.zeros((20, 48, 48), bool))
    session.remove_lesion(a.lesion_id)
    assert [r["name"] for r in session.status_rows()] == ["B"] and session.edits == {}
    assert session.next_lesion().lesion_id == 3  # ids are never reused within a session
    assert set(np.unique(session.label_map("t0"))) == {0, b.lesion_id}


def test_weights_download_job_reports_progress_and_cancels(session):
    calls = {}

    class Manager:
        def __init__(self, progress, acknowledge):
            calls["ack"] = acknowledge(None)
            self.progress = progress

        def ensure(self, model_id, weights):
            calls.setdefault("ids", []).append((model_id, weights))
            if self.progress(f"{model_id}: weights", 50, 100) is False:
                raise TrackingCancelled("download cancelled")
            return Path("/cache") / model_id

    spec = type("Spec", (), {"id": "unigradicon"})()
    assert session.download_job([spec], "/w", Manager)() == [Path("/cache/unigradicon")]
    assert calls == {"ack": True, "ids": [("unigradicon", "/w")]}
    assert session.progress() == ("unigradicon: weights", 50, 100)
    job = session.download_job([spec], None, Manager)
    session.request_cancel()
    with pytest.raises(TrackingCancelled):
        job()


# -- the Slicer self-test's scenario, with the real CPU backends ---------------------------------------
def test_selftest_scenario_tracks_with_the_cpu_backends():
    """The data and steps of LinGuinETest (which needs a real Slicer), run here through the bridge."""
    pytest.importorskip("cc3d")
    timepoints = moving_lesion_study()
    scans = [bridge.scan_from_volume(t["name"], t["array"], t["ijk_to_ras"],
                                     dt.datetime.fromisoformat(re.search(r"\d{4}-\d\d-\d\d", t["name"]).group()))
             for t in timepoints]
    session = TrackingSession(Study("p", scans))
    settings = Settings(registration="sitk", segmentation="classic", device="cpu")
    a = session.next_lesion("Tumour A")
    session.merge(session.track_job([session.point_prompt(a, scans[0].scan_id, timepoints[0]["centre_ras"])], settings)())
    for scan, t in zip(scans, timepoints):
        obs = session.observations[a.lesion_id][scan.scan_id]
        assert obs.found and dice(obs.mask, t["truth"]) > 0.7, scan.scan_id
    computed = session.registrations_computed()
    b = session.next_lesion("Structure B")
    spine = timepoints[0]["centre_ras"] + np.array([-19.5, -39.0, 0.0])  # as in LinGuinETest
    assert bridge.ras_to_kji([spine], scans[0])[0][1:].tolist() == [62.0, 40.0]
    session.merge(session.track_job([session.point_prompt(b, scans[0].scan_id, spine)], settings)())
    assert session.registrations_computed() == computed
    obs = session.correction_job(a.lesion_id, scans[1].scan_id, [timepoints[1]["centre_ras"]], None, settings)()
    assert dice(obs.mask, timepoints[1]["truth"]) > 0.7


# -- installs ----------------------------------------------------------------------------------------
def test_pip_constraints_pin_slicers_own_packages_at_their_installed_versions():
    import importlib.metadata

    from LinGuinELib.frontend import install_plan as plan

    versions = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "vtk": "9.4.2"}

    def version_of(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    lines = plan.constraints_text(version_of).split()
    assert lines == ["SimpleITK==2.4.0", "numpy==1.26.4", "vtk==9.4.2"]  # torch absent: nothing to pin


def test_a_restart_is_required_before_replacing_an_imported_torch():
    from LinGuinELib.frontend.install_plan import restart_needed_for_torch

    assert restart_needed_for_torch(True, {"torch", "numpy"})
    assert not restart_needed_for_torch(True, {"numpy"})
    assert not restart_needed_for_torch(False, {"torch"})
