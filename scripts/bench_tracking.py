#!/usr/bin/env python
"""Benchmark: seconds per stage and registrations computed for L lesions x T scans, cached vs naive.

The engine registers each (source, target) pair once and shares it between lesions (T - 1
registrations); the reference implementation re-registers per lesion (L x (T - 1)). This builds a
semi-synthetic T-scan study from a real CT, prompts L lesions on the first scan (the tumour plus
L - 1 clicks on other dense structures), tracks them, and prints the figures. With --run-naive it
also times the per-lesion approach for real (slow: L x (T - 1) registrations).

    python scripts/bench_tracking.py [--ct-dir ../shared/data/ct] [--lesions 4] [--scans 4] [--run-naive]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from LinGuinELib.backends import make_registration, make_segmenter
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.research.sample_data import candidate_dirs
from LinGuinELib.io.load import load_study
from LinGuinELib.research.synthetic import make_study
from LinGuinELib.core.tracking import LesionPrompt, Tracker


def prompts_for(scan, n: int) -> list[LesionPrompt]:
    """The labelled tumour plus n - 1 clicks on dense tissue (> 100 HU) far from it and each other."""
    prompts = [LesionPrompt(Lesion(1, "tumour"), scan.scan_id, mask=scan.label == 1)]
    rng = np.random.default_rng(0)
    dense = np.argwhere(scan.array > 100)
    chosen = [np.argwhere(scan.label == 1).mean(0)]
    for idx in rng.permutation(len(dense)):
        if len(prompts) == n:
            break
        p = dense[idx]
        if all(np.linalg.norm((p - c) * scan.spacing_kji) > 40 for c in chosen):
            chosen.append(p)
            prompts.append(LesionPrompt(Lesion(len(prompts) + 1), scan.scan_id,
                                        point_lps=scan.kji_to_lps(p.reshape(1, 3))[0]))
    return prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct-dir", default=None)
    ap.add_argument("--case", default="lung2")
    ap.add_argument("--lesions", type=int, default=4)
    ap.add_argument("--scans", type=int, default=4)
    ap.add_argument("--registration", default="sitk")
    ap.add_argument("--segmentation", default="classic")
    ap.add_argument("--run-naive", action="store_true")
    args = ap.parse_args()
    ct = Path(args.ct_dir) if args.ct_dir else next(
        (d for d in candidate_dirs() if (d / f"{args.case}_image.nrrd").is_file()), None)
    if ct is None:
        ap.error(f"{args.case}_image.nrrd not found; pass --ct-dir")
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = make_study(ct / f"{args.case}_image.nrrd", ct / f"{args.case}_label.nrrd", tmp,
                              n_scans=args.scans, seed=0, difficulty="medium")
        study = load_study(csv_path)
        source = study.scans[0]
        prompts = prompts_for(source, args.lesions)
        reg, seg = make_registration(args.registration), make_segmenter(args.segmentation)
        start = time.perf_counter()
        result = Tracker(study, reg, seg).track(prompts)
        cached_total = time.perf_counter() - start
        s = result.stats
        print(f"study: {args.case}, T = {len(study)} scans, L = {len(prompts)} lesions, "
              f"{args.registration} + {args.segmentation}")
        print(f"cached : {s['registration_calls']:3d} registrations, {s['segmentation_calls']:3d} segmentations, "
              f"registration {s['seconds']['registration']:.1f} s, segmentation {s['seconds']['segmentation']:.1f} s, "
              f"total {cached_total:.1f} s")
        per_reg = s["seconds"]["registration"] / max(s["registration_calls"], 1)
        naive_regs = len(prompts) * (len(study) - 1)
        if args.run_naive:
            start = time.perf_counter()
            naive_reg = 0
            for p in prompts:  # a fresh tracker (and cache) per lesion, as the reference code does
                r = Tracker(study, make_registration(args.registration), seg).track([p])
                naive_reg += r.stats["registration_calls"]
            naive_total = time.perf_counter() - start
            print(f"naive  : {naive_reg:3d} registrations, total {naive_total:.1f} s (measured)")
        else:
            naive_total = naive_regs * per_reg + s["seconds"]["segmentation"]
            print(f"naive  : {naive_regs:3d} registrations, total ~{naive_total:.1f} s "
                  f"(estimated from {per_reg:.1f} s per registration; --run-naive measures it)")
        print(f"ratio  : {naive_regs / max(s['registration_calls'], 1):.1f}x fewer registrations, "
              f"{naive_total / cached_total:.1f}x less time")
        print(f"status : {[o.status for lid in result.observations for o in result.observations[lid].values()]}")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
