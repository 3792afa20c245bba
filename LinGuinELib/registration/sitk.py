"""``sitk`` registration: classical CPU registration with SimpleITK (rigid -> affine -> demons).

Registration runs with fixed = source and moving = target, so the resulting transform ``T`` follows
ITK's resampling convention, ``warped_target(x) = target(T(x))`` for a source point ``x``: ``T`` maps
source LPS points straight onto the target anatomy they show, with no inversion, and the point map
agrees with the image warp by construction (both apply the same ``T``).

Pipeline, on intensities clamped to ``WINDOW_HU`` and resampled to the grids of ``DEMONS_LEVELS``
(in-plane: block averages of ~5, ~2.5 and ~1.9 mm, never finer than native; z: block averages of
thin slices, or thick slices refined by linear interpolation so the last level's displacement
field has ~2.5 mm steps along z even on 5 mm slices):

1. initialisation: the best (Mattes mutual information) of scanner coordinates, body-mask centre of
   mass, and in-plane centre of mass with scanner z - robust to shifted origins and cropped targets;
2. rigid (Euler) then affine, Mattes MI on the source body mask, ~10 -> ~5 mm;
3. deformable: fast-symmetric-forces demons level by level (``DEMONS_LEVELS``), over the source
   body's bounding box only. Where the target has no data (different field of view) the moving image
   is filled with the source itself, so those voxels exert no force and the field there is
   interpolated by the regulariser.

``T(x) = A(x + d(x))`` with ``A`` the affine and ``d`` the demons displacement field (zero outside the
bounding box of the source body).

Reproducible bit for bit on any thread count: the linear stages run on one thread (Mattes MI sums
per-thread histograms in arrival order) with a seeded sampling, and demons always runs its full
iteration count (no halt on a thread-summed RMS change); the demons update itself is per voxel.
"""

from __future__ import annotations

import contextlib

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LinGuinELib.core import cancel, coords
from LinGuinELib.core.errors import LinGuinEError, TrackingCancelled
from LinGuinELib.core.study import Scan
from LinGuinELib.registration.base import PointMap, Registration, as_points

_OUTSIDE = -5000.0  # sentinel for "no target data here" (below any windowed intensity)
_BODY_HU = -500.0
MIN_SHARED_BODY = 0.2  # fraction of the source body the aligned target must cover
WINDOW_HU = (-1000.0, 500.0)  # intensity clamp before every stage (lung to dense bone)
# Demons levels, coarse to fine: (in-plane spacing mm, z spacing mm, iterations, always all of them).
# The first level's grid also serves the linear stages. The last level (3 x a 0.6-0.7 mm pixel in-plane)
# costs most: at ~1.25 mm it had 2.2 x the voxels for no better lesion-centre error (scripts/bench_registration.py).
DEMONS_LEVELS = ((5.0, 5.0, 60), (2.5, 5.0, 40), (1.875, 2.5, 10))
DEMONS_SMOOTHING_MM = 4.0  # Gaussian regularisation (standard deviation) of the displacement field
DEMONS_THRESHOLD_HU = 0.0  # intensity differences below this exert no demons force (0: every difference counts)
METRIC_SEED = 1  # seed of Mattes MI's random sampling in the linear stages


def _body_points(mask: sitk.Image) -> np.ndarray:
    """LPS mm centres (N, 3) of the mask's voxels."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    matrix = coords.index_to_lps_matrix(mask.GetOrigin(), mask.GetSpacing(), mask.GetDirection())
    return coords.ijk_to_lps(coords.kji_to_ijk(kji), matrix)


def _inside_fraction(points: np.ndarray, image: sitk.Image) -> float:
    """Fraction of LPS points inside ``image``'s voxel box."""
    matrix = coords.index_to_lps_matrix(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    ijk = coords.lps_to_ijk(points, matrix)
    return float(np.all((ijk >= -0.5) & (ijk <= np.array(image.GetSize()) - 0.5), axis=1).mean())


def _crop_to_box(image: sitk.Image, box_lps: np.ndarray) -> sitk.Image:
    """The part of ``image`` covering an LPS box (2, 3) given by its min and max corners."""
    corners = np.array([[box_lps[a, 0], box_lps[b, 1], box_lps[c, 2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    matrix = coords.index_to_lps_matrix(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    ijk = coords.lps_to_ijk(corners, matrix)
    size = np.array(image.GetSize())
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, lo + 1, size)
    return image[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]


def _resized(image: sitk.Image, inplane_mm: float, z_mm: float) -> sitk.Image:
    """``image`` block-averaged in-plane to about ``inplane_mm`` (never finer than native) and brought to
    about ``z_mm`` along z: thinner slices block-averaged, thicker ones refined by linear interpolation
    (same first and last slice)."""
    sx, sy, sz = image.GetSpacing()
    factors = [max(1, int(round(inplane_mm / sx))), max(1, int(round(inplane_mm / sy))), max(1, int(round(z_mm / sz)))]
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    refine = int(np.ceil(image.GetSpacing()[2] / z_mm - 1e-6))
    if refine > 1 and image.GetSize()[2] > 1:
        size = [*image.GetSize()[:2], (image.GetSize()[2] - 1) * refine + 1]
        spacing = [*image.GetSpacing()[:2], image.GetSpacing()[2] / refine]
        image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                              image.GetDirection(), 0.0, sitk.sitkFloat32)
    return image


class TransformPointMap:
    """A :data:`PointMap` applying a SimpleITK transform to (N, 3) LPS points; ``transform`` is exposed
    so callers can warp the target image with exactly the same mapping (``sitk.Resample(target_image,
    source_image, pm.transform)``)."""

    def __init__(self, transform: sitk.Transform):
        self.transform = transform

    def __call__(self, points: np.ndarray) -> np.ndarray:
        pts = as_points(points)
        return np.array([self.transform.TransformPoint(tuple(p)) for p in pts], dtype=float).reshape(-1, 3)


def _check_cancel() -> None:
    """After an optimiser that :func:`cancel.requested` stopped early: end the registration."""
    if cancel.requested():
        raise TrackingCancelled("tracking cancelled by the user")


@contextlib.contextmanager
def _one_thread():
    """SimpleITK's default thread count set to 1 inside the block."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


class SitkRegistration(Registration):
    """Rigid -> affine -> demons registration on the CPU; its parameters are the module constants
    above (measured in ``scripts/bench_registration.py``). SimpleITK's global thread count applies; the
    result does not depend on it."""

    name = "sitk"

    def __init__(self):
        self._pyramids: dict[str, tuple[np.ndarray, dict[tuple[float, float], sitk.Image]]] = {}

    # ---- preprocessing -------------------------------------------------------------------------
    def _level(self, scan: Scan, inplane_mm: float, z_mm: float) -> sitk.Image:
        """``scan`` clamped to the window and :func:`_resized` to the grid of the ``DEMONS_LEVELS`` entry
        (``inplane_mm``, ``z_mm``); float32. Every level of a scan is built from one clamped copy on
        first use and cached (by scan id, and only while the scan keeps the same voxel array)."""
        array, cache = self._pyramids.get(scan.scan_id, (None, {}))
        if array is not scan.array:
            clamped = sitk.Clamp(scan.to_sitk(), sitk.sitkFloat32, *WINDOW_HU)
            cache = {(inplane, z): _resized(clamped, inplane, z) for inplane, z, _ in DEMONS_LEVELS}
            self._pyramids[scan.scan_id] = (scan.array, cache)
        return cache[inplane_mm, z_mm]

    def forget(self, scan_id: str) -> None:
        """Drop the cached downsampled images of one scan."""
        self._pyramids.pop(scan_id, None)

    @staticmethod
    def _body(image: sitk.Image) -> sitk.Image:
        """The patient's body (uint8): largest connected region above -500 HU with each axial slice's
        holes (the lungs) filled."""
        largest = sitk.RelabelComponent(sitk.ConnectedComponent(image > _BODY_HU), sortByObjectSize=True) == 1
        in_plane = np.zeros((3, 3, 3), dtype=bool)
        in_plane[1] = ndimage.generate_binary_structure(2, 1)
        filled = ndimage.binary_fill_holes(sitk.GetArrayViewFromImage(largest), structure=in_plane)
        body = sitk.GetImageFromArray(filled.astype(np.uint8))
        body.CopyInformation(image)
        return body

    # ---- linear stages ---------------------------------------------------------------------------
    def _method(self, fixed_mask: sitk.Image) -> sitk.ImageRegistrationMethod:
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.25, METRIC_SEED)
        reg.SetMetricFixedMask(fixed_mask)
        reg.SetInterpolator(sitk.sitkLinear)
        return reg

    def _initial(self, fixed, moving, fixed_body, moving_body, body_points) -> sitk.TranslationTransform:
        """Best translation among scanner coordinates and body centre-of-mass alignments."""
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(moving_body)
        shift = np.array(stats.GetCentroid(1)) - body_points.mean(axis=0)
        candidates = [np.zeros(3), shift, np.array([shift[0], shift[1], 0.0])]
        reg = self._method(fixed_body)
        scored = []
        for t in candidates:
            tx = sitk.TranslationTransform(3, tuple(t))
            reg.SetInitialTransform(tx)
            try:
                scored.append((reg.MetricEvaluate(fixed, moving), _inside_fraction(body_points + t, moving), tx))
            except RuntimeError:  # too few samples inside the target: a useless candidate
                continue
        if not scored:
            raise LinGuinEError("no initial alignment puts the two bodies over each other")
        most = max(inside for _, inside, _ in scored)
        return min((item for item in scored if item[1] >= 0.3 * most), key=lambda item: item[0])[2]

    def _linear(self, fixed, moving, fixed_body, moving_body, body_points) -> sitk.AffineTransform:
        """Rigid then affine (Mattes MI on the source body mask, 2 pyramid levels on ``fixed``), about
        the source body's centre."""
        start = self._initial(fixed, moving, fixed_body, moving_body, body_points)
        centre = body_points.mean(axis=0)
        rigid = sitk.Euler3DTransform()
        rigid.SetCenter(tuple(centre))
        rigid.SetTranslation(start.GetOffset())
        affine = sitk.AffineTransform(3)
        affine.SetCenter(tuple(centre))
        for tx, iterations in ((rigid, 200), (affine, 50)):  # an affine still creeping at 50 is left to demons
            if tx is affine:
                affine.SetMatrix(rigid.GetMatrix())
                affine.SetTranslation(rigid.GetTranslation())
            reg = self._method(fixed_body)
            reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                                         relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
            reg.SetOptimizerScalesFromPhysicalShift()
            reg.SetShrinkFactorsPerLevel([2, 1])
            reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
            reg.SetInitialTransform(tx, inPlace=True)
            reg.AddCommand(sitk.sitkIterationEvent, lambda reg=reg: reg.StopRegistration() if cancel.requested() else None)
            try:
                reg.Execute(fixed, moving)
            finally:
                reg.RemoveAllCommands()  # the command holds its filter: a cycle Python cannot free
            _check_cancel()
        return affine

    # ---- deformable stage ------------------------------------------------------------------------
    @staticmethod
    def _aligned(fixed: sitk.Image, moving: sitk.Image, affine: sitk.Transform) -> tuple[sitk.Image, np.ndarray]:
        """``moving`` resampled onto ``fixed`` through ``affine``, with voxels the target does not cover
        filled from ``fixed`` itself (so they exert no demons force), and the mask of those voxels."""
        resampled = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, affine, sitk.sitkLinear, _OUTSIDE))
        outside = resampled <= _OUTSIDE / 2
        resampled[outside] = sitk.GetArrayViewFromImage(fixed)[outside]
        image = sitk.GetImageFromArray(resampled)
        image.CopyInformation(fixed)
        return image, outside

    def _demons(self, source: Scan, target: Scan, affine: sitk.Transform, box_lps: np.ndarray) -> sitk.Image:
        """Multi-level demons displacement field on the finest source level's grid (fixed = source),
        restricted to the LPS box ``box_lps`` (2, 3) around the source body."""
        field = None
        for inplane, z, iterations in DEMONS_LEVELS:
            fixed = _crop_to_box(self._level(source, inplane, z), box_lps)
            moving, _ = self._aligned(fixed, self._level(target, inplane, z), affine)
            if field is None:
                field = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
                field.CopyInformation(fixed)
            else:
                field = sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
            demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
            demons.SetNumberOfIterations(iterations)
            demons.SetMaximumRMSError(0.0)  # always run every iteration: no halt on a thread-summed RMS
            demons.SetIntensityDifferenceThreshold(DEMONS_THRESHOLD_HU)
            demons.SetStandardDeviations([DEMONS_SMOOTHING_MM / s for s in fixed.GetSpacing()])
            demons.AddCommand(sitk.sitkIterationEvent,
                              lambda demons=demons: demons.StopRegistration() if cancel.requested() else None)
            try:
                field = demons.Execute(fixed, moving, field)
            finally:
                demons.RemoveAllCommands()  # else the filter and its buffers leak (~100 MB per run)
            _check_cancel()
        if not np.all(np.isfinite(sitk.GetArrayViewFromImage(field))):
            raise LinGuinEError("the demons displacement field diverged")
        return field

    # ---- API ------------------------------------------------------------------------------------
    def register(self, source: Scan, target: Scan) -> PointMap:
        """Source -> target map of LPS points (fixed = source, moving = target; no inversion)."""
        try:
            coarsest = DEMONS_LEVELS[0][:2]
            fixed, moving = self._level(source, *coarsest), self._level(target, *coarsest)
            fixed_body, moving_body = self._body(fixed), self._body(moving)
            body = _body_points(fixed_body)
            if len(body) == 0:
                raise LinGuinEError("no body (nothing above -500 HU) in the source scan")
            with _one_thread():  # Mattes MI adds per-thread histograms in arrival order: 1 thread is exact
                affine = self._linear(fixed, moving, fixed_body, moving_body, body)
            _, outside = self._aligned(fixed, moving, affine)
            shared = 1.0 - outside[sitk.GetArrayViewFromImage(fixed_body) > 0].mean()
            if shared < MIN_SHARED_BODY:
                raise LinGuinEError(f"after alignment only {shared:.0%} of the source body lies inside the target")
            margin = 2 * np.array(fixed.GetSpacing())
            box = np.array([body.min(axis=0) - margin, body.max(axis=0) + margin])
            field = self._demons(source, target, affine, box)
        except TrackingCancelled:
            raise
        except (RuntimeError, LinGuinEError) as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise LinGuinEError(f"sitk registration of scan '{source.scan_id}' to scan '{target.scan_id}' "
                                f"failed: {detail}") from exc
        transform = sitk.CompositeTransform(3)
        transform.AddTransform(affine)
        transform.AddTransform(sitk.DisplacementFieldTransform(field))  # applied first: x + d(x)
        return TransformPointMap(transform)
