"""Semi-synthetic longitudinal studies: loadable, deterministic, and their truth matches the images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from LinGuinELib.cli import main as cli_main
from LinGuinELib.core.errors import InputError
from LinGuinELib.io.load import load_study
from LinGuinELib.research.synthetic import invert_point, load_truth, make_study, true_centres


@pytest.fixture(scope="module")
def lung1_files(ct_dir, tmp_path_factory):
    """lung1 block-averaged 2x in-plane (1.14 mm, 256x256x48; the 1.4 mL nodule survives) as NRRD files."""
    folder = tmp_path_factory.mktemp("ct")
    image = sitk.BinShrink(sitk.ReadImage(str(ct_dir / "lung1_image.nrrd")), [2, 2, 1])
    label = sitk.ReadImage(str(ct_dir / "lung1_label.nrrd"))[::2, ::2, :]
    label.CopyInformation(image)
    sitk.WriteImage(image, str(folder / "ct_image.nrrd"))
    sitk.WriteImage(label, str(folder / "ct_label.nrrd"))
    return folder / "ct_image.nrrd", folder / "ct_label.nrrd"


@pytest.fixture(scope="module")
def hard_study(lung1_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return make_study(*lung1_files, out / "hard", n_scans=4, seed=5, difficulty="hard", patient_id="P1")


def test_study_loads_with_native_grid_and_irregular_dates(lung1_files, hard_study):
    study = load_study(hard_study)
    truth = load_truth(hard_study)
    baseline = sitk.ReadImage(str(lung1_files[0]))
    assert study.patient_id == "P1" and study.scan_ids == ["t0", "t1", "t2", "t3"]
    assert [s["scan_id"] for s in truth["scans"]] == study.scan_ids
    gaps = np.diff([s.date.toordinal() for s in study])
    assert np.all(gaps >= 6 * 7 - 3) and len(set(gaps)) > 1  # weeks apart, irregular
    for scan, entry in zip(study, truth["scans"]):
        assert np.allclose(scan.spacing, baseline.GetSpacing())  # native resolution kept
        assert scan.shape[1:] == baseline.GetSize()[1::-1]
        assert scan.shape[0] == baseline.GetSize()[2] - sum(entry["crop_slices"])
        assert scan.array.dtype == np.int16 and scan.label is not None
    assert any(sum(e["crop_slices"]) > 0 for e in truth["scans"][1:])  # the field of view changes
    with open(hard_study) as fh:
        assert fh.readline().strip() == "patient_id,scan_id,date,image,label"


def test_truth_matches_the_written_labels(hard_study):
    study = load_study(hard_study)
    truth = load_truth(hard_study)
    centres = true_centres(truth)
    base = truth["scans"][0]["lesions"]["1"]
    moved = []
    for scan, entry in zip(study, truth["scans"]):
        lesion = entry["lesions"]["1"]
        assert scan.label[scan.nearest_voxel(centres[scan.scan_id])] == 1  # the true centre is inside the lesion
        # the lesion's label centroid is where the truth sends the baseline centroid (5 mm slices: ~1 mm)
        assert np.linalg.norm(np.array(lesion["label_centroid_lps"]) - lesion["centroid_lps"]) < 1.5
        # volume follows the diameter factor cubed
        assert lesion["volume_ml"] == pytest.approx(base["volume_ml"] * lesion["growth"] ** 3, rel=0.3)
        moved.append(np.linalg.norm(centres[scan.scan_id] - centres["t0"]))
    assert max(moved) > 3.0  # the follow-ups really moved


def test_same_seed_same_study_other_seed_differs(lung1_files, tmp_path):
    a, b, c = (load_truth(make_study(*lung1_files, tmp_path / name, n_scans=2, seed=seed, difficulty=level))
               for name, seed, level in (("a", 6, "easy"), ("b", 6, "easy"), ("c", 7, "medium")))
    assert a["scans"] == b["scans"] and len(a["scans"]) == 2
    assert c["scans"][1]["lesions"]["1"]["centre_lps"] != a["scans"][1]["lesions"]["1"]["centre_lps"]
    assert (a["difficulty"], c["difficulty"]) == ("easy", "medium")


def test_invert_point_solves_a_known_transform():
    rigid = sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, 0.2, (5.0, -3.0, 2.0))
    tx = sitk.CompositeTransform([sitk.ScaleTransform(3, (1.1, 0.9, 1.0)), rigid])
    x = np.array([10.0, -20.0, 30.0])
    y = np.array(tx.TransformPoint(tuple(x)))
    assert np.allclose(invert_point(tx, y, y), x, atol=1e-3)


def test_bad_inputs_are_named(lung1_files, tmp_path):
    with pytest.raises(InputError, match="difficulty"):
        make_study(*lung1_files, tmp_path / "x", difficulty="extreme")
    empty = sitk.ReadImage(str(lung1_files[1])) * 0
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    with pytest.raises(InputError, match="empty.nrrd"):
        make_study(lung1_files[0], tmp_path / "empty.nrrd", tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_cli_writes_a_study(lung1_files, tmp_path, capsys):
    code = cli_main(["synth", str(lung1_files[0]), str(lung1_files[1]), "--out", str(tmp_path / "cli"), "--scans", "2",
                     "--seed", "1", "--difficulty", "easy"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "study.csv")
    assert len(load_study(tmp_path / "cli")) == 2
    with open(tmp_path / "cli" / "truth.json") as fh:
        assert json.load(fh)["seed"] == 1
    assert cli_main(["synth", str(lung1_files[0]), str(tmp_path / "missing.nrrd"), "--out", str(tmp_path / "z")]) == 2


def test_strong_level_grows_and_shrinks_to_the_extremes(lung1_files, tmp_path):
    """'strong': seed 0 grows the lesion 1.7x in diameter, seed 1 shrinks it 0.6x; the label follows."""
    for seed, factor in ((0, 1.7), (1, 0.6)):
        truth = load_truth(make_study(*lung1_files, tmp_path / f"s{seed}", n_scans=2, seed=seed, difficulty="strong"))
        first, last = (truth["scans"][t]["lesions"]["1"] for t in (0, 1))
        assert last["growth"] == factor
        assert abs((last["volume_ml"] / first["volume_ml"]) ** (1 / 3) - factor) < 0.15 * factor


def test_multi_level_holds_a_juxtapleural_and_a_soft_tissue_lesion_beside_the_real_one(lung1_files, tmp_path):
    """'multi': lesion 2 straddles the pleura (lung air on one side, chest wall near the skin on the other),
    lesion 3 lies in soft tissue; all three are labelled on the follow-up and grow or shrink to the extremes."""
    from scipy import ndimage as ndi

    csv = make_study(*lung1_files, tmp_path / "multi", n_scans=2, seed=0, difficulty="multi")
    truth = load_truth(csv)
    assert {k: v["kind"] for k, v in truth["baseline_lesions"].items()} == \
        {"1": "real", "2": "chest wall", "3": "soft tissue"}
    assert sorted(truth["scans"][1]["lesions"][k]["growth"] for k in "123") == [0.6, 1.7, 1.7]
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "multi" / "t0_image.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "multi" / "t0_label.nii.gz")))
    follow_up = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "multi" / "t1_label.nii.gz")))
    assert set(np.unique(follow_up)) == {0, 1, 2, 3}
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    air, _ = ndi.label(image < -500, structure=in_plane)  # per slice: the lungs never touch the border
    border = np.concatenate([air[:, 0].ravel(), air[:, -1].ravel(), air[:, :, 0].ravel(), air[:, :, -1].ravel()])
    outside = np.isin(air, border[border > 0])
    spacing = sitk.ReadImage(str(lung1_files[0])).GetSpacing()[::-1]
    to_skin = ndi.distance_transform_edt(~outside, sampling=spacing)
    ring = ndi.binary_dilation(label == 2, iterations=2) & (label == 0)
    assert (ring & (image < -500) & ~outside).sum() > 20  # lung beside it
    assert (ring & (image > -100)).sum() > 20  # tissue beside it
    assert to_skin[label == 2].min() < 35.0  # that tissue is the chest wall, not the mediastinum
    soft = label == 3
    assert np.median(image[soft]) > -100 and ((image[ndi.binary_dilation(soft, iterations=2) & ~soft]) < -500).mean() < 0.1
