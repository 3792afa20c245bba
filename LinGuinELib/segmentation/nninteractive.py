"""nnInteractive (MIC-DKFZ) as a point-prompted segmentation backend.

* One ``nnInteractiveInferenceSession`` per scan (least recently used beyond :data:`MAX_SESSIONS` are
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
# Inference sessions kept (one per scan, each holding its preprocessed image: about 4 bytes per voxel); a
# study of up to this many timepoints is never set up twice.
MAX_SESSIONS = 8
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
    callback), ``autozoom`` (nnInteractive's zoom-out/refine loop, default on), ``models``, ``worker``.
    Torch runs on every CPU core (``os.cpu_count()``) when it runs on the CPU."""

    name = "nninteractive"
    model_id = "nninteractive"

    def __init__(self, device: str = "auto", weights: str | None = None, progress=None, autozoom: bool | None = None,
                 models=None, worker=None):
        self.device = resolve_device(device)
        self.worker = worker or shared_worker(self.device)
        self.weights = weights
        self.models = models or default_manager(progress)
        self.autozoom = DEFAULT_AUTOZOOM if autozoom is None else bool(autozoom)
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
                                torch_n_threads=os.cpu_count() or 1, do_autozoom=self.autozoom, enable_undo=False)

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
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return entry

    def forget(self, scan_id: str) -> None:
        with self._lock:
            dropped = self._sessions.pop(scan_id, None)
        if dropped is not None:
            del dropped
            free_memory()

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

