"""``linguine batch``: track a cohort (many studies) in parallel on Ray, resumable after a failure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from LinGuinELib.batch import runner
from LinGuinELib.commands import out_folder
from LinGuinELib.frontend.settings import add_arguments as settings_arguments

NAME = "batch"
HELP = "Track a cohort of studies in parallel on Ray (embedded locally, or on a cluster); resumable."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cohort", metavar="COHORT.csv",
                        help="one row per lesion prompt: study, source, mask or point (x y z, LPS mm), "
                             "optional lesion_id and name; paths relative to the csv")
    parser.add_argument("--out", type=out_folder, required=True, help="output folder: one sub-folder per study plus batch_summary.csv/.json")
    parser.add_argument("--dicom-seg", action="store_true", help="also write one DICOM-SEG per timepoint (DICOM studies)")
    parser.add_argument("--retries", type=int, default=1, help="retries of a failed study (default 1)")
    runner.add_arguments(parser)
    settings_arguments(parser)


def run(args) -> int:
    from LinGuinELib.batch.work import print_records, run_batch
    from LinGuinELib.frontend.settings import Settings

    records = run_batch(args.cohort, args.out, Settings.from_args(args), dicom_seg=args.dicom_seg,
                        address=args.address, cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                        retries=args.retries)
    print_records(records)
    failed = [r for r in records if r["status"] == "failed"]
    print(f"{len(records) - len(failed)} of {len(records)} studies done; summary in "
          f"{Path(args.out).resolve() / 'batch_summary.csv'}", file=sys.stderr)
    return 1 if failed else 0
