"""Pure-NumPy glue between 3D Slicer's conventions and the engine's (no slicer/qt/vtk imports).

Slicer side: world coordinates are RAS mm; a volume's geometry is its 4x4 ``IJKToRAS`` matrix (local
coordinates) under an optional linear parent transform (local -> world, RAS); ``arrayFromVolume`` gives
``[k, j, i]`` arrays. Engine side: LPS mm and :class:`~LinGuinELib.core.study.Scan` (origin, spacing,
direction). A scan built here carries the volume's *world* geometry, so markups positions read with
``GetNthControlPointPositionWorld`` (RAS) map straight onto it, while masks stay on the volume's own
voxel grid. The Slicer module calls these helpers; they are unit-tested without Slicer.
"""

from __future__ import annotations

import datetime as dt
import re
from xml.sax.saxutils import quoteattr

import numpy as np

from LinGuinELib.core import coords
from LinGuinELib.core.errors import InputError
from LinGuinELib.core.study import Scan
from LinGuinELib.io import dicom_attributes

_ORTHO_TOL = 1e-4

# Segment terminology of every tracked lesion: "Morphologically Altered Structure" / "Neoplasm" from
# Slicer's DICOM master list (SNOMED CT 49755003 / 108369006), in Slicer's serialised form.
TERMINOLOGY_TUMOUR = ("Segmentation category and type - DICOM master list"
                      "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~^^"
                      "~Anatomic codes - DICOM master list~^^~^^")

# Segment tags written on every lesion segment (Slicer's DICOM-SEG export reads the DICOM.* ones).
TAG_LESION_ID = "LinGuinE.LesionId"
TAG_TRACKING_UID = "LinGuinE.TrackingUID"
TAG_STATUS = "LinGuinE.Status"
TAG_EDIT = "LinGuinE.Edit"  # "" (tracked), "clicks" (correction clicks) or "manual" (edited by hand)
TAG_ALGORITHM_TYPE = "DICOM.SegmentAlgorithmType"
TAG_ALGORITHM_NAME = "DICOM.SegmentAlgorithmName"

EDIT_MANUAL, EDIT_CLICKS = "manual", "clicks"

STATUS_TEXT = {"source": "found (prompt)", "found": "found", "not_found": "not found",
               "outside_fov": "outside field of view"}

# DICOM attributes and the date rule: one home, shared with the DICOM folder reader.
DICOM_TAGS = dicom_attributes.DICOM_TAGS


# -- geometry -------------------------------------------------------------------------------------
def world_ijk_to_ras(ijk_to_ras, parent_to_world=None) -> np.ndarray:
    """A volume's IJK -> world RAS matrix: its ``IJKToRAS`` under an optional linear parent transform
    (4x4, local RAS -> world RAS, e.g. from ``GetMatrixTransformToWorld``)."""
    m = _matrix(ijk_to_ras, "IJKToRAS")
    if parent_to_world is None:
        return m
    parent = _matrix(parent_to_world, "parent transform")
    if not np.allclose(parent[3], [0, 0, 0, 1]):
        raise InputError("the volume's parent transform is not affine; harden or remove it before tracking")
    return parent @ m


def geometry_from_ijk_to_ras(ijk_to_ras) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin LPS mm, spacing (i, j, k) mm, direction 3x3 LPS, columns = i, j, k axes) of an IJK->RAS
    matrix. Raises InputError for sheared or degenerate geometry (e.g. a non-rigid parent transform)."""
    lps = coords.lps_matrix_from_ras(_matrix(ijk_to_ras, "IJKToRAS"))
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise InputError(f"volume geometry has a zero or invalid voxel spacing {tuple(np.round(spacing, 4))}")
    direction = axes / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHO_TOL * 10):
        raise InputError("volume geometry is sheared (its axes are not perpendicular); harden the parent "
                         "transform into a resampled volume before tracking")
    return lps[:3, 3].copy(), spacing, direction


def ijk_to_ras_from_scan(scan: Scan) -> np.ndarray:
    """Slicer's 4x4 ``IJKToRAS`` matrix of an engine scan (for ``addVolumeFromArray``)."""
    return coords.ras_matrix_from_lps(scan.index_to_lps)


def scan_from_volume(scan_id: str, array_kji: np.ndarray, ijk_to_ras, date: dt.datetime, parent_to_world=None,
                     source_path: str = "", meta: dict | None = None) -> Scan:
    """An engine :class:`Scan` from a Slicer volume's ``[k, j, i]`` array and IJK->RAS geometry.

    The array is copied (the worker thread must not read VTK-managed memory the scene may change).
    """
    array = np.array(array_kji, copy=True)
    if array.ndim != 3:
        raise InputError(f"volume '{scan_id}': expected a 3-D scalar volume, got an array of shape {array.shape}")
    origin, spacing, direction = geometry_from_ijk_to_ras(world_ijk_to_ras(ijk_to_ras, parent_to_world))
    return Scan(scan_id=scan_id, array=array, origin=origin, spacing=spacing, direction=direction, date=date,
                source_path=source_path, meta=dict(meta or {}))


def ras_to_kji(points_ras, scan: Scan) -> np.ndarray:
    """World RAS mm (N, 3) -> continuous (k, j, i) index on ``scan`` (not rounded)."""
    return scan.lps_to_kji(np.atleast_2d(coords.ras_to_lps(points_ras)))


def kji_to_ras(kji, scan: Scan) -> np.ndarray:
    """(k, j, i) index (N, 3) on ``scan`` -> world RAS mm (N, 3)."""
    return coords.lps_to_ras(scan.kji_to_lps(np.atleast_2d(kji)))


def _matrix(m, what: str) -> np.ndarray:
    arr = np.asarray(m, dtype=float)
    if arr.shape != (4, 4) or not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: expected a finite 4x4 matrix, got shape {arr.shape}")
    return arr


# -- dates and DICOM attributes ------------------------------------------------------------------
def date_from_dicom_values(values: dict) -> dt.datetime | None:
    """Timepoint date from DICOM attribute values (keyword -> text): the Study date first, then series,
    acquisition, content (:func:`LinGuinELib.io.dicom_attributes.date_from_values`)."""
    return dicom_attributes.date_from_values(values)


_NAME_DATE = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_.]?(0[1-9]|1[0-2])[-_.]?(0[1-9]|[12]\d|3[01])(?!\d)")


def date_from_name(name: str) -> dt.datetime | None:
    """A date written in a volume name (``..._2021-03-04``, ``20210304``); None if there is none."""
    match = _NAME_DATE.search(name or "")
    if not match:
        return None
    try:
        return dt.datetime(*(int(g) for g in match.groups()))
    except ValueError:
        return None


def dicom_meta(values: dict, files: list[str], sop_instance_uids: list[str]) -> dict:
    """``scan.meta["dicom"]`` for a volume loaded from Slicer's DICOM database (the reader's own rule:
    :func:`LinGuinELib.io.dicom_attributes.scan_meta`)."""
    return dicom_attributes.scan_meta(values, files, sop_instance_uids, "loaded in 3D Slicer")


# -- views ----------------------------------------------------------------------------------------
def slice_view_containing(point_ras, slice_to_ras: dict, tol_mm: float = 0.5):
    """The key of the slice view whose plane passes through ``point_ras`` (the view a point was just
    placed in); ``slice_to_ras`` maps view keys to their 4x4 ``SliceToRAS`` matrices. None if no plane
    is within ``tol_mm``; the nearest plane wins."""
    point = np.asarray(point_ras, dtype=float).reshape(3)
    best, best_d = None, tol_mm
    for key, matrix in slice_to_ras.items():
        m = _matrix(matrix, f"SliceToRAS of {key}")
        normal = m[:3, 2] / np.linalg.norm(m[:3, 2])
        d = abs(float(normal @ (point - m[:3, 3])))
        if d <= best_d:
            best, best_d = key, d
    return best


def review_layout_xml(view_names: list[str], labels: list[str], max_columns: int = 4) -> str:
    """Slicer layout XML: one axial slice view per timepoint (singleton tag = view name, view label =
    timepoint label), side by side, wrapped into rows of at most ``max_columns``."""
    if not view_names or len(view_names) != len(labels):
        raise ValueError("one label per view is needed")
    columns = min(max_columns, len(view_names))
    rows = [list(zip(view_names, labels))[i:i + columns] for i in range(0, len(view_names), columns)]

    def view(name, label):
        return (f'<item><view class="vtkMRMLSliceNode" singletontag={quoteattr(name)}>'
                f'<property name="orientation" action="default">Axial</property>'
                f'<property name="viewlabel" action="default">{_xml_text(label[:12])}</property>'
                f'<property name="viewcolor" action="default">#7f7f7f</property></view></item>')

    body = "".join(f'<item><layout type="horizontal">{"".join(view(n, l) for n, l in row)}</layout></item>'
                   for row in rows)
    return f'<layout type="vertical">{body}</layout>'


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def field_of_view_mm(longest_diameter_mm: float | None, minimum_mm: float = 60.0) -> float:
    """Square field of view (mm) for reviewing a lesion: four diameters, at least ``minimum_mm``."""
    return max(minimum_mm, 4.0 * float(longest_diameter_mm or 0.0))


# -- segments -------------------------------------------------------------------------------------
def segment_id(lesion_id: int) -> str:
    """The segment ID of a lesion, the same in every timepoint's segmentation node."""
    return f"LinGuinE_lesion_{int(lesion_id)}"


def segment_tags(lesion, status: str, edit: str, algorithm_name: str) -> dict[str, str]:
    """Tags of one lesion's segment on one timepoint. A hand-edited segment is algorithm type MANUAL
    (with no algorithm name, as DICOM requires); tracked or click-corrected ones are SEMIAUTOMATIC."""
    tags = {TAG_LESION_ID: str(lesion.lesion_id), TAG_TRACKING_UID: lesion.tracking_uid, TAG_STATUS: status,
            TAG_EDIT: edit or ""}
    if edit == EDIT_MANUAL:
        tags.update({TAG_ALGORITHM_TYPE: "MANUAL", TAG_ALGORITHM_NAME: ""})
    else:
        tags.update({TAG_ALGORITHM_TYPE: "SEMIAUTOMATIC", TAG_ALGORITHM_NAME: algorithm_name})
    return tags
