"""Tracker behaviour with deterministic fake backends: propagation, statuses, options, caching, overlaps."""

import datetime as dt

import numpy as np
import pytest

from conftest import make_scan
from fakes import ShiftRegistration, ThresholdSegmenter
from LinGuinELib.core.errors import InputError, TrackingCancelled
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.study import Scan, Study
from LinGuinELib.core.tracking import (FOUND, NOT_FOUND, OUTSIDE_FOV, SOURCE, LesionPrompt, Tracker,
                                  interior_centre, select_component)


def moving_study(n=4, step_mm=2.0):
    """Scans whose lesion 1 moves +step_mm in x (i) per timepoint; lesion 2 stays put."""
    scans = [make_scan(f"t{i}", dt.datetime(2020, 1 + i, 1),
                       blobs=(((10, 20, 20 + int(i * step_mm)), 5.0), ((10, 8, 30), 3.0)), seed=i)
             for i in range(n)]
    offsets = {f"t{i}": np.array([i * step_mm, 0, 0]) for i in range(n)}
    return Study("p1", scans), offsets


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_interior_centre_lies_inside_l_shape_and_crescent():
    scan = make_scan(shape=(5, 40, 40), spacing=(1, 1, 1), blobs=())
    l_shape = np.zeros(scan.shape, bool)
    l_shape[1:4, 2:38, 2:6] = True
    l_shape[1:4, 34:38, 2:38] = True
    crescent = np.zeros(scan.shape, bool)
    jj, ii = np.mgrid[:40, :40]
    ring = ((jj - 20) ** 2 + (ii - 20) ** 2 <= 15 ** 2) & ((jj - 20) ** 2 + (ii - 24) ** 2 > 13 ** 2)
    crescent[1:4] = ring
    for mask in (l_shape, crescent):
        centre = interior_centre(mask, scan)
        com = scan.kji_to_lps(np.argwhere(mask).mean(0).reshape(1, 3))[0]
        assert mask[scan.nearest_voxel(centre)], "interior centre must lie inside the lesion"
        assert not mask[scan.nearest_voxel(com)], "the test shapes must have their centre of mass outside"


def test_interior_centre_is_spacing_aware():
    # a slab 3 voxels thick in k at 5 mm spacing, 11x11 voxels at 0.5 mm: thickest direction is k
    scan = make_scan(shape=(9, 30, 30), spacing=(0.5, 0.5, 5.0), blobs=())
    mask = np.zeros(scan.shape, bool)
    mask[3:6, 5:16, 5:16] = True
    k, j, i = scan.nearest_voxel(interior_centre(mask, scan))
    assert (k, j, i) == (4, 10, 10)


def test_interior_centre_of_empty_mask_is_a_clear_error():
    scan = make_scan()
    with pytest.raises(InputError, match="empty"):
        interior_centre(np.zeros(scan.shape, bool), scan)


def test_select_component_prefers_containing_then_nearest_within_radius():
    scan = make_scan(shape=(1, 1, 60), spacing=(1, 1, 1), blobs=())
    mask = np.zeros(scan.shape, bool)
    mask[0, 0, 10:15] = True  # component A, 10..14
    mask[0, 0, 30:40] = True  # component B, 30..39
    at = lambda i: scan.kji_to_lps(np.array([[0, 0, i]]))[0]
    assert select_component(mask, at(12), scan, 10)[0, 0, 12]
    near_b = select_component(mask, at(25), scan, 10)
    assert near_b[0, 0, 30] and not near_b[0, 0, 12]
    assert not select_component(mask, at(50), scan, 10).any(), "nothing within 10 mm -> empty"
    assert select_component(mask, at(50), scan, 11)[0, 0, 39]


def test_track_follows_moving_lesion_forward_and_backward():
    study, offsets = moving_study()
    for source in ("t0", "t3", "t1"):
        seg = ThresholdSegmenter()
        tracker = Tracker(study, ShiftRegistration(offsets), seg)
        result = tracker.track([LesionPrompt(Lesion(1), source, mask=study.scan(source).label == 1)])
        for scan in study:
            obs = result.observation(1, scan.scan_id)
            assert obs.status == (SOURCE if scan.scan_id == source else FOUND)
            assert dice(obs.mask, scan.label == 1) > 0.99


def test_registrations_are_computed_once_per_pair_for_all_lesions():
    study, offsets = moving_study()
    reg = ShiftRegistration(offsets)
    tracker = Tracker(study, reg, ThresholdSegmenter())
    prompts = [LesionPrompt(Lesion(1), "t1", mask=study.scan("t1").label == 1),
               LesionPrompt(Lesion(2), "t1", mask=study.scan("t1").label == 2),
               LesionPrompt(Lesion(3), "t1", point_lps=study.scan("t1").kji_to_lps(np.array([[10, 20, 22]]))[0])]
    result = tracker.track(prompts)
    assert result.stats["registration_calls"] == len(study) - 1 == len(reg.pairs)
    assert sorted(reg.pairs) == [("t1", "t0"), ("t1", "t2"), ("t1", "t3")]
    assert result.stats["segmentation_calls"] == 3 * (len(study) - 1) + 1  # + the click on the source
    again = tracker.track([LesionPrompt(Lesion(4), "t1", mask=study.scan("t1").label == 2)])
    assert again.stats["registration_calls"] == 0, "a second lesion costs only segmentation"


def test_chain_mode_propagates_scan_to_scan():
    study, offsets = moving_study(n=5)
    reg = ShiftRegistration(offsets)
    result = Tracker(study, reg, ThresholdSegmenter(), chain=True).track(
        [LesionPrompt(Lesion(1), "t2", mask=study.scan("t2").label == 1)])
    assert sorted(reg.pairs) == [("t1", "t0"), ("t2", "t1"), ("t2", "t3"), ("t3", "t4")]
    assert [result.observation(1, s).propagated_from for s in study.scan_ids] == ["t1", "t2", None, "t2", "t3"]
    assert all(result.observation(1, s.scan_id).found for s in study)


def test_outside_fov_and_not_found_statuses():
    study, offsets = moving_study(n=3)
    offsets["t2"] = np.array([500.0, 0, 0])  # maps far outside t2
    scans = study.scans
    scans[1] = Scan("t1", np.where(scans[1].label == 1, -700, scans[1].array).astype(np.float32), scans[1].origin,
                    scans[1].spacing, scans[1].direction, scans[1].date, np.where(scans[1].label == 1, 0, scans[1].label))
    result = Tracker(Study("p", scans), ShiftRegistration(offsets), ThresholdSegmenter()).track(
        [LesionPrompt(Lesion(1), "t0", mask=scans[0].label == 1)])
    assert result.observation(1, "t1").status == NOT_FOUND and result.observation(1, "t1").mask is None
    assert result.observation(1, "t2").status == OUTSIDE_FOV
    assert not result.label_map("t1").any() and not result.label_map("t2").any()


def test_boost_reprompts_at_mask_centre_with_a_fresh_call():
    study, offsets = moving_study(n=2)
    offsets["t1"] = offsets["t1"] + np.array([0, 3.0, 0])  # propagated point off-centre by 3 mm
    seg = ThresholdSegmenter()
    result = Tracker(study, ShiftRegistration(offsets), seg, boost=True).track(
        [LesionPrompt(Lesion(1), "t0", mask=study.scan("t0").label == 1)])
    obs = result.observation(1, "t1")
    assert len(seg.calls) == 2
    centre_kji = study.scan("t1").nearest_voxel(obs.point_lps)
    assert centre_kji == (10, 20, 22), "boost re-prompts at the interior centre of the first mask"
    assert study.scan("t1").nearest_voxel(obs.propagated_lps) == (10, 23, 22), "the mapped point is kept too"


def test_overlap_rule_gives_contested_voxels_to_nearest_prompt_then_lower_id():
    scan = make_scan(shape=(1, 1, 21), spacing=(1, 1, 1), blobs=())
    study = Study("p", [scan, make_scan("s1", dt.datetime(2021, 1, 1), shape=(1, 1, 21), spacing=(1, 1, 1), blobs=())])
    from LinGuinELib.core.tracking import Observation, TrackingResult

    a = np.zeros(scan.shape, bool); a[0, 0, 0:15] = True
    b = np.zeros(scan.shape, bool); b[0, 0, 6:21] = True
    at = lambda i: scan.kji_to_lps(np.array([[0, 0, i]], float))[0]
    result = TrackingResult(study, [Lesion(1), Lesion(2)])
    result.observations = {1: {"s0": Observation(1, "s0", FOUND, at(4), a)},
                           2: {"s0": Observation(2, "s0", FOUND, at(16), b)}}
    labels = result.label_map("s0")[0, 0]
    assert list(labels[:10]) == [1] * 10 and list(labels[11:]) == [2] * 10
    assert labels[10] == 1, "equidistant voxel goes to the lower lesion id"


def test_progress_reports_and_cancel_stops_cleanly():
    study, offsets = moving_study()
    seen = []
    tracker = Tracker(study, ShiftRegistration(offsets), ThresholdSegmenter(),
                      progress=lambda m, d, t: seen.append((m, d, t)))
    tracker.track([LesionPrompt(Lesion(1), "t0", mask=study.scan("t0").label == 1)])
    assert any("registering t0 -> t2" in m for m, _, _ in seen)
    assert seen[-1][1] == seen[-1][2]
    calls = []
    cancelling = Tracker(study, ShiftRegistration(offsets), ThresholdSegmenter(),
                         cancel=lambda: len(calls) > 2, progress=lambda m, d, t: calls.append(m))
    with pytest.raises(TrackingCancelled):
        cancelling.track([LesionPrompt(Lesion(1), "t0", mask=study.scan("t0").label == 1)])


def test_prompt_errors_name_the_problem():
    study, offsets = moving_study(n=2)
    tracker = Tracker(study, ShiftRegistration(offsets), ThresholdSegmenter())
    with pytest.raises(InputError, match="outside scan 't0'"):
        tracker.track([LesionPrompt(Lesion(1), "t0", point_lps=np.array([1e4, 0, 0]))])
    with pytest.raises(InputError, match="empty"):
        tracker.track([LesionPrompt(Lesion(1), "t0", mask=np.zeros(study.scan("t0").shape, bool))])
    with pytest.raises(InputError, match="unknown scan 'nope'"):
        tracker.track([LesionPrompt(Lesion(1), "nope", mask=study.scan("t0").label == 1)])
    with pytest.raises(InputError, match="duplicate lesion ids"):
        tracker.track([LesionPrompt(Lesion(1), "t0", mask=study.scan("t0").label == 1)] * 2)


def test_resegment_changes_one_timepoint_only():
    study, offsets = moving_study(n=3)
    tracker = Tracker(study, ShiftRegistration(offsets), ThresholdSegmenter())
    result = tracker.track([LesionPrompt(Lesion(1), "t0", mask=study.scan("t0").label == 1)])
    before = {s: result.observation(1, s).mask.copy() for s in study.scan_ids}
    other = study.scan("t1").kji_to_lps(np.array([[10, 8, 30]]))  # lesion 2's blob
    obs = tracker.resegment(result, 1, "t1", other)
    assert obs.status == FOUND and dice(obs.mask, study.scan("t1").label == 2) > 0.99
    assert np.array_equal(result.observation(1, "t2").mask, before["t2"])
