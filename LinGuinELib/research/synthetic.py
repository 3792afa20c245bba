"""Semi-synthetic longitudinal studies with known ground truth, made from one real CT + lesion mask.

Scan 0 is the original CT (plus noise). Each follow-up ``t`` is the baseline resampled through a
transform ``T_t`` that maps a follow-up point ``x`` (LPS mm) to the baseline point showing the same
anatomy (the resampling direction). It is built from

    G_t(D_t(R_t(x)))

* ``R_t``: rigid patient motion (``Euler3DTransform`` about the image centre);
* ``D_t``: smooth deformation (a random cubic ``BSplineTransform`` with ~60 mm control spacing,
  sampled on an 8 mm grid);
* ``G_t``: lesion growth/shrinkage by a diameter factor ``s`` about each lesion's interior centre ``c``
  (a ``DisplacementFieldTransform`` on a local grid): a follow-up point at distance ``rho`` from ``c``
  samples the baseline at distance ``rho * s**-h`` where ``h`` falls smoothly (in log-radius) from 1
  inside the grown lesion to 0 far away, so the grown lesion is stretched tumour and a shrinking lesion
  pulls surrounding tissue in. ``c`` is a fixed point of ``G_t``.

Levels with ``inserted`` lesions first add them to the baseline beside the real ones
(:mod:`LinGuinELib.research.lesion_insertion`): one juxtapleural, straddling the lung and the chest wall,
then soft-tissue ones; each grows or shrinks like a real one.

For speed that composite is sampled once on a 2.5 mm grid covering the follow-up's field of view, and
``T_t`` *is* the resulting ``DisplacementFieldTransform`` (trilinear): the image (linear) and label map
(nearest) are resampled through exactly this transform, and the truth is computed from it. Then CT noise
is added and a few slices are cropped at either end (outputs keep the CT's native resolution).
``truth.json`` records the parameters and, per scan and lesion (LPS mm): ``centre_lps``, the true
lesion centre, i.e. the preimage ``T_t^-1(c)`` of the baseline centre (Newton's method, residual
< 1e-4 mm); ``centroid_lps``, the preimage of the baseline label's centroid; ``label_centroid_lps``,
the centroid of the written label map (a check on the other two); growth factor and volume.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LinGuinELib.io.atomic import atomic_path, atomic_write, staged_outputs
from LinGuinELib.core.errors import InputError, LinGuinEError
from LinGuinELib.core.study import Scan, check_3d, check_same_geometry, integer_labels, read_image


@dataclass(frozen=True)
class Difficulty:
    """Largest perturbation per follow-up (each drawn uniformly up to these bounds)."""

    shift_mm: float  # rigid translation length
    rotation_deg: float  # rotation about each axis
    deform_mm: float  # largest displacement of the smooth deformation
    growth: tuple[float, float]  # range of the final lesion diameter factor (log-uniform)
    noise_hu: float  # standard deviation of added white noise
    crop_slices: tuple[int, int]  # slices cropped at each end (min, max)
    growth_extremes: bool = False  # final factors are the ends of ``growth`` (alternating per lesion and seed)
    inserted: int = 0  # lesions inserted into the baseline beside the real ones: one at the chest wall, then soft tissue


LEVELS = {
    "easy": Difficulty(3.0, 1.0, 2.0, (0.8, 1.25), 8.0, (0, 2)),
    "medium": Difficulty(6.0, 2.0, 4.0, (0.65, 1.45), 12.0, (1, 3)),
    "hard": Difficulty(10.0, 3.0, 6.0, (0.5, 1.7), 18.0, (1, 4)),
    "strong": Difficulty(6.0, 2.0, 4.0, (0.6, 1.7), 12.0, (1, 3), growth_extremes=True),
    "multi": Difficulty(6.0, 2.0, 4.0, (0.6, 1.7), 12.0, (2, 6), growth_extremes=True, inserted=2),
}
INSERTED_DIAMETER_MM = (12.0, 24.0)  # range of the inserted lesions' baseline diameters (log-uniform)

BSPLINE_SPACING_MM = 60.0
DEFORM_GRID_MM = 8.0
FIELD_SPACING_MM = 2.5
HU_RANGE = (-1024, 3071)


def _lesion_geometry(scan: Scan) -> dict[int, dict]:
    """Per lesion id: interior centre (LPS mm), equivalent-sphere radius (mm) and volume (mL)."""
    from LinGuinELib.core.tracking import interior_centre

    out = {}
    for lesion_id in (int(v) for v in np.unique(scan.label) if v > 0):
        mask = scan.label == lesion_id
        volume = float(mask.sum()) * scan.voxel_volume_mm3
        centre = interior_centre(mask, scan)
        points = scan.kji_to_lps(np.argwhere(mask))
        extent = float(np.linalg.norm(points - centre, axis=1).max())
        out[lesion_id] = {"centre_lps": centre, "centroid_lps": points.mean(axis=0),
                          "radius_mm": (3 * volume / (4 * np.pi)) ** (1 / 3), "extent_mm": extent}
    return out


def _rigid(rng, level: Difficulty, centre) -> sitk.Euler3DTransform:
    angles = np.deg2rad(rng.uniform(-level.rotation_deg, level.rotation_deg, 3))
    direction = rng.normal(size=3)
    shift = direction / np.linalg.norm(direction) * rng.uniform(0.3, 1.0) * level.shift_mm
    return sitk.Euler3DTransform(tuple(centre), *angles, tuple(shift))


def _smooth_deformation(rng, level: Difficulty, reference: sitk.Image,
                        pad_mm: float = 40.0) -> tuple[sitk.DisplacementFieldTransform, float]:
    """Random cubic B-spline (``BSPLINE_SPACING_MM`` control spacing) over the image box padded by
    ``pad_mm``, sampled every ``DEFORM_GRID_MM`` and scaled so its largest displacement is
    ``U(0.6, 1) * deform_mm``; returns (the sampled field as a transform, that peak in mm)."""
    size = np.array(reference.GetSize())
    spacing = np.array(reference.GetSpacing())
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    extent = (size - 1) * spacing + 2 * pad_mm
    origin = np.array(reference.GetOrigin()) - direction @ np.full(3, pad_mm)
    bspline = sitk.BSplineTransform(3, 3)
    bspline.SetTransformDomainOrigin(tuple(origin))
    bspline.SetTransformDomainPhysicalDimensions(tuple(extent))
    bspline.SetTransformDomainMeshSize([int(m) for m in np.maximum(1, np.round(extent / BSPLINE_SPACING_MM))])
    bspline.SetTransformDomainDirection(tuple(direction.ravel()))
    bspline.SetParameters(tuple(rng.normal(size=bspline.GetNumberOfParameters())))
    grid = [int(e // DEFORM_GRID_MM) + 1 for e in extent]
    field = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, grid, tuple(origin),
                                              (DEFORM_GRID_MM,) * 3, tuple(direction.ravel()))
    values = sitk.GetArrayFromImage(field)
    peak = rng.uniform(0.6, 1.0) * level.deform_mm
    scaled = sitk.GetImageFromArray(values * (peak / np.linalg.norm(values, axis=-1).max()), isVector=True)
    scaled.CopyInformation(field)
    return sitk.DisplacementFieldTransform(scaled), float(peak)


def growth_field(centre, radius_mm: float, factor: float, direction) -> sitk.DisplacementFieldTransform:
    """Radial growth by diameter ``factor`` about ``centre``: plateau out to ``a = radius*max(s, 1)``,
    a log-radius smoothstep to identity at ``b = a*e^L`` (``L`` large enough that shrinking stays
    invertible: radial stretch >= 0.3). Zero outside its local grid."""
    log_s = np.log(factor)
    a = radius_mm * max(factor, 1.0)
    taper = max(np.log(3.0), 1.5 * abs(log_s) / 0.7)
    b = a * np.exp(taper)
    step = float(np.clip(a / 8.0, 0.5, 3.0))
    n = int(np.ceil(b / step)) + 2
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    offsets = np.arange(-n, n + 1, dtype=np.float64) * step
    zz, yy, xx = np.meshgrid(offsets, offsets, offsets, indexing="ij")  # index offsets along k, j, i
    local = np.stack([xx, yy, zz], axis=-1)  # (k, j, i, 3) offsets along the grid axes (i, j, k)
    rho = np.linalg.norm(local, axis=-1)
    t = np.clip(np.log(np.maximum(rho, 1e-9) / a) / taper, 0.0, 1.0)
    h = 1.0 - t * t * (3.0 - 2.0 * t)
    scale = np.exp(-log_s * h) - 1.0
    displacement = (local * scale[..., None]) @ direction.T  # grid axes -> LPS
    field = sitk.GetImageFromArray(displacement, isVector=True)
    field.SetSpacing((step,) * 3)
    field.SetDirection(tuple(direction.ravel()))
    field.SetOrigin(tuple(np.asarray(centre, dtype=float) - direction @ np.full(3, n * step)))
    return sitk.DisplacementFieldTransform(field)


def invert_point(transform: sitk.Transform, target, start, tol_mm: float = 1e-4) -> np.ndarray:
    """Solve ``transform(x) = target`` for x by Newton's method (finite-difference Jacobian)."""
    target = np.asarray(target, dtype=float)
    x = np.asarray(start, dtype=float)
    h = 0.05
    for _ in range(100):
        residual = np.array(transform.TransformPoint(tuple(x))) - target
        if np.linalg.norm(residual) < tol_mm:
            return x
        jac = np.column_stack([(np.array(transform.TransformPoint(tuple(x + h * e)))
                                - np.array(transform.TransformPoint(tuple(x - h * e)))) / (2 * h) for e in np.eye(3)])
        x = x - np.linalg.solve(jac, residual)
    raise LinGuinEError(f"cannot invert the synthetic transform at {np.round(target, 2).tolist()} (residual "
                     f"{np.linalg.norm(residual):.3g} mm)")


def _crop(rng, level: Difficulty, transform: sitk.Transform, image: sitk.Image, body_ij, lesion_k) -> tuple[int, int]:
    """Slices to crop (bottom, top): a random count, raised so that no end slice samples outside the
    baseline within the body's in-plane box ``body_ij`` ((i0, i1), (j0, j1)) - no padded wedges - but
    never within 3 slices of the lesion nor more than a quarter of the scan."""
    nk = image.GetSize()[2]
    grid = [(i, j) for i in np.linspace(*body_ij[0], 8) for j in np.linspace(*body_ij[1], 8)]

    def inside(k: int) -> bool:
        for i, j in grid:
            mapped = transform.TransformPoint(image.TransformContinuousIndexToPhysicalPoint((i, j, float(k))))
            if not -0.5 <= image.TransformPhysicalPointToContinuousIndex(mapped)[2] <= nk - 0.5:
                return False
        return True

    lo, hi = level.crop_slices
    limits = (min(max(0, lesion_k[0] - 3), nk // 4), min(max(0, nk - 1 - lesion_k[1] - 3), nk // 4))
    bottom, top = (min(int(rng.integers(lo, hi + 1)), limit) for limit in limits)
    while bottom < limits[0] and not inside(bottom):
        bottom += 1
    while top < limits[1] and not inside(nk - 1 - top):
        top += 1
    return bottom, top


def _sub_reference(reference: sitk.Image, k_range: tuple[int, int]) -> sitk.Image:
    """An empty image on ``reference``'s grid restricted to slices [k0, k1)."""
    k0, k1 = k_range
    size = list(reference.GetSize())
    size[2] = k1 - k0
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing(reference.GetSpacing())
    ref.SetDirection(reference.GetDirection())
    ref.SetOrigin(reference.TransformIndexToPhysicalPoint((0, 0, k0)))
    return ref


def _sampled(transform: sitk.Transform, reference: sitk.Image) -> sitk.DisplacementFieldTransform:
    """``transform`` sampled every ``FIELD_SPACING_MM`` over ``reference``'s box plus one grid step."""
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    extent = (np.array(reference.GetSize()) - 1) * np.array(reference.GetSpacing())
    size = [int(np.ceil(e / FIELD_SPACING_MM)) + 3 for e in extent]
    origin = np.array(reference.GetOrigin()) - direction @ np.full(3, FIELD_SPACING_MM)
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, size, tuple(origin),
                                              (FIELD_SPACING_MM,) * 3, reference.GetDirection())
    return sitk.DisplacementFieldTransform(field)


def _resample_label(label: sitk.Image, reference: sitk.Image, transform, lesions) -> sitk.Image:
    """Nearest-neighbour resampling of ``label`` onto ``reference``, computed only in a box around each
    ``(centre_lps, reach_mm)`` lesion (the rest is background); falls back to the full grid if a lesion
    touches its box."""
    out = np.zeros(reference.GetSize()[::-1], dtype=sitk.GetArrayViewFromImage(label).dtype)
    spacing_kji = np.array(reference.GetSpacing())[::-1]
    for centre, reach in lesions:
        kji = np.array(reference.TransformPhysicalPointToContinuousIndex(tuple(centre)))[::-1]
        half = np.ceil((reach * 1.3 + 10.0) / spacing_kji).astype(int)
        lo = np.clip(np.floor(kji).astype(int) - half, 0, out.shape)
        hi = np.clip(np.ceil(kji).astype(int) + half + 1, 0, out.shape)
        box = sitk.Image([int(v) for v in (hi - lo)[::-1]], sitk.sitkUInt8)
        box.SetSpacing(reference.GetSpacing())
        box.SetDirection(reference.GetDirection())
        box.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in lo[::-1]]))
        part = sitk.GetArrayFromImage(sitk.Resample(label, box, transform, sitk.sitkNearestNeighbor, 0,
                                                    label.GetPixelID()))
        inner = np.zeros(part.shape, dtype=bool)
        inner[tuple(slice(1 if a > 0 else 0, n - 1 if b < m else n)
                    for a, b, n, m in zip(lo, hi, part.shape, out.shape))] = True
        if part[~inner].any():
            return sitk.Resample(label, reference, transform, sitk.sitkNearestNeighbor, 0, label.GetPixelID())
        region = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        region[part > 0] = part[part > 0]
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference)
    return image


def _add_noise(rng, image: sitk.Image, sigma: float) -> sitk.Image:
    """int16 CT with white Gaussian noise of ``sigma`` HU, clipped to the CT range."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    if sigma > 0:
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(sigma)
    out = sitk.GetImageFromArray(np.clip(np.rint(arr), *HU_RANGE).astype(np.int16))
    out.CopyInformation(image)
    return out


def _write(image: sitk.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True, 1)


def _label_centroid(label: np.ndarray, lesion_id: int, scan_like: sitk.Image) -> list[float] | None:
    mask = label == lesion_id
    if not mask.any():
        return None
    kji = np.array(ndimage.center_of_mass(mask))
    return list(scan_like.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in kji[::-1])))


def _follow_up(rng, level: Difficulty, image, label, lesions: dict, growth: dict, body_ij, lesion_k) -> tuple:
    """One follow-up: (image float32, label map, crop (bottom, top), truth entries)."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    rigid = _rigid(rng, level, centre)
    deform, deform_peak = _smooth_deformation(rng, level, image)
    grows = [growth_field(lesions[k]["centre_lps"], lesions[k]["radius_mm"], s, image.GetDirection())
             for k, s in growth.items()]
    composite = sitk.CompositeTransform([*grows, deform, rigid])  # applied right to left
    crop = _crop(rng, level, composite, image, body_ij, lesion_k)
    reference = _sub_reference(image, (crop[0], image.GetSize()[2] - crop[1]))
    transform = _sampled(composite, reference)
    out_image = sitk.Resample(image, reference, transform, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    inverse_rigid = rigid.GetInverse()
    truth = {str(k): {"growth": growth[k],
                      **{key: invert_point(transform, v[key], inverse_rigid.TransformPoint(tuple(v[key]))).tolist()
                         for key in ("centre_lps", "centroid_lps")}} for k, v in lesions.items()}
    reach = [(truth[str(k)]["centre_lps"], max(growth[k], 1.0) * v["extent_mm"]) for k, v in lesions.items()]
    out_label = _resample_label(label, reference, transform, reach)
    extra = {"rigid": {"centre_lps": list(centre), "angles_deg": np.rad2deg(rigid.GetParameters()[:3]).tolist(),
                       "translation_mm": list(rigid.GetTranslation())},
             "deformation_max_mm": deform_peak}
    return out_image, out_label, crop, truth, extra


def _insert_lesions(image: sitk.Image, label: sitk.Image, count: int, rng) -> tuple[sitk.Image, sitk.Image, dict]:
    """The baseline with ``count`` lesions inserted (label ids after the real ones): the first straddles
    the pleura (:func:`chest_wall_sites`), the others lie in soft tissue; returns (image, label, lesion
    id -> "chest wall" | "soft tissue")."""
    from LinGuinELib.research.lesion_insertion import LesionShape, chest_wall_sites, insert_lesion, soft_tissue_sites

    scan = Scan.from_sitk(image, "t0", dt.datetime(2000, 1, 1), label)
    labels = scan.label.copy()
    kinds = {}
    for n in range(count):
        diameter = float(np.exp(rng.uniform(*np.log(INSERTED_DIAMETER_MM))))
        kind = "chest wall" if n == 0 else "soft tissue"
        finder = chest_wall_sites if n == 0 else soft_tissue_sites
        sites = finder(scan, 0.5 * diameter, 1, rng, exclude=labels > 0)
        if not sites:
            raise LinGuinEError(f"no {kind} site for a {diameter:.0f} mm lesion away from the others in this CT")
        contrast = float(rng.uniform(30.0, 60.0) if n == 0 else rng.uniform(20.0, 60.0) * rng.choice([-1.0, 1.0]))
        scan, mask = insert_lesion(scan, sites[0], LesionShape(diameter, contrast, ("ellipsoid", "blob")[n % 2],
                                                               int(rng.integers(1 << 30))))
        lesion_id = int(labels.max()) + 1
        labels[mask & (labels == 0)] = lesion_id
        kinds[lesion_id] = kind
    out_label = sitk.GetImageFromArray(labels.astype(sitk.GetArrayViewFromImage(label).dtype))
    out_label.CopyInformation(label)
    return scan.to_sitk(), out_label, kinds


def make_study(image_path, label_path, out_dir, n_scans: int = 4, seed: int = 0, difficulty: str = "medium",
               patient_id: str | None = None) -> Path:
    """Write a ``n_scans``-scan study (``study.csv``, ``truth.json``, ``<scan>_image/label.nii.gz``)
    into ``out_dir`` and return the path of ``study.csv``. Deterministic for a given seed."""
    if difficulty not in LEVELS:
        raise InputError(f"unknown difficulty {difficulty!r}; choose one of: {', '.join(LEVELS)}")
    if n_scans < 2:
        raise InputError(f"a study needs at least 2 scans, got {n_scans}")
    level = LEVELS[difficulty]
    image_path, label_path = Path(image_path), Path(label_path)
    image, label = read_image(image_path), read_image(label_path)
    check_3d(image, str(image_path))
    check_3d(label, str(label_path))
    check_same_geometry(image, label, str(label_path), str(image_path))
    label_array = integer_labels(sitk.GetArrayFromImage(label), str(label_path))
    if not label_array.any():
        raise InputError(f"{label_path}: the label map holds no lesion")
    image = sitk.Cast(image, sitk.sitkInt16)
    label = sitk.Cast(label, sitk.sitkUInt16 if label_array.max() + level.inserted > 255 else sitk.sitkUInt8)
    kinds = {int(k): "real" for k in np.unique(label_array) if k > 0}
    if level.inserted:  # its own random stream: the other levels' studies stay as they were
        image, label, added = _insert_lesions(image, label, level.inserted,
                                              np.random.default_rng([seed, sum(map(ord, image_path.name)), 17]))
        kinds.update(added)
        label_array = sitk.GetArrayFromImage(label)
    lesions = _lesion_geometry(Scan.from_sitk(image, "t0", dt.datetime(2000, 1, 1), label))
    lesion_k = tuple(int(k) for k in np.nonzero(label_array.any(axis=(1, 2)))[0][[0, -1]])
    body = np.argwhere(sitk.GetArrayViewFromImage(image)[::2, ::4, ::4] > -400)[:, 1:] * 4
    body_ij = ((body[:, 1].min(), body[:, 1].max()), (body[:, 0].min(), body[:, 0].max()))
    rng = np.random.default_rng([seed, sum(map(ord, difficulty)), sum(map(ord, image_path.name))])
    patient_id = patient_id or f"{image_path.name.split('.')[0]}-{difficulty}-s{seed}"
    date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    final_growth = {k: float(np.exp(rng.uniform(*np.log(level.growth)))) for k in lesions}
    if level.growth_extremes:  # strong growth or shrinkage: seed 0 grows the first lesion, seed 1 shrinks it
        final_growth = {k: level.growth[1 - (seed + n) % 2] for n, k in enumerate(sorted(lesions))}

    rows, scans_truth = [], []
    with staged_outputs(out_dir) as stage:
        for t in range(n_scans):
            scan_id = f"t{t}"
            entry = {"scan_id": scan_id, "date": date.isoformat(), "image": f"{scan_id}_image.nii.gz",
                     "label": f"{scan_id}_label.nii.gz"}
            if t == 0:
                out_image, out_label, crop = image, label, (0, 0)
                entry["lesions"] = {str(k): {"growth": 1.0, "centre_lps": v["centre_lps"].tolist(),
                                             "centroid_lps": v["centroid_lps"].tolist()} for k, v in lesions.items()}
            else:  # growth follows a jittered geometric path to its final factor
                growth = {k: float(s ** (t / (n_scans - 1) * (rng.uniform(0.8, 1.2) if t < n_scans - 1 else 1.0)))
                          for k, s in final_growth.items()}
                out_image, out_label, crop, entry["lesions"], extra = _follow_up(
                    rng, level, image, label, lesions, growth, body_ij, lesion_k)
                entry.update(extra)
            out_label_array = sitk.GetArrayViewFromImage(out_label)
            for k, info in entry["lesions"].items():
                info["label_centroid_lps"] = _label_centroid(out_label_array, int(k), out_label)
                info["volume_ml"] = float((out_label_array == int(k)).sum()) * np.prod(image.GetSpacing()) / 1000.0
            entry["crop_slices"] = list(crop)
            entry["noise_hu"] = level.noise_hu
            _write(_add_noise(rng, out_image, level.noise_hu), stage / entry["image"])
            _write(out_label, stage / entry["label"])
            rows.append({"patient_id": patient_id, "scan_id": scan_id, "date": entry["date"],
                         "image": entry["image"], "label": entry["label"]})
            scans_truth.append(entry)
            date += dt.timedelta(weeks=int(rng.integers(6, 17)), days=int(rng.integers(-3, 4)))
        truth = {"generator": "LinGuinELib.research.synthetic", "source_image": str(image_path), "source_label": str(label_path),
                 "seed": seed, "difficulty": difficulty, "parameters": asdict(level), "patient_id": patient_id,
                 "baseline_lesions": {str(k): {"radius_mm": v["radius_mm"], "extent_mm": v["extent_mm"],
                                               "final_growth": final_growth[k], "kind": kinds[k]}
                                      for k, v in lesions.items()},
                 "convention": "LPS mm. centre_lps: true lesion centre = preimage under the follow-up's transform of "
                               "the baseline interior centre; centroid_lps: same for the baseline label centroid; "
                               "label_centroid_lps: centroid of the written label map",
                 "scans": scans_truth}
        with atomic_write(stage / "truth.json") as fh:
            json.dump(truth, fh, indent=2)
        with atomic_write(stage / "study.csv", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["patient_id", "scan_id", "date", "image", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return Path(out_dir) / "study.csv"


def make_benchmark_studies(ct_dir, out_dir, seeds=(0, 1), levels=("easy", "medium", "hard"),
                           n_scans: int = 4) -> list[Path]:
    """One study per ``<name>_image.nrrd`` + ``<name>_label.nrrd`` pair in ``ct_dir`` x seed x level,
    written to ``out_dir/<name>-<level>-s<seed>/``; returns the ``study.csv`` paths."""
    ct_dir = Path(ct_dir)
    images = sorted(ct_dir.glob("*_image.nrrd"))
    if not images:
        raise InputError(f"{ct_dir}: no <name>_image.nrrd files")
    out = []
    for img, lvl, s in ((img, lvl, s) for img in images for lvl in levels for s in seeds):
        name = img.name[: -len("_image.nrrd")]
        target = Path(out_dir) / f"{name}-{lvl}-s{s}"
        if not (target / "study.csv").is_file():
            make_study(img, ct_dir / f"{name}_label.nrrd", target, n_scans=n_scans, seed=s, difficulty=lvl,
                       patient_id=f"{name}-{lvl}-s{s}")
        out.append(target / "study.csv")
    return out


def load_truth(study_csv) -> dict:
    """``truth.json`` beside a synthetic ``study.csv`` (or in the given folder)."""
    path = Path(study_csv)
    path = (path if path.is_dir() else path.parent) / "truth.json"
    if not path.is_file():
        raise InputError(f"{path}: file not found (not a synthetic study?)")
    with open(path) as fh:
        return json.load(fh)


def true_centres(truth: dict, lesion_id: int = 1) -> dict[str, np.ndarray]:
    """scan id -> true lesion centre (LPS mm) of one lesion."""
    return {s["scan_id"]: np.array(s["lesions"][str(lesion_id)]["centre_lps"]) for s in truth["scans"]}
