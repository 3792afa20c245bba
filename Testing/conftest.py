"""Shared pytest fixtures: paths to the real CT data and small synthetic scans.

The real chest CTs (pyradiomics' lung1 and lung2) are taken from ``$LINGUINE_CT_DIR`` or ``../shared/data/ct``
beside the checkout (never committed) when present, else from the sample-data cache, which the first test
that needs them fills once from PyPI (``research/sample_data.py``, SHA-256 checked). No test skips for
want of them. ``LINGUINE_TEST_NO_SHARED=1`` ignores ``../shared`` (to check what a fresh machine does).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    """The folder holding lung1/lung2 ``_image.nrrd`` / ``_label.nrrd`` (downloaded once if needed)."""
    from LinGuinELib.research import sample_data

    if os.environ.get("LINGUINE_TEST_NO_SHARED"):
        pytest.MonkeyPatch().setattr(sample_data, "candidate_dirs", lambda: [sample_data.cache_dir()])
    paths = sample_data.sample_paths(log=lambda message: print(message, flush=True))
    folders = {path.parent for path in paths.values()}
    assert len(folders) == 1, folders
    return folders.pop()


def make_scan(scan_id="s0", date=dt.datetime(2020, 1, 1), shape=(20, 40, 40), spacing=(1.0, 1.0, 2.0),
              origin=(0.0, 0.0, 0.0), direction=np.eye(3), blobs=(((10, 20, 20), 5.0),), seed=0, label=True):
    """A small synthetic CT: soft-tissue background (~0 HU, noisy) with bright spherical lesions.

    ``blobs`` = ((centre_kji, radius_mm), ...); the label map numbers them 1, 2, ...
    """
    from LinGuinELib.core.study import Scan

    rng = np.random.default_rng(seed)
    arr = rng.normal(-700, 20, size=shape).astype(np.float32)
    lab = np.zeros(shape, dtype=np.int32)
    kk, jj, ii = np.indices(shape)
    sp = np.asarray(spacing, dtype=float)  # (i, j, k)
    for n, (c, r) in enumerate(blobs, start=1):
        d = np.sqrt(((kk - c[0]) * sp[2]) ** 2 + ((jj - c[1]) * sp[1]) ** 2 + ((ii - c[2]) * sp[0]) ** 2)
        arr[d <= r] = 40 + rng.normal(0, 10, size=int((d <= r).sum()))
        lab[d <= r] = n
    return Scan(scan_id=scan_id, array=arr, origin=origin, spacing=spacing, direction=direction, date=date,
                label=lab if label else None)


@pytest.fixture(scope="session")
def small_ct(ct_dir):
    """lung2 block-averaged 4x in-plane and cut to slices 5..44 (tumour inside): (image, label) SimpleITK
    images of 128 x 128 x 40 voxels, 2.51 x 2.51 x 5 mm. Shared by every test: do not modify them."""
    import SimpleITK as sitk

    image = sitk.BinShrink(sitk.ReadImage(str(ct_dir / "lung2_image.nrrd")), [4, 4, 1])[:, :, 5:45]
    label = sitk.ReadImage(str(ct_dir / "lung2_label.nrrd"))[::4, ::4, 5:45]
    label.CopyInformation(image)
    return image, label


@pytest.fixture
def scan_factory():
    return make_scan


def write_study(folder: Path, scans, patient_id="p1", ext=".nii.gz", dates=None) -> Path:
    """Write scans (with labels) as image files plus a study.csv; returns the csv path."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["patient_id,scan_id,date,image,label"]
    for n, scan in enumerate(scans):
        sitk.WriteImage(scan.to_sitk(), str(folder / f"{scan.scan_id}{ext}"))
        sitk.WriteImage(scan.to_sitk(scan.label.astype(np.uint8)), str(folder / f"{scan.scan_id}_label{ext}"))
        date = dates[n] if dates else scan.date.date().isoformat()
        lines.append(f"{patient_id},{scan.scan_id},{date},{scan.scan_id}{ext},{scan.scan_id}_label{ext}")
    csv_path = folder / "study.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


@pytest.fixture
def fake_backends(monkeypatch):
    """Register the deterministic test backends (Testing/fakes.py) under the names 'shift'/'threshold'."""
    from LinGuinELib import backends

    monkeypatch.setitem(backends.SEGMENTERS, "threshold", ("fakes", "ThresholdSegmenter"))


def local_weights(model_id: str):
    """Path of real model weights found offline ($LINGUINE_WEIGHTS or the cache), else None."""
    from LinGuinELib.core.errors import InputError
    from LinGuinELib.backends.models import ModelManager

    try:
        return ModelManager(offline=True).locate_local(model_id)
    except InputError:
        return None
