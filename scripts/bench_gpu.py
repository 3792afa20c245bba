#!/usr/bin/env python
"""Benchmark the deep-learning backends: seconds and peak memory per uniGradICON registration (175^3, both
directions from one pass) and per nnInteractive point prompt, on the CPU and on every CUDA GPU present.

Random weights of the published architectures are used (uniGradICON: 70.7 M parameters; nnInteractive:
ResEnc-L, 192^3 patch, 8 input channels), so no download is needed; they run at the speed of the real
ones. Each measurement runs in its own process so that peak host memory (max RSS) belongs to it alone;
on a GPU the peak is ``torch.cuda.max_memory_allocated``. The prompt is timed with nnInteractive's
autozoom off (one network pass, as for a small lesion); a large lesion can take a few more passes.

    python scripts/bench_gpu.py [--devices cpu cuda] [--repeats 2] [--ct lung2_image.nrrd] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_CT = Path(os.environ.get("LINGUINE_CT_DIR", REPO.parent / "shared" / "data" / "ct")) / "lung2_image.nrrd"


def load_scans(ct: Path):
    """Two timepoints: the CT and a copy shifted by 4 voxels (same field of view, no pre-alignment)."""
    import SimpleITK as sitk

    from LinGuinELib.study import Scan

    if ct.is_file():
        a = Scan.from_sitk(sitk.ReadImage(str(ct)), "t0", dt.datetime(2020, 1, 1))
    else:  # a chest-sized synthetic volume when no CT is at hand
        rng = np.random.default_rng(0)
        a = Scan("t0", rng.normal(-300, 300, (60, 512, 512)).astype(np.float32), (0, 0, 0), (0.7, 0.7, 5.0),
                 np.eye(3), dt.datetime(2020, 1, 1))
    b = Scan("t1", np.roll(a.array, 4, axis=2), a.origin, a.spacing, a.direction, dt.datetime(2021, 1, 1))
    return a, b


def peak_mb(torch, device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def child(task: str, device_spec: str, repeats: int, ct: Path, size: int) -> dict:
    import torch

    from LinGuinELib.models import ModelManager

    scans = load_scans(ct)
    work = Path(tempfile.mkdtemp(prefix="linguine-bench-"))
    models = ModelManager(home=work / "cache", offline=True)
    times = []
    if task == "registration":
        from LinGuinELib.registration import gradicon

        weights = gradicon.write_random_weights(work / "unigradicon.trch")
        backend = gradicon.UniGradICONRegistration(device=device_spec, weights=str(weights), input_size=size,
                                                   prealign="never", models=models)
        backend.load()
        if backend.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(backend.device)
        for _ in range(repeats):
            start = time.perf_counter()
            backend.register_both(*scans)
            if backend.device.type == "cuda":
                torch.cuda.synchronize(backend.device)
            times.append(time.perf_counter() - start)
        dev = backend.device
    else:
        from LinGuinELib.segmentation import nninteractive as nni

        folder = nni.make_random_model_folder(work / "nnInteractive_v1.0", patch_size=192,
                                              features=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6))
        seg = nni.NNInteractiveSegmenter(device=device_spec, weights=str(folder), autozoom=False, models=models)
        seg.load()
        scan = scans[0]
        centre = np.array(scan.shape) // 2
        seg.segment(scan, [centre])  # sets the image (once per scan) and warms up
        if seg.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(seg.device)
        for n in range(repeats):
            start = time.perf_counter()
            seg.segment(scan, [centre + [0, 5 * (n + 1), 0]])
            if seg.device.type == "cuda":
                torch.cuda.synchronize(seg.device)
            times.append(time.perf_counter() - start)
        dev = seg.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"task": task, "device": str(dev), "device_name": name, "seconds": times,
            "best_s": min(times), "peak_mb": peak_mb(torch, dev)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None, help="devices to test (default: cpu and cuda if present)")
    parser.add_argument("--tasks", nargs="+", default=["registration", "prompt"], choices=["registration", "prompt"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=175, help="GradICON grid (default 175, the production size)")
    parser.add_argument("--ct", type=Path, default=DEFAULT_CT, help="CT volume to use (default: lung2 sample)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1], args.repeats, args.ct, args.size)))
        return 0
    import torch

    devices = args.devices or (["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())])
    results = []
    for dev in devices:
        for task in args.tasks:
            cmd = [sys.executable, __file__, "--child", task, dev, "--repeats", str(args.repeats),
                   "--size", str(args.size), "--ct", str(args.ct)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{task} on {dev} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(lines[-1][7:]))
            r = results[-1]
            print(f"{r['task']:<13} {r['device']:<8} {r['best_s']:8.2f} s  (runs: "
                  f"{', '.join(f'{s:.2f}' for s in r['seconds'])})  peak {r['peak_mb']:8.0f} MB  [{r['device_name']}]",
                  flush=True)
    for dev in devices:
        by = {r["task"]: r["best_s"] for r in results if r["device"].startswith(dev.split(":")[0])}
        if len(by) == 2:
            prompts = 4 * 2  # one lesion on a 5-scan study, with boost: 2 prompts on each of 4 targets
            print(f"{dev}: 5-scan study, 1 lesion with boost: {prompts * by['prompt']:.1f} s once registrations are "
                  f"cached, {4 * by['registration'] + prompts * by['prompt']:.1f} s in all (4 registrations)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
