"""``linguine info STUDY``: list a study's timepoints with ids, dates, sizes and spacing."""

from __future__ import annotations

import argparse

import numpy as np

NAME = "info"
HELP = "List a study's timepoints (scan ids, dates, sizes, spacing) from study.csv or a DICOM folder."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study.csv, a folder holding one, or a folder of one patient's DICOM series")


def rows(study) -> list[dict]:
    """One dict per timepoint, in time order: index, scan id, date, size (i x j x k), spacing mm, source."""
    out = []
    for n, scan in enumerate(study, start=1):
        dicom = scan.meta.get("dicom")
        if dicom:
            number = dicom.get("SeriesNumber")
            source = f"series {number if number is not None else '?'} '{dicom.get('SeriesDescription', '')}'"
        else:
            source = scan.source_path
        labels = "" if scan.label is None else f", lesion ids {[int(v) for v in np.unique(scan.label) if v]}"
        out.append({"index": n, "scan_id": scan.scan_id, "date": f"{scan.date:%Y-%m-%d %H:%M}",
                    "size": "x".join(str(v) for v in scan.shape[::-1]),
                    "spacing": "x".join(f"{v:.3g}" for v in scan.spacing), "source": source + labels})
    return out


def run(args) -> int:
    from LinGuinELib.io.load import load_study

    study = load_study(args.study)
    print(f"patient {study.patient_id or '(no id)'}: {len(study)} timepoints")
    print(f"{'#':>2}  {'scan id':<24} {'date':<16} {'size (i x j x k)':<16} {'spacing mm':<18} source")
    for r in rows(study):
        print(f"{r['index']:>2}  {r['scan_id']:<24} {r['date']:<16} {r['size']:<16} {r['spacing']:<18} {r['source']}")
    return 0
