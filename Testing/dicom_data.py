"""Test helper: write small, valid single-frame CT DICOM series (CT Image Storage) from the real NRRD CTs.

The NRRDs in ``../shared/data/ct`` are shrunk in-plane (bin-averaged) so a series is a few MB, and are
written with pydicom into temporary folders (never committed). Every file passes ``dciodvfy``.
Geometry: slice k of the returned image is file k; ImagePositionPatient is the LPS centre of voxel
(0, 0, k), ImageOrientationPatient the image's i and j direction columns.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid


def shrunk_int16_ct(ct_dir: Path, name: str, shrink: int = 4) -> tuple[sitk.Image, sitk.Image]:
    """(image int16, label uint8) of ``<name>_image.nrrd`` shrunk ``shrink`` times in i and j."""
    image = sitk.BinShrink(sitk.ReadImage(str(Path(ct_dir) / f"{name}_image.nrrd"), sitk.sitkFloat32),
                           [shrink, shrink, 1])
    image = sitk.Cast(sitk.Round(image), sitk.sitkInt16)
    label = sitk.ReadImage(str(Path(ct_dir) / f"{name}_label.nrrd"))
    label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return image, label


def _ds(value: float) -> str:
    """A decimal string that fits DICOM's 16-character DS limit."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.4e}"


def write_ct_series(out_dir: Path, image: sitk.Image, *, patient_id: str = "LNG-001",
                    patient_name: str = "Test^Patient", study_uid: str | None = None,
                    series_uid: str | None = None, frame_uid: str | None = None, date: str = "20200101",
                    time: str = "120000", series_number: int | None = 2,
                    series_description: str | None = "CT chest", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                    slices=None, edit=None) -> list[Path]:
    """Write ``image`` (int16, any orientation) as one CT series, one file per slice, into ``out_dir``.

    ``slices``: the k indices to write (default all). ``edit(k, ds)`` may change a dataset before it is
    saved (tests use it to make bad input). ``series_number``/``series_description`` None omits the tag.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    paths = []
    for n, k in enumerate(range(array.shape[0]) if slices is None else slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(image_type)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "LinGuinE test data"
        ds.ReferringPhysicianName = ""
        if series_description is not None:
            ds.SeriesDescription = series_description
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.BodyPartExamined = "CHEST"
        ds.KVP = "120"
        ds.PatientPosition = "FFS"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyID = "1"
        if series_number is not None:
            ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = n + 1
        position = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, int(k))))
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(position @ direction[:, 2]))
        ds.SliceThickness = _ds(spacing[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = array[k].tobytes()
        if edit is not None:
            edit(k, ds)
        path = out_dir / f"{n + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


THIRD_PARTY_SEG = "third_party_liver_seg.dcm"


def dcmqi_tool(name: str) -> str:
    """Path of one of dcmqi's command-line tools (PyPI dcmqi, in the test extra); skips if absent."""
    import os
    import sys

    exe = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip(f"{name} not installed (PyPI dcmqi; .ci/run installs it)")
    return exe


def third_party_seg(ct_dir: Path, tmp_dir: Path) -> Path:
    """A DICOM-SEG written by another tool: dcmqi's liver example beside the CT folder (``../shared/data``)
    when present, else one that dcmqi's ``itkimage2segimage`` writes into ``tmp_dir`` now, over a 5-slice CT
    series of 128x128 voxels at 0.81 mm, 1 mm apart, with an ellipse on slices 1-3 (dcmqi leaves out
    empty frames, as the liver example has 3 frames)."""
    path = Path(ct_dir).parent / THIRD_PARTY_SEG
    if path.is_file():
        return path
    import json

    exe = dcmqi_tool("itkimage2segimage")
    tmp_dir = Path(tmp_dir)
    rng = np.random.default_rng(3)
    ct = sitk.GetImageFromArray(rng.normal(40, 10, (5, 128, 128)).astype(np.int16))
    ct.SetSpacing((0.81, 0.81, 1.0))
    ct.SetOrigin((-50.0, -40.0, -128.7))
    write_ct_series(tmp_dir / "ct", ct, series_description="CT abdomen")
    k, j, i = np.mgrid[:5, :128, :128]
    label = (((j - 60) / 38.0) ** 2 + ((i - 66) / 45.0) ** 2 <= 1) & (k >= 1) & (k <= 3)
    label_image = sitk.GetImageFromArray(label.astype(np.uint8))
    label_image.CopyInformation(ct)
    sitk.WriteImage(label_image, str(tmp_dir / "label.nrrd"))
    code = lambda value, scheme, meaning: {"CodeValue": value, "CodingSchemeDesignator": scheme, "CodeMeaning": meaning}
    meta = {"ContentCreatorName": "Reader1", "ClinicalTrialSeriesID": "Session1", "ClinicalTrialTimePointID": "1",
            "SeriesDescription": "Segmentation", "SeriesNumber": "300", "InstanceNumber": "1",
            "segmentAttributes": [[{"labelID": 1, "SegmentDescription": "Liver", "SegmentAlgorithmType": "MANUAL",
                                    "SegmentedPropertyCategoryCodeSequence": code("123037004", "SCT", "Anatomical Structure"),
                                    "SegmentedPropertyTypeCodeSequence": code("10200004", "SCT", "Liver"),
                                    "recommendedDisplayRGBValue": [221, 130, 101]}]],
            "ContentLabel": "SEGMENTATION", "ContentDescription": "Image segmentation",
            "ClinicalTrialCoordinatingCenterName": "dcmqi"}
    (tmp_dir / "meta.json").write_text(json.dumps(meta))
    path = tmp_dir / THIRD_PARTY_SEG
    run = subprocess.run([exe, "--inputImageList", str(tmp_dir / "label.nrrd"), "--inputDICOMDirectory",
                          str(tmp_dir / "ct"), "--inputMetadata", str(tmp_dir / "meta.json"),
                          "--outputDICOM", str(path)], capture_output=True, text=True)
    assert run.returncode == 0 and path.is_file(), run.stdout + run.stderr
    return path


def dciodvfy_errors(paths) -> list[str]:
    """``Error`` lines dciodvfy prints for each file (skips the test when dciodvfy is absent)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)")
    errors = []
    for path in paths:
        run = subprocess.run([exe, str(path)], capture_output=True, text=True)
        errors += [f"{path}: {line}" for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    return errors
