"""``linguine batch`` on a local Ray instance (2 CPUs, shared by the module): same outputs as ``linguine
track`` per study, failures recorded, reruns skip finished studies, Ctrl-C leaves no partial folder."""

import csv
import datetime as dt
import json
import logging
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_scan, write_study
from LinGuinELib.cli import main

ray = pytest.importorskip("ray", reason="the batch extra (ray) is not installed")

FAST = ["--registration", "identity", "--segmentation", "classic"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)
    yield
    ray.shutdown()


def make_cohort(folder, broken=False):
    """3 studies of 3 small synthetic scans; study b has two point prompts, c a mask with one id.
    ``broken``: study b's rows point at a mask file that does not exist."""
    for n, name in enumerate("abc"):
        scans = [make_scan(f"t{i}", dt.datetime(2020, 1 + 2 * i, 1), seed=10 * n + i,
                           blobs=(((10, 20, 20), 5.0 + i + n), ((10, 8, 30), 3.0))) for i in range(3)]
        write_study(folder / name, scans, patient_id=f"p{name}")
    rows = ["study,source,mask,point,lesion_id,name",
            "a/study.csv,t0,a/t0_label.nii.gz,,,",
            "b,t1,,20 20 20,5,big one" if not broken else "b,t1,b/missing.nii.gz,,,",
            "b,t1,,30 8 20,,",
            "c/study.csv,last,c/t2_label.nii.gz,,2,"]
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "cohort.csv"


# the same prompts through `linguine track`
TRACK_ARGS = {
    "a": ["a/study.csv", "--source", "t0", "--mask", "a/t0_label.nii.gz"],
    "b": ["b", "--source", "t1", "--point", "20", "20", "20", "--lesion-id", "5", "--name", "big one",
          "--point", "30", "8", "20", "--lesion-id", "6"],
    "c": ["c/study.csv", "--source", "last", "--mask", "c/t2_label.nii.gz", "--lesion-id", "2"],
}


def summary_rows(out):
    with open(out / "batch_summary.csv", newline="") as fh:
        return {r["study"]: r for r in csv.DictReader(fh)}


def comparable(summary: dict) -> dict:
    """summary.json without what differs between two runs (timings, fresh TrackingUIDs)."""
    summary = dict(summary)
    summary.pop("seconds")
    summary["lesions"] = [{k: v for k, v in l.items() if k != "tracking_uid"} for l in summary["lesions"]]
    return summary


def test_cohort_gives_the_same_files_and_values_as_track(tmp_path, capsys):
    cohort = make_cohort(tmp_path / "data")
    out = tmp_path / "batch"
    assert main(["batch", str(cohort), "--out", str(out)] + FAST) == 0
    rows = summary_rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {"a": "done", "b": "done", "c": "done"}
    assert {k: r["lesions"] for k, r in rows.items()} == {"a": "2", "b": "2", "c": "1"}
    assert all(r["registrations"] == "2" and "pid" in r["where"] for r in rows.values())
    assert json.loads((out / "batch_summary.json").read_text())["counts"]["done"] == 3
    for key, args in TRACK_ARGS.items():
        ref = tmp_path / f"track_{key}"
        args = [str(cohort.parent / args[0])] + [str(cohort.parent / a) if a.endswith(".nii.gz") else a
                                                 for a in args[1:]]
        assert main(["track", *args, "--out", str(ref)] + FAST) == 0
        got = out / key
        assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in ref.iterdir())
        assert (got / "lesions.csv").read_text() == (ref / "lesions.csv").read_text()
        for scan in ("t0", "t1", "t2"):
            a = sitk.ReadImage(str(got / f"{scan}.nii.gz"))
            b = sitk.ReadImage(str(ref / f"{scan}.nii.gz"))
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
            assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
        assert comparable(json.loads((got / "summary.json").read_text())) == \
            comparable(json.loads((ref / "summary.json").read_text()))
    names = {r["lesion_name"] for r in csv.DictReader(open(out / "b" / "lesions.csv")) if r["lesion_id"] == "5"}
    assert names == {"big one"}


def test_broken_study_fails_with_its_message_others_finish_and_a_rerun_skips_them(tmp_path):
    cohort = make_cohort(tmp_path / "data", broken=True)
    out = tmp_path / "batch"
    assert main(["batch", str(cohort), "--out", str(out), "--retries", "1"] + FAST) == 1
    rows = summary_rows(out)
    assert rows["b"]["status"] == "failed" and rows["b"]["attempts"] == "2"
    assert "missing.nii.gz" in rows["b"]["message"] and "not found" in rows["b"]["message"]
    assert rows["a"]["status"] == rows["c"]["status"] == "done"
    assert not (out / "b").exists()
    before = {k: (out / k / "summary.json").stat().st_mtime_ns for k in "ac"}

    make_cohort(tmp_path / "data")  # the user fixes study b's rows
    assert main(["batch", str(cohort), "--out", str(out)] + FAST) == 0
    rows = summary_rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {"a": "skipped", "b": "done", "c": "skipped"}
    assert rows["a"]["lesions"] == "2", "a skipped study's counts come from its folder"
    assert {k: (out / k / "summary.json").stat().st_mtime_ns for k in "ac"} == before, "finished studies untouched"
    assert (out / "b" / "lesions.csv").is_file()


def test_ctrl_c_leaves_no_partial_study_folder(tmp_path, monkeypatch, capsys):
    from LinGuinELib.batch import work

    cohort = make_cohort(tmp_path / "data")
    out = tmp_path / "batch"
    real = work.write_files

    def interrupted(folder, files):  # Ctrl-C arrives while the first finished study is being written
        real(folder, dict(list(files.items())[:2]))
        raise KeyboardInterrupt

    monkeypatch.setattr(work, "write_files", interrupted)
    assert main(["batch", str(cohort), "--out", str(out)] + FAST) == 130
    assert sorted(p.name for p in out.iterdir()) == [".linguine-batch.lock", "batch_summary.csv", "batch_summary.json"]
    assert {r["status"] for r in summary_rows(out).values()} == {"interrupted"}
    monkeypatch.setattr(work, "write_files", real)
    assert main(["batch", str(cohort), "--out", str(out)] + FAST) == 0
    assert {r["status"] for r in summary_rows(out).values()} == {"done"}


@pytest.mark.parametrize("address, message", [("ray://127.0.0.1:9", "cannot reach the Ray cluster at 127.0.0.1:9"),
                                              ("somewhere", "give local, auto, ray://HOST:PORT")])
def test_bad_address_is_a_clear_error(tmp_path, capsys, address, message):
    cohort = make_cohort(tmp_path / "data")
    assert main(["batch", str(cohort), "--out", str(tmp_path / "o"), "--address", address] + FAST) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("rows, message", [
    ("study,mask\na,x.nii.gz", "missing column(s) source"),
    ("study,source,mask,point\na,t0,x.nii.gz,1 2 3", "line 2: give either 'mask' or 'point'"),
    ("study,source,point\na,t0,1 2", "point '1 2' is not three numbers"),
    ("study,source,point,colour\na,t0,1 2 3,red", "unknown column(s) colour"),
])
def test_bad_cohort_files_name_the_line(tmp_path, capsys, rows, message):
    (tmp_path / "cohort.csv").write_text(rows + "\n")
    assert main(["batch", str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "cohort.csv").write_text("study,source,point\na,t0,1 2 3\n")
    assert main(["batch", str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'linguine[batch]'" in capsys.readouterr().err


def test_evaluate_on_ray_scores_the_same_as_in_process(tmp_path, capsys):
    make_cohort(tmp_path / "data")
    studies = [str(tmp_path / "data" / k / "study.csv") for k in "abc"]
    assert main(["evaluate", *studies, "--out", str(tmp_path / "seq")] + FAST) == 0
    assert main(["evaluate", *studies, "--out", str(tmp_path / "ray"), "--address", "local"] + FAST) == 0
    seq = (tmp_path / "seq" / "per_lesion.csv").read_text()
    assert seq == (tmp_path / "ray" / "per_lesion.csv").read_text()
    assert len(seq.splitlines()) == 1 + 3 * 2 * 2, "3 studies x 2 lesions x 2 targets"
    assert " pid " in capsys.readouterr().err, "the parallel path reports where each study ran"


def test_dicom_seg_per_study_and_a_non_dicom_study_fails_with_the_reason(ct_dir, tmp_path):
    from dicom_data import shrunk_int16_ct, write_ct_series

    data = tmp_path / "data"
    make_cohort(data)
    for name, date in (("lung1", "20190305"), ("lung2", "20190911")):
        image, label = shrunk_int16_ct(ct_dir, name)
        write_ct_series(data / "dcm" / name, image, date=date, series_description=f"CT {date}")
        if name == "lung1":
            sitk.WriteImage(label, str(data / "lung1_label.nii.gz"))
    (data / "cohort.csv").write_text("study,source,mask\ndcm,first,lung1_label.nii.gz\na,t0,a/t0_label.nii.gz\n")
    out = tmp_path / "batch"
    assert main(["batch", str(data / "cohort.csv"), "--out", str(out), "--dicom-seg", "--retries", "0"] + FAST) == 1
    rows = summary_rows(out)
    assert rows["a"]["status"] == "failed" and "--dicom-seg needs a DICOM study" in rows["a"]["message"]
    assert rows["dcm"]["status"] == "done"
    ref = tmp_path / "track"
    assert main(["track", str(data / "dcm"), "--source", "first", "--mask", str(data / "lung1_label.nii.gz"),
                 "--dicom-seg", "--out", str(ref)] + FAST) == 0
    segs = sorted(p.name for p in (out / "dcm" / "dicom-seg").iterdir())
    assert segs and segs == sorted(p.name for p in (ref / "dicom-seg").iterdir())


def test_a_lost_worker_is_replaced_and_its_study_retried(tmp_path):
    from LinGuinELib.batch.runner import Job, run_jobs
    from LinGuinELib.frontend.settings import Settings

    marker = tmp_path / "crashed-once"

    def crash_once(registration, segmenter, settings, payload):  # pickled by value: a nested function
        import os

        if payload == "crash" and not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies, as on an out-of-memory kill
        return payload.upper()

    outcomes = {}
    run_jobs([Job("a", "crash"), Job("b", "fine")], crash_once, Settings("identity", "classic"),
             lambda job, outcome: outcomes.__setitem__(job.key, outcome), retries=1)
    assert marker.exists()
    assert (outcomes["a"]["ok"], outcomes["a"]["value"], outcomes["a"]["attempts"]) == (True, "CRASH", 2)
    assert (outcomes["b"]["ok"], outcomes["b"]["value"]) == (True, "FINE")
