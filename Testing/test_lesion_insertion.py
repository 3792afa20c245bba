"""Low-contrast lesions inserted into the real soft tissue of the chest CTs: the ``classic`` segmenter
finds them, says when it is unsure, and finds nothing where a lesion has disappeared."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from scipy import ndimage as ndi

from LinGuinELib.backends import make_registration
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.measure import measurement_rows
from LinGuinELib.core.study import Scan, load_study_csv, read_image
from LinGuinELib.core.tracking import NOT_FOUND, LesionPrompt, Tracker
from LinGuinELib.research.lesion_insertion import LesionShape, chest_wall_sites, insert_lesion, \
    make_inserted_study, resample, soft_tissue_sites
from LinGuinELib.segmentation.classic import ClassicSegmenter


def dice(a, b) -> float:
    return float(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def centre(mask, sp):
    depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
    return np.asarray(np.unravel_index(np.argmax(depth), mask.shape))


@pytest.fixture(scope="module")
def lung2(ct_dir):
    return Scan.from_sitk(read_image(ct_dir / "lung2_image.nrrd"), "lung2", dt.datetime(2020, 1, 1),
                          read_image(ct_dir / "lung2_label.nrrd"))


@pytest.fixture(scope="module")
def sites(lung2):
    """Six soft-tissue sites of lung2, deep enough for a 36 mm lesion, away from its tumour."""
    return soft_tissue_sites(lung2, 18.0, 6, np.random.default_rng(0), exclude=lung2.label > 0)


@pytest.fixture(scope="module")
def seg():
    return ClassicSegmenter()


def test_insertion_keeps_tissue_noise_and_records_truth(lung2, sites):
    site = sites[0]
    made, truth = insert_lesion(lung2, site, LesionShape(16.0, -40.0, "blob", 1))
    volume = truth.sum() * lung2.voxel_volume_mm3
    assert 0.6 < volume / (np.pi / 6 * 16.0 ** 3) < 1.6
    inside = made.array[truth].astype(float)
    ring = ndi.binary_dilation(truth, iterations=4) & ~ndi.binary_dilation(truth, iterations=2)
    assert np.median(made.array[ring]) - np.median(inside) == pytest.approx(40.0, abs=12.0)
    assert inside.std() > 3.0  # the scan's own noise, not a flat fill
    assert np.array_equal(made.array[~ndi.binary_dilation(truth, iterations=8)],
                          lung2.array[~ndi.binary_dilation(truth, iterations=8)])
    gone, empty = insert_lesion(lung2, site, LesionShape(16.0, -40.0, "blob", 1), scale=0.0)
    assert not empty.any() and np.array_equal(gone.array, lung2.array)


def found_and_dice(scan, sites, seg, lesions):
    """Dice per (site index, LesionShape) at scales 1 and 0.5, seeded at the truth's interior centre."""
    dices = []
    for n, shape in lesions:
        for scale in (1.0, 0.5):
            made, truth = insert_lesion(scan, sites[n], shape, scale)
            dices.append(dice(seg.segment(made, centre(truth, scan.spacing_kji)[None]), truth))
    return dices


def test_low_contrast_lesions_found_before_and_after_shrinking(lung2, sites, seg):
    """A 14 mm ellipsoid 35 HU above and an 18 mm blob 30 HU below the tissue, each shrunk to 0.5 x."""
    dices = found_and_dice(lung2, sites, seg, [(0, LesionShape(14.0, 35.0, "ellipsoid", 0)),
                                               (3, LesionShape(18.0, -30.0, "blob", 1))])
    assert all(d > 0.5 for d in dices), dices  # found: not an empty mask, not a leak (the 7 mm one once was)
    assert np.median(dices) >= 0.75, dices


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ellipsoid", "blob"])
def test_low_contrast_lesions_at_every_size(lung2, sites, seg, kind):
    """14, 18 and 36 mm lesions 30-45 HU from the tissue and each shrunk to 0.5 x (7-36 mm): all found
    with Dice > 0.5 (a 9 mm blob at site 4 once was missed), median Dice >= 0.75."""
    dices = found_and_dice(lung2, sites, seg, [(n + (3 if kind == "blob" else 0), LesionShape(d, c, kind, n))
                                               for n, (d, c) in enumerate(((14.0, 35.0), (18.0, -30.0), (36.0, 45.0)))])
    assert all(d > 0.5 for d in dices), dices
    assert np.median(dices) >= 0.75, dices


def test_thin_slices_and_coarser_pixels(lung2, sites, seg):
    """Resampled to 0.8 x 0.8 x 2 mm (a crop, for speed): a 14 mm lesion is still found."""
    site = sites[1]
    k = slice(max(int(site[0]) - 6, 0), int(site[0]) + 7)
    crop = Scan("crop", lung2.array[k], lung2.kji_to_lps(np.array([[k.start, 0, 0]]))[0], lung2.spacing,
                lung2.direction, lung2.date)
    fine = resample(crop, (0.8, 0.8, 2.0))
    where = np.rint(fine.lps_to_kji(crop.kji_to_lps(np.array([[site[0] - k.start, site[1], site[2]]])))[0])
    made, truth = insert_lesion(fine, where.astype(int), LesionShape(14.0, -35.0, "ellipsoid", 2))
    assert dice(seg.segment(made, centre(truth, fine.spacing_kji)[None]), truth) >= 0.75


def test_faint_lesion_is_returned_as_uncertain_and_clear_one_as_sure(lung2, sites, seg):
    faint, truth = insert_lesion(lung2, sites[0], LesionShape(20.0, 12.0, "ellipsoid", 0))  # 12 HU: faint
    mask, confidence = seg.segment_with_confidence(faint, centre(truth, lung2.spacing_kji)[None])
    assert dice(mask, truth) >= 0.75 and confidence == "low"
    clear, truth = insert_lesion(lung2, sites[0], LesionShape(20.0, 60.0, "ellipsoid", 0))
    mask, confidence = seg.segment_with_confidence(clear, centre(truth, lung2.spacing_kji)[None])
    assert dice(mask, truth) >= 0.75 and confidence == "high"


def test_disappeared_lesion_is_not_found_and_confidence_reaches_the_rows(lung2, sites, seg, tmp_path):
    """A study of one inserted lesion that shrinks then disappears: found, found, not_found."""
    site = sites[2]
    k = slice(max(int(site[0]) - 8, 0), int(site[0]) + 9)
    crop = Scan("crop", lung2.array[k], lung2.kji_to_lps(np.array([[k.start, 0, 0]]))[0], lung2.spacing,
                lung2.direction, lung2.date)
    csv = make_inserted_study(crop, tmp_path / "study", LesionShape(18.0, -40.0, "blob", 5),
                              (site[0] - k.start, site[1], site[2]), scales=(1.0, 0.5, 0.0))
    study = load_study_csv(csv)
    result = Tracker(study, make_registration("identity"), seg).track(
        [LesionPrompt(Lesion(1), "t0", mask=study.scans[0].label > 0)])
    obs = result.observations[1]
    assert obs["t1"].found and dice(obs["t1"].mask, study.scans[1].label > 0) >= 0.7
    assert obs["t2"].status == NOT_FOUND and obs["t2"].confidence == ""
    rows = {r["scan_id"]: r for r in measurement_rows(result)}
    assert rows["t1"]["confidence"] in ("high", "low") and rows["t2"]["confidence"] == ""
    assert result.summary()["confidence"]["1"]["t1"] == obs["t1"].confidence


@pytest.fixture(scope="module")
def lung1(ct_dir):
    return Scan.from_sitk(read_image(ct_dir / "lung1_image.nrrd"), "lung1", dt.datetime(2020, 1, 1),
                          read_image(ct_dir / "lung1_label.nrrd"))


def inserted_in_crop(scan, site, shape, spacing_xyz, scale=1.0):
    """(scan, truth, site) of ``shape`` inserted at ``site`` of a crop of ``scan`` (+-(0.8 d + 20) mm
    in k) resampled to ``spacing_xyz``: a small, real-tissue test case."""
    half = int(np.ceil((0.8 * shape.diameter_mm + 20.0) / scan.spacing_kji[0]))
    k0 = max(int(site[0]) - half, 0)
    crop = Scan("crop", scan.array[k0:int(site[0]) + half + 1], scan.kji_to_lps(np.array([[k0, 0, 0]]))[0],
                scan.spacing, scan.direction, scan.date)
    grid = resample(crop, spacing_xyz)
    where = np.rint(grid.lps_to_kji(crop.kji_to_lps(np.array([[site[0] - k0, site[1], site[2]]])))[0]).astype(int)
    made, truth = insert_lesion(grid, where, shape, scale)
    return made, truth, where


def test_lesion_at_a_tissue_interface_does_not_leak_along_partial_volume(lung2, seg):
    """A 35 mm liver-dome lesion 54 HU below the parenchyma, near the organ's edge on 2.5 mm slices:
    the partial-volume shell between parenchyma and fat has the lesion's HU; it used to join the lesion
    to the whole interface, so nothing stable was left and the lesion was not found."""
    made, truth, _ = inserted_in_crop(lung2, (25, 234, 332), LesionShape(34.7, -54.0, "ellipsoid", 0),
                                      (0.7, 0.7, 2.5))
    mask, confidence = seg.segment_with_confidence(made, centre(truth, made.spacing_kji)[None])
    assert dice(mask, truth) >= 0.85 and confidence == "high"


def test_small_shrunk_lesion_on_thin_slices_is_found(lung1, seg):
    """A 10 mm lesion 53 HU below the tissue shrunk to 5 mm, on 1.25 mm slices: its centre voxel's noise
    put it off the lesion's median HU, which used to end the search before it began."""
    shape = LesionShape(10.0, -53.0, "ellipsoid", 4)
    for scale in (1.0, 0.5):
        made, truth, _ = inserted_in_crop(lung1, (6, 342, 249), shape, (0.6, 0.6, 1.25), scale)
        assert dice(seg.segment(made, centre(truth, made.spacing_kji)[None]), truth) >= 0.75, scale


def test_point_in_plain_tissue_is_not_found(lung1, lung2, seg):
    """Where an inserted lesion has disappeared (scale 0), the point lies in plain tissue: nothing is
    returned, neither a region of the surrounding organ nor the lung path's ray-window guess."""
    for scan, site, spacing in ((lung1, (36, 312, 108), (0.8, 0.8, 2.5)), (lung2, (54, 366, 216), (0.8, 0.8, 5.0))):
        made, truth, where = inserted_in_crop(scan, site, LesionShape(13.0, -45.0, "blob", 5), spacing, 0.0)
        assert not truth.any()
        mask, confidence = seg.segment_with_confidence(made, where[None])
        assert not mask.any() and confidence == "", (scan.scan_id, site, mask.sum())


def prompts_around_centre(truth, sp, mm=3.0):
    """The truth's interior centre and the six points ``mm`` from it along the axes that stay inside."""
    middle = centre(truth, sp)
    steps = np.vstack([np.zeros(3), np.eye(3), -np.eye(3)]) * mm
    points = [np.rint(middle + step / sp).astype(int) for step in steps]
    return [p for p in points if truth[tuple(p)]]


def test_point_on_a_small_lesions_rim_finds_the_lesion(lung2, sites, seg):
    """A propagated point 3 mm off the centre of an 8 mm lesion lies on its partial-volume rim, half way
    between lesion and tissue in HU: the band around that value takes in both and used to find nothing
    (6 of these 12 points). One-sided bands from the darkest / brightest value near the point find it."""
    dices = []
    for shape in (LesionShape(8.4, -41.0, "ellipsoid", 3), LesionShape(8.0, 35.0, "blob", 7)):
        made, truth, _ = inserted_in_crop(lung2, sites[0], shape, (0.7, 0.7, 1.0))
        points = prompts_around_centre(truth, made.spacing_kji)
        assert len(points) == 7  # the centre and all six 3 mm offsets lie in the lesion
        for point in points[1:]:
            mask = seg.segment(made, point[None])
            assert (mask & truth).any(), (shape.contrast_hu, point)
            dices.append(dice(mask, truth))
    assert sum(d >= 0.6 for d in dices) >= 10, np.round(dices, 2)


def test_lesion_between_fat_and_muscle_is_found(lung1, seg):
    """An 11.5 mm lesion 29 HU below the muscle it sits in, against fat on one side (5 mm slices): the
    tissue around it is darker on one side and brighter on the other, so its median is about the
    lesion's own HU and the lesion used to be rejected as not standing out (found from 1 of 7 points;
    one point on its rim still finds nothing: its region stands out only 3 noise SDs)."""
    made, truth, _ = inserted_in_crop(lung1, (10, 282, 306), LesionShape(11.5, -29.5, "ellipsoid", 860361905),
                                      tuple(lung1.spacing))
    points = prompts_around_centre(truth, made.spacing_kji)
    dices = [dice(seg.segment(made, p[None]), truth) for p in points]
    assert len(points) == 7 and sum(d > 0.0 for d in dices) >= 6, np.round(dices, 2)
    assert np.median(dices) >= 0.6, np.round(dices, 2)


def test_small_blurred_lesion_growing_with_the_threshold_is_found(lung1, seg):
    """A 7.6 mm lesion (15 mm shrunk to 0.5 x) 32 HU below the tissue on 2.5 mm slices: blurred over a
    few voxels, its band region grows steadily with the threshold, never keeping its volume within half
    between levels, until it leaks; its radius still grows under 1 mm a level. It was found from 1 of 7
    points, the centre not among them; now it is found, as uncertain."""
    made, truth, _ = inserted_in_crop(lung1, (14, 372, 300), LesionShape(15.2, -31.9, "ellipsoid", 874268231),
                                      (0.6, 0.6, 2.5), scale=0.5)
    points = prompts_around_centre(truth, made.spacing_kji)
    results = [seg.segment_with_confidence(made, p[None]) for p in points]
    mask, confidence = results[0]  # the interior centre
    assert dice(mask, truth) >= 0.7 and confidence == "low"
    assert sum(bool((m & truth).any()) for m, _ in results) >= 4


def test_juxtapleural_lesion_is_found_whole_without_the_chest_wall(lung2, seg):
    """20 mm lesions 45 HU above the chest wall, straddling the pleura (half in lung, half in the wall; 5 mm
    slices, end slices blurred towards air), prompted at their centre: each is found whole, its wall part
    cut where it no longer stands out of the wall, not the wall itself. The first used to give a speck
    (1 % of it): its centre lies beyond the pleural envelope, so the lung path leaked into the wall and was
    rejected, and the stable region of the heterogeneous lesion was tiny."""
    sites = chest_wall_sites(lung2, 10.0, 3, np.random.default_rng(0), exclude=lung2.label > 0)
    for n in (0, 2):
        made, truth = insert_lesion(lung2, sites[n], LesionShape(20.0, 45.0, ("ellipsoid", "blob")[n % 2], n))
        mask = seg.segment(made, np.asarray(sites[n])[None])
        assert dice(mask, truth) >= 0.7, (n, dice(mask, truth))
        assert mask.sum() <= 1.3 * truth.sum(), (n, mask.sum() / truth.sum())  # no leak into the wall
