"""Torch device choice and the one worker thread that runs all torch work of a tracking engine.

* :func:`resolve_device` turns ``auto|cpu|cuda|cuda:N`` into a ``torch.device``; ``auto`` takes CUDA when
  present, else the CPU with a one-time warning that says how slow that will be.
* :class:`TorchWorker` runs submitted callables on one persistent thread. cuDNN's autotuning and
  algorithm caches are per thread, so running every forward pass on the same thread keeps them warm; in
  Slicer it also keeps the GUI thread free. Out-of-memory errors (CUDA or host) become a
  :class:`~LinGuinELib.core.errors.LinGuinEError` with a clear message after the memory is released, so the
  host process never dies of them.
"""

from __future__ import annotations

import gc
import importlib
import re
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from LinGuinELib.core.errors import InputError, LinGuinEError

# Measured with scripts/bench_gpu.py on 2 shared CPU cores: seconds per uniGradICON registration at 175^3
# (both directions from one pass) and per nnInteractive point prompt (one 192^3 ResEnc-L pass).
CPU_SECONDS_PER_REGISTRATION = 100.0
CPU_SECONDS_PER_PROMPT = 140.0
_MEASURED_CORES = 2

_warned_cpu = False
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def import_torch_package(name: str, backend: str):
    """Import an optional deep-learning package, or explain which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise LinGuinEError(f"the {backend} backend needs the '{name}' package, which is not installed "
                            f"({exc}); install the deep-learning extra: pip install \"linguine[gpu]\"") from exc


def cpu_estimate() -> str:
    """A human estimate of CPU run times, scaled from the 2-core measurements by the torch thread count."""
    torch = import_torch_package("torch", "deep-learning")
    scale = _MEASURED_CORES / max(1, min(torch.get_num_threads(), 16))
    reg = CPU_SECONDS_PER_REGISTRATION * scale
    prompt = CPU_SECONDS_PER_PROMPT * scale
    return (f"about {reg:.0f} s per registration pair and {prompt:.0f} s per segmentation prompt, so a 5-scan "
            f"study takes about {(4 * reg + 8 * prompt) / 60:.0f} min; use a CUDA GPU for interactive speed")


def resolve_device(spec: str | None = "auto", warn: Callable[[str], None] | None = None):
    """``auto|cpu|cuda|cuda:N`` -> ``torch.device``. ``auto`` picks CUDA, else the CPU and warns once.

    Raises :class:`InputError` for an unknown spec and :class:`LinGuinEError` when CUDA is asked for but
    absent or the index does not exist.
    """
    global _warned_cpu
    text = (spec or "auto").strip().lower()
    if not _DEVICE_RE.match(text):
        raise InputError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    torch = import_torch_package("torch", "deep-learning")
    if text == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if text == "auto":
        if available:
            return torch.device("cuda", torch.cuda.current_device())
        if not _warned_cpu:
            _warned_cpu = True
            message = f"no CUDA GPU found; running on the CPU, which is slow: {cpu_estimate()}"
            (warn or (lambda m: print(f"linguine: warning: {m}", file=sys.stderr)))(message)
        return torch.device("cpu")
    if not available:
        raise LinGuinEError(f"device {text!r} requested but CUDA is not available "
                            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
    device = torch.device(text)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise LinGuinEError(f"device {text!r} does not exist: this machine has {torch.cuda.device_count()} "
                            f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors and host allocation failures raised by torch or numpy."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)


def free_memory() -> None:
    """Collect garbage and hand cached CUDA blocks back to the driver (torch's caching allocator empties the
    caches of every GPU at once)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _oom_message(exc: BaseException, device, what: str) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    torch = sys.modules.get("torch")
    if (torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)) or "cuda" in first.lower():
        gpu = device if getattr(device, "type", "") == "cuda" else "cuda"
        return (f"the GPU ({gpu}) ran out of memory while {what} ({first[:200]}); GPU memory was released. "
                "Close other programs using the GPU, or run with --device cpu")
    return (f"the computer ran out of memory while {what} ({first[:200]}); close other programs "
            "or free memory and try again")


class TorchWorker:
    """One persistent thread that runs every torch call of an engine, in submission order.

    ``submit(fn, *args, what=..., **kwargs)`` returns a :class:`~concurrent.futures.Future`; ``run`` waits for
    the result (and runs inline when already on the worker thread, so nested calls cannot deadlock).
    Out-of-memory errors are converted to :class:`LinGuinEError` after memory is freed. ``device`` only
    names the device in messages; the backends built for one engine share :func:`shared_worker`.
    """

    def __init__(self, device=None, name: str = "linguine-torch"):
        self.device = device
        self._thread: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=self._started)

    def _started(self) -> None:
        self._thread = threading.current_thread()

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread (``None`` until the first task starts)."""
        return self._thread

    def _guarded(self, fn: Callable, what: str, args, kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is translated, the rest re-raised
            if not is_out_of_memory(exc):
                raise
            message = _oom_message(exc, self.device, what)
        # Outside the except block the traceback (and the tensors its frames hold) is released.
        free_memory()
        raise LinGuinEError(message)

    def submit(self, fn: Callable, *args, what: str = "running a model", **kwargs) -> Future:
        return self._executor.submit(self._guarded, fn, what, args, kwargs)

    def run(self, fn: Callable, *args, what: str = "running a model", **kwargs):
        if threading.current_thread() is self._thread:
            return self._guarded(fn, what, args, kwargs)
        return self.submit(fn, *args, what=what, **kwargs).result()

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait)


_workers: dict[str, TorchWorker] = {}
_workers_lock = threading.Lock()


def shared_worker(device) -> TorchWorker:
    """The process-wide worker for ``device``: registration and segmentation backends built for one engine
    share it, so all their torch work runs on one thread."""
    key = str(device)
    with _workers_lock:
        if key not in _workers:
            _workers[key] = TorchWorker(device, name=f"linguine-torch-{key.replace(':', '')}")
        return _workers[key]
