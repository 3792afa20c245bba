"""Study loading, validation and the clear errors for every kind of bad input."""

import datetime as dt

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_scan, write_study
from LinGuinELib.core.errors import InputError
from LinGuinELib.core.study import Scan, Study, load_label_map, parse_date, read_image
from LinGuinELib.io.load import load_study


def three_scans():
    return [make_scan(f"s{i}", dt.datetime(2020, 3 - i, 1), seed=i) for i in range(3)]


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_study_csv_loads_every_format_in_date_order(tmp_path, ext):
    csv_path = write_study(tmp_path, three_scans(), ext=ext)
    study = load_study(csv_path)
    assert study.scan_ids == ["s2", "s1", "s0"], "scans are ordered by date, not by csv row"
    assert study.patient_id == "p1"
    s = study.scan("s0")
    assert s.shape == (20, 40, 40) and np.allclose(s.spacing, (1, 1, 2)) and s.label.max() == 1
    assert load_study(tmp_path).scan_ids == study.scan_ids, "a folder holding study.csv loads too"


def test_dicom_series_folder_loads_as_image(tmp_path):
    scan = make_scan(blobs=())
    image = sitk.Cast(scan.to_sitk(), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.999"
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        for tag, value in (("0020|000e", series_uid), ("0008|0060", "CT"),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k + 1))):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"{k:03d}.dcm"))
        writer.Execute(sl)
    read = read_image(tmp_path)
    assert read.GetSize() == image.GetSize() and np.allclose(read.GetSpacing(), (1, 1, 2))


def test_dates_parse_in_common_forms_and_fail_clearly():
    assert parse_date("2021-03-04", "x") == dt.datetime(2021, 3, 4)
    assert parse_date("20210304", "x") == dt.datetime(2021, 3, 4)
    assert parse_date("20210304101500.123", "x") == dt.datetime(2021, 3, 4, 10, 15)
    with pytest.raises(InputError, match=r"scan 'b'.*'March 4th'"):
        parse_date("March 4th", "scan 'b'")


def test_unparseable_date_in_csv_names_the_scan(tmp_path):
    csv_path = write_study(tmp_path, three_scans(), dates=["2020-01-01", "next week", "2020-03-01"])
    with pytest.raises(InputError, match=r"line 3 \(scan 's1'\).*'next week'"):
        load_study(csv_path)


def test_one_scan_and_duplicate_ids_are_rejected(tmp_path):
    scans = three_scans()
    with pytest.raises(InputError, match="at least 2 scans, got 1"):
        Study("p", scans[:1])
    scans[2].scan_id = "s0"
    with pytest.raises(InputError, match="duplicate scan id 's0'"):
        Study("p", scans)


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(InputError, match="nothere.csv: file not found"):
        load_study(tmp_path / "nothere.csv")
    csv_path = write_study(tmp_path, three_scans())
    (tmp_path / "s1.nii.gz").unlink()
    with pytest.raises(InputError, match=r"s1\.nii\.gz: file not found"):
        load_study(csv_path)
    (tmp_path / "s1.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"s1\.nii\.gz: cannot read image"):
        load_study(csv_path)


def test_missing_columns_and_mixed_patients_are_rejected(tmp_path):
    bad = tmp_path / "study.csv"
    bad.write_text("patient,scan,when\n1,a,2020-01-01\n")
    with pytest.raises(InputError, match="missing column"):
        load_study(bad)
    csv_path = write_study(tmp_path / "x", three_scans())
    text = csv_path.read_text().replace("p1,s1", "p2,s1")
    csv_path.write_text(text)
    with pytest.raises(InputError, match="one study is one patient"):
        load_study(csv_path)


@pytest.mark.parametrize("shape", [(40, 40), (2, 10, 10, 10)])
def test_2d_and_4d_images_are_rejected(tmp_path, shape):
    path = tmp_path / "bad.nrrd"
    arr = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(path))
    with pytest.raises(InputError, match=r"bad\.nrrd: expected a 3-D image"):
        Scan.from_sitk(read_image(path), "x", dt.datetime(2020, 1, 1), source_path=str(path))


def test_constant_and_nan_images_are_rejected():
    with pytest.raises(InputError, match="constant"):
        Scan("c", np.zeros((4, 4, 4)), (0, 0, 0), (1, 1, 1), np.eye(3), dt.datetime(2020, 1, 1))
    arr = np.random.default_rng(0).normal(size=(4, 4, 4))
    arr[1, 1, 1] = np.nan
    with pytest.raises(InputError, match="scan 'n'.*NaN"):
        Scan("n", arr, (0, 0, 0), (1, 1, 1), np.eye(3), dt.datetime(2020, 1, 1))


def test_label_map_with_other_geometry_is_rejected(tmp_path):
    csv_path = write_study(tmp_path, three_scans())
    scan = load_study(csv_path).scan("s1")
    shifted = scan.to_sitk(scan.label.astype(np.uint8))
    shifted.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(tmp_path / "s1_label.nii.gz"))
    with pytest.raises(InputError, match=r"s1_label\.nii\.gz: geometry does not match.*origin"):
        load_study(csv_path)
    with pytest.raises(InputError, match="geometry does not match scan 's1'"):
        load_label_map(tmp_path / "s1_label.nii.gz", scan)


def test_resolve_by_id_position_and_date():
    study = Study("p", three_scans())
    assert study.resolve("s1").scan_id == "s1"
    assert study.resolve("first").scan_id == "s2" and study.resolve("last").scan_id == "s0"
    assert study.resolve("middle").scan_id == "s1"
    assert study.resolve("2020-02-01").scan_id == "s1"
    with pytest.raises(InputError, match="unknown scan 'zz'.*s2, s1, s0"):
        study.resolve("zz")


def test_single_dicom_file_as_study_says_give_the_folder(tmp_path):
    path = tmp_path / "slice.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(InputError, match=r"slice\.dcm: a single DICOM file is not a study; give the folder"):
        load_study(path)
