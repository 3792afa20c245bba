"""Lesion measurements: volume (mL), RECIST-style axial diameters (mm), centre (LPS mm), % change.

Diameters are measured per axial slice (the array's k planes; scans are axial CT): the longest
diameter is the largest distance between voxel-edge corners of the lesion in one slice; the short
axis is the lesion's width perpendicular to that diameter in the same slice. The reported slice is
the one with the longest diameter.

Change is computed on volume: from baseline = the first scan (in time) where the lesion was
measured; from nadir = the smallest volume measured on an earlier scan (0 % on the baseline).
A lesion not found or outside the field of view has no measurement (empty fields), since an empty
segmentation does not prove the lesion has gone.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from LinGuinELib.core.study import Scan

_CORNERS = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])


def _slice_diameters(points_mm: np.ndarray) -> tuple[float, float]:
    """(longest, perpendicular width) of a set of 2-D points in mm."""
    try:
        hull = points_mm[ConvexHull(points_mm).vertices]
    except (QhullError, ValueError):
        hull = points_mm
    diff = hull[:, None, :] - hull[None, :, :]
    d2 = (diff ** 2).sum(-1)
    a, b = np.unravel_index(np.argmax(d2), d2.shape)
    longest = math.sqrt(d2[a, b])
    if longest == 0:
        return 0.0, 0.0
    axis = (hull[b] - hull[a]) / longest
    normal = np.array([-axis[1], axis[0]])
    proj = hull @ normal
    return longest, float(proj.max() - proj.min())


def axial_diameters(mask: np.ndarray, scan: Scan) -> tuple[float, float, int]:
    """(longest diameter mm, short axis mm, slice index k) over the axial slices of a bool mask."""
    best = (0.0, 0.0, -1)
    m2 = scan.direction[:2, :2] * scan.spacing[:2]  # in-plane (i, j) -> (x, y) mm of one slice
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        jj, ii = np.nonzero(mask[k])
        centres = np.stack([ii, jj], axis=1).astype(float)
        corners = (centres[:, None, :] + _CORNERS[None]).reshape(-1, 2)
        longest, short = _slice_diameters(corners @ m2.T)
        if longest > best[0]:
            best = (longest, short, int(k))
    return best


def dice(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice 2|P∩T| / (|P|+|T|) of two bool masks; None when both are empty (nothing to score)."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    total = int(predicted.sum()) + int(truth.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(predicted, truth).sum()) / total


def centre_of_mass_lps(mask: np.ndarray, scan: Scan) -> np.ndarray | None:
    """Centre of mass (mean voxel centre) of a bool mask on ``scan``'s grid, in LPS mm; None if empty."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    return scan.kji_to_lps(np.array(ndimage.center_of_mass(mask)).reshape(1, 3))[0]


def measure_mask(mask: np.ndarray, scan: Scan) -> dict:
    """Volume (mL), longest/short axial diameters (mm) and centre of mass (LPS mm) of a bool mask."""
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if n == 0:
        return {"volume_ml": 0.0, "longest_diameter_mm": 0.0, "short_axis_mm": 0.0, "centre_lps": None}
    longest, short, _ = axial_diameters(mask, scan)
    return {"volume_ml": n * scan.voxel_volume_mm3 / 1000.0, "longest_diameter_mm": longest,
            "short_axis_mm": short, "centre_lps": centre_of_mass_lps(mask, scan)}


def percent_changes(volumes: list[float | None]) -> list[tuple[float | None, float | None]]:
    """(change from baseline %, change from nadir %) for a time-ordered list of volumes (None = unmeasured)."""
    out, baseline, nadir = [], None, None
    for v in volumes:
        if v is None:
            out.append((None, None))
            continue
        if baseline is None:
            baseline = v
            out.append((0.0, 0.0))
        else:
            out.append(tuple(100.0 * (v - ref) / ref if ref > 0 else None for ref in (baseline, nadir)))
        nadir = v if nadir is None else min(nadir, v)
    return out


# The lesion-row fields (one row per lesion x scan), in lesions.csv order: key -> (table title, kind), kind
# "string" or "double" (a number; None when unmeasured). Front ends derive their columns from this.
LESION_FIELDS = {
    "lesion_id": ("Lesion id", "string"), "lesion_name": ("Lesion", "string"), "scan_id": ("Timepoint", "string"),
    "date": ("Date", "string"), "status": ("Status", "string"), "confidence": ("Confidence", "string"),
    "volume_ml": ("Volume (mL)", "double"), "longest_diameter_mm": ("Longest diameter (mm)", "double"),
    "short_axis_mm": ("Short axis (mm)", "double"), "centre_x": ("Centre x (LPS mm)", "double"),
    "centre_y": ("Centre y (LPS mm)", "double"), "centre_z": ("Centre z (LPS mm)", "double"),
    "change_from_baseline_pct": ("Change from baseline (%)", "double"),
    "change_from_nadir_pct": ("Change from nadir (%)", "double"),
}
LESION_COLUMNS = tuple(LESION_FIELDS)


def measurement_rows(result) -> list[dict]:
    """One row per lesion x scan (study order) for a :class:`~LinGuinELib.core.tracking.TrackingResult`,
    measured on the overlap-resolved label maps. Unmeasured values are None."""
    rows = []
    label_maps = {s.scan_id: result.label_map(s.scan_id) for s in result.study}
    for lesion in sorted(result.lesions, key=lambda l: l.lesion_id):
        per_scan = []
        for scan in result.study:
            obs = result.observations[lesion.lesion_id][scan.scan_id]
            m = measure_mask(label_maps[scan.scan_id] == lesion.lesion_id, scan) if obs.found else None
            per_scan.append((scan, obs, m))
        changes = percent_changes([m["volume_ml"] if m else None for _, _, m in per_scan])
        for (scan, obs, m), (base, nadir) in zip(per_scan, changes):
            centre = m["centre_lps"] if m else None
            rows.append({
                "lesion_id": lesion.lesion_id, "lesion_name": lesion.name, "scan_id": scan.scan_id,
                "date": scan.date.date().isoformat(), "status": obs.status,
                "confidence": obs.confidence,
                "volume_ml": m["volume_ml"] if m else None,
                "longest_diameter_mm": m["longest_diameter_mm"] if m else None,
                "short_axis_mm": m["short_axis_mm"] if m else None,
                "centre_x": centre[0] if centre is not None else None,
                "centre_y": centre[1] if centre is not None else None,
                "centre_z": centre[2] if centre is not None else None,
                "change_from_baseline_pct": base, "change_from_nadir_pct": nadir,
            })
    return rows
