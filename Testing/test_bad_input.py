"""Bad input on every sub-command: exit code 2, a message naming the culprit, nothing written, no traceback.

Also: truncated/corrupt image files are refused naming the file (ITK alone reads a cut .nii.gz as a
partly zero image), ``--out`` naming a file is refused before any work, ``--lesion-id`` takes several
values, and out-of-scan points are reported with plain numbers and the scan's extent in LPS mm.
"""

import datetime as dt
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_scan, write_study
from LinGuinELib.cli import COMMANDS, main
from LinGuinELib.core.errors import InputError
from LinGuinELib.core.study import read_image

FAST = ["--registration", "identity", "--segmentation", "threshold"]


@pytest.fixture
def study_csv(tmp_path, fake_backends):
    scans = [make_scan(f"t{i}", dt.datetime(2020, 1 + 2 * i, 1), seed=i) for i in range(3)]
    return write_study(tmp_path / "study", scans)


def cut(path, keep):
    """Truncate ``path`` to ``keep`` bytes (an int) or that fraction of its size (a float)."""
    data = path.read_bytes()
    path.write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    return path


@pytest.mark.parametrize("ext, compress", [(".nii.gz", True), (".nii", False), (".nrrd", False), (".nrrd", True),
                                           (".mha", False), (".mha", True)])
@pytest.mark.parametrize("keep", [0.9, 0.5, 3000])
def test_truncated_image_file_is_refused_naming_it(tmp_path, ext, compress, keep):
    path = tmp_path / f"ct{ext}"
    sitk.WriteImage(make_scan().to_sitk(), str(path), compress)
    assert read_image(path).GetSize() == (40, 40, 20)  # complete file reads
    cut(path, keep)
    with pytest.raises(InputError, match=f"{path.name}: .*truncated"):
        read_image(path)


@pytest.mark.parametrize("ext, compress", [(".mhd", False), (".mhd", True), (".nhdr", False), (".nhdr", True)])
def test_detached_voxel_file_cut_or_missing_is_refused_naming_it(tmp_path, ext, compress):
    """A header beside its voxel file (.mhd + .raw/.zraw, .nhdr + .raw/.raw.gz): a cut voxel file is named,
    and so is a missing one; the header alone is not an image."""
    header = tmp_path / f"ct{ext}"
    sitk.WriteImage(make_scan().to_sitk(), str(header), compress)
    (voxels,) = [p for p in tmp_path.iterdir() if p != header]
    assert read_image(header).GetSize() == (40, 40, 20)
    data = voxels.read_bytes()
    cut(voxels, 0.9)
    with pytest.raises(InputError, match=rf"{voxels.name}.*: .*(truncated|ends early)"):
        read_image(header)
    voxels.unlink()
    with pytest.raises(InputError, match=rf"{header.name}: (?=.*{voxels.name})(?=.*(is missing|couldn't open))"):
        read_image(header)
    voxels.write_bytes(data)
    assert read_image(header).GetSize() == (40, 40, 20)


def test_corrupt_gzip_is_refused_naming_it(tmp_path):
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(make_scan().to_sitk(), str(path), True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: a bad block or a wrong CRC
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"ct\.nii\.gz: (corrupt|compressed data)"):
        read_image(path)


def _run(argv, capsys):
    """(exit code, stderr) of ``linguine ARGV`` in-process; argparse's exit counts as the exit code."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _truncated_study(d):
    cut(d / "study" / "t1.nii.gz", 0.9)
    return d / "study" / "study.csv"


def _file(d, name="taken.txt"):
    path = d / name
    path.write_text("my notes\n")
    return path


def _cohort(d):
    path = d / "cohort.csv"
    path.write_text("study,source,point\nstudy/study.csv,t0,1 2 3\n")
    return path


# For every sub-command in cli.COMMANDS: (arguments built from the work folder d, text the message must hold).
BROKEN = {
    "track": [
        (lambda d: [str(_truncated_study(d)), "--source", "t0", "--point-ijk", "20", "20", "10", "--out", str(d / "o")]
         + FAST, "t1.nii.gz"),
        (lambda d: [str(d / "study" / "study.csv"), "--source", "t0", "--point-ijk", "20", "20", "10",
                    "--out", str(_file(d))] + FAST, "taken.txt"),
        (lambda d: [str(d / "study" / "study.csv"), "--source", "t0", "--point", "9999", "9999", "9999",
                    "--out", str(d / "o")] + FAST, "(9999, 9999, 9999) (LPS mm) lies outside scan 't0'"),
        (lambda d: [str(d / "nope.csv"), "--point", "1", "1", "1", "--out", str(d / "o")], "nope.csv"),
    ],
    "evaluate": [
        (lambda d: [str(_truncated_study(d)), "--out", str(d / "o")] + FAST, "t1.nii.gz"),
        (lambda d: [str(d / "study" / "study.csv"), "--out", str(_file(d))] + FAST, "taken.txt"),
    ],
    "demo": [
        (lambda d: ["--out", str(_file(d))] + FAST, "taken.txt"),
        (lambda d: ["--out", str(_file(d) / "sub")] + FAST, "taken.txt"),
    ],
    "info": [
        (lambda d: [str(_truncated_study(d))], "t1.nii.gz"),
        (lambda d: [str(d / "empty")], "empty"),
    ],
    "export_seg": [
        (lambda d: [str(d / "study"), str(d / "no-track"), "--out", str(d / "o")], "no-track"),
        (lambda d: [str(d / "study"), str(d / "study"), "--out", str(_file(d))], "taken.txt"),
    ],
    "batch": [
        (lambda d: [str(d / "nope.csv"), "--out", str(d / "o")], "nope.csv"),
        (lambda d: [str(_cohort(d)), "--out", str(_file(d))], "taken.txt"),
    ],
    "serve": [
        (lambda d: ["--host", "0.0.0.0", "--port", "0"], "0.0.0.0"),
        (lambda d: ["--port", "0", "--tls-cert", str(d / "missing.pem"), "--tls-key", str(d / "missing.key")],
         "missing.pem"),
    ],
    "synth": [
        (lambda d: [str(cut(d / "study" / "t0.nii.gz", 3000)), str(d / "study" / "t0_label.nii.gz"),
                    "--out", str(d / "o")], "t0.nii.gz"),
        (lambda d: [str(d / "study" / "t0.nii.gz"), str(d / "study" / "t0_label.nii.gz"), "--out", str(_file(d))],
         "taken.txt"),
    ],
}


def test_every_command_has_broken_inputs_in_the_table():
    missing = [name for name in COMMANDS if name not in BROKEN]
    assert not missing, f"add broken-input cases for the new sub-command(s) {missing} to BROKEN in {__file__}"


@pytest.mark.parametrize("command, case", [(c, n) for c in COMMANDS for n in range(len(BROKEN.get(c, [])))])
def test_broken_input_exits_2_naming_the_culprit_and_writes_nothing(command, case, tmp_path, study_csv, capsys,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LINGUINE_TOKEN", raising=False)  # serve must refuse 0.0.0.0 for want of a token
    (tmp_path / "empty").mkdir()
    build, culprit = BROKEN[command][case]
    argv = build(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    name = __import__(f"LinGuinELib.commands.{command}", fromlist=["NAME"]).NAME
    code, err = _run([name, *argv], capsys)
    assert code == 2, err
    assert culprit in err and "Traceback" not in err, err
    assert "np.float64" not in err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, "nothing written, no file changed"


def test_out_naming_a_file_leaves_it_untouched(study_csv, tmp_path, capsys):
    taken = _file(tmp_path)
    code, err = _run(["track", str(study_csv), "--source", "t0", "--point-ijk", "20", "20", "10",
                      "--out", str(taken)] + FAST, capsys)
    assert code == 2 and f"{taken}: output folder cannot be created" in err
    assert taken.read_text() == "my notes\n"


def test_lesion_id_takes_several_values(study_csv, tmp_path, capsys):
    out = tmp_path / "o"
    code, err = _run(["track", str(study_csv), "--source", "t0", "--point-ijk", "20", "20", "10",
                      "--point-ijk", "20", "20", "12", "--point-ijk", "20", "21", "10", "--lesion-id", "4", "5",
                      "--lesion-id", "6", "--out", str(out)] + FAST, capsys)
    assert code == 0, err
    import json

    assert [lesion["lesion_id"] for lesion in json.loads((out / "summary.json").read_text())["lesions"]] == [4, 5, 6]


def test_outside_point_message_gives_the_scan_extent_in_lps(study_csv):
    scan = make_scan(spacing=(1.0, 1.0, 2.0), origin=(-10.0, 5.0, 100.0))
    message = scan.outside_message(np.array([9999.0, 9999.0, 9999.0]))
    # voxel box: i 0..39 (1 mm) -> x -10.5..29.5; j 0..39 -> y 4.5..44.5; k 0..19 (2 mm) -> z 99..139
    assert message == ("point (9999, 9999, 9999) (LPS mm) lies outside scan 's0', which spans "
                       "x -10.5..29.5, y 4.5..44.5, z 99.0..139.0 (LPS mm)")
