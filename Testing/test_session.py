"""The Slicer module's tracking session (LinGuinELib/frontend/session.py): lesion bookkeeping, edits that
are never overwritten silently, correction, re-tracking, measurements and plot data. The session only
applies results; here a :class:`Tracker` with known backends plays the engine service's part."""

from __future__ import annotations

import datetime as dt
import math
import re

import numpy as np
import pytest

from conftest import make_scan
from fakes import ShiftRegistration, ThresholdSegmenter
from LinGuinELib.core import coords
from LinGuinELib.core.errors import InputError
from LinGuinELib.core.measure import dice
from LinGuinELib.core.study import Study
from LinGuinELib.core.tracking import LesionPrompt, Tracker, TrackingResult
from LinGuinELib.frontend import slicer_bridge as bridge
from LinGuinELib.frontend.selftest_data import moving_lesion_study
from LinGuinELib.frontend.session import TrackingSession, measurement_table, volume_series
from LinGuinELib.frontend.settings import Settings


OFFSETS = {"t0": np.zeros(3), "t1": np.array([6.0, 0.0, 0.0]), "t2": np.array([12.0, 4.0, 0.0])}


def fake_study():
    """Three scans; two lesions shifted by a known offset per scan (offsets in LPS mm, spacing 1 mm)."""
    scans = []
    for n, (sid, off) in enumerate(OFFSETS.items()):
        blobs = (((10 + off[2] / 2, 16 + off[1], 14 + off[0]), 4.0), ((10, 30 + off[1], 28 + off[0]), 3.0))
        scans.append(make_scan(sid, dt.datetime(2020, 1 + n, 1), shape=(20, 48, 48), blobs=blobs, seed=n))
    return Study("p", scans)


def ras(scan, kji):
    return bridge.kji_to_ras([kji], scan)[0]


@pytest.fixture
def session():
    """A session and the tracker that does its jobs (as the engine service does: the session only applies
    the results)."""
    s = TrackingSession(fake_study())
    s.tracker = Tracker(s.study, ShiftRegistration(OFFSETS), ThresholdSegmenter())
    return s


def track(session, name, scan_id, kji):
    lesion = session.next_lesion(name)
    session.merge(session.tracker.track([session.point_prompt(lesion, scan_id, ras(session.study.scan(scan_id), kji))]))
    return lesion


def retrack(session, lesion_id, scan_id):
    """A track job prompted by the lesion's current segment on ``scan_id`` (what the module's Re-track sends)."""
    obs = session.observation(lesion_id, scan_id)
    return session.tracker.track([LesionPrompt(session.lesion(lesion_id), scan_id, mask=obs.mask.copy())])


def correct(session, lesion_id, scan_id, positive_ras):
    """A correction job: the lesion re-segmented on one timepoint from positive clicks (world RAS mm)."""
    scratch = TrackingResult(session.study, [session.lesion(lesion_id)],
                             {lesion_id: {scan_id: session.observation(lesion_id, scan_id)}})
    return session.tracker.resegment(scratch, lesion_id, scan_id, coords.ras_to_lps(np.asarray(positive_ras, float)))


def truth(session, scan_id, label):
    return session.study.scan(scan_id).label == label


def test_tracking_a_lesion_names_it_on_every_timepoint(session):
    a = track(session, "Tumour A", "t0", (10, 16, 14))
    assert [session.observations[a.lesion_id][s].status for s in ("t0", "t1", "t2")] == ["source", "found", "found"]
    for sid in ("t0", "t1", "t2"):
        assert dice(session.observations[a.lesion_id][sid].mask, truth(session, sid, 1)) > 0.95
    b = track(session, "Tumour B", "t0", (10, 30, 28))
    rows = session.status_rows()
    assert [r["name"] for r in rows] == ["Tumour A", "Tumour B"]
    assert rows[1]["tracking_uid"] == b.tracking_uid != a.tracking_uid
    assert [c["text"] for c in rows[0]["cells"]] == ["found (prompt)", "found", "found"]
    labels = session.label_map("t2")
    assert set(np.unique(labels)) == {0, 1, 2}
    with pytest.raises(InputError, match="already exists"):
        session.next_lesion("Tumour A")


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
    report = session.merge(retrack(session, a.lesion_id, "t0"))
    assert report.kept == [(a.lesion_id, "t2")] and (a.lesion_id, "t1") in report.updated
    assert np.array_equal(session.observations[a.lesion_id]["t2"].mask, edited)
    assert "edited" in session.status_rows()[0]["cells"][2]["text"]
    session.merge(retrack(session, a.lesion_id, "t0"), overwrite_edits=True)
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
    obs = correct(session, a.lesion_id, "t1", [ras(t1, (10, 30, 34))])
    assert np.array_equal(session.observations[a.lesion_id]["t1"].mask, before["t1"])  # not applied yet
    session.apply_correction(obs)
    assert dice(session.observations[a.lesion_id]["t1"].mask, truth(session, "t1", 2)) > 0.95
    for sid in ("t0", "t2"):
        assert np.array_equal(session.observations[a.lesion_id][sid].mask, before[sid])
    assert session.edits == {(a.lesion_id, "t1"): "clicks"} and session.manual_pairs() == set()
    report = session.merge(retrack(session, a.lesion_id, "t1"))
    assert report.kept == [(a.lesion_id, "t1")]
    assert session.observations[a.lesion_id]["t1"].status == "source"
    assert session.observations[a.lesion_id]["t2"].propagated_from == "t1"
    assert dice(session.observations[a.lesion_id]["t2"].mask, truth(session, "t2", 2)) > 0.95


def test_checkpoint_and_rollback_restore_the_session(session):
    a = track(session, "A", "t0", (10, 16, 14))
    state = session.checkpoint()
    session.merge(retrack(session, a.lesion_id, "t1"))
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


# -- the Slicer self-test's scenario, with the real CPU backends ---------------------------------------
def test_selftest_scenario_tracks_with_the_cpu_backends():
    """The data and steps of LinGuinETest (which needs a real Slicer), run here through the bridge, with the
    backends the engine service builds from the module's settings."""
    pytest.importorskip("cc3d")
    timepoints = moving_lesion_study()
    scans = [bridge.scan_from_volume(t["name"], t["array"], t["ijk_to_ras"],
                                     dt.datetime.fromisoformat(re.search(r"\d{4}-\d\d-\d\d", t["name"]).group()))
             for t in timepoints]
    session = TrackingSession(Study("p", scans))
    settings = Settings(registration="sitk", segmentation="classic", device="cpu")
    tracker = Tracker(session.study, settings.make_registration(), settings.make_segmenter(),
                      **settings.tracker_options())
    a = session.next_lesion("Tumour A")
    session.merge(tracker.track([session.point_prompt(a, scans[0].scan_id, timepoints[0]["centre_ras"])]))
    for scan, t in zip(scans, timepoints):
        obs = session.observations[a.lesion_id][scan.scan_id]
        assert obs.found and dice(obs.mask, t["truth"]) > 0.7, scan.scan_id
    computed = tracker.cache.computed
    b = session.next_lesion("Structure B")
    spine = timepoints[0]["centre_ras"] + np.array([-19.5, -39.0, 0.0])  # as in LinGuinETest
    assert bridge.ras_to_kji([spine], scans[0])[0][1:].tolist() == [62.0, 40.0]
    session.merge(tracker.track([session.point_prompt(b, scans[0].scan_id, spine)]))
    assert tracker.cache.computed == computed  # the second lesion cost no registration
    scratch = TrackingResult(session.study, [a], {a.lesion_id: {scans[1].scan_id: session.observation(a.lesion_id, scans[1].scan_id)}})
    obs = tracker.resegment(scratch, a.lesion_id, scans[1].scan_id, coords.ras_to_lps(timepoints[1]["centre_ras"][None]))
    assert dice(obs.mask, timepoints[1]["truth"]) > 0.7


def test_an_uncertain_result_is_returned_and_marked_in_the_status_table(session):
    """A mask the segmenter is not sure of (confidence "low") is kept and shown as "found (uncertain)" in
    Slicer's results table; once the user edits it, the cell says so instead."""

    class DoubtfulOnT1(ThresholdSegmenter):
        def _segment_with_confidence(self, scan, positive, negative):
            return self._segment(scan, positive, negative), "low" if scan.scan_id == "t1" else "high"

    session.tracker = Tracker(session.study, ShiftRegistration(OFFSETS), DoubtfulOnT1())
    a = track(session, "Tumour A", "t0", (10, 16, 14))
    assert dice(session.observation(a.lesion_id, "t1").mask, truth(session, "t1", 1)) > 0.95
    cells = session.status_rows()[0]["cells"]
    assert [c["confidence"] for c in cells] == ["high", "low", "high"]
    assert [c["text"] for c in cells] == ["found (prompt)", "found (uncertain)", "found"]
    assert [r["confidence"] for r in session.measurement_rows() if r["lesion_id"] == a.lesion_id] == ["high", "low", "high"]
    session.apply_correction(correct(session, a.lesion_id, "t1", ras(session.study.scan("t1"), (10, 16, 20))))
    assert session.status_rows()[0]["cells"][1]["text"] == "found (corrected)"
