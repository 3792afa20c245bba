"""Vista3D (NVIDIA, MONAI) as a point-prompted segmentation backend, built on MONAI's own code.

* Network: :func:`monai.networks.nets.vista3d132`, the published architecture; weights are the ``vista3d``
  bundle's ``models/model.pt`` (a plain ``state_dict``). Inference: MONAI's
  :func:`~monai.apps.vista3d.inferer.point_based_window_inferer` with a 128^3 window centred on each point
  (its defaults ``center_only=True``). The bundle's sliding-window overlap (0.3) only applies to automatic
  (class-only) segmentation, which this backend never runs.
* Preprocessing (the bundle's ``inference.json``, in its order), with MONAI's dictionary transforms on a
  ``MetaTensor`` built from the scan: ``Spacingd`` 1.5 mm (bilinear), ``CropForegroundd`` (intensity > 0 HU,
  margin 10, allow_smaller), ``ScaleIntensityRanged`` -963.82..1053.68 HU -> 0..1 clipped, ``Orientationd``
  RAS, float32. It runs once per scan and is cached (least recently used beyond :data:`MAX_CACHED` dropped).
* Axes: the MONAI tensor is ``Scan.array`` transposed to (i, j, k) with the RAS affine
  ``diag(-1, -1, 1, 1) @ scan.index_to_lps``, exactly what MONAI's ITK reader gives for the scan's file.
  A scan voxel (k, j, i) maps to the preprocessed index ``rint(inv(A_pre) @ A_scan @ (i, j, k, 1))``; the
  thresholded mask (logit > 0; voxels outside the point window are NaN, i.e. background) goes back onto the
  scan's own grid through MONAI's ``Invertd`` with nearest-neighbour interpolation.
* Prompts: positive points get label 3, negative points 2 (the labels of Vista3D's "special" classes,
  tumours and lesions), always passed explicitly. Points outside the foreground crop (air more than 10
  voxels from the body) are dropped; with no positive point left the mask is empty.
* ``lesion_class``: ``lesion`` (default) is the point head alone with the special-class labels and the
  "supported class" token: in MONAI's point head the class id only selects supported (<= 132) or zero-shot,
  and 3/2 select the lesion embedding, so this is a class-agnostic lesion prompt that works in any organ.
  ``lung`` (class 23, lung tumour) and ``liver`` (26, hepatic tumour) also run the class head for that
  class and merge it with the point head's result (``VISTA3D.connected_components_combine``), as the bundle
  does for a label prompt with points.
* All torch work runs on the engine's :class:`~LinGuinELib.backends.device.TorchWorker` thread (out of
  memory -> a clear error, memory released).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from LinGuinELib.backends import DEFAULT_LESION_CLASS, VISTA3D_LESION_CLASSES as LESION_CLASSES
from LinGuinELib.backends.device import free_memory, import_torch_package, resolve_device, shared_worker
from LinGuinELib.backends.models import default_manager
from LinGuinELib.core.coords import ras_matrix_from_lps
from LinGuinELib.core.errors import InputError
from LinGuinELib.core.study import Scan
from LinGuinELib.segmentation.base import Segmenter

PATCH_SIZE = (128, 128, 128)
SPACING_MM = 1.5
FOREGROUND_MARGIN = 10
HU_RANGE = (-963.8247715525971, 1053.678477684517)
MAX_CACHED = 8  # preprocessed scans kept (1.5 mm float32 grids), one per timepoint of a study
POSITIVE_LABEL, NEGATIVE_LABEL = 3, 2  # Vista3D's point labels for its special (tumour/lesion) classes


def preprocessing():
    """The bundle's preprocessing as a MONAI ``Compose`` over the key ``image`` (invertible)."""
    transforms = import_torch_package("monai.transforms", "vista3d")
    torch = import_torch_package("torch", "vista3d")
    return transforms.Compose([
        transforms.Spacingd("image", pixdim=SPACING_MM, mode="bilinear"),
        transforms.CropForegroundd("image", source_key="image", margin=FOREGROUND_MARGIN, allow_smaller=True),
        transforms.ScaleIntensityRanged("image", a_min=HU_RANGE[0], a_max=HU_RANGE[1], b_min=0.0, b_max=1.0,
                                        clip=True),
        transforms.Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        transforms.CastToTyped("image", dtype=torch.float32),
    ])


def monai_affine(scan: Scan) -> np.ndarray:
    """4x4 RAS affine of the scan's (i, j, k) voxel index, MONAI's convention."""
    return ras_matrix_from_lps(scan.index_to_lps)


def scan_tensor(scan: Scan):
    """The scan as MONAI sees it: ``MetaTensor`` [1, i, j, k] of HU (float32) with :func:`monai_affine`."""
    data = import_torch_package("monai.data", "vista3d")
    torch = import_torch_package("torch", "vista3d")
    array = np.ascontiguousarray(scan.array.transpose(2, 1, 0)[None], dtype=np.float32)
    return data.MetaTensor(torch.from_numpy(array), affine=torch.as_tensor(monai_affine(scan), dtype=torch.float64))


def kji_to_preprocessed(kji: np.ndarray, scan_affine: np.ndarray, preprocessed_affine: np.ndarray) -> np.ndarray:
    """(N, 3) scan voxels (k, j, i) -> (N, 3) int indices of the preprocessed tensor's spatial axes."""
    ijk1 = np.c_[np.asarray(kji, dtype=float)[:, ::-1], np.ones(len(kji))]
    mapped = ijk1 @ (np.linalg.inv(preprocessed_affine) @ scan_affine).T
    return np.rint(mapped[:, :3]).astype(int)


@dataclass
class _Entry:
    array: np.ndarray  # the scan array this entry was made from (identity checked)
    image: object  # preprocessed MetaTensor [1, X, Y, Z] with its applied operations


class Vista3DSegmenter(Segmenter):
    """Vista3D point prompts. Options: ``device``, ``weights`` (``model.pt``, or a folder holding
    ``vista3d/models/model.pt`` or ``models/model.pt``; else ``$LINGUINE_WEIGHTS`` or the cache),
    ``lesion_class`` (lesion|lung|liver), ``progress`` (download callback), ``models``,
    ``worker``."""

    name = "vista3d"
    model_id = "vista3d"

    def __init__(self, device: str = "auto", weights: str | None = None, lesion_class: str = DEFAULT_LESION_CLASS,
                 progress=None, models=None, worker=None):
        if lesion_class not in LESION_CLASSES:
            raise InputError(f"unknown Vista3D lesion class {lesion_class!r}; choose one of: {', '.join(LESION_CLASSES)}")
        self.device = resolve_device(device)
        self.worker = worker or shared_worker(self.device)
        self.weights = weights
        self.lesion_class = lesion_class
        self.models = models or default_manager(progress)
        self._network = None
        self._transform = None
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    # -- model ------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the network (downloading it if needed, after showing its license); idempotent."""
        self.worker.run(self._load, what="loading Vista3D")

    def _load(self):
        if self._network is None:
            self._network = self.models.load(self.model_id, self._load_file, self.weights)
            self._transform = preprocessing()
        return self._network

    def _load_file(self, path: Path):
        torch = import_torch_package("torch", "vista3d")
        nets = import_torch_package("monai.networks.nets", "vista3d")
        if path.is_dir():
            raise FileNotFoundError(f"{path} is a folder; Vista3D needs its model.pt")
        network = nets.vista3d132()
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return network.to(self.device).eval()

    # -- preprocessed scans -------------------------------------------------------------------------------
    def _entry(self, scan: Scan) -> _Entry:
        with self._lock:
            entry = self._cache.get(scan.scan_id)
            if entry is not None and entry.array is scan.array:
                self._cache.move_to_end(scan.scan_id)
                return entry
        entry = _Entry(scan.array, self._transform({"image": scan_tensor(scan)})["image"])
        with self._lock:
            self._cache[scan.scan_id] = entry
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return entry

    def forget(self, scan_id: str) -> None:
        with self._lock:
            dropped = self._cache.pop(scan_id, None)
        if dropped is not None:
            del dropped
            free_memory()

    @property
    def cached_count(self) -> int:
        return len(self._cache)

    # -- prediction ---------------------------------------------------------------------------------------
    def _segment(self, scan: Scan, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        return self.worker.run(self._predict, scan, positive, negative,
                               what=f"segmenting on scan '{scan.scan_id}' with Vista3D")

    def prompt(self, scan: Scan, positive: np.ndarray, negative: np.ndarray):
        """Points and labels for the network: ``(coords [1, N, 3] int, labels [1, N])`` in the preprocessed
        tensor's axes, positives first, points outside the foreground crop dropped (see the module notes)."""
        torch = import_torch_package("torch", "vista3d")
        image = self._entry(scan).image
        affine = np.asarray(image.affine, dtype=float)
        shape = np.asarray(image.shape[1:])
        coords, labels = [], []
        for points, label in ((positive, POSITIVE_LABEL), (negative, NEGATIVE_LABEL)):
            if len(points):
                mapped = kji_to_preprocessed(points, monai_affine(scan), affine)
                inside = np.all((mapped >= 0) & (mapped < shape), axis=1)
                coords += list(mapped[inside])
                labels += [label] * int(inside.sum())
        return (torch.as_tensor(np.array(coords, dtype=int).reshape(1, -1, 3)),
                torch.as_tensor(np.array(labels, dtype=int).reshape(1, -1)))

    def _predict(self, scan: Scan, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        torch = import_torch_package("torch", "vista3d")
        inferers = import_torch_package("monai.apps.vista3d.inferer", "vista3d")
        transforms = import_torch_package("monai.transforms", "vista3d")
        self._load()
        image = self._entry(scan).image
        coords, labels = self.prompt(scan, positive, negative)
        if not (labels == POSITIVE_LABEL).any():
            return np.zeros(scan.shape, dtype=bool)  # every positive point lies in air outside the body crop
        class_id = LESION_CLASSES[self.lesion_class]
        classes = None if class_id is None else torch.tensor([[class_id]], device=self.device)
        with torch.inference_mode():
            logits = inferers.point_based_window_inferer(
                inputs=image[None].to(self.device), roi_size=PATCH_SIZE, predictor=self._network,
                point_coords=coords.to(self.device), point_labels=labels.to(self.device),
                class_vector=classes, prompt_class=classes, transpose=True)
        mask = torch.nan_to_num(logits[0], nan=0.0) > 0  # [1, X, Y, Z] on the CPU
        pred = mask.to(torch.float32)  # Invertd takes the geometry and operations from the image
        inverted = transforms.Invertd("pred", transform=self._transform, orig_keys="image", nearest_interp=True)(
            {"pred": pred, "image": image})["pred"]
        return np.asarray(inverted[0]).transpose(2, 1, 0) > 0.5
