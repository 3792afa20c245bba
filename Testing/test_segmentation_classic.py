"""The ``classic`` click-seeded segmenter on the real chest CTs and on synthetic scans."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from scipy import ndimage as ndi

from LinGuinELib.core.errors import InputError
from LinGuinELib.core.measure import dice
from LinGuinELib.segmentation import classic
from LinGuinELib.segmentation.classic import ClassicSegmenter
from LinGuinELib.core.study import Scan, read_image


def interior_centre(mask: np.ndarray, spacing_kji) -> np.ndarray:
    depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    return np.asarray(np.unravel_index(np.argmax(depth), mask.shape))


def load(ct_dir, case) -> Scan:
    return Scan.from_sitk(read_image(ct_dir / f"{case}_image.nrrd"), case, dt.datetime(2020, 1, 1),
                          read_image(ct_dir / f"{case}_label.nrrd"))


@pytest.fixture(scope="module")
def lung1(ct_dir):
    return load(ct_dir, "lung1")


@pytest.fixture(scope="module")
def lung2(ct_dir):
    return load(ct_dir, "lung2")


@pytest.fixture(scope="module")
def seg():
    return ClassicSegmenter()


def test_lung2_tumour_on_chest_wall(lung2, seg):
    ref = lung2.label > 0
    mask = seg.segment(lung2, interior_centre(ref, lung2.spacing_kji)[None])
    assert mask.shape == lung2.shape and mask.dtype == bool
    assert dice(mask, ref) >= 0.8
    # no leak into the chest wall (a leaky method returns 2-30 x the volume)
    assert mask.sum() <= 1.2 * ref.sum()
    far = ndi.distance_transform_edt(~ref, sampling=lung2.spacing_kji) > 5.0
    assert (mask & far).sum() <= 0.05 * ref.sum()


def test_lung1_small_nodule_centre_and_shifted_seeds(lung1, seg):
    ref = lung1.label > 0
    centre = interior_centre(ref, lung1.spacing_kji)
    first = seg.segment(lung1, centre[None])
    assert dice(first, ref) >= 0.7
    assert np.array_equal(seg.segment(lung1, centre[None]), first)  # calls are independent
    # a seed on the nodule's first slice (5 mm off) and one 5.7 mm off in-plane, in partial volume
    for seed in ((centre[0] - 1, centre[1], centre[2]), (centre[0], centre[1], centre[2] - 10)):
        assert ref[seed]
        assert dice(seg.segment(lung1, np.array([seed])), ref) >= 0.7, seed


def test_rim_seed_moves_into_the_core(lung1, seg):
    """A seed just outside the nodule, on its partial-volume rim, still finds the nodule."""
    ref = lung1.label > 0
    shell = ndi.binary_dilation(ref, np.ones((1, 3, 3), bool)) & ~ref
    centre = interior_centre(ref, lung1.spacing_kji)
    rim = [tuple(p) for p in np.argwhere(shell) if p[0] == centre[0]]
    seed = rim[len(rim) // 2]
    assert not ref[seed] and lung1.array[seed] < 0
    assert dice(seg.segment(lung1, np.array([seed])), ref) >= 0.7


def test_air_and_lung_parenchyma_give_no_large_mask(lung1, seg):
    ref = lung1.label > 0
    ml = lung1.voxel_volume_mm3 / 1000.0
    smooth = ndi.uniform_filter(lung1.array.astype(np.float32), size=(1, 15, 15))
    away = ndi.distance_transform_edt(~ref, sampling=lung1.spacing_kji) > 20.0
    k = int(interior_centre(ref, lung1.spacing_kji)[0])
    parenchyma = np.argwhere((smooth[k] < -800) & (lung1.array[k] < -800) & away[k])
    for j, i in parenchyma[:: max(len(parenchyma) // 5, 1)][:5]:
        assert seg.segment(lung1, np.array([[k, j, i]])).sum() * ml < 5.0
    assert not seg.segment(lung1, np.array([[k, 2, 2]])).any()  # air outside the body


def test_clicks_in_air_beside_tissue_give_no_large_mask(lung2, seg):
    """Air seeds a few mm from tissue: relocation finds tissue, but not a bounded lesion there."""
    ml = lung2.voxel_volume_mm3 / 1000.0
    for point in ((22, 480, 295),   # air just behind the patient's back
                  (53, 266, 196)):  # lung apex beside the trachea and mediastinum
        assert lung2.array[point] < -700
        assert seg.segment(lung2, np.array([point])).sum() * ml < 5.0, point


def test_result_never_exceeds_the_cap(lung2, monkeypatch):
    """Whatever is clicked (tumour, heart, tissue beside the tumour), the mask stays within
    MAX_RADIUS_MM (+2 mm, whole voxels) of the click, even for a tumour larger than that."""
    monkeypatch.setattr(classic, "MAX_RADIUS_MM", 25.0)
    capped = ClassicSegmenter()
    sp = lung2.spacing_kji
    ref = lung2.label > 0
    centre = interior_centre(ref, sp)
    tumour = capped.segment(lung2, centre[None])
    assert 0 < tumour.sum() < ref.sum()  # found, and cut where the tumour reaches beyond 25 mm
    for point, mask in ((centre, tumour), ((26, 260, 297), None), ((28, 369, 295), None)):
        mask = capped.segment(lung2, np.array([point])) if mask is None else mask
        if mask.any():
            assert (np.abs(np.argwhere(mask) - np.asarray(point)) * sp).max() <= 27.0 + sp.max(), point
            assert mask.sum() * np.prod(sp) <= 4.0 / 3.0 * np.pi * 37.5 ** 3, point


def test_synthetic_spheres(scan_factory, seg):
    for spacing, shape, centre, radius in (((1.0, 1.0, 2.0), (20, 40, 40), (10, 20, 20), 5.0),
                                           ((0.7, 0.7, 5.0), (12, 80, 80), (6, 40, 40), 8.0)):
        scan = scan_factory(shape=shape, spacing=spacing, blobs=((centre, radius),))
        assert dice(seg.segment(scan, np.array([centre])), scan.label > 0) > 0.9


def test_negative_point_cuts_off_an_attached_blob(scan_factory, seg):
    scan = scan_factory(shape=(30, 60, 60), spacing=(1.0, 1.0, 1.0),
                        blobs=(((15, 30, 25), 8.0), ((15, 30, 36), 6.0)))
    a = scan.label == 1
    kk, jj, ii = np.indices(scan.shape)
    b = (scan.label == 2) & (np.sqrt((kk - 15) ** 2 + (jj - 30) ** 2 + (ii - 25) ** 2) > 9)  # beyond A
    alone = seg.segment(scan, np.array([[15, 30, 25]]))
    assert (alone & b).sum() > 0.8 * b.sum()  # without help the attached blob is included
    for negative in ([15, 30, 36], [15, 30, 38]):  # at the blob's centre, and off it
        cut = seg.segment(scan, np.array([[15, 30, 25]]), np.array([negative]))
        assert (cut & b).sum() < 0.1 * b.sum()
        assert (cut & a).sum() > 0.95 * a.sum()


def test_each_positive_point_adds_its_lesion(scan_factory, seg):
    scan = scan_factory(shape=(20, 60, 60), spacing=(1.0, 1.0, 2.0),
                        blobs=(((10, 15, 15), 5.0), ((10, 45, 45), 5.0)))
    both = seg.segment(scan, np.array([[10, 15, 15], [10, 45, 45]]))
    assert dice(both, scan.label > 0) > 0.9


def test_bad_points_raise_input_error(scan_factory, seg):
    scan = scan_factory()
    with pytest.raises(InputError, match="outside the image"):
        seg.segment(scan, np.array([[10, 20, 99]]))
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        seg.segment(scan, np.array([[10, 20]]))
