"""Scans and longitudinal studies: data model, validation and loading (study.csv, image files).

A :class:`Scan` holds a voxel array indexed ``[k, j, i]`` plus its geometry (origin in LPS mm,
spacing in mm in (i, j, k) order, direction cosines as a 3x3 matrix whose columns are the i, j, k
axes in LPS). A :class:`Study` is one patient's scans sorted by acquisition date.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LinGuinELib.core import coords
from LinGuinELib.core.errors import InputError

_GEOMETRY_TOL = 1e-3


@dataclass
class Scan:
    """One timepoint: a CT volume with geometry, id, date and an optional lesion label map.

    ``array`` and ``label`` are indexed ``[k, j, i]``; ``label`` holds integer lesion ids
    (0 = background, the same id is the same lesion on every scan of the study).
    ``meta`` carries loader-specific facts (e.g. DICOM UIDs) that exporters need.
    """

    scan_id: str
    array: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    date: dt.datetime
    label: np.ndarray | None = None
    source_path: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.origin = np.asarray(self.origin, dtype=float).reshape(3)
        self.spacing = np.asarray(self.spacing, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        validate_array(self.array, f"scan '{self.scan_id}' ({self.source_path or 'in memory'})")
        if self.label is not None and self.label.shape != self.array.shape:
            raise InputError(
                f"scan '{self.scan_id}': label map shape {self.label.shape} does not match image shape {self.array.shape}"
            )

    @classmethod
    def from_sitk(cls, image: sitk.Image, scan_id: str, date: dt.datetime, label: sitk.Image | None = None,
                  source_path: str = "", label_path: str = "", meta: dict | None = None) -> "Scan":
        """Build a scan from SimpleITK images (the label, if given, must share the image's geometry)."""
        where = source_path or f"scan '{scan_id}'"
        check_3d(image, where)
        label_array = None
        if label is not None:
            check_3d(label, label_path or f"label of scan '{scan_id}'")
            check_same_geometry(image, label, label_path or f"label of scan '{scan_id}'", where)
            label_array = integer_labels(sitk.GetArrayFromImage(label), label_path or f"label of scan '{scan_id}'")
        return cls(scan_id=scan_id, array=sitk.GetArrayFromImage(image), origin=image.GetOrigin(),
                   spacing=image.GetSpacing(), direction=image.GetDirection(), date=date, label=label_array,
                   source_path=source_path, meta=dict(meta or {}))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (nk, nj, ni)."""
        return tuple(self.array.shape)

    @property
    def index_to_lps(self) -> np.ndarray:
        """4x4 matrix: homogeneous (i, j, k, 1) -> (x, y, z, 1) in LPS mm."""
        return coords.index_to_lps_matrix(self.origin, self.spacing, self.direction)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def spacing_kji(self) -> np.ndarray:
        """Spacing in array order (k, j, i), for ``scipy.ndimage`` ``sampling=`` arguments."""
        return self.spacing[::-1].copy()

    def lps_to_kji(self, points: np.ndarray) -> np.ndarray:
        """LPS mm (N, 3) -> continuous array index (N, 3) in (k, j, i) order, not rounded."""
        return coords.ijk_to_kji(coords.lps_to_ijk(points, self.index_to_lps))

    def kji_to_lps(self, kji: np.ndarray) -> np.ndarray:
        """Array index (N, 3) in (k, j, i) order -> LPS mm (N, 3)."""
        return coords.ijk_to_lps(coords.kji_to_ijk(np.asarray(kji, dtype=float)), self.index_to_lps)

    def contains_lps(self, points: np.ndarray) -> np.ndarray:
        """True for each LPS point (N, 3) that lies inside the scan's voxel box (half a voxel margin)."""
        kji = np.atleast_2d(self.lps_to_kji(points))
        upper = np.asarray(self.shape, dtype=float) - 0.5
        return np.all((kji >= -0.5) & (kji < upper), axis=1)

    def extent_lps(self) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, highest) LPS mm of the scan's voxel box (corners half a voxel beyond the outer centres)."""
        corners = np.array([[k, j, i] for k in (-0.5, self.shape[0] - 0.5) for j in (-0.5, self.shape[1] - 0.5)
                            for i in (-0.5, self.shape[2] - 0.5)])
        lps = self.kji_to_lps(corners)
        return lps.min(axis=0), lps.max(axis=0)

    def outside_message(self, point_lps, what: str = "point") -> str:
        """'<what> (x, y, z) (LPS mm) lies outside scan 'id', which spans x a..b, y c..d, z e..f (LPS mm)'."""
        low, high = self.extent_lps()
        span = ", ".join(f"{axis} {low[n]:.1f}..{high[n]:.1f}" for n, axis in enumerate("xyz"))
        return (f"{what} {coords.fmt_point(point_lps, 2)} (LPS mm) lies outside scan '{self.scan_id}', "
                f"which spans {span} (LPS mm)")

    def nearest_voxel(self, point_lps: np.ndarray) -> tuple[int, int, int]:
        """The (k, j, i) voxel whose centre is nearest to one LPS point, clipped into the array."""
        kji = np.rint(self.lps_to_kji(np.asarray(point_lps, dtype=float).reshape(1, 3))[0]).astype(int)
        return tuple(int(v) for v in np.clip(kji, 0, np.asarray(self.shape) - 1))

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """This scan's image (or ``array`` on this scan's grid) as a SimpleITK image with full geometry."""
        image = sitk.GetImageFromArray(self.array if array is None else array)
        image.SetOrigin(tuple(self.origin))
        image.SetSpacing(tuple(self.spacing))
        image.SetDirection(tuple(self.direction.ravel()))
        return image


def validate_array(array: np.ndarray, where: str) -> None:
    """Reject arrays the engine cannot track on: not 3-D, NaN/inf voxels, constant images."""
    if array.ndim != 3:
        raise InputError(f"{where}: expected a 3-D image, got {array.ndim}-D with shape {array.shape}")
    if min(array.shape) < 1:
        raise InputError(f"{where}: image is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(f"{where}: image contains NaN or infinite voxels")
    if array.min() == array.max():
        raise InputError(f"{where}: image is constant (every voxel is {array.flat[0]})")


def check_3d(image: sitk.Image, where: str) -> None:
    if image.GetDimension() != 3:
        raise InputError(f"{where}: expected a 3-D image, got a {image.GetDimension()}-D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{where}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")


def check_same_geometry(image: sitk.Image, other: sitk.Image, other_name: str, image_name: str) -> None:
    """Raise if ``other`` (e.g. a label map) is not on exactly ``image``'s voxel grid."""
    problems = []
    if image.GetSize() != other.GetSize():
        problems.append(f"size {other.GetSize()} vs {image.GetSize()}")
    for what in ("Origin", "Spacing", "Direction"):
        a = np.array(getattr(image, "Get" + what)())
        b = np.array(getattr(other, "Get" + what)())
        if a.shape != b.shape or not np.allclose(a, b, atol=_GEOMETRY_TOL * max(1.0, float(np.abs(a).max()))):
            problems.append(f"{what.lower()} {tuple(np.round(b, 4))} vs {tuple(np.round(a, 4))}")
    if problems:
        raise InputError(f"{other_name}: geometry does not match {image_name}: " + "; ".join(problems))


def integer_labels(array: np.ndarray, where: str) -> np.ndarray:
    """Label map as int32 lesion ids; rejects non-integer or negative values."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(f"{where}: label map must hold integer lesion ids")
    out = array.astype(np.int32)
    if out.min() < 0:
        raise InputError(f"{where}: label map has negative values (min {out.min()})")
    return out


def _inflated_size(data: bytes, path: Path, gzip_header: bool) -> int:
    """Bytes of a complete gzip (or zlib) stream ``data``; InputError naming ``path`` if cut or corrupt."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if gzip_header else 0))
    total = 0
    try:
        for start in range(0, len(data), 1 << 22):
            total += len(inflater.decompress(data[start:start + (1 << 22)]))
        total += len(inflater.flush())
    except zlib.error as exc:
        raise InputError(f"{path}: corrupt compressed data ({exc}); the file is damaged") from exc
    if not inflater.eof:
        raise InputError(f"{path}: compressed data ends early; the file is truncated (incomplete copy or download?)")
    return total


def check_image_file(path: Path) -> None:
    """Refuse a truncated or corrupt image file (which ITK may read as a partly zero image).

    A gzip file (.nii.gz, ...) must be a complete, CRC-valid stream; for NIfTI, NRRD and MetaImage the voxel
    bytes the header announces must all be present, attached (.nrrd, .mha) or in one detached file
    (.nhdr/.mhd beside a .raw or .raw.gz, which must exist).
    """
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data_len = _inflated_size(data, path, gzip_header=True)
        head = zlib.decompressobj(31).decompress(data[:1 << 16], 1024)
    else:
        data_len, head = len(data), data[:1024]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    one = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    n_bytes = int(np.prod(reader.GetSize())) * reader.GetNumberOfComponents() * one.GetSizeOfPixelComponent()
    needed = available = None
    where = path  # the file that holds the voxels
    if head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        little = head[:4] in (b"\x5c\x01\x00\x00", b"\x1c\x02\x00\x00")
        nifti2 = head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
        order = "<" if little else ">"
        offset = (int(np.frombuffer(head[168:176], order + "i8")[0]) if nifti2
                  else int(np.frombuffer(head[108:112], order + "f4")[0]))
        needed, available = offset + n_bytes, data_len
    elif data[:4] == b"NRRD" or data[:8] == b"ObjectTy" or data[:5] == b"NDims":
        end = data.find(b"\n\n") if data[:4] == b"NRRD" else data.find(b"ElementDataFile")
        if end < 0 and data[:4] == b"NRRD":
            end = len(data)  # a detached header (.nhdr) need not end in a blank line
        if end >= 0:
            header = data[:end].decode("latin-1")
            if data[:4] == b"NRRD":
                body = data[end + 2:]
                fields = {key.strip().lower(): value.strip() for key, value in
                          (line.split(":", 1) for line in header.splitlines() if ":" in line and ":=" not in line)}
                encoding = fields.get("encoding", "raw").lower()
                data_file = fields.get("data file", fields.get("datafile"))
            else:
                line_end = data.find(b"\n", end)
                data_file = data[end:line_end if line_end >= 0 else None].decode("latin-1").split("=", 1)[-1].strip()
                body = data[line_end + 1:] if line_end >= 0 else b""
                if data_file.upper() == "LOCAL":
                    data_file = None
                encoding = "zlib" if re.search(r"compresseddata\s*=\s*true", header, re.IGNORECASE) else "raw"
            if data_file is not None:  # detached voxels (.mhd + .raw, .nhdr + .raw[.gz]): check that one file
                if any(c in data_file for c in "%") or data_file.upper().startswith("LIST") or " " in data_file:
                    return  # a file list or pattern: ITK checks each file it opens
                where = path.parent / data_file
                if not where.is_file():
                    raise InputError(f"{path}: its voxel file {where} is missing")
                body = where.read_bytes()
            if encoding == "raw":
                needed, available = n_bytes, len(body)
            elif encoding in ("gzip", "gz", "zlib"):
                needed, available = n_bytes, _inflated_size(body, where, gzip_header=encoding != "zlib")
    if needed is not None and available < needed:
        header_note = "" if where == path else f" (the voxel file of {path.name})"
        raise InputError(f"{where}{header_note}: holds {available} of the {needed} bytes its header announces; the "
                         "file is truncated (incomplete copy or download?)")


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file, or a folder holding one DICOM series, with a clear error."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"{path}: folder holds no DICOM image series")
            if len(series) > 1:
                raise InputError(f"{path}: folder holds {len(series)} DICOM series; give one series per folder "
                                 "or load the whole folder as a DICOM study")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        check_image_file(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise InputError(f"{path}: cannot read image ({first})") from exc


_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M",
                 "%Y-%m-%d %H:%M", "%Y%m%d%H%M%S", "%d/%m/%Y", "%Y/%m/%d")


def parse_date(text: str, where: str) -> dt.datetime:
    """Parse an ISO (YYYY-MM-DD[ HH:MM[:SS]]), DICOM (YYYYMMDD[HHMMSS]) or DD/MM/YYYY date."""
    value = (text or "").strip()
    value = re.sub(r"\.\d+$", "", value)  # fractional seconds (DICOM TM)
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
    raise InputError(f"{where}: cannot read date {text!r} (use YYYY-MM-DD)")


@dataclass
class Study:
    """One patient's scans in time order (ties keep the given order). Needs at least two scans."""

    patient_id: str
    scans: list[Scan]
    source_path: str = ""

    def __post_init__(self):
        where = self.source_path or f"study of patient '{self.patient_id}'"
        if len(self.scans) < 2:
            raise InputError(f"{where}: a longitudinal study needs at least 2 scans, got {len(self.scans)}")
        seen = set()
        for scan in self.scans:
            if scan.scan_id in seen:
                raise InputError(f"{where}: duplicate scan id '{scan.scan_id}'")
            seen.add(scan.scan_id)
        self.scans = sorted(self.scans, key=lambda s: s.date)  # stable: equal dates keep input order

    def __len__(self) -> int:
        return len(self.scans)

    def __iter__(self):
        return iter(self.scans)

    @property
    def scan_ids(self) -> list[str]:
        return [s.scan_id for s in self.scans]

    def index(self, scan_id: str) -> int:
        for i, scan in enumerate(self.scans):
            if scan.scan_id == scan_id:
                return i
        raise InputError(f"unknown scan '{scan_id}'; this study has: {', '.join(self.scan_ids)}")

    def scan(self, scan_id: str) -> Scan:
        return self.scans[self.index(scan_id)]

    def without_labels(self) -> "Study":
        """A copy whose scans carry no label map (the images are shared, read-only): what a tracker is given
        when the labels are the truth it is scored against, so no backend can read them."""
        scans = []
        for scan in self.scans:
            array = scan.array.view()
            array.flags.writeable = False
            scans.append(dataclasses.replace(scan, array=array, label=None, meta=dict(scan.meta)))
        return Study(self.patient_id, scans, self.source_path)

    def resolve(self, spec: str) -> Scan:
        """A scan from an id, ``first``/``middle``/``last``, or a date (YYYY-MM-DD) held by one scan."""
        if spec in self.scan_ids:
            return self.scan(spec)
        if spec in ("first", "middle", "last"):
            return self.scans[{"first": 0, "middle": (len(self) - 1) // 2, "last": -1}[spec]]
        try:
            day = parse_date(spec, "").date()
        except InputError:
            day = None
        if day is not None:
            matches = [s for s in self.scans if s.date.date() == day]
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise InputError(f"date {spec} matches several scans ({', '.join(s.scan_id for s in matches)}); use a scan id")
        raise InputError(f"unknown scan '{spec}'; this study has: {', '.join(self.scan_ids)}")


STUDY_COLUMNS = ("patient_id", "scan_id", "date", "image")


def load_study_csv(csv_path: str | os.PathLike) -> Study:
    """Load ``patient_id,scan_id,date,image[,label]`` (paths relative to the csv, one patient)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: file not found")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in STUDY_COLUMNS if c not in columns]
        if missing:
            raise InputError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected {','.join(STUDY_COLUMNS)}[,label]")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    patients = sorted({r["patient_id"] for r in rows})
    if len(patients) > 1:
        raise InputError(f"{csv_path}: one study is one patient, found patient ids {', '.join(patients)}")
    scans = []
    for n, row in enumerate(rows, start=2):
        scan_id = row["scan_id"] or f"row{n}"
        where = f"{csv_path}, line {n} (scan '{scan_id}')"
        date = parse_date(row["date"], where)
        image_path = (csv_path.parent / row["image"]).resolve()
        image = read_image(image_path)
        label = label_path = None
        if row.get("label"):
            label_path = (csv_path.parent / row["label"]).resolve()
            label = read_image(label_path)
        scans.append(Scan.from_sitk(image, scan_id, date, label, source_path=str(image_path),
                                    label_path=str(label_path or "")))
    return Study(patient_id=patients[0] if patients else "", scans=scans, source_path=str(csv_path))


def load_label_map(path: str | os.PathLike, scan: Scan) -> np.ndarray:
    """Read a label map file and check that it lies on ``scan``'s grid; returns int32 ``[k, j, i]``."""
    image = read_image(path)
    check_3d(image, str(path))
    check_same_geometry(scan.to_sitk(), image, str(path), f"scan '{scan.scan_id}'")
    return integer_labels(sitk.GetArrayFromImage(image), str(path))
