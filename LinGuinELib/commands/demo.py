"""``linguine demo``: build a small longitudinal study from a real chest CT and track its tumour.

The study is semi-synthetic (:func:`LinGuinELib.research.synthetic.make_study` on pyradiomics' ``lung2`` CT, fixed
seed): its label maps are the truth. The tumour is clicked at its interior centre on the middle timepoint
and tracked with the chosen backends (CPU defaults); the outputs of ``linguine track`` and ``overview.png``
are written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from LinGuinELib.frontend.settings import add_arguments as settings_arguments
from LinGuinELib.commands.track import make_tracker, tqdm_progress
from LinGuinELib.commands import out_folder

NAME = "demo"
HELP = "Track the tumour of a real chest CT through a small semi-synthetic longitudinal study (CPU defaults)."
DIFFICULTY = "medium"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=out_folder, default="linguine-demo",
                        help="output folder (default: linguine-demo)")
    parser.add_argument("--scans", type=int, choices=(3, 4), default=4, help="timepoints in the study (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic follow-ups (default 0)")
    settings_arguments(parser)


def _study(image: Path, label: Path, folder: Path, n_scans: int, seed: int) -> Path:
    """The demo study's csv, reused when ``folder`` already holds the same one."""
    from LinGuinELib.research.synthetic import make_study

    truth_path = folder / "truth.json"
    if truth_path.is_file() and (folder / "study.csv").is_file():
        with open(truth_path) as fh:
            truth = json.load(fh)
        if (truth.get("seed"), truth.get("difficulty"), len(truth.get("scans", [])), truth.get("source_image")) == \
                (seed, DIFFICULTY, n_scans, str(image)):
            return folder / "study.csv"
    return make_study(image, label, folder, n_scans=n_scans, seed=seed, difficulty=DIFFICULTY,
                      patient_id="demo-lung2")


def run(args) -> int:
    from LinGuinELib.core import coords
    from LinGuinELib.core.measure import dice
    from LinGuinELib.core.lesion import Lesion
    from LinGuinELib.core.measure import measurement_rows
    from LinGuinELib.io.output import write_tracking_outputs
    from LinGuinELib.research.overview import write_overview
    from LinGuinELib.research.sample_data import lung2_paths
    from LinGuinELib.core.study import load_study_csv
    from LinGuinELib.core.tracking import LesionPrompt, interior_centre

    start = time.perf_counter()
    err = lambda message: print(message, file=sys.stderr)
    out = Path(args.out)
    image, label = lung2_paths(log=err)
    err(f"building a {args.scans}-scan study from {image} (seed {args.seed}) in {out / 'study'} ...")
    study = load_study_csv(_study(image, label, out / "study", args.scans, args.seed))
    source = study.resolve("middle")
    lesion_id = int(np.argmax(np.bincount(source.label.ravel())[1:])) + 1  # the largest lesion
    click = interior_centre(source.label == lesion_id, source)
    print(f"click on {source.scan_id} ({source.date.date()}): LPS {np.round(click, 1).tolist()} mm "
          f"(RAS {np.round(coords.lps_to_ras(click), 1).tolist()}), the true tumour's interior centre")
    progress, close = tqdm_progress("tracking")
    try:
        tracker = make_tracker(study, args, progress)
        result = tracker.track([LesionPrompt(Lesion(lesion_id, "tumour"), source.scan_id, point_lps=click)])
    finally:
        close()
    truth = {s.scan_id: s.label == lesion_id for s in study}
    scores = {s.scan_id: dice(result.label_map(s.scan_id) == lesion_id, truth[s.scan_id]) for s in study}
    demo_info = {"source_scan": source.scan_id, "click_lps": click.tolist(), "dice": scores,
                 "study_csv": str(Path(study.source_path).resolve())}
    write_tracking_outputs(result, out, extra_summary={"demo": demo_info})
    write_overview(result, lesion_id, out / "overview.png", truth, scores,
                   title=f"LinGuinE demo: {result.stats['registration']} + {result.stats['segmentation']}, "
                         f"click on {source.scan_id}")

    print(f"{'scan':<6} {'date':<10} {'status':<12} {'volume mL':>9} {'true mL':>8} {'Dice':>6}")
    for row in measurement_rows(result):
        scan_id = row["scan_id"]
        true_ml = float(truth[scan_id].sum()) * study.scan(scan_id).voxel_volume_mm3 / 1000.0
        volume = "-" if row["volume_ml"] is None else f"{row['volume_ml']:.2f}"
        score = "-" if scores[scan_id] is None else f"{scores[scan_id]:.3f}"
        print(f"{scan_id:<6} {row['date']:<10} {row['status']:<12} {volume:>9} {true_ml:>8.2f} {score:>6}")
    others = [v for k, v in scores.items() if k != source.scan_id and v is not None]
    seconds = result.stats["seconds"]
    print(f"median Dice on the other scans: {np.median(others):.3f}; tracking took {seconds['total']:.0f} s "
          f"(registration {seconds['registration']:.0f} s), {time.perf_counter() - start:.0f} s in all")
    print(f"outputs (label maps, lesions.csv, summary.json, overview.png) in {out.resolve()}")
    return 0
