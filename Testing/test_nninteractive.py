"""nnInteractive backend on CPU with a small random-weight model folder (autozoom off, patch 64): sessions,
resets, axis order, bounds, negative points; and ``linguine track --registration unigradicon
--segmentation nninteractive`` end to end on a small real-CT study. Real-weight checks run only when
LINGUINE_WEIGHTS points at the published models."""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pytest

from conftest import local_weights

pytest.importorskip("torch", reason="deep-learning extra not installed (pip install '.[gpu]')")
pytest.importorskip("nnInteractive", reason="deep-learning extra not installed (pip install '.[gpu]')")

import SimpleITK as sitk  # noqa: E402

from LinGuinELib.core.errors import InputError, LinGuinEError  # noqa: E402
from LinGuinELib.backends.models import ModelManager  # noqa: E402
from LinGuinELib.segmentation import nninteractive as nni  # noqa: E402
from random_weights import random_gradicon_weights, random_nninteractive_folder  # noqa: E402
from LinGuinELib.core.study import Scan  # noqa: E402


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    """A weights folder laid out like the cache: <root>/nninteractive/nnInteractive_v1.0/..."""
    root = tmp_path_factory.mktemp("weights")
    random_nninteractive_folder(root / "nninteractive" / "nnInteractive_v1.0", patch_size=64)
    return root


@pytest.fixture
def spy(monkeypatch):
    """Record what reaches nnInteractive's session: images set, resets and point clicks, in order."""
    session_class = nni._session_class()
    events = []
    originals = {name: getattr(session_class, name) for name in ("set_image", "reset_interactions",
                                                                  "add_point_interaction")}

    def set_image(self, image, *args, **kwargs):
        events.append(("image", id(self), image))
        return originals["set_image"](self, image, *args, **kwargs)

    def reset(self, *args, **kwargs):
        events.append(("reset", id(self)))
        return originals["reset_interactions"](self, *args, **kwargs)

    def point(self, coordinates, include_interaction, *args, **kwargs):
        events.append(("point", id(self), tuple(coordinates), include_interaction))
        return originals["add_point_interaction"](self, coordinates, include_interaction, *args, **kwargs)

    monkeypatch.setattr(session_class, "set_image", set_image)
    monkeypatch.setattr(session_class, "reset_interactions", reset)
    monkeypatch.setattr(session_class, "add_point_interaction", point)
    return events


def segmenter(model_root, tmp_path, **kw):
    return nni.NNInteractiveSegmenter(device="cpu", weights=str(model_root), autozoom=False,
                                      models=ModelManager(home=tmp_path / "home", offline=True), **kw)


def test_one_session_per_scan_reset_before_every_prompt(model_root, tmp_path, scan_factory, spy):
    a = scan_factory("a", shape=(24, 70, 66), blobs=(((12, 30, 30), 6.0),))
    b = scan_factory("b", shape=(20, 60, 72), blobs=(((10, 25, 40), 6.0),), seed=1)
    seg = segmenter(model_root, tmp_path)
    masks = [seg.segment(a, [[12, 30, 30]]), seg.segment(a, [[12, 30, 30]]), seg.segment(b, [[10, 25, 40]]),
             seg.segment(a, [[12, 31, 30]], [[12, 10, 10]])]
    assert [m.shape for m in masks] == [a.shape, a.shape, b.shape, a.shape] and all(m.dtype == bool for m in masks)
    np.testing.assert_array_equal(masks[0], masks[1])  # the reset left no trace of the first prompt

    images = [e for e in spy if e[0] == "image"]
    assert len(images) == 2 and seg.session_count == 2  # the image is set once per scan
    for (_, _, image), scan in zip(images, (a, b)):
        assert image.shape == (1,) + scan.shape
        np.testing.assert_array_equal(image[0], scan.array)  # raw HU, axes (k, j, i), no normalisation
    kinds = [e[0] for e in spy if e[0] != "image"]
    assert kinds == ["reset", "point"] * 3 + ["reset", "point", "point"]
    points = [e[2:] for e in spy if e[0] == "point"]
    assert points[-2:] == [((12, 31, 30), True), ((12, 10, 10), False)]  # (k, j, i); correction click negative
    session_of_a = {e[1] for e in spy if e[0] == "point" and e[2] in ((12, 30, 30), (12, 31, 30))}
    assert len(session_of_a) == 1  # scan a's prompts all went to one session

    seg.forget("a")
    assert seg.session_count == 1


def test_points_outside_the_image_never_reach_the_session(model_root, tmp_path, scan_factory, spy):
    a = scan_factory("a", shape=(24, 70, 66))
    seg = segmenter(model_root, tmp_path)
    for bad in ([[24, 10, 10]], [[0, -1, 10]], [[3, 10, 66]]):
        with pytest.raises(InputError, match="outside the image"):
            seg.segment(a, bad)
        with pytest.raises(InputError, match="outside the image"):
            seg._segment(a, np.array(bad), np.zeros((0, 3), int))  # the backend's own check, not only the base's
    with pytest.raises(InputError, match="outside the image"):
        seg.segment(a, [[5, 5, 5]], [[5, 70, 5]])
    assert not [e for e in spy if e[0] == "point"]


def test_unreadable_model_folder_is_named(tmp_path, scan_factory):
    folder = tmp_path / "broken"
    random_nninteractive_folder(folder, patch_size=64, features=(4, 8, 8, 8))
    (folder / "fold_0" / nni.CHECKPOINT).write_bytes(b"truncated")
    seg = nni.NNInteractiveSegmenter(device="cpu", weights=str(folder), models=ModelManager(home=tmp_path / "h"))
    with pytest.raises(LinGuinEError, match="broken"):
        seg.segment(scan_factory("a"), [[10, 20, 20]])
    assert (folder / "fold_0" / nni.CHECKPOINT).exists()  # a user's folder is never modified


def write_study(folder, ct_dir):
    """Three timepoints of the lung2 CT: the original, a cropped copy in another scanner frame (different field
    of view: pre-aligned), and a half-resolution copy (same field of view)."""
    folder.mkdir()
    image = sitk.ReadImage(str(ct_dir / "lung2_image.nrrd"))
    full = Scan.from_sitk(image, "t0", dt.datetime(2020, 1, 1), sitk.ReadImage(str(ct_dir / "lung2_label.nrrd")))
    crop = (slice(8, 52), slice(60, 470), slice(30, 440))
    origin = full.kji_to_lps(np.array([[s.start for s in crop]], float))[0] + np.array([25.0, -40.0, 120.0])
    moved = Scan("t1", full.array[crop].copy(), origin, full.spacing, full.direction, dt.datetime(2020, 6, 1))
    half = sitk.BinShrink(image, [2, 2, 1])
    scans = [full, moved, Scan.from_sitk(half, "t2", dt.datetime(2021, 1, 1))]
    lines = ["patient_id,scan_id,date,image"]
    for scan in scans:
        sitk.WriteImage(scan.to_sitk(), str(folder / f"{scan.scan_id}.nrrd"))
        lines.append(f"lung2,{scan.scan_id},{scan.date.date().isoformat()},{scan.scan_id}.nrrd")
    (folder / "study.csv").write_text("\n".join(lines) + "\n")
    return folder / "study.csv", full


def test_track_unigradicon_nninteractive_end_to_end(model_root, tmp_path, ct_dir, monkeypatch, spy):
    from LinGuinELib.cli import main
    from LinGuinELib.registration import gradicon

    random_gradicon_weights(model_root / "unigradicon" / "Step_2_final.trch")
    monkeypatch.setattr(gradicon, "DEFAULT_INPUT_SIZE", 65)  # CPU-light grid; production is 175
    monkeypatch.setattr(nni, "DEFAULT_AUTOZOOM", False)  # random weights would zoom out for minutes
    monkeypatch.setenv("LINGUINE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LINGUINE_OFFLINE", "1")  # everything must come from --weights
    study_csv, full = write_study(tmp_path / "study", ct_dir)
    centre = full.kji_to_lps(np.argwhere(full.label > 0).mean(axis=0)[None])[0]
    out = tmp_path / "out"
    rc = main(["track", str(study_csv), "--source", "t0", "--point", *map(str, centre), "--boost",
               "--registration", "unigradicon", "--segmentation", "nninteractive", "--device", "cpu",
               "--weights", str(model_root), "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registration_calls"] == 2  # each pair once, both directions from one pass
    with open(out / "lesions.csv", newline="") as fh:
        rows = {r["scan_id"]: r for r in csv.DictReader(fh)}
    assert rows["t0"]["status"] == "source"
    # the tumour lies inside both follow-ups' fields of view (t1 after pre-alignment): never outside_fov
    assert {rows[s]["status"] for s in ("t1", "t2")} <= {"found", "not_found"}
    for scan_id, shape in (("t0", full.shape), ("t1", (44, 410, 410)), ("t2", (61, 256, 256))):
        label = sitk.ReadImage(str(out / f"{scan_id}.nii.gz"))
        voxels = int((sitk.GetArrayViewFromImage(label) == 1).sum())
        assert sitk.GetArrayViewFromImage(label).shape == shape
        # what lesions.csv says matches the label map the user opens
        assert (rows[scan_id]["status"] in ("source", "found")) == (voxels > 0), scan_id
        volume = voxels * float(np.prod(label.GetSpacing())) / 1000.0
        assert float(rows[scan_id]["volume_ml"] or 0.0) == pytest.approx(volume, abs=6e-4), scan_id  # csv: 3 decimals
    images = [e for e in spy if e[0] == "image"]
    assert len(images) == len({e[1] for e in images}) <= 3  # one session, one image per scan
    clicks = [e for e in spy if e[0] in ("reset", "point")]
    assert clicks and all(a[0] == "reset" and b[0] == "point" for a, b in zip(clicks[::2], clicks[1::2]))
    for _, sid, coordinates, include in (e for e in spy if e[0] == "point"):
        shape = next(img.shape[1:] for kind, s, img in images if s == sid)
        assert include and all(0 <= c < n for c, n in zip(coordinates, shape))


@pytest.mark.slow
@pytest.mark.weights
@pytest.mark.skipif(local_weights("nninteractive") is None, reason="needs the nnInteractive v1.0 weights: set LINGUINE_WEIGHTS "
                                                          "to a folder holding nninteractive/nnInteractive_v1.0")
def test_real_weights_segment_the_lung2_tumour(ct_dir, tmp_path):
    scan = Scan.from_sitk(sitk.ReadImage(str(ct_dir / "lung2_image.nrrd")), "lung2", dt.datetime(2020, 1, 1),
                          sitk.ReadImage(str(ct_dir / "lung2_label.nrrd")))
    truth = scan.label > 0
    seg = nni.NNInteractiveSegmenter(device="auto", models=ModelManager(offline=True))
    assert seg.license is None
    mask = seg.segment(scan, [np.round(np.argwhere(truth).mean(axis=0)).astype(int)])
    assert seg.license == "CC BY-NC-SA 4.0"
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.7
