"""``linguine evaluate``: track every labelled lesion of one scan through labelled studies and score it
(the paper's Table 1 metrics; see :mod:`LinGuinELib.research.evaluation`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from LinGuinELib.core.errors import InputError
from LinGuinELib.frontend.settings import add_arguments as settings_arguments
from LinGuinELib.commands.track import tqdm_progress
from LinGuinELib.commands import out_folder

NAME = "evaluate"
HELP = "Score tracking against label maps on labelled studies: Dice, centre distance, propagation error."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("studies", nargs="+", metavar="STUDY_CSV",
                        help="study.csv files (or folders holding one) with a label map on every scan")
    parser.add_argument("--out", type=out_folder, required=True,
                        help="output folder for per_lesion.csv, summary.md/.json and the plot")
    parser.add_argument("--source", default="first",
                        help="prompt scan: first, middle, last or a scan id (default: first)")
    parser.add_argument("--prompt", choices=("mask", "click"), default="mask",
                        help="prompt each lesion with its true mask (default) or a click at its interior centre")
    settings_arguments(parser)


def run(args) -> int:
    from LinGuinELib.frontend.settings import Settings
    from LinGuinELib.research.evaluation import evaluate_study, summary_markdown, write_evaluation
    from LinGuinELib.io.load import load_study

    studies, seen = [], {}
    for path in args.studies:
        study = load_study(path)
        if study.patient_id in seen:
            raise InputError(f"{path}: patient id '{study.patient_id}' is also used by {seen[study.patient_id]}; "
                             "give each study its own patient_id")
        seen[study.patient_id] = path
        studies.append(study)
    settings = Settings.from_args(args)
    registration, segmenter = settings.make_registration(), settings.make_segmenter()
    rows = []
    for n, study in enumerate(studies, start=1):
        progress, close = tqdm_progress(f"[{n}/{len(studies)}] {study.patient_id}")
        try:
            evaluation = evaluate_study(study, registration, segmenter, source=args.source, prompt=args.prompt,
                                        boost=args.boost, chain=args.chain, radius_mm=args.radius_mm,
                                        progress=progress)
        finally:
            close()
        rows += evaluation.rows
        seconds = evaluation.result.stats["seconds"]
        print(f"{study.patient_id}: {len(evaluation.rows)} pairs from scan '{evaluation.source_id}' "
              f"in {seconds['total']:.1f} s (registration {seconds['registration']:.1f} s)", file=sys.stderr)
    config = {"registration": registration.name, "segmentation": segmenter.name, "source": args.source,
              "prompt": args.prompt, "boost": args.boost, "chain": args.chain, "radius_mm": args.radius_mm,
              "studies": [str(Path(p)) for p in args.studies]}
    summary = write_evaluation(rows, args.out, config)
    print(summary_markdown(summary))
    print(f"outputs written to {Path(args.out).resolve()}", file=sys.stderr)
    return 0
