"""A tracking run's outputs (LinGuinELib/io/output.py): label maps on each scan's grid, lesions.csv with the
engine's columns and summary.json, all written together or not at all."""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_scan
from fakes import ShiftRegistration, ThresholdSegmenter
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.measure import LESION_COLUMNS
from LinGuinELib.core.study import Study
from LinGuinELib.core.tracking import LesionPrompt, Tracker
from LinGuinELib.io import output


@pytest.fixture(scope="module")
def result():
    """Two scans with ids that clean to the same file name; one lesion found on both."""
    scans = [make_scan("CT/1", dt.datetime(2020, 1, 1), blobs=(((10, 20, 20), 5.0),)),
             make_scan("CT:1", dt.datetime(2020, 3, 1), blobs=(((10, 22, 20), 6.0),), seed=1)]
    study = Study("p", scans)
    prompt = LesionPrompt(Lesion(1, "Nodule"), "CT/1", point_lps=scans[0].kji_to_lps([[10, 20, 20]])[0])
    return Tracker(study, ShiftRegistration({"CT/1": [0, 0, 0], "CT:1": [0, 2, 0]}), ThresholdSegmenter()).track([prompt])


def test_file_names_are_safe_and_unique():
    assert output.safe_filename("CT 2020/01:a") == "CT_2020_01_a" and output.safe_filename("..") == "scan"
    assert output.label_map_names(["CT/1", "CT:1", "ct_1"]) == {"CT/1": "CT_1.nii.gz", "CT:1": "CT_1_2.nii.gz",
                                                                "ct_1": "ct_1_3.nii.gz"}


def test_outputs_of_a_run(result, tmp_path):
    written = output.write_tracking_outputs(result, tmp_path / "out", extra_summary={"registration": "shift"})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["CT_1.nii.gz", "CT_1_2.nii.gz", "lesions.csv",
                                                                   "summary.json"]
    for scan in result.study:
        image = sitk.ReadImage(str(written[f"label:{scan.scan_id}"]))
        assert image.GetSize() == scan.shape[::-1] and np.allclose(image.GetOrigin(), scan.origin)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), result.label_map(scan.scan_id))
        assert (sitk.GetArrayFromImage(image) == 1).sum() == (scan.label == 1).sum()  # the threshold finds the blob
    with open(written["lesions"], newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames) == LESION_COLUMNS
    assert [(r["scan_id"], r["lesion_name"], r["status"]) for r in rows] == [("CT/1", "Nodule", "source"),
                                                                            ("CT:1", "Nodule", "found")]
    assert rows[0]["change_from_baseline_pct"] == "0.000" and float(rows[1]["change_from_baseline_pct"]) > 50
    summary = json.loads(written["summary"].read_text())
    assert summary["label_maps"] == {"CT/1": "CT_1.nii.gz", "CT:1": "CT_1_2.nii.gz"}
    assert summary["registration"] == "shift" and summary["lesions"][0]["tracking_uid"] == result.lesions[0].tracking_uid


def test_a_failure_while_writing_leaves_no_partial_output(result, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lesions.csv").write_text("the last run's\n")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(output, "write_json", fail)  # the last file of the set
    with pytest.raises(OSError, match="disk full"):
        output.write_tracking_outputs(result, out)
    assert [p.name for p in out.iterdir()] == ["lesions.csv"]  # no label map of this run either
    assert (out / "lesions.csv").read_text() == "the last run's\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_csv_values_are_rounded_and_missing_ones_empty(tmp_path):
    output.write_rows_csv([{"a": 1.23456, "b": None, "c": "x", "extra": 1}], ("a", "b", "c"), tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,b,c", "1.235,,x"]
