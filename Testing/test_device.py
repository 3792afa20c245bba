"""Device choice (auto/cpu/cuda/cuda:N, CPU warning) and the torch worker thread (one thread, OOM -> clear error)."""

from __future__ import annotations

import threading
import weakref

import pytest

torch = pytest.importorskip("torch", reason="deep-learning extra not installed (pip install '.[gpu]')")

from LinGuinELib.backends import device  # noqa: E402
from LinGuinELib.core.errors import InputError, LinGuinEError  # noqa: E402


@pytest.fixture
def fake_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_cpu_and_errors_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve_device("cpu") == torch.device("cpu")
    assert device.resolve_device(" CPU ") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(LinGuinEError, match="CUDA is not available"):
            device.resolve_device(spec)
    for spec in ("gpu", "cuda:x", "mps0"):
        with pytest.raises(InputError, match="unknown device"):
            device.resolve_device(spec)


def test_auto_falls_back_to_cpu_with_one_warning_and_an_estimate(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_warned_cpu", False)
    assert device.resolve_device("auto") == torch.device("cpu")
    assert device.resolve_device(None) == torch.device("cpu")
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "slow" in err and "s per registration" in err and "min" in err
    seen = []
    monkeypatch.setattr(device, "_warned_cpu", False)
    device.resolve_device("auto", warn=seen.append)  # a GUI can show it its own way
    assert len(seen) == 1 and "CPU" in seen[0]


def test_auto_picks_cuda_and_checks_the_index(fake_gpus):
    assert device.resolve_device("auto") == torch.device("cuda", 0)
    assert device.resolve_device("cuda") == torch.device("cuda", 0)
    assert device.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(LinGuinEError, match="does not exist.*cuda:0 to cuda:1"):
        device.resolve_device("cuda:2")


def test_worker_runs_everything_on_one_persistent_thread():
    worker = device.TorchWorker(torch.device("cpu"))
    try:
        idents = [worker.run(threading.get_ident) for _ in range(3)]
        idents += [f.result() for f in [worker.submit(threading.get_ident) for _ in range(3)]]
        assert len(set(idents)) == 1 and idents[0] != threading.get_ident()
        assert worker.thread.ident == idents[0]
        assert worker.run(lambda: worker.run(lambda: 42)) == 42  # nested call runs inline, no deadlock
        order = []
        futures = [worker.submit(order.append, n) for n in range(20)]
        [f.result() for f in futures]
        assert order == list(range(20))
        with pytest.raises(ValueError, match="boom"):  # ordinary errors pass through unchanged
            worker.run(lambda: (_ for _ in ()).throw(ValueError("boom")))
    finally:
        worker.shutdown()
    assert device.shared_worker("cpu") is device.shared_worker(torch.device("cpu"))


def test_cuda_out_of_memory_becomes_a_clear_error_and_frees_memory(monkeypatch):
    freed = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    worker = device.TorchWorker(torch.device("cuda", 0))
    refs = []

    def forward():
        activations = torch.zeros(1000, 1000)
        refs.append(weakref.ref(activations))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    try:
        with pytest.raises(LinGuinEError, match=r"GPU \(cuda:0\) ran out of memory while registering.*--device cpu"):
            worker.run(forward, what="registering a and b")
        assert freed and refs[0]() is None  # the cache was emptied after the failing frame's tensors were released
        with pytest.raises(LinGuinEError, match="computer ran out of memory"):
            worker.run(lambda: (_ for _ in ()).throw(MemoryError()))
        assert worker.run(lambda: "still working") == "still working"
    finally:
        worker.shutdown()
