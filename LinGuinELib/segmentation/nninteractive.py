"""nnInteractive (MIC-DKFZ) as a point-prompted segmentation backend.

* One ``nnInteractiveInferenceSession`` per scan (least recently used beyond ``max_sessions`` are
  dropped); they share one loaded network. The image is set once per scan, as raw intensities (HU): the
  session normalises it itself. ``reset_interactions()`` runs before every :meth:`segment` call, i.e.
  between lesions and before a boost re-prompt.
* Axis order: the session works in the axis order of the array it is given. We give ``Scan.array[None]``
  (axes k, j, i), so points are ``(k, j, i)`` voxel indices, exactly as :class:`Segmenter` receives them.
  Spacing is not used (nnInteractive works in voxel space). Points are checked to lie inside the image
  before any call: the session itself would silently ignore an outside point.
* Positive points are placed first, then negative (correction) points; each runs a prediction, as
  clicks do in the nnInteractive GUIs. The mask is the session's target buffer.
* All torch work runs on the engine's :class:`~LinGuinELib.backends.device.TorchWorker` thread. The session's own
  console chatter is sent to this module's logger at DEBUG level.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from LinGuinELib.backends.device import free_memory, import_torch_package, resolve_device, shared_worker
from LinGuinELib.core import coords
from LinGuinELib.core.errors import InputError
from LinGuinELib.backends.models import default_manager
from LinGuinELib.core.study import Scan
from LinGuinELib.segmentation.base import Segmenter

DEFAULT_AUTOZOOM = True
CHECKPOINT = "checkpoint_final.pth"
_log = logging.getLogger(__name__)


@contextlib.contextmanager
def _chatter_to_log():
    """Send what nnInteractive prints to the logger instead of the user's console."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                _log.debug("nnInteractive: %s", line)


def _session_class():
    module = import_torch_package("nnInteractive.inference.inference_session", "nninteractive")
    return module.nnInteractiveInferenceSession


@dataclass
class _Entry:
    session: object
    array: np.ndarray  # the scan array the session was set up with (identity checked)
    buffer: np.ndarray  # uint8 target buffer, shaped like the scan


class NNInteractiveSegmenter(Segmenter):
    """nnInteractive point prompts. Options: ``device``, ``weights`` (model folder, or a folder holding
    ``nninteractive/nnInteractive_v1.0``; else ``$LINGUINE_WEIGHTS`` or the cache), ``progress`` (download
    callback), ``autozoom`` (nnInteractive's zoom-out/refine loop, default on), ``max_sessions``,
    ``threads`` (CPU threads for torch), ``models``, ``worker``."""

    name = "nninteractive"
    model_id = "nninteractive"

    def __init__(self, device: str = "auto", weights: str | None = None, progress=None, autozoom: bool | None = None,
                 max_sessions: int = 8, threads: int | None = None, models=None, worker=None):
        self.device = resolve_device(device)
        self.worker = worker or shared_worker(self.device)
        self.weights = weights
        self.models = models or default_manager(progress)
        self.autozoom = DEFAULT_AUTOZOOM if autozoom is None else bool(autozoom)
        self.max_sessions = max(1, int(max_sessions))
        self.threads = int(threads or os.cpu_count() or 1)
        self._artifacts = None
        self._sessions: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.license = None

    # -- model ------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the network (downloading it if needed, after showing its license); idempotent."""
        self.worker.run(self._load, what="loading nnInteractive")

    def _load(self):
        if self._artifacts is None:
            self._artifacts = self.models.load(self.model_id, self._load_folder, self.weights)
        return self._artifacts

    def _new_session(self):
        return _session_class()(device=self.device, use_torch_compile=False, verbose=False,
                                torch_n_threads=self.threads, do_autozoom=self.autozoom, enable_undo=False)

    def _load_folder(self, folder: Path):
        if not (folder / "plans.json").is_file():
            raise FileNotFoundError(f"no plans.json in {folder}: not an nnInteractive model folder")
        with _chatter_to_log():
            session = self._new_session()
            artifacts = session._load_model_artifacts_from_disk(str(folder), None, CHECKPOINT)
            session.initialize_from_loaded_artifacts(artifacts)
            session.warmup()  # CUDA: cuDNN autotuning now, on this (the worker) thread
        self.license = artifacts.get("license")
        return artifacts

    # -- sessions -----------------------------------------------------------------------------------------
    def _entry(self, scan: Scan) -> _Entry:
        with self._lock:
            entry = self._sessions.get(scan.scan_id)
            if entry is not None and entry.array is scan.array:
                self._sessions.move_to_end(scan.scan_id)
                return entry
        with _chatter_to_log():
            session = self._new_session()
            session.initialize_from_loaded_artifacts(self._artifacts)
            session.set_image(scan.array[None])  # raw HU, axes (1, k, j, i)
            buffer = np.zeros(scan.shape, dtype=np.uint8)
            session.set_target_buffer(buffer)
        entry = _Entry(session, scan.array, buffer)
        with self._lock:
            self._sessions[scan.scan_id] = entry
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return entry

    def forget(self, scan_id: str) -> None:
        with self._lock:
            dropped = self._sessions.pop(scan_id, None)
        if dropped is not None:
            del dropped
            free_memory(self.device)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    # -- prediction ---------------------------------------------------------------------------------------
    def _segment(self, scan: Scan, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        return self.worker.run(self._predict, scan, positive, negative,
                               what=f"segmenting on scan '{scan.scan_id}' with nnInteractive")

    def _predict(self, scan: Scan, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        clicks = [(p, True) for p in np.atleast_2d(positive)] + [(p, False) for p in np.atleast_2d(negative)]
        shape = np.asarray(scan.shape)
        for point, _ in clicks:
            if len(point) != 3 or np.any(np.asarray(point) < 0) or np.any(np.asarray(point) >= shape):
                raise InputError(f"scan '{scan.scan_id}': point (k, j, i) {coords.fmt_point(point)} lies outside the image "
                                 f"of shape {scan.shape}")
        self._load()
        entry = self._entry(scan)
        try:
            with _chatter_to_log():
                entry.session.reset_interactions()
                for point, include in clicks:
                    entry.session.add_point_interaction(tuple(int(v) for v in point), include_interaction=include)
            return entry.buffer.astype(bool)
        except BaseException:
            self.forget(scan.scan_id)  # its interaction state is unknown now
            raise


def make_random_model_folder(folder: str | os.PathLike, patch_size: int = 64,
                             features: tuple[int, ...] = (8, 16, 32, 32), blocks: tuple[int, ...] | None = None,
                             seed: int = 0) -> Path:
    """Write an nnInteractive model folder with a randomly initialised ResidualEncoderUNet (7 prompt channels,
    as nnInteractive v1.0): for offline tests, benchmarks and smoke runs. The defaults give a small,
    fast network; ``patch_size=192, features=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6)`` is
    the size of the published model (ResEnc-L) and runs at its speed."""
    torch = import_torch_package("torch", "nninteractive")
    plans_handler = import_torch_package("nnunetv2.utilities.plans_handling.plans_handler", "nninteractive")
    trainer = import_torch_package("nnInteractive.trainer.nnInteractiveTrainer", "nninteractive")
    folder = Path(folder)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    n = len(features)
    blocks = tuple(blocks or (1,) * n)
    configuration = {
        "data_identifier": "random", "preprocessor_name": "DefaultPreprocessor", "batch_size": 1,
        "patch_size": [patch_size] * 3, "median_image_size_in_voxels": [patch_size] * 3, "spacing": [1.0] * 3,
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
        "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities_kwargs": {}, "batch_dice": True,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
            "arch_kwargs": {
                "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                "n_blocks_per_stage": list(blocks), "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    }
    plans = {"dataset_name": "Dataset999_RandomWeights", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [1.0] * 3, "original_median_shape_after_transp": [patch_size] * 3,
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": configuration}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {
                 "0": {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -1024.0, "max": 3071.0,
                       "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}}}
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "target": 1}, "numTraining": 0,
               "file_ending": ".nii.gz"}
    session_info = {"inference_class": "nnInteractiveInferenceSession", "point_radius": 4,
                    "preferred_scribble_thickness": [2, 2, 2], "interaction_decay": 0.98}
    for name, data in (("plans.json", plans), ("dataset.json", dataset), ("inference_session_class.json", session_info)):
        (folder / name).write_text(json.dumps(data, indent=1), encoding="utf-8")
    torch.manual_seed(seed)
    manager = plans_handler.PlansManager(plans)
    network = trainer.nnInteractiveTrainer_stub.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1 + 7, 2, enable_deep_supervision=False)
    checkpoint = {"network_weights": network.state_dict(), "trainer_name": "nnInteractiveTrainer_stub",
                  "init_args": {"configuration": "3d_fullres"}}
    torch.save(checkpoint, folder / "fold_0" / CHECKPOINT)
    return folder
