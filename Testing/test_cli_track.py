"""``linguine track`` end to end on small studies: outputs, prompts, and clean failure on bad input."""

import csv
import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_scan, write_study
from LinGuinELib.core import coords
from LinGuinELib.cli import main

FAST = ["--registration", "identity", "--segmentation", "threshold"]


@pytest.fixture
def study_csv(tmp_path, fake_backends):
    scans = [make_scan(f"t{i}", dt.datetime(2020, 1 + 2 * i, 1), blobs=(((10, 20, 20), 5.0 + i), ((10, 8, 30), 3.0)),
                       seed=i) for i in range(3)]
    return write_study(tmp_path / "study", scans)


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_track_from_a_mask_on_the_last_scan_writes_all_outputs(study_csv, tmp_path):
    out = tmp_path / "out"
    rc = main(["track", str(study_csv), "--source", "t2", "--mask", str(study_csv.parent / "t2_label.nii.gz"),
               "--out", str(out)] + FAST)
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["lesions.csv", "summary.json", "t0.nii.gz", "t1.nii.gz",
                                                     "t2.nii.gz"]
    rows = read_rows(out / "lesions.csv")
    assert [(r["lesion_id"], r["scan_id"], r["status"]) for r in rows] == [
        ("1", "t0", "found"), ("1", "t1", "found"), ("1", "t2", "source"),
        ("2", "t0", "found"), ("2", "t1", "found"), ("2", "t2", "source")]
    vols = [float(r["volume_ml"]) for r in rows[:3]]
    assert vols[0] < vols[1] < vols[2], "the growing lesion's volume grows"
    assert float(rows[1]["change_from_baseline_pct"]) > 0
    t0 = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "t0.nii.gz")))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(study_csv.parent / "t0_label.nii.gz")))
    assert np.array_equal(t0, truth), "label map on the scan's own grid with lesion ids as values"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registration_calls"] == 2 and summary["segmentation_calls"] == 4
    assert summary["registration"] == "identity" and set(summary["seconds"]) >= {"registration", "segmentation"}
    uids = {l["lesion_id"]: l["tracking_uid"] for l in summary["lesions"]}
    assert len(set(uids.values())) == 2


def test_point_prompts_in_lps_ras_and_ijk_agree(study_csv, tmp_path):
    scan_matrix = np.diag([1.0, 1.0, 2.0, 1.0])
    lps = coords.ijk_to_lps(np.array([20.0, 20.0, 10.0]), scan_matrix)
    ras = coords.lps_to_ras(lps)
    results = []
    for flag, value in (("--point", lps), ("--point-ras", ras), ("--point-ijk", [20, 20, 10])):
        out = tmp_path / flag.strip("-")
        assert main(["track", str(study_csv), "--source", "t1", flag, *map(str, value), "--out", str(out)] + FAST) == 0
        results.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "t0.nii.gz"))))
    assert results[0].sum() > 0
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_two_points_are_two_lesions_with_given_ids(study_csv, tmp_path):
    out = tmp_path / "o"
    rc = main(["track", str(study_csv), "--source", "2020-03-01", "--point-ijk", "20", "20", "10", "--point-ijk", "30",
               "8", "10", "--lesion-id", "7", "--lesion-id", "9", "--name", "liver met", "--out", str(out)] + FAST)
    assert rc == 0
    rows = read_rows(out / "lesions.csv")
    assert {r["lesion_id"] for r in rows} == {"7", "9"}
    assert {r["lesion_name"] for r in rows if r["lesion_id"] == "7"} == {"liver met"}


@pytest.mark.parametrize("args, message", [
    (["--source", "t1", "--point", "1000", "0", "0"], "lies outside scan 't1'"),
    (["--source", "t1", "--mask", "{d}/t1_label.nii.gz", "--lesion-id", "5"], "lesion id 5 is not in the mask"),
    (["--source", "t9", "--point", "1", "1", "1"], "unknown scan 't9'"),
    (["--source", "t1", "--mask", "{d}/missing.nii.gz"], "missing.nii.gz: file not found"),
    (["--source", "t1"], "give a prompt"),
])
def test_bad_prompts_fail_with_a_message_and_no_output(study_csv, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    args = [a.format(d=study_csv.parent) for a in args]
    assert main(["track", str(study_csv), *args, "--out", str(out)] + FAST) == 2
    assert message in capsys.readouterr().err
    assert not out.exists(), "nothing partial under --out"


def test_empty_mask_is_rejected(study_csv, tmp_path, capsys):
    empty = tmp_path / "empty.nii.gz"
    ref = sitk.ReadImage(str(study_csv.parent / "t1_label.nii.gz"))
    blank = sitk.Image(ref.GetSize(), sitk.sitkUInt8)
    blank.CopyInformation(ref)
    sitk.WriteImage(blank, str(empty))
    assert main(["track", str(study_csv), "--source", "t1", "--mask", str(empty), "--out", str(tmp_path / "o")] + FAST) == 2
    assert "the mask is empty" in capsys.readouterr().err


def test_every_command_has_help_and_module_entry_point_runs():
    from LinGuinELib.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {__import__(f"LinGuinELib.commands.{m}", fromlist=["NAME"]).NAME for m in COMMANDS}
    for name, p in sub.choices.items():
        assert p.format_help().strip(), name
    out = subprocess.run([sys.executable, "-m", "LinGuinELib", "track", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--point-ras" in out.stdout


def test_label_map_file_names_are_safe_and_unique():
    from LinGuinELib.io.output import label_map_names

    names = label_map_names(["CT 2020/01/01", "CT 2020_01_01", "../x", "ok-1"])
    assert names == {"CT 2020/01/01": "CT_2020_01_01.nii.gz", "CT 2020_01_01": "CT_2020_01_01_2.nii.gz",
                     "../x": "x.nii.gz", "ok-1": "ok-1.nii.gz"}


def _break_one_scan(csv_path, how):
    """Damage a written study in one of the ways a user's data can be wrong."""
    folder = csv_path.parent
    if how == "one scan":
        lines = csv_path.read_text().splitlines()
        csv_path.write_text("\n".join(lines[:2]) + "\n")
    elif how == "duplicate ids":
        csv_path.write_text(csv_path.read_text().replace("p1,t2,", "p1,t1,"))
    elif how == "bad date":
        csv_path.write_text(csv_path.read_text().replace("2020-03-01", "soon"))
    elif how == "nan image":
        img = sitk.ReadImage(str(folder / "t1.nii.gz"))
        arr = sitk.GetArrayFromImage(img)
        arr[0, 0, 0] = np.nan
        bad = sitk.GetImageFromArray(arr)
        bad.CopyInformation(img)
        sitk.WriteImage(bad, str(folder / "t1.mha"))  # ITK's NIfTI writer would turn NaN into 0
        csv_path.write_text(csv_path.read_text().replace(",t1.nii.gz,", ",t1.mha,"))
    elif how == "label on another grid":
        lab = sitk.ReadImage(str(folder / "t1_label.nii.gz"))
        lab.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(lab, str(folder / "t1_label.nii.gz"))


@pytest.mark.parametrize("how, message", [
    ("one scan", "at least 2 scans, got 1"), ("duplicate ids", "duplicate scan id 't1'"),
    ("bad date", "cannot read date 'soon'"), ("nan image", "t1.mha): image contains NaN"),
    ("label on another grid", "t1_label.nii.gz: geometry does not match"),
])
def test_bad_studies_exit_2_with_a_named_error_and_no_output(study_csv, tmp_path, capsys, how, message):
    _break_one_scan(study_csv, how)
    out = tmp_path / "out"
    rc = main(["track", str(study_csv), "--source", "t0", "--point-ijk", "20", "20", "10", "--out", str(out)] + FAST)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
