"""The Vista3D backend (LinGuinELib/segmentation/vista3d.py) with random weights at the real architecture.

The reference is MONAI's own bundle-style pipeline, written out here from the bundle's ``inference.json``:
the image file read by MONAI's ITK reader -> Spacingd 1.5 -> CropForegroundd margin 10 -> ScaleIntensityRanged
-> Orientationd RAS -> float32; points mapped with ``inv(affine) @ original_affine``; MONAI's
``point_based_window_inferer``; logits > 0; ``Invertd`` (nearest) back to the file's grid. Our adapter builds
its tensor from a :class:`Scan` instead of the file, so equal masks check its axis order and geometry. Fast
tests use a 32^3 window (the network's smallest); the slow test uses the bundle's 128^3.
"""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
import SimpleITK as sitk  # noqa: E402
from monai import transforms as mt  # noqa: E402
from monai.apps.vista3d.inferer import point_based_window_inferer  # noqa: E402

from conftest import make_scan  # noqa: E402
from vista3d_weights import write_random_vista3d  # noqa: E402
from LinGuinELib.core.errors import InputError  # noqa: E402
from LinGuinELib.core.study import Scan, read_image  # noqa: E402
from LinGuinELib.segmentation import vista3d as v3d  # noqa: E402

RAS = (("L", "R"), ("P", "A"), ("I", "S"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_random_vista3d(tmp_path_factory.mktemp("vista3d_weights"))


@pytest.fixture(scope="module")
def segmenter(weights):
    seg = v3d.Vista3DSegmenter(device="cpu", weights=str(weights))
    seg.load()
    return seg


@pytest.fixture
def small_window(monkeypatch):
    monkeypatch.setattr(v3d, "PATCH_SIZE", (32, 32, 32))
    return (32, 32, 32)


def bundle_mask(path, points_kji, labels, network, roi):
    """MONAI's pipeline on the image file; returns the bool mask in the file's (k, j, i) array order."""
    pre = mt.Compose([
        mt.Spacingd("image", pixdim=1.5, mode="bilinear"),
        mt.CropForegroundd("image", source_key="image", margin=10, allow_smaller=True),
        mt.ScaleIntensityRanged("image", a_min=-963.8247715525971, a_max=1053.678477684517, b_min=0.0, b_max=1.0,
                                clip=True),
        mt.Orientationd("image", axcodes="RAS", labels=RAS),
        mt.CastToTyped("image", dtype=torch.float32),
    ])
    loaded = mt.LoadImaged("image", reader="ITKReader", image_only=True, ensure_channel_first=True)({"image": str(path)})
    original_affine = np.asarray(loaded["image"].affine, dtype=float)
    data = pre(loaded)
    image = data["image"]
    to_pre = np.linalg.inv(np.asarray(image.affine, dtype=float)) @ original_affine
    ijk1 = np.c_[np.asarray(points_kji, float)[:, ::-1], np.ones(len(points_kji))]
    coords = torch.as_tensor(np.rint(ijk1 @ to_pre.T)[:, :3].astype(int))[None]
    with torch.inference_mode():
        logits = point_based_window_inferer(image[None], roi, network, coords, torch.as_tensor([labels]),
                                            transpose=True)
    data["pred"] = (torch.nan_to_num(logits[0], nan=0.0) > 0).float()
    data = mt.Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(data)
    return np.asarray(data["pred"][0]).transpose(2, 1, 0) > 0.5


def real_crop(ct_dir) -> Scan:
    """A small crop of the lung2 CT around its tumour (k 12..30, j 300..430, i 290..420)."""
    image = sitk.ReadImage(str(ct_dir / "lung2_image.nrrd"))
    full = Scan.from_sitk(image, "crop", dt.datetime(2020, 1, 1))
    box = (slice(12, 30), slice(300, 430), slice(290, 420))
    origin = full.kji_to_lps(np.array([[s.start for s in box]], float))[0]
    return Scan("crop", full.array[box].copy(), origin, full.spacing, full.direction, full.date)


def check_against_bundle(segmenter, scan, tmp_path, positive, negative, roi):
    path = tmp_path / f"{scan.scan_id}.nrrd"  # NRRD keeps the geometry in double precision
    sitk.WriteImage(scan.to_sitk(), str(path))
    scan = Scan.from_sitk(read_image(path), scan.scan_id, scan.date, source_path=str(path))  # as the engine loads it
    ours = segmenter.segment(scan, np.array(positive), np.array(negative) if negative else None)
    labels = [3] * len(positive) + [2] * len(negative)
    theirs = bundle_mask(path, list(positive) + list(negative), labels, segmenter._network, roi)
    assert ours.shape == scan.shape
    assert 0 < ours.sum() < ours.size  # a real mask, not all or nothing
    np.testing.assert_array_equal(ours, theirs)
    return ours


def test_matches_monai_bundle_pipeline_on_real_ct(segmenter, small_window, ct_dir, tmp_path):
    scan = real_crop(ct_dir)
    check_against_bundle(segmenter, scan, tmp_path, [(8, 64, 66)], [(8, 20, 20)], small_window)


GEOMETRIES = {
    "anisotropic_noncubic": dict(shape=(14, 30, 44), spacing=(0.8, 1.1, 3.0), direction=np.eye(3)),
    "flipped": dict(shape=(16, 36, 28), spacing=(1.2, 0.9, 2.5), direction=np.diag([-1.0, 1.0, -1.0])),
    "oblique": dict(shape=(18, 26, 34), spacing=(1.0, 1.3, 2.0),
                    direction=sitk.VersorTransform((0.3, 0.5, 0.8), 0.6).GetMatrix()),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_axis_order_and_point_transform(segmenter, small_window, tmp_path, name):
    g = GEOMETRIES[name]
    shape = g["shape"]
    centre = tuple(n // 2 for n in shape)
    scan = make_scan(name, shape=shape, spacing=g["spacing"], origin=(10.0, -20.0, 30.0),
                     direction=np.asarray(g["direction"]).reshape(3, 3), blobs=((centre, 6.0),))
    scan.array[scan.array < -100] = 30.0  # all body: the foreground crop keeps the whole volume
    # the point transform lands on the same physical point (within half a 1.5 mm voxel per axis)
    image = segmenter._entry(scan).image
    corners = np.array([[0, 0, 0], [shape[0] - 1, 0, 3], [1, shape[1] - 1, shape[2] - 1], centre])
    mapped = v3d.kji_to_preprocessed(corners, v3d.monai_affine(scan), np.asarray(image.affine, float))
    exact = (np.linalg.inv(np.asarray(image.affine, float))
             @ np.c_[scan.kji_to_lps(corners) * [-1, -1, 1], np.ones(len(corners))].T)[:3].T
    assert np.abs(exact - mapped).max() <= 0.5 + 1e-6
    assert np.all((mapped >= 0) & (mapped < np.asarray(image.shape[1:])))
    check_against_bundle(segmenter, scan, tmp_path, [centre], [], small_window)


def test_negative_points_change_the_mask(segmenter, small_window, scan_factory, monkeypatch):
    scan = scan_factory("neg", shape=(20, 40, 40), blobs=(((10, 20, 20), 6.0),))
    alone = segmenter.segment(scan, np.array([[10, 20, 20]]))
    seen = []
    forward = segmenter._network.forward
    monkeypatch.setattr(segmenter._network, "forward",
                        lambda *a, **k: seen.append(k["point_labels"].tolist()) or forward(*a, **k))
    corrected = segmenter.segment(scan, np.array([[10, 20, 20]]), np.array([[10, 20, 30]]))
    assert seen == [[[3, 2]]] * 2  # one window per point; lesion labels: positive 3, negative 2
    assert alone.any()
    assert (alone != corrected).sum() > 100


def test_point_outside_the_scan_is_an_error(segmenter, scan_factory):
    scan = scan_factory("out")
    with pytest.raises(InputError, match=r"scan 'out': positive point .* outside the image of shape \(20, 40, 40\)"):
        segmenter.segment(scan, np.array([[10, 20, 40]]))
    with pytest.raises(InputError, match="negative point"):
        segmenter.segment(scan, np.array([[10, 20, 20]]), np.array([[-1, 0, 0]]))


def test_preprocessed_image_is_cached_per_scan(segmenter, small_window, scan_factory):
    scan = scan_factory("cache")
    segmenter.segment(scan, np.array([[10, 20, 20]]))
    image = segmenter._entry(scan).image
    segmenter.segment(scan, np.array([[10, 22, 20]]))
    assert segmenter._entry(scan).image is image
    segmenter.forget("cache")
    assert segmenter._entry(scan).image is not image


def test_lung_class_from_the_settings_runs_the_class_head(weights, small_window, scan_factory, monkeypatch):
    from LinGuinELib.frontend.settings import Settings

    seg = Settings(segmentation="vista3d", lesion_class="lung", device="cpu", weights=str(weights)).make_segmenter()
    seg.load()
    seen = []
    forward = seg._network.forward
    monkeypatch.setattr(seg._network, "forward",
                        lambda *a, **k: seen.append((k["class_vector"].tolist(), k["point_labels"].tolist()))
                        or forward(*a, **k))
    mask = seg.segment(scan_factory("lung"), np.array([[10, 20, 20]]))
    assert seen == [([[23]], [[3]])]  # lung tumour class head, lesion point label
    assert mask.any()


def test_unknown_lesion_class_is_named(weights):
    with pytest.raises(InputError, match="unknown Vista3D lesion class 'kidney'"):
        v3d.Vista3DSegmenter(device="cpu", weights=str(weights), lesion_class="kidney")


def test_track_vista3d_end_to_end(weights, small_window, tmp_path, ct_dir, monkeypatch):
    from LinGuinELib.cli import main

    monkeypatch.setenv("LINGUINE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LINGUINE_OFFLINE", "1")  # everything must come from --weights
    folder = tmp_path / "study"
    folder.mkdir()
    image = sitk.ReadImage(str(ct_dir / "lung2_image.nrrd"))
    full = Scan.from_sitk(image, "t0", dt.datetime(2020, 1, 1), sitk.ReadImage(str(ct_dir / "lung2_label.nrrd")))
    box = (slice(8, 40), slice(250, 470), slice(230, 450))
    crop = Scan("t1", full.array[box].copy(), full.kji_to_lps(np.array([[s.start for s in box]], float))[0],
                full.spacing, full.direction, dt.datetime(2020, 6, 1))
    half = Scan.from_sitk(sitk.BinShrink(image, [2, 2, 1]), "t2", dt.datetime(2021, 1, 1))
    lines = ["patient_id,scan_id,date,image"]
    for scan in (full, crop, half):
        sitk.WriteImage(scan.to_sitk(), str(folder / f"{scan.scan_id}.nrrd"))
        lines.append(f"lung2,{scan.scan_id},{scan.date.date().isoformat()},{scan.scan_id}.nrrd")
    (folder / "study.csv").write_text("\n".join(lines) + "\n")
    centre = full.kji_to_lps(np.argwhere(full.label > 0).mean(axis=0)[None])[0]
    out = tmp_path / "out"
    rc = main(["track", str(folder / "study.csv"), "--source", "t0", "--point", *map(str, centre),
               "--registration", "identity", "--segmentation", "vista3d", "--device", "cpu",
               "--weights", str(weights), "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "lesions.csv", newline="") as fh:
        rows = {r["scan_id"]: r for r in csv.DictReader(fh)}
    assert rows["t0"]["status"] == "source" and summary
    assert rows["t1"]["status"] == rows["t2"]["status"] == "found"  # random weights: half the window is positive
    for scan_id, shape in (("t0", full.shape), ("t1", crop.shape), ("t2", half.shape)):
        assert sitk.GetArrayViewFromImage(sitk.ReadImage(str(out / f"{scan_id}.nii.gz"))).shape == shape


@pytest.mark.slow
def test_matches_monai_bundle_pipeline_at_full_window(segmenter, ct_dir, tmp_path):
    scan = real_crop(ct_dir)
    check_against_bundle(segmenter, scan, tmp_path, [(8, 64, 66)], [(8, 20, 20)], v3d.PATCH_SIZE)
