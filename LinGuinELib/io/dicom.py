"""Load one patient's DICOM CT studies from a folder tree as a longitudinal :class:`~.study.Study`.

Rules (each breach raises :class:`~.errors.InputError` naming the file):

* Every file under the folder (nested) is read header-only; files that are not DICOM are skipped.
* All DICOM objects must belong to one patient (PatientID, else PatientName): mixed patients are rejected.
* Classic CT Image Storage files are grouped into series (SeriesInstanceUID) and studies
  (StudyInstanceUID). Each DICOM study gives one timepoint: its primary series, i.e. the axial one,
  preferring ImageType ORIGINAL/PRIMARY, then the most slices, then the lowest SeriesNumber;
  localizers and single-slice series never count. The choice and its reason are logged and kept in
  ``scan.meta["dicom"]["selection"]``. Other objects (SEG, SR, RT, other modalities, Enhanced CT)
  are skipped and logged.
* Timepoints are ordered by series (else acquisition, study, content) date and time.
* The chosen series must already be a regular volume: one size, pixel spacing and orientation,
  slices stacked along the slice normal (no gantry tilt), no duplicate positions and a uniform slice
  spacing (within 1 % or 0.01 mm). Such series are rejected, not resampled, because the exported
  DICOM-SEG must reference the original slices one to one.
* Scan ids: the SeriesDescription when it is unique among the study's timepoints, else
  ``<YYYY-MM-DD>_<SeriesNumber>`` (made file-name safe; ``-2``, ``-3`` appended if still not unique).

``scan.meta["dicom"]`` keeps what export needs: patient and study attributes, the series' UIDs,
``files`` and ``SOPInstanceUIDs`` ordered like array index k, and ``other_series`` (the study's
series that were not chosen). Geometry follows the package conventions: origin LPS mm = centre of
voxel (0, 0, 0); direction columns = row direction (i), column direction (j), slice normal (k).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage

from LinGuinELib.core.errors import InputError
from LinGuinELib.io.dicom_attributes import DATE_PREFIXES, DICOM_TAGS, date_from_values, scan_meta
from LinGuinELib.io.output import safe_filename
from LinGuinELib.core.study import Scan, Study

_SPACING_RTOL, _SPACING_ATOL = 0.01, 0.01  # uniform slice spacing tolerance (relative, mm)
_GEOM_ATOL = 1e-3  # orientation cosines / pixel spacing / in-plane position tolerance
_AXIAL_COS = 0.9  # |slice normal . z| above this counts as axial



def log_stderr(message: str) -> None:
    """Default log sink of the DICOM readers and writers: one line on stderr."""
    print(message, file=sys.stderr)


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _floats(ds, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) else None


def _series_number(ds) -> int | None:
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        return None


def _datetime(ds) -> dt.datetime | None:
    """The timepoint date of a series (study date first: :func:`~LinGuinELib.io.dicom_attributes.date_from_values`)."""
    return date_from_values({p + part: _text(ds, p + part) for p in DATE_PREFIXES for part in ("Date", "Time")})


@dataclass
class _Series:
    uid: str
    study_key: str
    files: list[Path]
    headers: list

    @property
    def first(self):
        return self.headers[0]

    @property
    def number(self) -> int | None:
        return _series_number(self.first)

    @property
    def description(self) -> str:
        return _text(self.first, "SeriesDescription")

    @property
    def image_type(self) -> list[str]:
        value = self.first.get("ImageType") or []
        return [str(v).upper() for v in ([value] if isinstance(value, str) else value)]

    @property
    def original_primary(self) -> bool:
        return self.image_type[:2] == ["ORIGINAL", "PRIMARY"]

    @property
    def plane(self) -> str:
        iop = _floats(self.first, "ImageOrientationPatient", 6)
        if iop is None:
            return "unknown orientation"
        normal = np.cross(iop[:3], iop[3:])
        axis = int(np.argmax(np.abs(normal)))
        if abs(normal[axis]) < _AXIAL_COS * np.linalg.norm(normal):
            return "oblique"
        return ("sagittal", "coronal", "axial")[axis]

    def label(self) -> str:
        kind = "/".join(self.image_type[:2]) or "no ImageType"
        return (f"series {self.number if self.number is not None else '?'} '{self.description}' "
                f"({len(self.files)} slices, {kind}, {self.plane})")

    def unusable(self) -> str:
        """Why this series cannot be a timepoint ('' if it can)."""
        if "LOCALIZER" in self.image_type:
            return "localizer"
        if len(self.files) < 2:
            return "a single slice"
        if _floats(self.first, "ImageOrientationPatient", 6) is None:
            return "no ImageOrientationPatient"
        return ""

    def rank(self) -> tuple:
        number = self.number
        lowest_first = -(number if number is not None else 1 << 30)
        return (self.plane == "axial", self.original_primary, len(self.files), lowest_first)


def _read_headers(folder: Path, log) -> tuple[dict[str, _Series], list[str]]:
    """CT series by SeriesInstanceUID, and a note per skipped DICOM object; checks for mixed patients."""
    series: dict[str, _Series] = {}
    skipped: list[str] = []
    patients: dict[str, list[str]] = defaultdict(list)
    not_dicom = 0
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if name.upper() == "DICOMDIR" or name.startswith("."):
                continue
            try:
                ds = pydicom.dcmread(path, defer_size=1024)
            except InvalidDicomError:
                not_dicom += 1
                continue
            except Exception as exc:  # truncated or corrupt DICOM: name the file
                raise InputError(f"{path}: cannot read DICOM file ({exc})") from exc
            patient = _text(ds, "PatientID") or _text(ds, "PatientName")
            if patient:
                patients[patient].append(str(path))
            sop_class = _text(ds, "SOPClassUID")
            if _text(ds, "Modality") != "CT" or sop_class != CTImageStorage:
                kind = getattr(ds.get("SOPClassUID"), "name", sop_class) or "no SOPClassUID"
                skipped.append(f"{path} ({_text(ds, 'Modality') or 'no modality'}, {kind})")
                continue
            if "PixelData" not in ds:
                raise InputError(f"{path}: CT file holds no pixel data (not an image)")
            uid = _text(ds, "SeriesInstanceUID")
            if not uid:
                raise InputError(f"{path}: CT image has no SeriesInstanceUID")
            entry = series.setdefault(uid, _Series(uid, _text(ds, "StudyInstanceUID") or f"series {uid}", [], []))
            entry.files.append(path)
            entry.headers.append(ds)
    if len(patients) > 1:
        listing = "; ".join(f"'{p}' ({len(f)} files, e.g. {f[0]})" for p, f in sorted(patients.items()))
        raise InputError(f"{folder}: DICOM files of several patients found: {listing}. "
                         "Give one patient's folder.")
    if not_dicom:
        log(f"{folder}: skipped {not_dicom} file(s) that are not DICOM")
    return series, skipped


def _choose(study_series: list[_Series]) -> tuple[_Series, str, list[dict]]:
    """The study's primary series, the reason, and a record of every other series."""
    usable = [s for s in study_series if not s.unusable()]
    if not usable:
        reasons = "; ".join(f"{s.label()}: {s.unusable()}" for s in study_series)
        raise InputError(f"{study_series[0].files[0].parent}: study {study_series[0].study_key} has no usable CT "
                         f"series ({reasons})")
    chosen = max(usable, key=lambda s: s.rank())
    others = [s for s in study_series if s is not chosen]
    reason = f"chose {chosen.label()}"
    if others:
        reason += ("; preference: axial, then ORIGINAL/PRIMARY, then most slices, then lowest series number; "
                   "not chosen: " + "; ".join(s.label() + (f" [{s.unusable()}]" if s.unusable() else "")
                                              for s in others))
    records = [{"SeriesInstanceUID": s.uid, "SeriesNumber": s.number, "SeriesDescription": s.description,
                "slices": len(s.files), "ImageType": s.image_type} for s in others]
    return chosen, reason, records


def _geometry(series: _Series) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(file order along the slice normal, origin LPS, spacing (i, j, k) mm, direction 3x3); rejects
    series that are not one regular volume."""
    first, first_path = series.first, series.files[0]
    size = (first.get("Rows"), first.get("Columns"))
    iop = _floats(first, "ImageOrientationPatient", 6)
    pixel = _floats(first, "PixelSpacing", 2)
    positions = []
    for path, ds in zip(series.files, series.headers):
        if (ds.get("Rows"), ds.get("Columns")) != size:
            raise InputError(f"{path}: size {ds.get('Rows')}x{ds.get('Columns')} differs from {first_path} "
                             f"({size[0]}x{size[1]}) in series {series.uid}")
        other = _floats(ds, "ImageOrientationPatient", 6)
        if other is None or not np.allclose(other, iop, atol=_GEOM_ATOL):
            raise InputError(f"{path}: ImageOrientationPatient {None if other is None else other.round(4).tolist()} "
                             f"differs from {first_path} ({iop.round(4).tolist()}): inconsistent orientation in "
                             f"series {series.uid}; LinGuinE does not resample DICOM series")
        spacing = _floats(ds, "PixelSpacing", 2)
        if spacing is None or pixel is None or not np.allclose(spacing, pixel, atol=_GEOM_ATOL):
            raise InputError(f"{path}: PixelSpacing missing or different from {first_path} in series {series.uid}")
        position = _floats(ds, "ImagePositionPatient", 3)
        if position is None:
            raise InputError(f"{path}: CT image has no ImagePositionPatient")
        positions.append(position)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    positions = np.asarray(positions)
    depth = positions @ normal
    order = [int(n) for n in np.argsort(depth, kind="stable")]
    steps = np.diff(depth[order])
    names = [series.files[n] for n in order]
    for n, step in enumerate(steps):
        if step < _SPACING_ATOL:
            raise InputError(f"{names[n + 1]}: same slice position as {names[n]} in series {series.uid} "
                             "(duplicate slice, or two acquisitions in one series)")
    in_plane = (positions[order] - positions[order[0]]) - np.outer(depth[order] - depth[order[0]], normal)
    worst = int(np.argmax(np.linalg.norm(in_plane, axis=1)))
    if np.linalg.norm(in_plane[worst]) > max(_GEOM_ATOL, 0.01 * float(pixel.min())):
        raise InputError(f"{names[worst]}: slice is shifted {np.linalg.norm(in_plane[worst]):.2f} mm within its "
                         f"plane relative to {names[0]} (gantry tilt or sheared series {series.uid}); "
                         "LinGuinE does not resample DICOM series")
    step = float(np.median(steps))
    bad = np.abs(steps - step) > max(_SPACING_ATOL, _SPACING_RTOL * step)
    if bad.any():
        n = int(np.argmax(np.abs(steps - step)))
        raise InputError(f"{names[n + 1]}: {steps[n]:.3f} mm from the previous slice {names[n]}, but the series "
                         f"{series.uid} is spaced {step:.3f} mm (missing slice or non-uniform spacing); "
                         "LinGuinE does not resample DICOM series: export a complete, evenly spaced series")
    origin = positions[order[0]]
    return order, origin, np.array([pixel[1], pixel[0], step]), np.column_stack([row, col, normal])


def _read_pixels(files: list[Path], series_uid: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        for path in files:  # name the file that fails
            try:
                sitk.ReadImage(str(path))
            except RuntimeError as one:
                raise InputError(f"{path}: cannot read pixel data ({str(one).strip().splitlines()[-1]})") from exc
        raise InputError(f"series {series_uid}: cannot read pixel data ({str(exc).strip().splitlines()[-1]})") from exc


def _scan_ids(chosen: list[tuple[_Series, dt.datetime]]) -> list[str]:
    descriptions = [safe_filename(s.description) if s.description else "" for s, _ in chosen]
    ids = []
    for (series, when), desc in zip(chosen, descriptions):
        if desc and descriptions.count(desc) == 1:
            ids.append(desc)
        else:
            ids.append(f"{when:%Y-%m-%d}" + (f"_{series.number}" if series.number is not None else ""))
    for n, scan_id in enumerate(ids):  # same date and series number twice: number them
        if ids.count(scan_id) > 1:
            ids[n] = f"{scan_id}-{ids[:n].count(scan_id) + 1}"
    return ids


def load_dicom_study(folder: str | os.PathLike, log=log_stderr) -> Study:
    """One patient's DICOM folder (nested allowed) -> Study with one timepoint per DICOM study."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    series, skipped = _read_headers(folder, log)
    for note in skipped[:10]:
        log(f"skipped non-CT DICOM object: {note}")
    if len(skipped) > 10:
        log(f"... and {len(skipped) - 10} more non-CT DICOM objects skipped")
    if not series:
        found = f"; found only: {'; '.join(skipped[:5])}" if skipped else ""
        raise InputError(f"{folder}: no CT image series found{found}")
    by_study: dict[str, list[_Series]] = defaultdict(list)
    for s in series.values():
        by_study[s.study_key].append(s)
    chosen = []
    for study_series in by_study.values():
        primary, reason, others = _choose(sorted(study_series, key=lambda s: s.uid))
        when = _datetime(primary.first)
        if when is None:
            raise InputError(f"{primary.files[0]}: StudyDate, SeriesDate, AcquisitionDate and ContentDate are all "
                             f"empty: cannot order the timepoints ({primary.label()})")
        chosen.append((primary, when, reason, others))
    chosen.sort(key=lambda c: c[1])
    ids = _scan_ids([(c[0], c[1]) for c in chosen])
    scans = []
    for scan_id, (primary, when, reason, others) in zip(ids, chosen):
        log(f"timepoint '{scan_id}' ({when:%Y-%m-%d %H:%M}): {reason}")
        order, origin, spacing, direction = _geometry(primary)
        files = [primary.files[n] for n in order]
        image = _read_pixels(files, primary.uid)
        if image.GetSize() != (int(primary.first.Columns), int(primary.first.Rows), len(files)):
            raise InputError(f"{files[0]}: series {primary.uid} read as size {image.GetSize()}, expected "
                             f"{primary.first.Columns}x{primary.first.Rows}x{len(files)}")
        image.SetOrigin(tuple(origin))
        image.SetSpacing(tuple(spacing))
        image.SetDirection(tuple(direction.ravel()))
        first = primary.first
        meta = scan_meta({k: _text(first, k) for k in DICOM_TAGS}, files,
                         [_text(primary.headers[n], "SOPInstanceUID") for n in order], reason, others)
        scans.append(Scan.from_sitk(image, scan_id, when, source_path=str(files[0].parent), meta={"dicom": meta}))
    first = chosen[0][0].first
    patient = _text(first, "PatientID") or _text(first, "PatientName")
    return Study(patient_id=patient, scans=scans, source_path=str(folder))
