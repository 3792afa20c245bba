"""uniGradICON, multiGradICON and the GradICON lung-CT model as registration backends (local weights only).

Network: ``unigradicon.make_network([1, 1, N, N, N], include_last_step=True)`` with N = 175 (the
three models share this architecture), weights loaded strictly from a local file found or downloaded by
:mod:`LinGuinELib.backends.models`. One forward pass per scan pair gives both directions; both are cached.

Preprocessing, per model, at full resolution and then resized to N^3 (trilinear, as ``register_pair``):
uni/multiGradICON clamp CT to [-1000, 1000] HU and scale to [0, 1]; the lung model does what upstream's
``lung_network_preprocess`` does: clamp to [-1000, 0], scale to [0, 1] and multiply by a lung mask, here
computed per scan at full resolution (:func:`lung_mask`: air threshold, air outside the body removed
slice by slice, the largest components, closing and hole filling). (A pre-aligned target is resampled
onto the grid first, so its mask is computed there.) The lung weights load as upstream's
``init_network`` loads them (``strict=False``); uni/multiGradICON weights must match exactly.

Grid convention (the one of ``icon_registration.itk_wrapper.register_pair``). Axes are in array order
(k, j, i). An image of ``n`` voxels on an axis is resized to ``N`` with trilinear interpolation and
``align_corners=False``, so a continuous image index ``u`` and network index ``m`` relate by
``m = (u + 0.5) * N / n - 0.5`` and ``u = (m + 0.5) * n / N - 0.5``. The network's own coordinates are
``m / (N - 1)`` in [0, 1]. ``phi_BA`` (moving A = source, fixed B = target) holds for each network voxel of
A its position in B; its displacement, in network voxels, is interpolated trilinearly at ``m`` (edge
values beyond the grid). A source point therefore goes: LPS -> ``u`` on the source -> ``m`` -> ``m + d(m)``
-> ``u`` on the target -> LPS.

Field of view: a zero displacement maps image box to image box. When the two boxes differ (a box corner
moves by more than :data:`PREALIGN_TOL_MM` under the box-to-box map) the target is first aligned rigidly to
the source (a quick multi-resolution Mattes-MI rigid registration at 4 mm) and resampled through that
rigid transform onto the source's network grid; the point map then ends with the rigid transform.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LinGuinELib.backends.device import import_torch_package, resolve_device, shared_worker
from LinGuinELib.core.errors import InputError
from LinGuinELib.backends.models import default_manager
from LinGuinELib.core.study import Scan
from LinGuinELib.registration.base import PointMap, Registration, as_points

DEFAULT_INPUT_SIZE = 175
MIN_INPUT_SIZE = 65
IO_LEARNING_RATE = 2e-5  # icon_registration's default fine-tuning rate
AIR_HU = -1000.0
# prealign="auto" aligns the target rigidly first when a box corner moves by more than this (mm) under the
# box-to-box map; a smaller mismatch is left to the network.
PREALIGN_TOL_MM = 10.0


class NetworkFrame:
    """Network grid index ``m`` (k, j, i, continuous) <-> LPS mm for one side of a registration.

    The grid covers ``geometry``'s voxel box (align_corners=False convention above); ``rigid`` = (R, t),
    if given, maps that box's LPS points onto the scan actually registered: ``p_scan = R p + t``.
    """

    def __init__(self, geometry: Scan, size: int, rigid: tuple[np.ndarray, np.ndarray] | None = None):
        self.geometry = geometry
        self.size = int(size)
        self.rigid = rigid
        self.shape = np.asarray(geometry.shape, dtype=float)

    def net_to_lps(self, m: np.ndarray, through_rigid: bool = True) -> np.ndarray:
        u = (np.asarray(m, float) + 0.5) * self.shape / self.size - 0.5
        p = self.geometry.kji_to_lps(u)
        return p if self.rigid is None or not through_rigid else p @ self.rigid[0].T + self.rigid[1]

    def lps_to_net(self, points: np.ndarray) -> np.ndarray:
        p = as_points(points)
        if self.rigid is not None:
            p = (p - self.rigid[1]) @ self.rigid[0]  # R^-1 = R^T
        u = self.geometry.lps_to_kji(p)
        return (u + 0.5) * self.size / self.shape - 0.5

    @property
    def spacing_kji(self) -> np.ndarray:
        """Voxel size of the network grid in mm, (k, j, i) order."""
        return self.geometry.spacing_kji * self.shape / self.size

    @property
    def axial_axis(self) -> int:
        """The array axis closest to the patient's head-feet (LPS z) direction."""
        return 2 - int(np.argmax(np.abs(self.geometry.direction[2, :])))

    def sitk_reference(self) -> sitk.Image:
        """An empty image on this network grid (before ``rigid``), for resampling."""
        ref = sitk.Image([self.size] * 3, sitk.sitkFloat32)
        ref.SetSpacing(tuple(float(s) for s in self.spacing_kji[::-1]))
        ref.SetDirection(tuple(self.geometry.direction.ravel()))
        ref.SetOrigin(tuple(float(v) for v in self.net_to_lps(np.zeros((1, 3)), through_rigid=False)[0]))
        return ref


class FieldPointMap:
    """LPS points on the source frame -> LPS points on the target frame through a displacement field
    ``disp`` (3, N, N, N) in network voxels, channel order (k, j, i), interpolated trilinearly."""

    def __init__(self, disp: np.ndarray, source: NetworkFrame, target: NetworkFrame):
        self.disp = disp
        self.source = source
        self.target = target

    def __call__(self, points: np.ndarray) -> np.ndarray:
        m = self.source.lps_to_net(points)
        d = np.stack([ndimage.map_coordinates(self.disp[c], m.T, order=1, mode="nearest") for c in range(3)], axis=1)
        return self.target.net_to_lps(m + d)


def box_mismatch_mm(a: Scan, b: Scan) -> float:
    """Largest distance (mm) by which a corner of ``a``'s voxel box moves under the box-to-box map to ``b``."""
    na, nb = np.asarray(a.shape, float), np.asarray(b.shape, float)
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in na])))
    mapped = (corners + 0.5) * nb / na - 0.5
    return float(np.linalg.norm(a.kji_to_lps(corners) - b.kji_to_lps(mapped), axis=1).max())


def _coarse(scan: Scan, spacing_mm: float) -> sitk.Image:
    """The scan block-averaged and resampled to an isotropic grid, clamped to [-1000, 1000] HU."""
    shrink = [max(1, int(spacing_mm // s)) for s in scan.spacing]
    image = sitk.BinShrink(sitk.Clamp(scan.to_sitk(), sitk.sitkFloat32, -1000.0, 1000.0), shrink)
    extent = np.asarray(scan.shape[::-1], float) * scan.spacing  # box size in mm, (i, j, k)
    size = [max(8, int(round(e / spacing_mm))) for e in extent]
    spacing = [float(e / m) for e, m in zip(extent, size)]
    origin = scan.kji_to_lps(((np.asarray(spacing) / scan.spacing) * 0.5 - 0.5)[::-1].reshape(1, 3))[0]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), spacing,
                         tuple(scan.direction.ravel()), AIR_HU, sitk.sitkFloat32)


def _body_centroid(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayViewFromImage(image)
    body = np.argwhere(arr > -500)
    if len(body) == 0:
        return np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    c = body.mean(axis=0)[::-1]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in c)))


def rigid_prealign(source: Scan, target: Scan, spacing_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Rigid transform (R, t) with ``p_target = R p_source + t``, from ``spacing_mm`` isotropic copies: body
    centroids matched in x/y, an exhaustive search of the head-feet (LPS z) shift in steps of twice
    ``spacing_mm`` up to half the longer scan's length either side of box-centre alignment, then Euler 3-D
    Mattes-MI refinement at 2x and 1x ``spacing_mm``."""
    fixed, moving = _coarse(source, spacing_mm), _coarse(target, spacing_mm)
    cf, cm = _body_centroid(fixed), _body_centroid(moving)

    def z_range(scan):
        z = scan.kji_to_lps(np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in scan.shape]))))[:, 2]
        return z.min(), z.max()

    (fz0, fz1), (mz0, mz1) = z_range(source), z_range(target)
    step = 2 * spacing_mm
    half = int(np.ceil(max(fz1 - fz0, mz1 - mz0) / 2 / step))
    initial = sitk.Euler3DTransform()
    initial.SetCenter(tuple(cf))
    initial.SetTranslation((float(cm[0] - cf[0]), float(cm[1] - cf[1]), float((mz0 + mz1 - fz0 - fz1) / 2)))

    def method(shrink, smooth):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.1, seed=7)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetShrinkFactorsPerLevel(shrink)
        reg.SetSmoothingSigmasPerLevel(smooth)
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        return reg

    search = method([1], [0])
    search.SetOptimizerAsExhaustive([0, 0, 0, 0, 0, half], stepLength=step)
    search.SetOptimizerScales([1, 1, 1, 1, 1, 1])
    search.SetInitialTransform(initial, inPlace=True)
    search.Execute(fixed, moving)

    refine = method([2, 1], [spacing_mm, 0])
    refine.SetOptimizerAsRegularStepGradientDescent(learningRate=4.0, minStep=0.05, numberOfIterations=150,
                                                    relaxationFactor=0.6)
    refine.SetOptimizerScalesFromPhysicalShift()
    refine.SetInitialTransform(initial, inPlace=True)
    refine.Execute(fixed, moving)
    rotation = np.asarray(initial.GetMatrix(), float).reshape(3, 3)
    return rotation, np.asarray(initial.TransformPoint((0.0, 0.0, 0.0)), float)


def lung_mask(hu: np.ndarray, spacing_kji, axial_axis: int = 0, closing_mm: float = 6.0) -> np.ndarray:
    """Lungs on a CT (HU array): air below -400 HU not connected, within its axial slice, to the slice border
    (outside the body); the components of at least 20 % of the largest (at most two: the lungs, joined or
    not by the airways); closed with a ``closing_mm`` ellipsoid and hole-filled slice by slice. Empty when
    no air pocket of 100 mL is found."""
    spacing = np.asarray(spacing_kji, float)
    air = hu < -400
    in_plane = ndimage.generate_binary_structure(3, 1)  # 4-connectivity within each axial slice
    index = [slice(None)] * 3
    for off in (0, 2):
        index[axial_axis] = off
        in_plane[tuple(index)] = False
    labels, _ = ndimage.label(air, structure=in_plane)
    border = set()
    for axis in range(3):
        if axis == axial_axis:
            continue
        for side in (0, -1):
            border.update(np.unique(np.take(labels, side, axis=axis)).tolist())
    inside = air & ~np.isin(labels, list(border - {0}))
    comps = cc3d.connected_components(inside, connectivity=6)
    counts = np.bincount(comps.ravel())
    counts[0] = 0
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if counts.max(initial=0) * voxel_ml < 100.0:
        return np.zeros(hu.shape, dtype=bool)
    order = np.argsort(counts)[::-1][:2]
    keep = [c for c in order if counts[c] >= 0.2 * counts[order[0]]]
    mask = np.isin(comps, keep)
    radius = np.maximum(1, np.round(closing_mm / spacing)).astype(int)  # (k, j, i) voxels
    closed = sitk.GetArrayFromImage(sitk.BinaryMorphologicalClosing(  # multi-threaded; safe border
        sitk.GetImageFromArray(mask.astype(np.uint8)), [int(r) for r in radius[::-1]], sitk.sitkBall, 1, True)) > 0
    filled = np.moveaxis(closed, axial_axis, 0).copy()
    for z in range(filled.shape[0]):
        filled[z] = ndimage.binary_fill_holes(filled[z])
    return np.moveaxis(filled, 0, axial_axis) | mask


def build_network(input_size: int = DEFAULT_INPUT_SIZE):
    """The GradICON network (uni/multi/lung share it) on an ``input_size``^3 grid, random weights, eval mode."""
    if int(input_size) < MIN_INPUT_SIZE:
        raise InputError(f"GradICON input size must be at least {MIN_INPUT_SIZE} per axis, got {input_size}")
    icon = import_torch_package("icon_registration", "GradICON")
    unigradicon = import_torch_package("unigradicon", "GradICON")
    n = int(input_size)
    net = unigradicon.make_network([1, 1, n, n, n], include_last_step=True, loss_fn=icon.LNCC(sigma=5))
    return net.eval()


class GradICONRegistration(Registration):
    """A GradICON-family network as a :class:`Registration` backend.

    Options: ``device`` (auto|cpu|cuda|cuda:N), ``weights`` (local file or folder, else ``$LINGUINE_WEIGHTS``
    or the cache), ``io_steps`` (instance-optimisation Adam steps per pair; the weights are restored
    afterwards), ``progress`` (download progress callback), ``prealign`` (auto|always|never;
    auto: when the boxes differ by more than :data:`PREALIGN_TOL_MM`), ``input_size`` (network grid, default
    175; at least 65), ``models`` (a
    :class:`~LinGuinELib.backends.models.ModelManager`), ``worker`` (a :class:`~LinGuinELib.backends.device.TorchWorker`).
    """

    model_id = ""
    window = (-1000.0, 1000.0)
    masked = False
    strict_weights = True  # every tensor must match (the lung model: upstream's strict=False)

    def __init__(self, device: str = "auto", weights: str | None = None, io_steps: int = 0, progress=None,
                 prealign: str = "auto", input_size: int | None = None,
                 models=None, worker=None):
        if io_steps is None or int(io_steps) < 0:
            raise InputError(f"--io-steps must be 0 or more, got {io_steps}")
        if prealign not in ("auto", "always", "never"):
            raise InputError(f"prealign must be auto, always or never, got {prealign!r}")
        self.input_size = int(input_size or DEFAULT_INPUT_SIZE)
        if self.input_size < MIN_INPUT_SIZE:
            raise InputError(f"GradICON input size must be at least {MIN_INPUT_SIZE} per axis, got {self.input_size}")
        self.device = resolve_device(device)
        self.worker = worker or shared_worker(self.device)
        self.weights = weights
        self.io_steps = int(io_steps)
        self.prealign = prealign
        self.models = models or default_manager(progress)
        self.network = None
        self.last_prealigned = False
        self._lung_masks: dict[str, np.ndarray] = {}  # scan id -> full-resolution lung mask (k, j, i)

    def forget(self, scan_id: str) -> None:
        self._lung_masks.pop(scan_id, None)

    # -- model ----------------------------------------------------------------------------------------------
    def load(self):
        """Build the network and load its weights (downloading them if needed); idempotent."""
        return self.worker.run(self._load, what=f"loading {self.name}")

    def _load(self):
        if self.network is None:
            self.network = self.models.load(self.model_id, self._load_file, self.weights)
        return self.network

    def _load_file(self, path: Path):
        torch = import_torch_package("torch", self.name)
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"expected a state dict, found {type(state).__name__}")
        state = {k: v for k, v in state.items() if not k.endswith("identity_map")}
        net = build_network(self.input_size)
        missing, unexpected = net.regis_net.load_state_dict(state, strict=False)
        if len(unexpected) == len(state) or (self.strict_weights and (missing or unexpected)):
            raise ValueError(f"not {self.name} weights: {len(missing)} missing and {len(unexpected)} unexpected "
                             f"tensors (e.g. {(list(missing) + list(unexpected))[:2]})")
        return net.to(self.device).eval()

    # -- registration ---------------------------------------------------------------------------------------
    def register(self, source: Scan, target: Scan) -> PointMap:
        return self.register_both(source, target)[0]

    def register_both(self, source: Scan, target: Scan) -> tuple[PointMap, PointMap]:
        """One network evaluation -> (source -> target, target -> source) point maps."""
        frame_a = NetworkFrame(source, self.input_size)
        prealign = self.prealign == "always" or (
            self.prealign == "auto" and box_mismatch_mm(source, target) > PREALIGN_TOL_MM)
        if prealign:
            frame_b = NetworkFrame(source, self.input_size, rigid_prealign(source, target))
            hu_b = sitk.GetArrayFromImage(sitk.Resample(
                sitk.Cast(target.to_sitk(), sitk.sitkFloat32), frame_b.sitk_reference(),
                _rigid_to_sitk(*frame_b.rigid), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32))
        else:
            frame_b, hu_b = NetworkFrame(target, self.input_size), None
        self.last_prealigned = prealign
        disp_ab, disp_ba = self.worker.run(self._fields, source, frame_a, target, frame_b, hu_b,
                                           what=f"registering '{source.scan_id}' and '{target.scan_id}' with {self.name}")
        return FieldPointMap(disp_ba, frame_a, frame_b), FieldPointMap(disp_ab, frame_b, frame_a)

    def _input(self, scan: Scan, frame: NetworkFrame, hu_on_grid: np.ndarray | None):
        """The network input [1, 1, N, N, N] on the device: preprocessed at full resolution then resized
        (or, for a pre-aligned target, resampled HU on the grid, then preprocessed)."""
        torch = import_torch_package("torch", self.name)
        functional = torch.nn.functional
        lo, hi = self.window
        n = self.input_size

        def resize(array):
            t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None].to(self.device)
            return functional.interpolate(t, size=(n, n, n), mode="trilinear", align_corners=False)

        hu = scan.array if hu_on_grid is None else hu_on_grid
        x = (np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)
        if self.masked:
            if hu_on_grid is None:
                if scan.scan_id not in self._lung_masks:
                    self._lung_masks[scan.scan_id] = lung_mask(scan.array, scan.spacing_kji, frame.axial_axis)
                mask = self._lung_masks[scan.scan_id]
            else:
                mask = lung_mask(hu_on_grid, frame.spacing_kji, frame.axial_axis)
            if not mask.any():
                raise InputError(f"scan '{scan.scan_id}': no lungs found (no air pocket of 100 mL inside the body); "
                                 f"{self.name} needs chest CT, use unigradicon for other regions")
            x = x * mask
        if hu_on_grid is None:
            return resize(x)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].to(self.device)

    def _fields(self, source, frame_a, target, frame_b, hu_b):
        """Displacement fields (3, N, N, N), network voxels: phi_AB - id (target grid -> source) and
        phi_BA - id (source grid -> target)."""
        torch = import_torch_package("torch", self.name)
        a = self._input(source, frame_a, None)
        b = self._input(target, frame_b, hu_b)
        net = self._load()
        if self.io_steps:
            return self._optimised_fields(net, a, b)
        with torch.no_grad():
            return self._evaluate(net, a, b)

    def _evaluate(self, net, a, b):
        ident = net.identity_map
        scale = float(self.input_size - 1)
        out = []
        for moving, fixed in ((a, b), (b, a)):
            phi = net.regis_net(moving, fixed)
            out.append(((phi(ident) - ident)[0] * scale).float().cpu().numpy())
        return out[0], out[1]

    def _optimised_fields(self, net, a, b):
        """Instance optimisation: ``io_steps`` Adam steps on the GradICON loss for this pair, the fields,
        then the original weights back (also on error)."""
        torch = import_torch_package("torch", self.name)
        config = import_torch_package("icon_registration.config", self.name)
        saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
        previous_device, config.device = config.device, self.device  # the loss draws noise on config.device
        optimizer = torch.optim.Adam(net.parameters(), lr=IO_LEARNING_RATE)
        try:
            for _ in range(self.io_steps):
                optimizer.zero_grad()
                net(a, b)[0].backward()
                optimizer.step()
            with torch.no_grad():
                return self._evaluate(net, a, b)
        finally:
            net.load_state_dict(saved)
            net.zero_grad(set_to_none=True)
            del optimizer, saved
            config.device = previous_device
            if hasattr(net, "clean"):
                net.clean()


def _rigid_to_sitk(rotation: np.ndarray, translation: np.ndarray) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(float(v) for v in rotation.ravel()))
    t.SetTranslation(tuple(float(v) for v in translation))
    return t


class UniGradICONRegistration(GradICONRegistration):
    """uniGradICON 1.0: CT clamped to [-1000, 1000] HU and scaled to [0, 1]."""

    name = "unigradicon"
    model_id = "unigradicon"


class MultiGradICONRegistration(GradICONRegistration):
    """multiGradICON 1.0 (multi-modal training), same CT preprocessing as uniGradICON."""

    name = "multigradicon"
    model_id = "multigradicon"


class LungGradICONRegistration(GradICONRegistration):
    """The GradICON lung-CT model: CT clamped to [-1000, 0] HU, scaled to [0, 1], times a lung mask."""

    name = "lunggradicon"
    model_id = "lunggradicon"
    window = (-1000.0, 0.0)
    masked = True
    strict_weights = False
