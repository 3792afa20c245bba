"""The GPU benchmark script runs end to end (tiny random networks on the CPU), so that a session lent a GPU
can measure the deep-learning backends in one call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("nnInteractive")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"


def test_study_benchmark_reuses_registrations_for_the_second_lesion(ct_dir, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--devices", "cpu", "--tasks", "study", "prompt", "vista3d", "--small",
                           "--repeats", "1", "--ct", str(ct_dir / "lung2_image.nrrd"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study, prompt, vista3d = json.loads(out.read_text())
    assert (study["task"], prompt["task"]) == ("study", "prompt")
    assert study["scans"] == 5 and study["small"]
    assert study["first_stats"]["registration_calls"] == 4  # each follow-up registered once
    assert study["cached_stats"]["registration_calls"] == 0  # the second lesion costs only segmentation
    assert 5 <= study["cached_stats"]["segmentation_calls"] <= 9  # source + 4 targets, + up to 4 boosts
    assert 0 < study["cached_s"] < study["first_s"]
    assert prompt["seconds"][0] > 0 and prompt["peak_mb"] > 0
    assert vista3d["task"] == "vista3d" and vista3d["seconds"][0] > 0 and vista3d["peak_mb"] > 0
    assert "first" in proc.stdout and "goal < 2 s" in proc.stdout


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_on_a_gpu_the_full_size_cpu_case_is_skipped_by_default():
    bench = _script()
    assert bench.default_devices(2) == ["cuda:0", "cuda:1"]
    assert bench.default_devices(0) == ["cpu"]


def test_a_hanging_measurement_is_killed_and_reported(tmp_path, ct_dir, capsys):
    bench = _script()
    result, error = bench.run_child([sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=1)
    assert result is None and "timed out after 1 s" in error
    # the whole script: the child is killed, the run reported as failed (exit 1), nothing hangs
    proc = subprocess.run([sys.executable, str(SCRIPT), "--devices", "cpu", "--tasks", "registration", "--small",
                           "--repeats", "1", "--ct", str(ct_dir / "lung2_image.nrrd"), "--child-timeout", "0.5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "registration on cpu failed" in proc.stderr and "timed out" in proc.stderr
