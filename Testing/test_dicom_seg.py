"""DICOM-SEG export (one SEG per timepoint) and import (a SEG as a prompt), checked with independent tools:
dciodvfy (conformance), dcmqi's segimage2itkimage (read-back, Dice 1.0) and highdicom (TrackingUIDs)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_data import dciodvfy_errors, dcmqi_tool, shrunk_int16_ct, third_party_seg, write_ct_series
from LinGuinELib import __version__
from LinGuinELib.cli import main as cli_main
from LinGuinELib.io.dicom import load_dicom_study
from LinGuinELib.io.dicom_seg import export_segs, read_seg_prompt, seg_to_label_map
from LinGuinELib.core.errors import InputError
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.study import Scan, Study


@pytest.fixture(scope="module")
def tracked(ct_dir, tmp_path_factory):
    """A two-timepoint DICOM study (lung1 then lung2, shrunk), label maps, lesions and the SEGs written.

    Lesion 1 is the real tumour on both scans; lesion 2 exists only on the second scan and was corrected
    by hand there."""
    root = tmp_path_factory.mktemp("seg_study")
    maps = {}
    for name, date in (("lung1", "20190305"), ("lung2", "20190911")):
        image, label = shrunk_int16_ct(ct_dir, name)
        write_ct_series(root / "dicom" / name, image, date=date, series_description=f"CT {date}")
        maps[f"CT_{date}"] = sitk.GetArrayFromImage(label).astype(np.int32)
    maps["CT_20190911"][5:8, 60:66, 60:66] = 2
    study = load_dicom_study(root / "dicom", log=lambda m: None)
    lesions = [Lesion(1), Lesion(2, "Node")]
    logs = []
    paths = export_segs(study, maps, lesions, root / "out", manual={(2, "CT_20190911")}, log=logs.append)
    return {"study": study, "maps": maps, "lesions": lesions, "paths": paths, "logs": logs, "root": root}


def test_one_seg_per_timepoint_named_by_patient_timepoint_and_lesions(tracked):
    assert [p.name for p in tracked["paths"]] == ["LNG-001_tp1_CT_20190305_lesions-1.seg.dcm",
                                                   "LNG-001_tp2_CT_20190911_lesions-1-2.seg.dcm"]
    assert all(p.is_file() for p in tracked["paths"])
    assert not list((tracked["root"] / "out").glob(".*"))  # no temporary files left behind
    assert any("timepoint 1" in m and "Node (id 2) not found; left out" in m for m in tracked["logs"])


def test_seg_content_and_tracking_identity(tracked):
    study, lesions = tracked["study"], tracked["lesions"]
    segs = [hd.seg.segread(p) for p in tracked["paths"]]
    for index, (seg, scan) in enumerate(zip(segs, study), start=1):
        meta = scan.meta["dicom"]
        assert seg.SegmentationType == "BINARY"
        assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [meta["SeriesInstanceUID"]]
        assert seg.StudyInstanceUID == meta["StudyInstanceUID"] and seg.PatientID == "LNG-001"
        assert seg.FrameOfReferenceUID == meta["FrameOfReferenceUID"]
        assert seg.ClinicalTrialTimePointID == str(index)
        assert seg.SeriesDescription == f"LinGuinE lesions {scan.scan_id}"
        assert str(seg.ContentCreatorName) == "LinGuinE^"
        first = seg.get_segment_description(1)
        assert first.SegmentLabel == "Lesion 1" and first.TrackingID == "Lesion 1"
        assert first.TrackingUID == lesions[0].tracking_uid
        assert first.SegmentAlgorithmType == "SEMIAUTOMATIC" and first.SegmentAlgorithmName == "LinGuinE"
        assert first.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == __version__
        assert first.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # SNOMED CT
        assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert segs[0].segment_numbers == [1]
    node = segs[1].get_segment_description(2)
    assert (node.SegmentLabel, node.TrackingID, node.TrackingUID) == ("Node", "Lesion 2", lesions[1].tracking_uid)
    assert node.SegmentAlgorithmType == "MANUAL"
    # highdicom finds the same lesion on every timepoint by its TrackingUID
    assert [s.get_segment_numbers(tracking_uid=lesions[0].tracking_uid) for s in segs] == [[1], [1]]


def test_segs_pass_dciodvfy(tracked):
    assert dciodvfy_errors(tracked["paths"]) == []


def test_dcmqi_reads_back_every_segment_with_dice_1(tracked, tmp_path):
    exe = dcmqi_tool("segimage2itkimage")
    uid_to_id = {lesion.tracking_uid: lesion.lesion_id for lesion in tracked["lesions"]}
    checked = 0
    for path, scan in zip(tracked["paths"], tracked["study"]):
        out = tmp_path / scan.scan_id
        out.mkdir()
        subprocess.run([exe, "--inputDICOM", str(path), "--outputDirectory", str(out), "--outputType", "nrrd"],
                       check=True, capture_output=True)
        meta = json.loads((out / "meta.json").read_text())
        reference = scan.to_sitk(np.zeros(scan.shape, np.uint8))
        for n, attributes in enumerate(meta["segmentAttributes"], start=1):
            lesion_id = uid_to_id[attributes[0]["TrackingUniqueIdentifier"]]
            image = sitk.ReadImage(str(out / f"{n}.nrrd"))
            ours = tracked["maps"][scan.scan_id] == lesion_id
            theirs = sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(),
                                                          sitk.sitkNearestNeighbor, 0)) > 0
            dice = 2 * (ours & theirs).sum() / (ours.sum() + theirs.sum())
            assert dice == 1.0, (scan.scan_id, lesion_id, dice)
            checked += 1
    assert checked == 3


def test_our_seg_is_a_prompt_on_its_source_scan(tracked):
    study, maps = tracked["study"], tracked["maps"]
    scan_id, labels = read_seg_prompt(tracked["paths"][1], study)
    assert scan_id == "CT_20190911" and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, maps[scan_id])
    _, only_two = read_seg_prompt(tracked["paths"][1], study, lesion_id=2)
    np.testing.assert_array_equal(only_two, np.where(maps[scan_id] == 2, 2, 0))
    with pytest.raises(InputError, match=r"lesions-1-2\.seg\.dcm: no segment 3; its segments are 1 'Lesion 1', "
                                         r"2 'Node'"):
        read_seg_prompt(tracked["paths"][1], study, lesion_id=3)


def test_timepoint_without_lesions_gets_no_seg_and_says_why(tracked, tmp_path):
    study, maps = tracked["study"], dict(tracked["maps"])
    maps["CT_20190911"] = np.zeros_like(maps["CT_20190911"])
    logs = []
    paths = export_segs(study, maps, tracked["lesions"][:1], tmp_path, log=logs.append)
    assert [p.name for p in paths] == ["LNG-001_tp1_CT_20190305_lesions-1.seg.dcm"]
    assert "scan 'CT_20190911' (timepoint 2): no lesion found on this timepoint; no SEG written" in logs


def test_missing_lower_lesion_renumbers_segments_but_keeps_tracking_identity(tracked, tmp_path):
    """DICOM numbers a binary SEG's segments 1..N: without lesion 1, lesion 2 is segment 1 there."""
    study, lesions = tracked["study"], tracked["lesions"]
    maps = {"CT_20190305": np.where(tracked["maps"]["CT_20190305"] > 0, 2, 0)}
    logs = []
    [path] = export_segs(study, maps, lesions, tmp_path, log=logs.append)
    assert path.name == "LNG-001_tp1_CT_20190305_lesions-2.seg.dcm"
    node = hd.seg.segread(path).get_segment_description(1)
    assert (node.SegmentLabel, node.TrackingID, node.TrackingUID) == ("Node", "Lesion 2", lesions[1].tracking_uid)
    assert any("Node is segment 1 here" in m for m in logs)
    assert "scan 'CT_20190911' (timepoint 2): no label map given; no SEG written" in logs


def test_export_needs_a_dicom_study(scan_factory, tmp_path):
    study = Study("p", [scan_factory("a"), scan_factory("b", date=dt.datetime(2021, 1, 1))])
    with pytest.raises(InputError, match="scan 'a' .* was not loaded from DICOM"):
        export_segs(study, {"a": study.scans[0].label}, [Lesion(1)], tmp_path)


def test_export_seg_command_reads_a_track_folder(tracked, tmp_path, capsys):
    track = tmp_path / "track"
    track.mkdir()
    for scan in tracked["study"]:
        label = scan.to_sitk(tracked["maps"][scan.scan_id].astype(np.uint16))
        sitk.WriteImage(label, str(track / f"{scan.scan_id}.nii.gz"))
    lesions = tracked["lesions"]
    (track / "summary.json").write_text(json.dumps({"lesions": [lesion.to_dict() for lesion in lesions],
                                                    "segmentation": "classic"}))
    assert cli_main(["export-seg", str(tracked["root"] / "dicom"), str(track), "--out", str(tmp_path / "segs"),
                     "--creator", "Doe^Jane"]) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in written] == [p.name for p in tracked["paths"]]
    seg = hd.seg.segread(written[1])
    assert str(seg.ContentCreatorName) == "Doe^Jane"
    assert seg.get_segment_description(2).TrackingUID == lesions[1].tracking_uid
    assert [seg.get_segment_description(n).SegmentAlgorithmType for n in (1, 2)] == ["SEMIAUTOMATIC"] * 2


def test_third_party_seg_imports_as_a_prompt(ct_dir, tracked, tmp_path):
    """A SEG another tool wrote (dcmqi's liver example: 3 frames of 512x512 at 0.81 mm, 1 mm apart; on a
    fresh machine one dcmqi writes now) maps onto a scan on its own grid voxel for voxel, and onto a 4x
    coarser grid with its volume kept; a study without its referenced series is refused, naming both."""
    seg_path = third_party_seg(ct_dir, tmp_path)
    ds = pydicom.dcmread(seg_path)
    reference = ds.pixel_array.astype(bool).reshape(-1, ds.Rows, ds.Columns)
    positions = np.array([f.PlanePositionSequence[0].ImagePositionPatient for f in ds.PerFrameFunctionalGroupsSequence],
                         float)
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    row_sp, col_sp = map(float, measures.PixelSpacing)
    gap = float(np.median(np.diff(positions[:, 2])))
    assert np.allclose(np.diff(positions[:, 2]), gap) and np.allclose(positions[:, :2], positions[0, :2])
    x0, y0, z0 = positions[0]
    noise = np.random.default_rng(0)
    n = len(reference)
    same_grid = Scan("same", noise.normal(0, 10, (n + 2, ds.Rows, ds.Columns)).astype(np.float32),
                     origin=(x0, y0, z0 - gap), spacing=(col_sp, row_sp, gap), direction=np.eye(3),
                     date=dt.datetime(2020, 1, 1))
    labels = seg_to_label_map(seg_path, same_grid, log=lambda m: None)
    np.testing.assert_array_equal(labels[1:n + 1] > 0, reference)
    assert not labels[[0, n + 1]].any() and labels.max() == 1
    coarse = Scan("coarse", noise.normal(0, 10, (n, ds.Rows // 4, ds.Columns // 4)).astype(np.float32),
                  origin=(x0 + 1.5 * col_sp, y0 + 1.5 * row_sp, z0), spacing=(4 * col_sp, 4 * row_sp, gap),
                  direction=np.eye(3), date=dt.datetime(2020, 1, 1))
    volume = seg_to_label_map(seg_path, coarse, log=lambda m: None).sum() * coarse.voxel_volume_mm3
    assert volume == pytest.approx(reference.sum() * col_sp * row_sp * gap, rel=0.02)
    series_uid = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
    with pytest.raises(InputError, match=rf"{seg_path.name.replace('.', '[.]')}: its referenced series "
                                         rf"{series_uid.replace('.', '[.]')} is not in the study"):
        read_seg_prompt(seg_path, tracked["study"])


def test_bad_seg_inputs_named(tracked, tmp_path):
    study = tracked["study"]
    scan = study.scans[0]
    ct_file = scan.meta["dicom"]["files"][0]
    with pytest.raises(InputError, match=r"0001\.dcm: not a DICOM Segmentation \(it is CT Image Storage\)"):
        read_seg_prompt(ct_file, study)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in scan.meta["dicom"]["files"]]
    masks = np.zeros(scan.shape + (2,), dtype=bool)
    masks[30:34, 50:70, 50:70, 0] = True
    masks[32:36, 60:80, 60:80, 1] = True
    descriptions = [hd.seg.SegmentDescription(n, f"s{n}", pydicom.sr.codedict.codes.SCT.Tissue,
                                              pydicom.sr.codedict.codes.SCT.Tissue, "MANUAL") for n in (1, 2)]
    overlapping = hd.seg.Segmentation(sources, masks, "BINARY", descriptions, hd.UID(), 99, hd.UID(), 1, "test",
                                      "test", "1", "1")
    path = tmp_path / "overlap.dcm"
    overlapping.save_as(path)
    with pytest.raises(InputError, match=r"overlap\.dcm: segments 1 and 2 overlap \(200 voxels\)"):
        read_seg_prompt(path, study)
    scan_id, one = read_seg_prompt(path, study, lesion_id=2)
    assert scan_id == scan.scan_id and one.sum() == 2 * 4 * 20 * 20


def test_retracking_from_our_seg_keeps_lesion_identity(tracked, tmp_path):
    from LinGuinELib.io.dicom_seg import seg_lesions

    known = seg_lesions(tracked["paths"][1])
    assert {n: (l.lesion_id, l.name, l.tracking_uid) for n, l in known.items()} == {
        n: (l.lesion_id, l.name, l.tracking_uid) for n, l in zip((1, 2), tracked["lesions"])}
    out = tmp_path / "retrack"
    rc = cli_main(["track", str(tracked["root"] / "dicom"), "--mask", str(tracked["paths"][1]), "--lesion-id", "2",
                   "--registration", "identity", "--out", str(out), "--dicom-seg"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lesions"] == [{"lesion_id": 2, "name": "Node", "colour": list(tracked["lesions"][1].colour),
                                   "tracking_uid": tracked["lesions"][1].tracking_uid}]
    new_seg = hd.seg.segread(next((out / "dicom-seg").glob("*tp2*.seg.dcm")))
    assert new_seg.get_segment_description(1).TrackingUID == tracked["lesions"][1].tracking_uid
