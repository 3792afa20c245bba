"""Atomic output (LinGuinELib/io/atomic.py): a file appears only once fully written (temporary file, then
rename), a set of files appears together or not at all, and an error leaves nothing behind."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from LinGuinELib.core.errors import InputError
from LinGuinELib.io import atomic


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "lesions.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic.atomic_write(path) as fh:
            fh.write("new, half")
            assert path.read_text() == "old\n"  # nothing visible while writing
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []
    with atomic.atomic_write(path) as fh:
        fh.write("new\n")
    assert path.read_text() == "new\n" and leftovers(tmp_path) == []


def test_images_keep_the_format_of_their_name(tmp_path):
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    image.SetSpacing((0.5, 0.5, 2.0))
    out = atomic.write_image_atomic(image, tmp_path / "sub" / "t0.nii.gz")
    with gzip.open(out) as fh:  # the temporary file kept the .nii.gz suffix, so it was written compressed
        assert len(fh.read(348)) == 348
    back = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert back.GetSpacing() == (0.5, 0.5, 2.0) and leftovers(out.parent) == []


def test_staged_outputs_appear_together(tmp_path):
    out = tmp_path / "run"
    with atomic.staged_outputs(out) as stage:
        (stage / "a.txt").write_text("a")
        (stage / "dicom-seg").mkdir()
        (stage / "dicom-seg" / "b.dcm").write_text("b")
        assert not out.exists()  # nothing in place before the block ends
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["a.txt", "dicom-seg/b.dcm"]
    assert leftovers(tmp_path) == []


def test_an_error_while_staging_writes_nothing_and_keeps_older_outputs(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "a.txt").write_text("from the last run")
    with pytest.raises(ValueError):
        with atomic.staged_outputs(out) as stage:
            (stage / "a.txt").write_text("new")
            (stage / "b.txt").write_text("new")
            raise ValueError("segmentation failed")
    assert [p.name for p in out.iterdir()] == ["a.txt"] and (out / "a.txt").read_text() == "from the last run"
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError):
        with atomic.staged_outputs(tmp_path / "fresh"):
            raise ValueError("x")
    assert not (tmp_path / "fresh").exists()


def test_an_output_folder_under_a_file_is_refused_naming_it(tmp_path):
    (tmp_path / "report.pdf").write_text("x")
    with pytest.raises(InputError, match=r"report\.pdf: output folder cannot be created: a file of that name"):
        atomic.check_out_dir(tmp_path / "report.pdf")
    with pytest.raises(InputError, match=r"out: output folder cannot be created \(inside .*report\.pdf, which is a file\)"):
        with atomic.staged_outputs(tmp_path / "report.pdf" / "out"):
            pass


def test_a_staged_folder_appears_whole_and_stale_staging_is_removed(tmp_path):
    with pytest.raises(OSError):
        with atomic.staged_folder(tmp_path / "model") as stage:
            (stage / "weights.pt").write_bytes(b"part")
            raise OSError("download interrupted")
    assert not (tmp_path / "model").exists() and leftovers(tmp_path) == []
    with atomic.staged_folder(tmp_path / "model") as stage:
        (stage / "weights.pt").write_bytes(b"all")
    assert (tmp_path / "model" / "weights.pt").read_bytes() == b"all"
    (tmp_path / ".model.staging-killed").mkdir()  # what a killed process leaves
    assert [p.name for p in atomic.remove_stale_staging(tmp_path)] == [".model.staging-killed"]
    assert leftovers(tmp_path) == [] and (tmp_path / "model").is_dir()
