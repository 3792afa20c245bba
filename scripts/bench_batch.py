#!/usr/bin/env python
"""Benchmark: wall time for a cohort of N studies, ``linguine track`` one after another against ``linguine
batch`` on an embedded local Ray instance (one worker per core), and their ratio, from one run.

Studies are semi-synthetic (``make_study``) from the real CTs (lung1 and lung2 in turn, different seeds),
each prompted with its tumour's mask on the first scan. The batch time includes Ray's start-up and the
workers' imports; the outputs of both runs are checked to agree (lesions.csv).

    python scripts/bench_batch.py [--ct-dir ../shared/data/ct] [--studies 4] [--scans 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from LinGuinELib.cli import main as linguine
from LinGuinELib.research.sample_data import candidate_dirs
from LinGuinELib.research.synthetic import make_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct-dir", default=None)
    ap.add_argument("--studies", type=int, default=4)
    ap.add_argument("--scans", type=int, default=3)
    ap.add_argument("--registration", default="sitk")
    ap.add_argument("--segmentation", default="classic")
    args = ap.parse_args()
    ct = Path(args.ct_dir) if args.ct_dir else next(
        (d for d in candidate_dirs() if (d / "lung2_image.nrrd").is_file()), None)
    if ct is None:
        ap.error("lung2_image.nrrd not found; pass --ct-dir")
    backends = ["--registration", args.registration, "--segmentation", args.segmentation]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = ["study,source,mask"]
        for n in range(args.studies):
            case = ("lung1", "lung2")[n % 2]
            csv_path = make_study(ct / f"{case}_image.nrrd", ct / f"{case}_label.nrrd", tmp / f"s{n}",
                                  n_scans=args.scans, seed=n, difficulty="medium", patient_id=f"{case}-{n}")
            first = csv_path.read_text().splitlines()[1].split(",")
            rows.append(f"s{n}/study.csv,{first[1]},s{n}/{first[4]}")
        cohort = tmp / "cohort.csv"
        cohort.write_text("\n".join(rows) + "\n")

        start = time.perf_counter()
        for n, row in enumerate(rows[1:]):
            study, source, mask = row.split(",")
            assert linguine(["track", str(tmp / study), "--source", source, "--mask", str(tmp / mask),
                             "--out", str(tmp / "seq" / f"s{n}")] + backends) == 0
        sequential = time.perf_counter() - start

        start = time.perf_counter()
        assert linguine(["batch", str(cohort), "--out", str(tmp / "batch"), "--retries", "0"] + backends) == 0
        batch = time.perf_counter() - start
        for n in range(args.studies):
            same = (tmp / "seq" / f"s{n}" / "lesions.csv").read_text() == \
                (tmp / "batch" / f"s{n}" / "lesions.csv").read_text()
            assert same, f"study s{n}: batch and track disagree"
    print(f"\n{args.studies} studies x {args.scans} scans ({args.registration} + {args.segmentation}) on "
          f"{os.cpu_count()} cores, measured under concurrent load:")
    print(f"sequential linguine track: {sequential:.1f} s ({sequential / args.studies:.1f} s per study)")
    print(f"linguine batch (local Ray, start-up included): {batch:.1f} s")
    print(f"speed-up: {sequential / batch:.2f}x (outputs identical)")


if __name__ == "__main__":
    main()
