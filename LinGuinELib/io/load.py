"""Load a study from disk: a study.csv (or a folder holding one) or a folder of DICOM series."""

from __future__ import annotations

import os
from pathlib import Path

from LinGuinELib.core.errors import InputError
from LinGuinELib.core.study import Study, load_study_csv


def load_study(path: str | os.PathLike) -> Study:
    """Load a study from a ``study.csv``, a folder holding one, or a folder of one patient's DICOM series."""
    path = Path(path)
    if path.is_dir() and (path / "study.csv").is_file():
        path = path / "study.csv"
    if path.is_dir():
        from LinGuinELib.io.dicom import load_dicom_study  # pydicom is only needed for DICOM studies

        return load_dicom_study(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() == ".dcm" or _is_dicom_file(path):
        raise InputError(f"{path}: a single DICOM file is not a study; give the folder holding the patient's "
                         "DICOM series, or a study.csv")
    return load_study_csv(path)


def _is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:132] == b"DICM"
