#!/usr/bin/env python
"""Benchmark a registration backend on semi-synthetic longitudinal studies with known truth.

Generates (or reuses) studies from every ``<name>_image.nrrd``/``<name>_label.nrrd`` pair in
``--ct-dir`` for each seed x difficulty (:func:`LinGuinELib.research.synthetic.make_benchmark_studies`), then
registers the first scan to every later one and the last scan to every earlier one. Per pair it prints
wall seconds, CPU seconds (all threads; less sensitive to other load on the machine), peak RSS of this
process during the registration, and for every lesion in the study (real or inserted: "multi" studies
add one at the chest wall and one in soft tissue) the propagation error of its centre (distance between
the mapped true source centre and the true target centre, LPS mm), its diameter change from source to
target and the error without registration; then medians, 90th percentiles and maxima over all lesions,
those within the goal's growth range, and per kind of lesion.

    .venv/bin/python scripts/bench_registration.py --out /tmp/linguine-bench-registration [--backend sitk]
    .venv/bin/python scripts/bench_registration.py --levels multi --pairs ends    # issue 17's goal check
"""

from __future__ import annotations

import argparse
import ast
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LinGuinELib.backends import make_registration  # noqa: E402
from LinGuinELib.io.load import load_study  # noqa: E402
from LinGuinELib.research.synthetic import LEVELS, load_truth, make_benchmark_studies, true_centres  # noqa: E402

GOAL_GROWTH = 1.7  # issue 17's goal holds for diameter changes within 1/1.7 (0.59x) to 1.7x, either way in time


class PeakRSS:
    """Samples this process's resident set size every 20 ms while active (Linux /proc; else ru_maxrss)."""

    def __init__(self):
        self.peak = 0

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def pairs(n: int, mode: str) -> list[tuple[int, int]]:
    forward = [(0, j) for j in range(1, n)]
    backward = [(n - 1, j) for j in range(n - 2, -1, -1)]
    return {"ends": [(0, n - 1), (n - 1, 0)], "all": forward + backward}[mode]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct-dir", default=str(REPO.parent / "shared" / "data" / "ct"))
    parser.add_argument("--out", default="/tmp/linguine-bench-registration",
                        help="folder for the generated studies (reused when present)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--pairs", choices=["all", "ends"], default="all",
                        help="all: first->each later and last->each earlier; ends: first<->last only")
    parser.add_argument("--backend", default="sitk")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="backend constructor option (value parsed as a Python literal when possible)")
    args = parser.parse_args(argv)
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    studies = make_benchmark_studies(args.ct_dir, args.out, seeds=args.seeds, levels=args.levels, n_scans=args.scans)
    backend = make_registration(args.backend, **options)
    lesions, timings = [], []  # per (pair, lesion): kind, diameter change, error, no-registration error; per pair
    print(f"{'study':22s} {'pair':9s} {'lesion':>6s} {'kind':>11s} {'growth':>6s} {'seconds':>8s} {'cpu_s':>8s} "
          f"{'peak_MB':>8s} {'error_mm':>9s} {'no_reg_mm':>9s}", flush=True)
    for csv_path in studies:
        study = load_study(csv_path).without_labels()
        truth = load_truth(csv_path)
        lesion_ids = sorted(int(k) for k in truth["scans"][0]["lesions"])
        kinds = {int(k): v.get("kind", "real") for k, v in truth["baseline_lesions"].items()}
        centres = {k: true_centres(truth, k) for k in lesion_ids}
        growth = {s["scan_id"]: {int(k): v["growth"] for k, v in s["lesions"].items()} for s in truth["scans"]}
        for i, j in pairs(len(study), args.pairs):
            source, target = study.scans[i], study.scans[j]
            with PeakRSS() as rss:
                start, cpu_start = time.perf_counter(), time.process_time()
                point_map = backend.register(source, target)
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            timings.append((seconds, cpu, rss.peak / 2**20))
            sources = np.array([centres[k][source.scan_id] for k in lesion_ids])
            targets = np.array([centres[k][target.scan_id] for k in lesion_ids])
            errors = np.linalg.norm(point_map(sources) - targets, axis=1)
            baselines = np.linalg.norm(sources - targets, axis=1)
            for k, error, baseline in zip(lesion_ids, errors, baselines):
                change = growth[target.scan_id][k] / growth[source.scan_id][k]  # diameter, target / source
                lesions.append((kinds[k], change, error, baseline))
                print(f"{study.patient_id:22s} {source.scan_id + '->' + target.scan_id:9s} {k:6d} {kinds[k]:>11s} "
                      f"{change:6.2f} {seconds:8.1f} {cpu:8.1f} {rss.peak / 2**20:8.0f} {error:9.2f} {baseline:9.2f}",
                      flush=True)
        if hasattr(backend, "forget"):
            for scan in study:
                backend.forget(scan.scan_id)
    seconds, cpu, peak = np.array(timings).T
    print(f"\n{len(timings)} pairs, load average {os.getloadavg()[0]:.1f}: median {np.median(seconds):.1f} s wall per "
          f"pair (max {seconds.max():.1f}), CPU {np.median(cpu):.1f} s (max {cpu.max():.1f}), peak RSS median "
          f"{np.median(peak):.0f} MB (max {peak.max():.0f})")
    change = np.array([c for _, c, _, _ in lesions])
    within = np.minimum(change, 1 / change) >= 1 / GOAL_GROWTH - 1e-9
    groups = {"all lesions": np.ones(len(lesions), bool),
              f"within 1/{GOAL_GROWTH:g}-{GOAL_GROWTH:g}x": within, "outside it": ~within}
    groups.update({f"{kind} lesions": np.array([k == kind for k, _, _, _ in lesions])
                   for kind in sorted({k for k, _, _, _ in lesions})})
    error = np.array([e for _, _, e, _ in lesions])
    baseline = np.array([b for _, _, _, b in lesions])
    for name, chosen in groups.items():
        if chosen.any():
            print(f"{name:>24s}: {chosen.sum():3d} propagations, error median {np.median(error[chosen]):.2f} mm "
                  f"(90th pct {np.percentile(error[chosen], 90):.2f}, max {error[chosen].max():.2f}), no registration "
                  f"median {np.median(baseline[chosen]):.2f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
