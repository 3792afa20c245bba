"""``linguine evaluate``: track every labelled lesion of one scan through labelled studies and score it
(the paper's Table 1 metrics; see :mod:`LinGuinELib.research.evaluation`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from LinGuinELib.batch import runner
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
    runner.add_arguments(parser, default_address=None)
    settings_arguments(parser)


def evaluate_parallel(paths: list[str], settings, args) -> list[dict]:
    """The pair rows of every study, evaluated on Ray workers (``--address``); input order kept.
    A failing study is an InputError naming it, as on the sequential path."""
    from LinGuinELib.batch.work import evaluate_job

    outcomes = {}
    jobs = [runner.Job(str(n), {"study": str(Path(p).resolve()), "source": args.source, "prompt": args.prompt})
            for n, p in enumerate(paths)]
    runner.run_jobs(jobs, evaluate_job, settings, lambda job, outcome: outcomes.__setitem__(int(job.key), outcome),
                    address=args.address, cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task)
    rows, seen = [], {}
    for n, path in enumerate(paths):
        outcome = outcomes[n]
        if not outcome["ok"]:
            raise InputError(f"{path}: {outcome['message']}")
        value = outcome["value"]
        if value["patient_id"] in seen:
            raise InputError(f"{path}: patient id '{value['patient_id']}' is also used by {seen[value['patient_id']]}; "
                             "give each study its own patient_id")
        seen[value["patient_id"]] = path
        seconds = value["seconds"]
        print(f"{value['patient_id']}: {len(value['rows'])} pairs from scan '{value['source_id']}' in "
              f"{seconds['total']:.1f} s (registration {seconds['registration']:.1f} s) on {outcome['where']}",
              file=sys.stderr)
        rows += value["rows"]
    return rows


def evaluate_sequential(paths: list[str], settings, args) -> list[dict]:
    """The pair rows of every study, evaluated one at a time in this process with one pair of backends."""
    from LinGuinELib.io.load import load_study
    from LinGuinELib.research.evaluation import evaluate_study

    studies, seen = [], {}
    for path in paths:
        study = load_study(path)
        if study.patient_id in seen:
            raise InputError(f"{path}: patient id '{study.patient_id}' is also used by {seen[study.patient_id]}; "
                             "give each study its own patient_id")
        seen[study.patient_id] = path
        studies.append(study)
    registration, segmenter = settings.make_registration(), settings.make_segmenter()
    rows = []
    for n, study in enumerate(studies, start=1):
        progress, close = tqdm_progress(f"[{n}/{len(studies)}] {study.patient_id}")
        try:
            evaluation = evaluate_study(study, registration, segmenter, source=args.source, prompt=args.prompt,
                                        progress=progress, **settings.tracker_options())
        finally:
            close()
        rows += evaluation.rows
        seconds = evaluation.result.stats["seconds"]
        print(f"{study.patient_id}: {len(evaluation.rows)} pairs from scan '{evaluation.source_id}' "
              f"in {seconds['total']:.1f} s (registration {seconds['registration']:.1f} s)", file=sys.stderr)
    return rows


def run(args) -> int:
    from LinGuinELib.frontend.settings import Settings
    from LinGuinELib.research.evaluation import summary_markdown, write_evaluation

    settings = Settings.from_args(args)
    evaluate = evaluate_parallel if args.address else evaluate_sequential
    rows = evaluate(args.studies, settings, args)
    summary = write_evaluation(rows, args.out, evaluation_config(settings, args))
    print(summary_markdown(summary))
    print(f"outputs written to {Path(args.out).resolve()}", file=sys.stderr)
    return 0


def evaluation_config(settings, args) -> dict:
    """The run configuration recorded in summary.json."""
    return {"registration": settings.registration, "segmentation": settings.segmentation, "source": args.source,
            "prompt": args.prompt, "boost": args.boost, "chain": args.chain, "radius_mm": args.radius_mm,
            "studies": [str(Path(p)) for p in args.studies]}
