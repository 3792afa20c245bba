"""``linguine export-seg STUDY TRACK_DIR``: one DICOM-SEG per timepoint from a ``linguine track`` output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from LinGuinELib.core.errors import InputError
from LinGuinELib.commands import out_folder

NAME = "export-seg"
HELP = "Write one DICOM-SEG per timepoint (highdicom) from the label maps of a 'linguine track' output folder."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="the patient's DICOM folder that was tracked")
    parser.add_argument("track_dir", help="output folder of 'linguine track' (<scan_id>.nii.gz and summary.json)")
    parser.add_argument("--out", type=out_folder, help="folder for the SEG files (default: TRACK_DIR/dicom-seg)")
    parser.add_argument("--creator", default="LinGuinE^",
                        help="Content Creator's Name, DICOM person name such as 'Doe^Jane' (default: LinGuinE^)")


def read_track_dir(track_dir: Path, study) -> tuple[dict, list, dict]:
    """(label maps by scan id, lesions, backends) from a track output folder (its segments are all
    semi-automatic: hand edits happen in Slicer, whose export writes DICOM-SEG itself)."""
    from LinGuinELib.core.lesion import Lesion
    from LinGuinELib.io.output import safe_filename
    from LinGuinELib.core.study import load_label_map

    summary_path = track_dir / "summary.json"
    if not summary_path.is_file():
        raise InputError(f"{summary_path}: not found; give the output folder of 'linguine track'")
    try:
        summary = json.loads(summary_path.read_text())
        lesions = [Lesion.from_dict(d) for d in summary["lesions"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{summary_path}: not a LinGuinE tracking summary ({exc})") from exc
    names = summary.get("label_maps") or {}
    label_maps = {}
    for scan in study:
        path = track_dir / names.get(scan.scan_id, safe_filename(scan.scan_id) + ".nii.gz")
        if path.is_file():
            label_maps[scan.scan_id] = load_label_map(path, scan)
        else:
            print(f"{path}: not found; no SEG for scan '{scan.scan_id}'", file=sys.stderr)
    if not label_maps:
        raise InputError(f"{track_dir}: holds no label map for any scan of the study ({', '.join(study.scan_ids)})")
    parameters = {k: str(summary[k]) for k in ("registration", "segmentation") if summary.get(k)}
    return label_maps, lesions, parameters


def run(args) -> int:
    from LinGuinELib.io.dicom_seg import export_segs
    from LinGuinELib.io.load import load_study

    study = load_study(args.study)
    track_dir = Path(args.track_dir)
    label_maps, lesions, parameters = read_track_dir(track_dir, study)
    out = Path(args.out) if args.out else track_dir / "dicom-seg"
    written = export_segs(study, label_maps, lesions, out, log=lambda m: print(m, file=sys.stderr),
                          content_creator=args.creator, algorithm_parameters=parameters)
    for path in written:
        print(path)
    print(f"{len(written)} DICOM-SEG file(s) written to {out.resolve()}", file=sys.stderr)
    return 0
