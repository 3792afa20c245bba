#!/usr/bin/env python
"""Benchmark the deep-learning backends: seconds and peak memory per uniGradICON registration (175^3, both
directions from one pass), per nnInteractive and per Vista3D point prompt, and for a whole 5-scan study, on the
CPU and on every CUDA GPU present (by default the CUDA GPUs only where there is one: the full-size CPU case
takes minutes that a GPU lease should not pay for; ask for it with ``--devices cpu cuda``).

Random weights of the published architectures are used (uniGradICON: 70.7 M parameters; nnInteractive:
ResEnc-L, 192^3 patch, 8 input channels; Vista3D: ``vista3d132``, 128^3 window), so no download is needed; they run at the speed of the real
ones. Each measurement runs in its own process so that peak host memory (max RSS) belongs to it alone;
on a GPU the peak is ``torch.cuda.max_memory_allocated``. Prompts run with nnInteractive's autozoom off
(one network pass, as for a small lesion); a large lesion can take a few more passes.

Tasks:
  registration  one scan pair, registered ``--repeats`` times
  prompt        one nnInteractive point prompt on a scan whose image is already set, ``--repeats`` times
  vista3d       one Vista3D point prompt (positive and negative point) on a scan already preprocessed, ``--repeats`` times
  study         a synthetic 5-scan study from the CT (``--ct`` and its ``_label`` file), one lesion clicked on
                the first scan and tracked with boost (1 + 4 x 2 prompts, 4 registrations): "first" is the
                whole run with models loaded, "cached" a second lesion once registrations are cached and
                every scan's image is set. The goal on a GPU: first < 10 s, cached < 2 s. Runs on CUDA
                devices only unless asked for (on a CPU it takes about half an hour).

    python scripts/bench_gpu.py [--devices cpu cuda] [--tasks registration prompt vista3d study] [--repeats 2]
                                [--ct lung2_image.nrrd] [--json out.json] [--small] [--child-timeout 600]

The CT defaults to the lung2 sample (``research/sample_data.py``: ``../shared/data/ct`` if present, else the
sample-data cache, downloaded once from PyPI). Each measurement's process is killed after ``--child-timeout``
seconds and reported as failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "Testing"))  # random-weight writers (random_weights.py, vista3d_weights.py)
PUBLISHED_NNINTERACTIVE = {"patch_size": 192, "features": (32, 64, 128, 256, 320, 320), "blocks": (1, 3, 4, 6, 6, 6)}
TASKS = ("registration", "prompt", "vista3d", "study")


def load_scans(ct: Path):
    """Two timepoints: the CT and a copy shifted by 4 voxels (same field of view, no pre-alignment)."""
    import SimpleITK as sitk

    from LinGuinELib.core.study import Scan

    if ct.is_file():
        a = Scan.from_sitk(sitk.ReadImage(str(ct)), "t0", dt.datetime(2020, 1, 1))
    else:  # a chest-sized synthetic volume when no CT is at hand
        rng = np.random.default_rng(0)
        a = Scan("t0", rng.normal(-300, 300, (60, 512, 512)).astype(np.float32), (0, 0, 0), (0.7, 0.7, 5.0),
                 np.eye(3), dt.datetime(2020, 1, 1))
    b = Scan("t1", np.roll(a.array, 4, axis=2), a.origin, a.spacing, a.direction, dt.datetime(2021, 1, 1))
    return a, b


class Run:
    """The backends of one measurement (random weights, each written and built only when a task uses it) and
    its clock, on one device."""

    def __init__(self, device_spec: str, size: int, small: bool, work: Path):
        import torch

        from LinGuinELib.backends.device import resolve_device
        from LinGuinELib.backends.models import ModelManager

        self.torch = torch
        self.device_spec, self.size, self.small, self.work = device_spec, size, small, work
        self.models = ModelManager(home=work / "cache", offline=True)
        self.device = resolve_device(device_spec)

    @functools.cached_property
    def registration(self):
        from random_weights import random_gradicon_weights

        from LinGuinELib.registration import gradicon

        weights = random_gradicon_weights(self.work / "unigradicon.trch")
        return gradicon.UniGradICONRegistration(device=self.device_spec, weights=str(weights), input_size=self.size,
                                                models=self.models)

    @functools.cached_property
    def segmenter(self):
        from random_weights import random_nninteractive_folder

        from LinGuinELib.segmentation import nninteractive as nni

        folder = random_nninteractive_folder(self.work / "nnInteractive_v1.0",
                                             **({} if self.small else PUBLISHED_NNINTERACTIVE))
        return nni.NNInteractiveSegmenter(device=self.device_spec, weights=str(folder), autozoom=False,
                                          models=self.models)

    @functools.cached_property
    def vista3d(self):
        from vista3d_weights import write_random_vista3d

        from LinGuinELib.segmentation import vista3d

        if self.small:
            vista3d.PATCH_SIZE = (32, 32, 32)  # the network's smallest window
        weights = write_random_vista3d(self.work / "vista3d")
        return vista3d.Vista3DSegmenter(device=self.device_spec, weights=str(weights), models=self.models)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return self.torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB

    def timed(self, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.sync()
        return time.perf_counter() - start, out


def bench_registration(run: Run, ct: Path, repeats: int) -> dict:
    scans = load_scans(ct)
    run.registration.prealign = "never"
    run.registration.load()
    run.reset_peak()
    return {"seconds": [run.timed(run.registration.register_both, *scans)[0] for _ in range(repeats)]}


def bench_prompt(run: Run, ct: Path, repeats: int) -> dict:
    scan = load_scans(ct)[0]
    run.segmenter.load()
    centre = np.array(scan.shape) // 2
    run.segmenter.segment(scan, [centre])  # sets the image (once per scan) and warms up
    run.reset_peak()
    return {"seconds": [run.timed(run.segmenter.segment, scan, [centre + [0, 5 * (n + 1), 0]])[0]
                        for n in range(repeats)]}


def bench_vista3d(run: Run, ct: Path, repeats: int) -> dict:
    scan = load_scans(ct)[0]
    run.vista3d.load()
    centre = np.array(scan.shape) // 2
    run.vista3d.segment(scan, [centre])  # preprocesses the scan (once per scan) and warms up
    run.reset_peak()
    return {"seconds": [run.timed(run.vista3d.segment, scan, [centre + [0, 5 * (n + 1), 0]],
                                  [centre + [0, -20, 0]])[0] for n in range(repeats)]}


def bench_study(run: Run, ct: Path, work: Path) -> dict:
    from LinGuinELib.core.lesion import Lesion
    from LinGuinELib.registration.base import RegistrationCache
    from LinGuinELib.io.load import load_study
    from LinGuinELib.research.synthetic import load_truth, make_study, true_centres
    from LinGuinELib.core.tracking import LesionPrompt, Tracker

    label = ct.with_name(ct.name.replace("image", "label"))
    if not (ct.is_file() and label.is_file()):
        raise SystemExit(f"the study task needs a CT and its label map: {ct}, {label}")
    study_csv = make_study(ct, label, work / "study", n_scans=5, seed=0, difficulty="medium")
    study = load_study(study_csv)
    source = study.scans[0]
    centre = true_centres(load_truth(study_csv))[source.scan_id]
    load_s, _ = run.timed(lambda: (run.registration.load(), run.segmenter.load()))
    cache = RegistrationCache(run.registration)
    run.reset_peak()
    figures = {"scans": len(study), "load_s": load_s}
    for key, lesion_id, offset in (("first", 1, 0.0), ("cached", 2, 3.0)):  # the 2nd click 3 mm away
        prompt = LesionPrompt(Lesion(lesion_id, f"lesion {lesion_id}"), source.scan_id, centre + [offset, 0, 0])
        seconds, result = run.timed(Tracker(study, run.registration, run.segmenter, boost=True, cache=cache).track,
                                    [prompt])
        figures[f"{key}_s"] = seconds
        figures[f"{key}_stats"] = result.stats
    figures["seconds"] = [figures["first_s"], figures["cached_s"]]
    return figures


def child(task: str, device_spec: str, repeats: int, ct: Path, size: int, small: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="linguine-bench-"))
    run = Run(device_spec, size, small, work)
    if task == "registration":
        result = bench_registration(run, ct, repeats)
    elif task == "prompt":
        result = bench_prompt(run, ct, repeats)
    elif task == "vista3d":
        result = bench_vista3d(run, ct, repeats)
    else:
        result = bench_study(run, ct, work)
    torch, dev = run.torch, run.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"task": task, "device": str(dev), "device_name": name, "best_s": min(result["seconds"]),
            "peak_mb": run.peak_mb(), "small": small, **result}


def report(r: dict) -> str:
    head = f"{r['task']:<13} {r['device']:<8}"
    tail = f"peak {r['peak_mb']:8.0f} MB  [{r['device_name']}{', small networks' if r['small'] else ''}]"
    if r["task"] == "study":
        return (f"{head} first {r['first_s']:.2f} s (goal < 10 s), cached {r['cached_s']:.2f} s (goal < 2 s), "
                f"{r['first_stats']['registration_calls']} + {r['cached_stats']['registration_calls']} registrations, "
                f"{r['first_stats']['segmentation_calls']} + {r['cached_stats']['segmentation_calls']} prompts, "
                f"models loaded in {r['load_s']:.1f} s  {tail}")
    runs = ", ".join(f"{s:.2f}" for s in r["seconds"])
    return f"{head} {r['best_s']:8.2f} s  (runs: {runs})  {tail}"


def default_devices(n_cuda: int) -> list[str]:
    """Every CUDA device when there is one (the full-size CPU case is skipped), else the CPU."""
    return [f"cuda:{i}" for i in range(n_cuda)] or ["cpu"]


def run_child(cmd: list[str], timeout_s: float) -> tuple[dict | None, str]:
    """(result, error) of one measurement process, killed after ``timeout_s`` seconds."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:g} s (killed; raise --child-timeout)"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return None, proc.stderr[-2000:]
    return json.loads(lines[-1][7:]), ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None, help="devices to test (default: cpu and each cuda)")
    parser.add_argument("--tasks", nargs="+", default=None, choices=TASKS,
                        help="default: all on CUDA devices, all but study on the CPU")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=None, help="GradICON grid (default 175, the production size)")
    parser.add_argument("--small", action="store_true",
                        help="tiny networks (65^3 grid, 64^3 patch, Vista3D 32^3 window): checks the script, not the speed")
    parser.add_argument("--ct", type=Path, default=None,
                        help="CT volume to use (default: the lung2 sample, fetched into the cache once if absent)")
    parser.add_argument("--child-timeout", type=float, default=600.0,
                        help="seconds before a measurement's process is killed (default 600)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = args.size or (65 if args.small else 175)
    if args.ct is None:
        from LinGuinELib.research.sample_data import lung2_paths

        args.ct = lung2_paths(log=lambda message: print(message, file=sys.stderr, flush=True))[0]
    if args.child:
        result = child(args.child[0], args.child[1], args.repeats, args.ct, size, args.small)
        print("RESULT " + json.dumps(result))
        return 0
    import torch

    devices = args.devices or default_devices(torch.cuda.device_count())
    results, failed = [], 0
    for dev in devices:
        for task in args.tasks or [t for t in TASKS if t != "study" or dev.startswith("cuda")]:
            cmd = [sys.executable, __file__, "--child", task, dev, "--repeats", str(args.repeats),
                   "--size", str(size), "--ct", str(args.ct)] + (["--small"] if args.small else [])
            result, error = run_child(cmd, args.child_timeout)
            if result is None:
                print(f"{task} on {dev} failed:\n{error}", file=sys.stderr)
                failed += 1
                continue
            results.append(result)
            print(report(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
