"""Loading a patient's DICOM folder as a longitudinal study (LinGuinELib.io.dicom) and ``linguine info``.

Test series are written from the real CTs (shrunk 4x in-plane) by Testing/dicom_data.py and pass dciodvfy.
"""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from dicom_data import dciodvfy_errors, shrunk_int16_ct, third_party_seg, write_ct_series
from LinGuinELib.cli import main as cli_main
from LinGuinELib.io.dicom import load_dicom_study
from LinGuinELib.core.errors import InputError
from LinGuinELib.io.load import load_study


@pytest.fixture(scope="module")
def images(ct_dir):
    return {name: shrunk_int16_ct(ct_dir, name) for name in ("lung1", "lung2")}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, images):
    """Patient LNG-001: 2020-06-01 lung2 (folder a/), 2020-01-01 lung1 (folder b/, nested) with a
    second, derived thick-slice series in the same study, and a stray text file."""
    root = tmp_path_factory.mktemp("dicom_study")
    write_ct_series(root / "a" / "ct", images["lung2"][0], date="20200601", time="093000", series_number=5)
    study_uid = generate_uid()
    write_ct_series(root / "b" / "x" / "ct", images["lung1"][0], study_uid=study_uid, series_number=2)
    write_ct_series(root / "b" / "thick", images["lung1"][0], study_uid=study_uid, series_number=3,
                    series_description="CT chest thick", image_type=("DERIVED", "SECONDARY", "AXIAL"),
                    slices=range(0, 48, 2))
    (root / "notes.txt").write_text("not DICOM")
    return root


def copy_study(study_dir, tmp_path):
    dest = tmp_path / "study"
    shutil.copytree(study_dir, dest)
    return dest


def test_timepoints_ordered_with_primary_series_chosen_and_logged(study_dir, images):
    logs = []
    study = load_dicom_study(study_dir, log=logs.append)
    assert study.patient_id == "LNG-001"
    # both primary series are called "CT chest": ids fall back to <date>_<SeriesNumber>
    assert study.scan_ids == ["2020-01-01_2", "2020-06-01_5"]
    assert [s.date for s in study] == [dt.datetime(2020, 1, 1, 12), dt.datetime(2020, 6, 1, 9, 30)]
    chosen = [m for m in logs if "2020-01-01_2" in m and "chose" in m][0]
    assert "series 2 'CT chest' (48 slices, ORIGINAL/PRIMARY, axial)" in chosen
    assert "not chosen: series 3 'CT chest thick' (24 slices, DERIVED/SECONDARY, axial)" in chosen
    assert study.scans[0].meta["dicom"]["selection"] in chosen
    assert any("not DICOM" in m for m in logs)
    for scan, name in zip(study, ("lung1", "lung2")):
        image = images[name][0]
        np.testing.assert_array_equal(scan.array, sitk.GetArrayFromImage(image))
        np.testing.assert_allclose(scan.origin, image.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(scan.spacing, image.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(scan.direction, np.eye(3), atol=1e-6)


def test_meta_keeps_uids_and_files_in_slice_order(study_dir):
    study = load_dicom_study(study_dir, log=lambda m: None)
    scan = study.scans[0]
    meta = scan.meta["dicom"]
    assert len(meta["files"]) == len(meta["SOPInstanceUIDs"]) == scan.shape[0]
    for k in (0, 17, scan.shape[0] - 1):
        ds = pydicom.dcmread(meta["files"][k], stop_before_pixels=True)
        assert ds.SOPInstanceUID == meta["SOPInstanceUIDs"][k]
        assert ds.SeriesInstanceUID == meta["SeriesInstanceUID"]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], scan.kji_to_lps([k, 0, 0]), atol=1e-3)
    assert meta["StudyInstanceUID"] and meta["FrameOfReferenceUID"] and meta["PatientID"] == "LNG-001"
    assert [s["SeriesNumber"] for s in meta["other_series"]] == [3]
    assert meta["other_series"][0]["SeriesInstanceUID"]


def test_source_by_date_and_info_command(study_dir, capsys):
    study = load_study(study_dir)
    assert study.resolve("2020-06-01").scan_id == "2020-06-01_5"
    assert cli_main(["info", str(study_dir)]) == 0
    out = capsys.readouterr().out
    assert "patient LNG-001: 2 timepoints" in out
    line = next(row for row in out.splitlines() if "2020-01-01_2" in row)
    assert "128x128x48" in line and "2.28x2.28x5" in line and "series 2 'CT chest'" in line


def test_info_lists_study_csv(ct_dir, tmp_path, capsys):
    csv = tmp_path / "study.csv"
    csv.write_text("patient_id,scan_id,date,image,label\n"
                   f"P1,late,2021-05-02,{ct_dir / 'lung2_image.nrrd'},{ct_dir / 'lung2_label.nrrd'}\n"
                   f"P1,early,2021-01-02,{ct_dir / 'lung1_image.nrrd'},\n")
    assert cli_main(["info", str(csv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "patient P1: 2 timepoints"
    assert lines[2].split()[:3] == ["1", "early", "2021-01-02"] and "512x512x48" in lines[2]
    assert "512x512x61" in lines[3] and "0.627x0.627x5" in lines[3] and "lesion ids [1]" in lines[3]


def test_unique_descriptions_become_ids_and_missing_optional_tags_are_tolerated(tmp_path, images):
    """Type 3 tags absent and Type 2 tags empty (names, ids, series number, times) still load."""

    def strip(k, ds):
        for keyword in ("SeriesDate", "SeriesTime", "SliceLocation", "ContentDate", "ContentTime"):
            delattr(ds, keyword)
        ds.PatientName = ds.PatientID = ds.StudyTime = ds.KVP = ""
        ds.SeriesNumber = None

    write_ct_series(tmp_path / "1", images["lung1"][0], patient_id="P9", series_description="baseline CT",
                    slices=range(20, 30))
    write_ct_series(tmp_path / "2", images["lung2"][0], patient_id="P9", series_description="follow-up/CT",
                    date="20200301", slices=range(10, 20))
    write_ct_series(tmp_path / "3", images["lung2"][0], patient_id="", patient_name="", series_description=None,
                    date="20200401", slices=range(0, 5), edit=strip)
    study = load_dicom_study(tmp_path, log=lambda m: None)
    assert study.scan_ids == ["baseline_CT", "follow-up_CT", "2020-04-01"]
    assert study.scans[2].date == dt.datetime(2020, 4, 1) and study.scans[2].shape == (5, 128, 128)
    assert study.scans[2].meta["dicom"]["SeriesNumber"] is None
    assert dciodvfy_errors(sorted((tmp_path / "3").glob("*.dcm"))[:1]) == []


def test_mixed_patients_rejected(study_dir, tmp_path, images):
    root = copy_study(study_dir, tmp_path)
    write_ct_series(root / "other", images["lung1"][0], patient_id="SOMEONE-ELSE", slices=range(3))
    with pytest.raises(InputError, match=r"several patients.*'LNG-001'.*'SOMEONE-ELSE' \(3 files, e.g. .*other"):
        load_dicom_study(root, log=lambda m: None)


def test_missing_slice_rejected_naming_the_files(study_dir, tmp_path):
    root = copy_study(study_dir, tmp_path)
    (root / "a" / "ct" / "0031.dcm").unlink()
    with pytest.raises(InputError, match=r"a/ct/0032\.dcm: 10\.000 mm from the previous slice .*a/ct/0030\.dcm.*"
                                         r"spaced 5\.000 mm \(missing slice"):
        load_dicom_study(root, log=lambda m: None)


def test_inconsistent_orientation_rejected_naming_the_file(tmp_path, images):
    def tilt(k, ds):
        if k == 4:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0.9848", "-0.17365"]

    write_ct_series(tmp_path / "p", images["lung1"][0], slices=range(8), edit=tilt)
    write_ct_series(tmp_path / "q", images["lung2"][0], slices=range(8), date="20210101")
    with pytest.raises(InputError, match=r"p/0005\.dcm: ImageOrientationPatient .* differs from .*p/0001\.dcm.*"
                                         "inconsistent orientation"):
        load_dicom_study(tmp_path, log=lambda m: None)


def test_non_image_dicom(study_dir, tmp_path, ct_dir):
    """A CT file without pixels is an error naming it; a SEG in the folder is skipped and logged; a folder
    holding no CT at all is an error that says what it found."""
    root = copy_study(study_dir, tmp_path)
    seg_path = third_party_seg(ct_dir, tmp_path / "seg")
    seg = pydicom.dcmread(seg_path)
    seg.PatientID = "LNG-001"
    seg.save_as(root / "b" / "seg.dcm")
    logs = []
    assert len(load_dicom_study(root, log=logs.append)) == 2
    assert any("skipped non-CT DICOM object" in m and "seg.dcm (SEG, Segmentation Storage)" in m for m in logs)

    only_seg = tmp_path / "only_seg"
    only_seg.mkdir()
    shutil.copy(seg_path, only_seg / "x.dcm")
    with pytest.raises(InputError, match=r"only_seg: no CT image series found; found only: .*x\.dcm \(SEG"):
        load_dicom_study(only_seg, log=lambda m: None)

    bad = root / "a" / "ct" / "0007.dcm"
    ds = pydicom.dcmread(bad)
    del ds.PixelData
    ds.save_as(bad)
    with pytest.raises(InputError, match=r"a/ct/0007\.dcm: CT file holds no pixel data"):
        load_dicom_study(root, log=lambda m: None)


def test_test_series_pass_dciodvfy(study_dir):
    files = sorted(study_dir.rglob("*.dcm"))
    assert len(files) == 48 + 24 + 61
    assert dciodvfy_errors(files) == []
