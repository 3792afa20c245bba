"""``linguine synth``: make a semi-synthetic longitudinal study with known truth from one CT + lesion mask."""

from __future__ import annotations

import argparse
from LinGuinELib.commands import out_folder

NAME = "synth"
HELP = "Make a semi-synthetic longitudinal study (known motion, deformation, lesion growth) from one CT."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LinGuinELib.research.synthetic import LEVELS

    parser.add_argument("image", help="baseline CT image (NRRD, NIfTI, MHA or a DICOM series folder)")
    parser.add_argument("label", help="lesion label map on the CT's grid (lesion ids as values)")
    parser.add_argument("--out", type=out_folder, required=True,
                        help="output folder (study.csv, truth.json, images, label maps)")
    parser.add_argument("--scans", type=int, default=4, help="number of scans including the baseline (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--difficulty", default="medium", choices=list(LEVELS),
                        help="size of motion, deformation and growth (default medium)")
    parser.add_argument("--patient-id", default=None, help="patient id written to study.csv")


def run(args: argparse.Namespace) -> int:
    from LinGuinELib.research.synthetic import make_study

    path = make_study(args.image, args.label, args.out, n_scans=args.scans, seed=args.seed,
                      difficulty=args.difficulty, patient_id=args.patient_id)
    print(path)
    return 0
