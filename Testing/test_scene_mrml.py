"""The scene layer (LinGuinE/LinGuinESceneLib) against Slicer 5.12's real MRML (PyPI slicer-core).

A fake engine client of the service's shape runs the engine in-process (known-shift registration,
threshold segmenter), so these tests show what the module does with a result: the nodes, segments,
terminology, statuses, label maps, edits, subject hierarchy, review views, measurements and export.
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.mrml
sys.path.insert(0, str(REPO / "LinGuinE"))

import slicer  # noqa: E402 - PyPI slicer-core, in the test extra: these tests must run, never skip
import vtk  # noqa: E402

from fakes import ShiftRegistration, ThresholdSegmenter  # noqa: E402
from mrml_scene import MRMLApp  # noqa: E402

SHAPE = (16, 32, 32)  # k, j, i
SPACING = (1.5, 1.5, 3.0)  # i, j, k mm
CENTRES_KJI = [(8, 14, 14), (8, 17, 15), (8, 14, 14)]  # the lesion on each timepoint (voxel index)
PARENT_SHIFT_RAS = np.array([12.0, -6.0, 3.0])  # the third volume sits under this translation


@dataclass
class JobStatus:  # the fields of LinGuinELib.service.client.JobStatus
    job_id: str
    state: str
    message: str = ""
    stage: str = ""
    scan_id: str = ""
    fraction: float = 0.0
    queue_ahead: int = 0


class FakeClient:
    """In-process stand-in for LinGuinELib.service.client.EngineClient: same methods, same results.
    Each job reports "running" once, then its final state."""

    def __init__(self):
        self.studies, self.jobs, self.calls, self.fail = {}, {}, [], None

    def health(self):
        return {"version": "test"}

    def upload_scan(self, scan):
        self.calls.append(("upload", scan.scan_id))
        return f"hash-{scan.scan_id}"

    def open_study(self, study, hashes=None):
        assert hashes == {s.scan_id: f"hash-{s.scan_id}" for s in study}  # every scan sent, one per tick
        sid = f"session{len(self.studies) + 1}"
        self.studies[sid] = study
        self.calls.append(("open_study", study.scan_ids))
        return sid

    def _tracker(self, sid, settings):
        from LinGuinELib.core.tracking import Tracker

        study = self.studies[sid]
        offsets = {s.scan_id: s.kji_to_lps(np.array([c], float))[0] for s, c in zip(study, CENTRES_KJI)}
        return Tracker(study, ShiftRegistration(offsets), ThresholdSegmenter(-300.0), **settings.tracker_options())

    def _job(self, run):
        job_id = f"job{len(self.jobs) + 1}"
        self.jobs[job_id] = {"run": run, "polls": 0, "state": "running"}
        return job_id

    def submit_track(self, sid, prompts, settings):
        self.calls.append(("track", [p.scan_id for p in prompts]))
        return self._job(lambda: self._tracker(sid, settings).track(prompts))

    def submit_correct(self, sid, lesion_id, scan_id, positive_lps, negative_lps, settings, current):
        from LinGuinELib.core.lesion import Lesion
        from LinGuinELib.core.tracking import TrackingResult

        self.calls.append(("correct", lesion_id, scan_id))
        scratch = TrackingResult(self.studies[sid], [Lesion(lesion_id)], {lesion_id: {scan_id: current}})
        return self._job(lambda: self._tracker(sid, settings).resegment(scratch, lesion_id, scan_id,
                                                                        positive_lps, negative_lps))

    def job_status(self, job_id, timeout_s=None):
        job = self.jobs[job_id]
        job["polls"] += 1
        if job["state"] == "running" and job["polls"] > 1:
            if self.fail:
                job["state"], job["error"] = "failed", self.fail
            else:
                job["result"], job["state"] = job["run"](), "done"
        return JobStatus(job_id, job["state"], job.get("error", ""), "segmentation", None,
                         0.5 if job["state"] == "running" else 1.0)

    def job_result(self, job_id):
        return self.jobs[job_id]["result"]

    def cancel(self, job_id):
        self.jobs[job_id]["state"] = "cancelled"

    def close_session(self, sid):
        self.calls.append(("close", sid))


class FakeConnection:
    """LinGuinELib.frontend.engine.EngineConnection's shape: poll() says "starting" once (the local
    service starting), then "ready"; tick() reports the followed jobs until they finish."""

    def __init__(self):
        self.client, self.polls, self.cancelled, self.followed, self.error = FakeClient(), 0, [], set(), ""

    def poll(self):
        self.polls += 1
        return "ready" if self.polls > 1 else "starting"

    def reset(self):
        self.polls = 0

    def follow(self, job_id):
        self.followed.add(job_id)
        return job_id

    def tick(self):
        out = {job_id: self.client.job_status(job_id) for job_id in sorted(self.followed)}
        self.followed -= {j for j, s in out.items() if s.state in ("done", "failed", "cancelled")}
        return out

    def cancel(self, job_id):
        self.cancelled.append(job_id)
        self.client.cancel(job_id)


def _volume_array(centre, seed):
    rng = np.random.default_rng(seed)
    arr = rng.normal(-700, 15, SHAPE).astype(np.int16)
    kk, jj, ii = np.indices(SHAPE)
    d = np.sqrt(((kk - centre[0]) * SPACING[2]) ** 2 + ((jj - centre[1]) * SPACING[1]) ** 2
                + ((ii - centre[2]) * SPACING[0]) ** 2)
    arr[d <= 6.0] = 60
    return arr


@pytest.fixture
def app():
    mrml = MRMLApp()
    yield mrml
    mrml.close()


@pytest.fixture
def scene(app):
    """Three CT volumes (dates in their names), the third under a parent translation, and the scene
    classes wired as the module wires them."""
    from LinGuinESceneLib.jobs import EngineJobs
    from LinGuinESceneLib.prompts import ScenePrompts
    from LinGuinESceneLib.results import SceneResults
    from LinGuinESceneLib.timepoints import SceneTimepoints

    ijk_to_ras = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    ijk_to_ras[:3, 3] = [20.0, 30.0, -40.0]
    volumes = []
    for n, centre in enumerate(CENTRES_KJI):
        volumes.append(slicer.util.addVolumeFromArray(_volume_array(centre, n), ijk_to_ras, f"CT 2021-0{n + 1}-10"))
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, PARENT_SHIFT_RAS[axis])
    transform.SetMatrixTransformToParent(matrix)
    volumes[2].SetAndObserveTransformNodeID(transform.GetID())
    tps = SceneTimepoints()
    results = SceneResults(tps)
    connection = FakeConnection()

    class Scene:
        pass

    s = Scene()
    s.app, s.volumes, s.tps, s.results, s.connection = app, volumes, tps, results, connection
    s.prompts, s.jobs = ScenePrompts(tps), EngineJobs(tps, results, connection)
    return s


def world_centre_ras(volume, centre_kji):
    """World RAS of a voxel index of a volume (its IJKToRAS under its parent transforms)."""
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    local = slicer.util.arrayFromVTKMatrix(matrix) @ np.array([centre_kji[2], centre_kji[1], centre_kji[0], 1.0])
    transform = volume.GetParentTransformNode()
    if transform is not None:
        world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(world)
        local = slicer.util.arrayFromVTKMatrix(world) @ local
    return local[:3]


def run_jobs(scene, limit=20):
    for _ in range(limit):
        if not scene.jobs.tick():
            return scene.jobs.outcome
    raise AssertionError("job did not finish")


def settings():
    from LinGuinELib.frontend.settings import Settings

    return Settings(registration="identity", segmentation="classic", radius_mm=12.0)


def track_point(scene, name="Tumour A", volume=0):
    session = scene.tps.session
    lesion = session.next_lesion(name)
    markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"prompt {name}")
    markups.AddControlPointWorld(*world_centre_ras(scene.volumes[volume], CENTRES_KJI[volume]))
    scene.jobs.track([scene.prompts.from_point(session, lesion, scene.volumes[volume].GetID(), markups)], settings())
    outcome = run_jobs(scene)
    assert outcome.ok, outcome.message
    return lesion.lesion_id


def truth(n):
    return _volume_array(CENTRES_KJI[n], n) > -300


@pytest.fixture
def tracked(scene):
    scene.tps.refresh()
    scene.tps.ensure_session()
    track_point(scene)
    return scene


# -- timepoints and points ------------------------------------------------------------------------
def test_timepoints_from_volume_nodes_including_a_transformed_volume(scene):
    added = scene.tps.refresh()
    assert [r.label for r in added] == [v.GetName() for v in scene.volumes]
    assert [r.date for r in scene.tps.table.rows] == [dt.datetime(2021, m, 10) for m in (1, 2, 3)]
    study = scene.tps.ensure_session().study
    plain, moved = study.scan(scene.volumes[0].GetName()), study.scan(scene.volumes[2].GetName())
    assert np.allclose(moved.origin - plain.origin, PARENT_SHIFT_RAS * [-1, -1, 1])  # world geometry, LPS
    assert np.array_equal(moved.array, slicer.util.arrayFromVolume(scene.volumes[2]))


def test_a_markups_point_on_a_transformed_volume_maps_to_its_lps_point_on_that_scan(scene):
    scene.tps.refresh()
    session = scene.tps.ensure_session()
    markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "p")
    markups.AddControlPointWorld(*world_centre_ras(scene.volumes[2], CENTRES_KJI[2]))
    prompt = scene.prompts.from_point(session, session.next_lesion(), scene.volumes[2].GetID(), markups)
    assert prompt.scan_id == scene.volumes[2].GetName()
    assert np.allclose(session.study.scan(prompt.scan_id).lps_to_kji(prompt.point_lps[None])[0], CENTRES_KJI[2])


def test_the_prompt_timepoint_is_the_volume_shown_in_the_view_the_point_was_placed_in(scene):
    logics = [scene.app.add_slice_view(name) for name in ("Red", "Yellow")]
    for logic, volume, kji in zip(logics, scene.volumes[1:], CENTRES_KJI[1:]):
        logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
        logic.GetSliceNode().SetMappedInLayout(1)
        logic.GetSliceNode().SetOrientationToAxial()
        logic.GetSliceNode().JumpSliceByCentering(*world_centre_ras(volume, kji))
    markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "p")
    markups.AddControlPointWorld(*world_centre_ras(scene.volumes[2], CENTRES_KJI[2]))
    assert scene.prompts.volume_of_placed_point(markups, scene.app.app_logic) == scene.volumes[2].GetID()
    markups.AddControlPointWorld(*(world_centre_ras(scene.volumes[2], CENTRES_KJI[2]) + [0, 0, 40.0]))
    assert scene.prompts.volume_of_placed_point(markups, scene.app.app_logic) is None  # in no view's plane


# -- applying a result ------------------------------------------------------------------------------
def test_applying_a_result_writes_one_node_per_timepoint_and_one_segment_per_lesion(tracked):
    from LinGuinELib.frontend.slicer_bridge import TAG_LESION_ID, TAG_STATUS, segment_id

    second = track_point(tracked, "Spine B")
    terminology = slicer.modules.terminologies.logic()
    session, colours = tracked.tps.session, {}
    for n, volume in enumerate(tracked.volumes):
        seg = tracked.results.segmentation_node(volume, create=False)
        assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is volume
        assert seg.GetTransformNodeID() == volume.GetTransformNodeID()
        segmentation = seg.GetSegmentation()
        assert segmentation.GetNumberOfSegments() == 2 and segmentation.GetNumberOfLayers() == 1
        for lid in (1, second):
            segment = segmentation.GetSegment(segment_id(lid))
            colours.setdefault(lid, set()).add((segment.GetName(), tuple(np.round(segment.GetColor(), 4))))
            assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
            entry = slicer.vtkSlicerTerminologyEntry()
            assert terminology.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
            assert (entry.GetTypeObject().GetCodeValue(), entry.GetTypeObject().GetCodeMeaning()) == ("108369006", "Neoplasm")
            value = vtk.mutable("")
            segment.GetTag(TAG_LESION_ID, value)
            assert str(value) == str(lid)
            segment.GetTag(TAG_STATUS, value)
            obs = session.observations[lid][volume.GetName()]
            assert str(value) == obs.status
            assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentStatus(segment) == \
                slicer.vtkSlicerSegmentationsModuleLogic.InProgress
        engine = session.label_map(volume.GetName())
        for lid in (1, second):
            assert np.array_equal(tracked.results.mask(lid, volume.GetName()), engine == lid)
        assert (engine == 1).sum() > 0 and np.array_equal(engine == 1, truth(n) & (engine == 1))
    assert all(len(v) == 1 for v in colours.values())  # same name and colour on every timepoint


def test_a_failed_job_leaves_the_scene_and_session_as_they_were(tracked):
    before = {v.GetName(): tracked.results.mask(1, v.GetName()) for v in tracked.volumes}
    tracked.connection.client.fail = "CUDA out of memory"
    tracked.jobs.retrack(1, tracked.volumes[1].GetName(), settings())
    outcome = run_jobs(tracked)
    assert not outcome.ok and "CUDA out of memory" in outcome.message
    for name, mask in before.items():
        assert np.array_equal(tracked.results.mask(1, name), mask)


def test_cancel_asks_the_service_and_leaves_the_scene(tracked):
    lesion = tracked.tps.session.next_lesion("B")
    prompt = tracked.prompts.from_segment(tracked.tps.session, lesion, tracked.volumes[0].GetID(),
                                          tracked.results.segmentation_node(tracked.volumes[0]), "LinGuinE_lesion_1")
    tracked.jobs.track([prompt], settings())
    tracked.jobs.tick()
    tracked.jobs.tick()  # submitted
    tracked.jobs.cancel()
    outcome = run_jobs(tracked)
    assert not outcome.ok and outcome.message.startswith("Cancelled")
    assert tracked.connection.cancelled == ["job2"] and list(tracked.tps.session.lesions) == [1]


# -- edits ---------------------------------------------------------------------------------------
def test_a_hand_edit_is_kept_on_retrack_unless_confirmed_and_a_lesion_can_be_removed(tracked):
    from LinGuinELib.frontend.slicer_bridge import TAG_ALGORITHM_TYPE, segment_id

    name = tracked.volumes[2].GetName()
    seg = tracked.results.segmentation_node(tracked.volumes[2], create=False)
    edited = tracked.results.mask(1, name)
    edited[: SHAPE[0] // 2] = False
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), seg, segment_id(1), tracked.volumes[2])
    assert tracked.results.sync_edits() == [(1, name)]
    value = vtk.mutable("")
    seg.GetSegmentation().GetSegment(segment_id(1)).GetTag(TAG_ALGORITHM_TYPE, value)
    assert str(value) == "MANUAL"
    assert tracked.tps.session.protected([1], keep_scan=tracked.volumes[0].GetName()) == [(1, name)]
    tracked.jobs.retrack(1, tracked.volumes[0].GetName(), settings(), overwrite_edits=False)
    assert run_jobs(tracked).ok
    assert np.array_equal(tracked.results.mask(1, name), edited)  # kept
    tracked.jobs.retrack(1, tracked.volumes[0].GetName(), settings(), overwrite_edits=True)
    assert run_jobs(tracked).ok
    assert np.array_equal(tracked.results.mask(1, name), truth(2))  # overwritten only when confirmed
    tracked.results.remove(1)
    assert 1 not in tracked.tps.session.lesions
    for volume in tracked.volumes:
        assert tracked.results.segmentation_node(volume, False).GetSegmentation().GetSegment(segment_id(1)) is None


def test_correction_never_rebuilds_a_changed_session_silently(tracked):
    from LinGuinELib.core.errors import InputError

    tracked.tps.table.set_label(1, "renamed")
    with pytest.raises(InputError, match="changed since the lesions were tracked"):
        tracked.tps.ensure_session(confirm=None)
    assert tracked.tps.ensure_session(confirm=lambda: False) is None
    assert 1 in tracked.tps.session.lesions  # the old session is kept


def test_correction_clicks_change_one_timepoint_only(tracked):
    names = [v.GetName() for v in tracked.volumes]
    before = {n: tracked.results.mask(1, n) for n in names}
    point = world_centre_ras(tracked.volumes[1], CENTRES_KJI[1])
    tracked.jobs.correct(1, names[1], [point], None, settings())
    assert run_jobs(tracked).ok
    assert tracked.tps.session.edits[(1, names[1])] == "clicks"
    for n in (names[0], names[2]):
        assert np.array_equal(tracked.results.mask(1, n), before[n])


# -- subject hierarchy -------------------------------------------------------------------------------
def test_subject_hierarchy_items_under_patient_and_study(tracked):
    from LinGuinESceneLib.hierarchy import SubjectHierarchy

    hierarchy = SubjectHierarchy()
    sh = hierarchy.sh
    for volume in tracked.volumes:
        seg = tracked.results.segmentation_node(volume, create=False)
        study = hierarchy.place(volume, seg, "Patient 1", volume.GetName())
        assert sh.GetItemParent(sh.GetItemByDataNode(volume)) == study
        assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
        assert sh.GetItemLevel(study) == "Study" and sh.GetItemLevel(sh.GetItemParent(study)) == "Patient"
    patients = {sh.GetItemParent(sh.GetItemParent(sh.GetItemByDataNode(v))) for v in tracked.volumes}
    assert len(patients) == 1


# -- review layout ------------------------------------------------------------------------------------
def test_review_views_centre_each_timepoint_and_stay_after_a_scroll(tracked):
    from LinGuinESceneLib.review import ReviewLayout

    review = ReviewLayout(tracked.tps, tracked.results, tracked.app.app_logic)
    seg0 = tracked.results.segmentation_node(tracked.volumes[0], create=False)
    seg0.GetDisplayNode().AddViewNodeID("vtkMRMLSliceNodeRed")
    restrictions = [seg0.GetDisplayNode().GetNthViewNodeID(n) for n in range(seg0.GetDisplayNode().GetNumberOfViewNodeIDs())]
    views = review.activate()
    logics = [tracked.app.add_slice_view(v) for v in views]  # what the layout manager does in Slicer
    for logic in logics:
        logic.GetSliceCompositeNode().SetLinkedControl(True)  # the user had linked views
    centres = review.show(1)
    for logic, volume, kji in zip(logics, tracked.volumes, CENTRES_KJI):
        assert logic.GetSliceCompositeNode().GetBackgroundVolumeID() == volume.GetID()
        slice_to_ras = slicer.util.arrayFromVTKMatrix(logic.GetSliceNode().GetSliceToRAS())
        assert np.allclose(slice_to_ras[:3, 3], centres[volume.GetName()], atol=1e-6)
        assert np.linalg.norm(slice_to_ras[:3, 3] - world_centre_ras(volume, kji)) < 3.0
        seg = tracked.results.segmentation_node(volume, create=False)
        assert logic.GetSliceNode().GetID() in [seg.GetDisplayNode().GetNthViewNodeID(n)
                                                for n in range(seg.GetDisplayNode().GetNumberOfViewNodeIDs())]
    first = logics[0].GetSliceNode()  # scroll the first view as the mouse wheel does
    first.SetInteractionFlags(first.SliceToRASFlag)
    first.InteractingOn()
    first.SetSliceOffset(first.GetSliceOffset() + 6.0)
    first.InteractingOff()
    for logic, volume in zip(logics[1:], tracked.volumes[1:]):
        assert np.allclose(slicer.util.arrayFromVTKMatrix(logic.GetSliceNode().GetSliceToRAS())[:3, 3],
                           centres[volume.GetName()], atol=1e-6)
    review.layout_node().SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)  # the user moves on
    assert not review.active
    assert [seg0.GetDisplayNode().GetNthViewNodeID(n)
            for n in range(seg0.GetDisplayNode().GetNumberOfViewNodeIDs())] == restrictions
    assert all(l.GetSliceCompositeNode().GetLinkedControl() for l in logics)
    assert review.layout_node().GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView


# -- measurements and export -------------------------------------------------------------------------
def test_measurement_table_and_plot_nodes(tracked):
    from LinGuinESceneLib.measurements import MeasurementNodes

    table, chart = MeasurementNodes(tracked.tps).update()
    assert table.GetNumberOfRows() == 3
    volumes = slicer.util.arrayFromTableColumn(table, "Volume (mL)")
    expected = [truth(n).sum() * np.prod(SPACING) / 1000 for n in range(3)]
    assert np.allclose(volumes, expected, rtol=1e-6)
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetName() == "Tumour A" and series.GetXColumnName() == "Days from baseline"
    table2, chart2 = MeasurementNodes(tracked.tps).update(table, chart)  # refreshed in place, no duplicates
    assert (table2, chart2) == (table, chart) and chart.GetNumberOfPlotSeriesNodes() == 1


def test_export_of_a_non_dicom_study_writes_label_maps_and_csv_with_a_note(tracked, tmp_path):
    import SimpleITK as sitk

    from LinGuinESceneLib.export import SceneExport

    tracked.tps.table.set_label(1, "CT 2021-01-10?")  # cleans to the same file name as timepoint 1
    tracked.tps.ensure_session(confirm=lambda: True)
    track_point(tracked)
    report = SceneExport(tracked.tps, tracked.results).export(str(tmp_path), "nrrd", csv=True, dicom_seg=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in names if n.endswith("_lesions.nrrd")]) == 3 and "lesions.csv" in names
    assert "dicom-seg" not in names and "no DICOM-SEG" in report.notes[0]
    for scan in tracked.tps.session.study:
        path = next(p for p in report.written if p.endswith(".nrrd") and
                    sitk.GetArrayFromImage(sitk.ReadImage(p)).shape == scan.shape)
        assert path
    first = sitk.GetArrayFromImage(sitk.ReadImage(report.written[0]))
    assert np.array_equal(first > 0, tracked.results.mask(1, tracked.volumes[0].GetName()))


# -- the module's controller --------------------------------------------------------------------------
def test_controller_tracks_through_a_remote_engine_and_places_items_in_the_hierarchy(scene, tmp_path):
    from types import SimpleNamespace

    from LinGuinESceneLib.controller import SceneController

    made = []

    def factory(mode, url, token):
        made.append((mode, url, token))
        return scene.connection

    scene.connection.shutdown = lambda: made.append("shutdown")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    controller = SceneController(str(REPO / "Resources"), scene.app.app_logic, factory, confirm=lambda *a: True,
                                 inform=lambda *a: None)
    p = SimpleNamespace(registration="identity", segmentation="classic", boost=False, chain=False, radiusMm=12.0,
                        device="cpu", weightsFolder=None, engineMode="remote", engineUrl="https://gpu.example:8765",
                        engineTokenFile=str(token), lesionName="", promptPoints=None, positiveClicks=None,
                        negativeClicks=None, measurementTable=None, volumePlot=None)
    controller.ensureMarkupsNodes(p)
    controller.timepoints = scene.tps  # the volumes of the fixture
    controller.results, controller.prompts, controller.jobs = scene.results, scene.prompts, scene.jobs
    scene.jobs.connection = None
    scene.tps.refresh()
    assert controller.prepare(p)
    assert made == [("remote", "https://gpu.example:8765", "s3cret")]
    p.promptPoints.AddControlPointWorld(*world_centre_ras(scene.volumes[0], CENTRES_KJI[0]))
    controller.track(p, scene.volumes[0].GetID(), markups=p.promptPoints)
    assert run_jobs(scene).ok
    controller.afterJob(p, scene.jobs.outcome)
    assert p.promptPoints.GetNumberOfControlPoints() == 0
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    studies = {sh.GetItemParent(sh.GetItemByDataNode(v)) for v in scene.volumes}
    assert len(studies) == 3 and all(sh.GetItemLevel(s) == "Study" for s in studies)
    assert controller.updateMeasurements(p).GetNumberOfRows() == 3
    controller.shutdown()
    assert made[-1] == "shutdown" and ("close", "session1") in scene.connection.client.calls


def test_a_local_service_that_fails_to_start_is_reported_and_retried_at_the_next_job(tracked):
    tracked.connection.poll = lambda: "failed"
    tracked.connection.error = "the local engine service did not start within 120 s (log: /tmp/x.log)"
    resets = []
    tracked.connection.reset = lambda: resets.append(1)
    tracked.jobs.retrack(1, tracked.volumes[1].GetName(), settings())
    outcome = run_jobs(tracked)
    assert not outcome.ok and "did not start within 120 s" in outcome.message and resets == [1]
    assert not tracked.jobs.busy and list(tracked.tps.session.lesions) == [1]


# -- the module's job driver against a real local engine service ----------------------------------
def test_a_point_tracked_through_a_real_local_service_lands_on_every_timepoint(scene, tmp_path):
    """EngineJobs + the real EngineConnection: `linguine serve` started as a subprocess, the study
    uploaded, the job polled without blocking, the result applied to real MRML, the service stopped."""
    import time

    from LinGuinELib.frontend.engine import EngineConnection

    connection = EngineConnection(mode="local", python=sys.executable,
                                  env={"PYTHONPATH": str(REPO), "LINGUINE_HOME": str(tmp_path)})
    scene.jobs.connection = connection
    try:
        scene.tps.refresh()
        session = scene.tps.ensure_session()
        lesion = session.next_lesion("Tumour A")
        markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "prompt")
        markups.AddControlPointWorld(*world_centre_ras(scene.volumes[0], CENTRES_KJI[0]))
        scene.jobs.track([scene.prompts.from_point(session, lesion, scene.volumes[0].GetID(), markups)], settings())
        deadline = time.monotonic() + 180
        while scene.jobs.tick():
            assert time.monotonic() < deadline, scene.jobs.progress
            time.sleep(0.1)
        assert scene.jobs.outcome.ok, scene.jobs.outcome.message
        from LinGuinELib.core.tracking import LesionPrompt, Tracker

        s = settings()  # the in-process result of the same prompt is what the scene must show
        source = session.study.scan(scene.volumes[0].GetName())
        expected = Tracker(session.study, s.make_registration(), s.make_segmenter(), **s.tracker_options()).track(
            [LesionPrompt(lesion, source.scan_id, point_lps=session.observations[lesion.lesion_id][source.scan_id].point_lps)])
        assert session.observations[lesion.lesion_id][source.scan_id].status == "source"
        for volume in scene.volumes:
            label = volume.GetName()
            want = expected.observation(lesion.lesion_id, label)
            assert session.observations[lesion.lesion_id][label].status == want.status
            mask = scene.results.mask(lesion.lesion_id, label)
            assert np.array_equal(mask, want.mask if want.mask is not None else np.zeros_like(mask))
        assert scene.results.mask(lesion.lesion_id, source.scan_id).any()
    finally:
        scene.jobs.reset()
        connection.shutdown()
    assert not connection.service.alive()  # the module's cleanup stops the local service


def test_the_study_is_sent_to_the_engine_one_scan_per_timer_tick(scene):
    """No GUI tick waits for a whole study: each uploads at most one scan, then the job is submitted."""
    scene.tps.refresh()
    session = scene.tps.ensure_session()
    markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "p")
    markups.AddControlPointWorld(*world_centre_ras(scene.volumes[0], CENTRES_KJI[0]))
    scene.jobs.track([scene.prompts.from_point(session, session.next_lesion(), scene.volumes[0].GetID(), markups)],
                     settings())
    calls = scene.connection.client.calls
    per_tick = []
    while scene.jobs.tick():
        per_tick.append(sum(1 for c in calls if c[0] == "upload"))
    uploads = [c[1] for c in calls if c[0] == "upload"]
    assert uploads == session.study.scan_ids
    assert all(b - a <= 1 for a, b in zip([0] + per_tick, per_tick))
    assert scene.jobs.outcome.ok and calls.index(("open_study", session.study.scan_ids)) > calls.index(("upload", uploads[-1]))
