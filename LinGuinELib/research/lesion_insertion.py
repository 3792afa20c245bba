"""Semi-synthetic low-contrast lesions inserted into the real soft tissue of a CT, with known masks.

A lesion (ellipsoid, or an irregular blob: an ellipsoid whose radius varies smoothly with direction)
replaces the tissue at a soft-tissue site (mediastinum, chest wall, liver dome, ...) or, juxtapleural,
straddles the pleura between lung and chest wall, by a uniform value
``contrast_hu`` above or below the local tissue (median HU of the soft tissue in a 5 mm shell around it).
The scan's own noise and texture are kept: inside the lesion the image becomes
``value + (image - smoothed image)``. The edge is blurred like the scanner: partial volume across the
slice (the lesion is rendered on 0.25 mm sub-slices and averaged over the slice thickness) and an
in-plane Gaussian point-spread function. Truth = voxels at least half inside the lesion.

The scan may first be resampled (``spacing`` (x, y, z) mm; linear, thick slices averaged over their
thickness). Thinner slices than the scan's are interpolated from it: the lesion is sharp in z, the
tissue around it is not. All points are array indices ``(k, j, i)`` unless named ``_lps``.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from LinGuinELib.core.study import Scan
from LinGuinELib.io.atomic import atomic_write, staged_outputs
from LinGuinELib.segmentation.classic import CHEST_WALL_MM  # one definition of the chest wall for both

SOFT_TISSUE_HU = (-30.0, 130.0)  # muscle, liver, blood, nodes, non-enhanced organs
PSF_SIGMA_MM = 0.5  # in-plane point-spread function of a soft-tissue kernel (FWHM ~1.2 mm)
LUNG_HU = -500.0  # below: air (lung, outside the body); above: the body's tissue


@dataclass(frozen=True)
class LesionShape:
    """Diameter (mm, the sphere of equal volume), contrast (HU vs the local tissue), kind
    ("ellipsoid" or "blob") and a seed for its axes, orientation and (blob) surface."""

    diameter_mm: float
    contrast_hu: float
    kind: str = "ellipsoid"
    seed: int = 0

    def radius_field(self, directions: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Boundary radius (mm) along unit ``directions`` (N, 3) in (z, y, x) mm order."""
        rng = np.random.default_rng(self.seed)
        axes = np.exp(rng.uniform(-0.25, 0.25, 3))
        axes /= np.prod(axes) ** (1 / 3)  # same volume as the sphere of diameter_mm
        rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        local = directions @ rot
        with np.errstate(divide="ignore"):  # the centre itself (zero direction) gets an infinite radius
            r = 0.5 * self.diameter_mm * scale / np.sqrt(((local / axes) ** 2).sum(1))
        if self.kind == "blob":
            lobes = rng.normal(size=(5, 3))
            lobes /= np.linalg.norm(lobes, axis=1, keepdims=True)
            bumps = sum(w * np.exp(3.0 * (directions @ v - 1.0)) for w, v in zip(rng.uniform(-0.35, 0.35, 5), lobes))
            r = r * (1.0 + bumps)
        elif self.kind != "ellipsoid":
            raise ValueError(f"unknown lesion kind {self.kind!r}; choose ellipsoid or blob")
        return r


def resample(scan: Scan, spacing_xyz, scan_id: str | None = None) -> Scan:
    """``scan`` on a grid of ``spacing_xyz`` mm covering the same box (linear; a slice thicker than the
    scan's averages the slices it covers, as a scanner's thick reconstruction does)."""
    spacing_xyz = np.asarray(spacing_xyz, dtype=float)
    image = scan.to_sitk(scan.array.astype(np.float32))
    sigma = np.sqrt(np.maximum((spacing_xyz / 2.355) ** 2 - (scan.spacing / 2.355) ** 2, 0.0))
    if sigma.any():
        image = sitk.SmoothingRecursiveGaussian(image, [float(max(s, 1e-3)) for s in sigma]) \
            if (sigma > 0).all() else _gauss_axes(image, sigma)
    size = [max(int(round(n * s / t)), 1) for n, s, t in zip(image.GetSize(), scan.spacing, spacing_xyz)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), tuple(spacing_xyz),
                        image.GetDirection(), -1024.0, sitk.sitkFloat32)
    return Scan(scan_id=scan_id or scan.scan_id, array=np.rint(sitk.GetArrayFromImage(out)).astype(np.int16),
                origin=out.GetOrigin(), spacing=out.GetSpacing(), direction=out.GetDirection(), date=scan.date)


def _gauss_axes(image: sitk.Image, sigma_xyz) -> sitk.Image:
    arr = sitk.GetArrayFromImage(image)
    sp = np.asarray(image.GetSpacing())
    arr = ndi.gaussian_filter(arr, sigma=(sigma_xyz / sp)[::-1], mode="nearest")
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def _coarse_step(scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """(voxel step per axis for a ~1.5 mm working grid, that grid's spacing in mm), both [k, j, i]."""
    step = np.maximum(np.round(1.5 / scan.spacing_kji).astype(int), 1)
    return step, scan.spacing_kji * step


def _pick_sites(scan: Scan, ok: np.ndarray, step: np.ndarray, radius_mm: float, n: int,
                rng: np.random.Generator, exclude: np.ndarray | None) -> list[np.ndarray]:
    """Up to ``n`` (k, j, i) sites of the full grid drawn at random from ``ok`` (a bool mask on the coarse
    grid of ``step``): at least ``radius_mm + 3`` mm inside the scan's box, more than ``radius_mm + 15`` mm
    from ``exclude`` (a full-grid bool mask) and spread at least a diameter + 10 mm apart."""
    sp, csp = scan.spacing_kji, scan.spacing_kji * step
    ok = ok.copy()
    margin = np.ceil((radius_mm + 3.0) / csp).astype(int)  # the whole lesion stays inside the scan
    for axis, m in enumerate(margin):
        index = [slice(None)] * 3
        index[axis] = np.r_[0:m, ok.shape[axis] - m:ok.shape[axis]]
        ok[tuple(index)] = False
    if exclude is not None and exclude.any():
        away = ndi.distance_transform_edt(~exclude[::step[0], ::step[1], ::step[2]], sampling=csp)
        ok &= away > radius_mm + 15.0
    cand = np.argwhere(ok)
    if not len(cand):
        return []
    chosen = []
    for idx in rng.permutation(len(cand)):
        p = cand[idx] * step
        if all(np.linalg.norm((p - q) * sp) > 2 * radius_mm + 10.0 for q in chosen):
            chosen.append(p)
        if len(chosen) == n:
            break
    return chosen


def soft_tissue_sites(scan: Scan, radius_mm: float, n: int, rng: np.random.Generator,
                      exclude: np.ndarray | None = None) -> list[np.ndarray]:
    """Up to ``n`` (k, j, i) sites at least ``0.6 * radius_mm + 2`` mm deep in soft tissue (median-filtered
    HU in SOFT_TISSUE_HU), away from ``exclude`` (bool mask, e.g. a real lesion), chosen at random
    (:func:`_pick_sites`)."""
    step, csp = _coarse_step(scan)
    tissue = ndi.median_filter(scan.array[::step[0], ::step[1], ::step[2]].astype(np.float32), size=(1, 3, 3))
    tissue = (tissue >= SOFT_TISSUE_HU[0]) & (tissue <= SOFT_TISSUE_HU[1])
    depth = ndi.distance_transform_edt(tissue, sampling=csp)
    return _pick_sites(scan, depth >= 0.6 * radius_mm + 2.0, step, radius_mm, n, rng, exclude)


def chest_wall_sites(scan: Scan, radius_mm: float, n: int, rng: np.random.Generator,
                     exclude: np.ndarray | None = None) -> list[np.ndarray]:
    """Up to ``n`` (k, j, i) sites for a juxtapleural lesion: in the lung, about ``radius_mm / 2`` from
    the chest wall (the body's tissue within CHEST_WALL_MM of the skin, not the mediastinum), so a
    lesion of that radius straddles the pleura; placed like :func:`soft_tissue_sites`."""
    step, csp = _coarse_step(scan)
    coarse = ndi.median_filter(scan.array[::step[0], ::step[1], ::step[2]].astype(np.float32), size=(1, 3, 3))
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    tissue, count = ndi.label(coarse > LUNG_HU)
    if not count:
        return []
    tissue = tissue == np.argmax(np.bincount(tissue.ravel())[1:]) + 1  # the body's tissue
    body = ndi.binary_fill_holes(tissue, structure=in_plane)
    lung = ndi.binary_fill_holes(body & ~tissue, structure=in_plane)  # lung with its vessels
    skin_depth = ndi.distance_transform_edt(body, sampling=csp)
    depth, nearest = ndi.distance_transform_edt(lung, sampling=csp, return_indices=True)
    wall = skin_depth[tuple(nearest)] <= CHEST_WALL_MM  # the nearest non-lung voxel is chest wall
    ok = lung & wall & (np.abs(depth - 0.5 * radius_mm) <= 0.75 * csp.max())
    return _pick_sites(scan, ok, step, radius_mm, n, rng, exclude)


def place_lesions(scan: Scan, shapes: list[LesionShape], rng: np.random.Generator,
                  exclude: np.ndarray | None = None) -> list[tuple[LesionShape, np.ndarray]]:
    """[(shape, (k, j, i) site)]: each shape at a soft-tissue site deep enough for its own size
    (:func:`soft_tissue_sites`), away from ``exclude`` and from the shapes placed before it; a shape
    for which no site is left is skipped."""
    taken = np.zeros(scan.shape, dtype=bool) if exclude is None else exclude.copy()
    grids = np.ogrid[tuple(slice(0, n) for n in scan.shape)]
    placed = []
    for shape in shapes:
        sites = soft_tissue_sites(scan, 0.5 * shape.diameter_mm, 1, rng, exclude=taken)
        if sites:
            placed.append((shape, sites[0]))
            taken |= sum(((g - c) * s) ** 2 for g, c, s in zip(grids, sites[0], scan.spacing_kji)) \
                <= (0.5 * shape.diameter_mm) ** 2
    return placed


def insert_lesion(scan: Scan, centre_kji, shape: LesionShape, scale: float = 1.0,
                  scan_id: str | None = None) -> tuple[Scan, np.ndarray]:
    """(scan with the lesion, bool truth mask [k, j, i]); ``scale`` multiplies the diameter (0 = no lesion,
    e.g. a lesion that disappeared: the image is returned unchanged and the mask is empty)."""
    sp = scan.spacing_kji
    centre = np.asarray(centre_kji, dtype=float)
    image = scan.array.astype(np.float32)
    truth = np.zeros(scan.shape, dtype=bool)
    out = Scan(scan_id=scan_id or scan.scan_id, array=scan.array.copy(), origin=scan.origin, spacing=scan.spacing,
               direction=scan.direction, date=scan.date)
    if scale <= 0:
        return out, truth
    r_max = 0.5 * shape.diameter_mm * scale * 1.6 + 6.0
    lo = np.maximum(np.floor(centre - r_max / sp).astype(int), 0)
    hi = np.minimum(np.ceil(centre + r_max / sp).astype(int) + 1, scan.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = image[box]
    # partial volume across the slice: 0.25 mm sub-slices averaged over the slice thickness
    n_sub = max(int(np.ceil(sp[0] / 0.25)), 1)
    offsets = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    jj, ii = np.meshgrid(np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij")
    frac = np.zeros(sub.shape, dtype=np.float32)
    for kk in range(lo[0], hi[0]):
        for off in offsets:
            rel = np.stack([np.full(jj.shape, (kk + off - centre[0]) * sp[0]), (jj - centre[1]) * sp[1],
                            (ii - centre[2]) * sp[2]], -1).reshape(-1, 3)
            dist = np.linalg.norm(rel, axis=1)
            dirs = rel / np.maximum(dist, 1e-9)[:, None]
            frac[kk - lo[0]] += (dist <= shape.radius_field(dirs, scale)).reshape(jj.shape) / n_sub
    frac = ndi.gaussian_filter(frac, sigma=(0.0, PSF_SIGMA_MM / sp[1], PSF_SIGMA_MM / sp[2]))
    inside = frac >= 0.5
    if not inside.any():  # smaller than a voxel: keep its most-covered voxel
        inside = frac >= frac.max()
    # local tissue: soft tissue in a 5 mm shell around the lesion
    outside = ndi.distance_transform_edt(~inside, sampling=sp)
    shell = (outside > 1.0) & (outside <= 6.0) & (sub >= SOFT_TISSUE_HU[0]) & (sub <= SOFT_TISSUE_HU[1])
    tissue = float(np.median(sub[shell])) if shell.any() else float(np.median(sub[inside]))
    smooth = ndi.gaussian_filter(sub, sigma=np.where(sp < 2.0, 1.0 / sp, 0.0), mode="nearest")  # keeps the noise
    sub = sub + frac * (tissue + shape.contrast_hu - smooth)
    out.array[box] = np.rint(np.clip(sub, -1024, 3071)).astype(out.array.dtype)
    truth[box] = inside
    return out, truth


def lesion_shapes(rng: np.random.Generator, n: int) -> list[LesionShape]:
    """``n`` low-contrast lesions for benchmarks: diameter 10-50 mm (log-uniform; shrunk by 0.5 they
    reach 5 mm), contrast +-[20, 60] HU vs the local tissue, ellipsoids and blobs alternating."""
    return [LesionShape(float(np.exp(rng.uniform(np.log(10.0), np.log(50.0)))),
                        float(rng.uniform(20.0, 60.0) * rng.choice([-1.0, 1.0])), ("ellipsoid", "blob")[m % 2],
                        int(rng.integers(1 << 30))) for m in range(n)]


def size_class(diameter_mm: float) -> str:
    """Benchmark size class of a lesion instance: small (< 12 mm), medium (< 25 mm) or large."""
    return "small" if diameter_mm < 12.0 else "medium" if diameter_mm < 25.0 else "large"


def make_inserted_study(scan: Scan, out_dir, shape: LesionShape, site_kji, scales=(1.0, 0.8, 0.5),
                        patient_id: str = "inserted") -> Path:
    """Write a longitudinal study (``study.csv`` + ``t<n>_image/label.nii.gz``) of one lesion inserted at
    ``site_kji`` of the same real ``scan``, its diameter scaled by ``scales`` at yearly intervals (0: gone);
    returns the path of ``study.csv``. The anatomy does not move, so the identity registration is exact."""
    out_dir = Path(out_dir)
    rows = []
    with staged_outputs(out_dir) as stage:
        for n, factor in enumerate(scales):
            sid = f"t{n}"
            made, truth = insert_lesion(scan, site_kji, shape, factor, sid)
            sitk.WriteImage(made.to_sitk(), str(stage / f"{sid}_image.nii.gz"))
            sitk.WriteImage(made.to_sitk(truth.astype(np.uint8)), str(stage / f"{sid}_label.nii.gz"))
            rows.append({"patient_id": patient_id, "scan_id": sid,
                         "date": (dt.date(2020, 1, 1) + dt.timedelta(days=365 * n)).isoformat(),
                         "image": f"{sid}_image.nii.gz", "label": f"{sid}_label.nii.gz"})
        with atomic_write(stage / "study.csv", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["patient_id", "scan_id", "date", "image", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return out_dir / "study.csv"
