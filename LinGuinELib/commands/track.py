"""``linguine track``: track lesions from one prompt scan to every scan of a study."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from LinGuinELib.core import coords
from LinGuinELib.frontend.settings import Settings
from LinGuinELib.frontend.settings import add_arguments as settings_arguments
from LinGuinELib.commands import out_folder
from LinGuinELib.core.errors import InputError

NAME = "track"
HELP = "Track lesions from a click or mask on one scan to every other scan of a study."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study.csv, a folder holding one, or a folder of one patient's DICOM series")
    parser.add_argument("--source", help="scan id (or unique date YYYY-MM-DD, or first/middle/last) of the prompt")
    p = parser.add_argument_group("prompts (one kind or several; each point is one lesion)")
    p.add_argument("--point", nargs=3, type=float, action="append", metavar=("X", "Y", "Z"), default=[],
                   help="click in LPS mm (DICOM/ITK patient coordinates); may repeat")
    p.add_argument("--point-ras", nargs=3, type=float, action="append", metavar=("R", "A", "S"), default=[],
                   help="click in RAS mm, as Slicer displays it; may repeat")
    p.add_argument("--point-ijk", nargs=3, type=float, action="append", metavar=("I", "J", "K"), default=[],
                   help="click as a voxel index (i = column, j = row, k = slice); may repeat")
    p.add_argument("--mask", help="label map on the source scan (lesion ids as values) or a DICOM-SEG")
    p.add_argument("--lesion-id", type=int, nargs="+", action="extend", default=[], metavar="ID",
                   help="with --mask: track only these ids (default all); with points: the ids of the points, "
                        "in prompt order (e.g. --lesion-id 1 2 3; may repeat)")
    p.add_argument("--name", action="append", default=[], help="lesion names, in prompt order")
    parser.add_argument("--out", type=out_folder, default="linguine-out", help="output folder (default: linguine-out)")
    parser.add_argument("--dicom-seg", action="store_true", help="also write one DICOM-SEG per timepoint (DICOM studies)")
    settings_arguments(parser)
    e = parser.add_argument_group("engine service")
    e.add_argument("--server", metavar="URL", help="track through the engine service at URL (`linguine serve`)")
    e.add_argument("--token-file", metavar="FILE", help="with --server: file holding its bearer token "
                                                          "(default: $LINGUINE_TOKEN)")


def make_tracker(study, args, progress=None):
    """A Tracker for ``study`` with the backends and options named in ``args``."""
    from LinGuinELib.core.tracking import Tracker

    settings = Settings.from_args(args)
    return Tracker(study, settings.make_registration(), settings.make_segmenter(), progress=progress,
                   **settings.tracker_options())


def build_prompts(study, args) -> list:
    """The lesion prompts from ``args`` (validated against the study) -> list[LesionPrompt]."""
    from LinGuinELib.core.lesion import Lesion
    from LinGuinELib.core.study import load_label_map
    from LinGuinELib.core.tracking import LesionPrompt

    points_given = bool(args.point or args.point_ras or args.point_ijk)
    if not points_given and not args.mask:
        raise InputError("give a prompt: --point, --point-ras, --point-ijk or --mask")
    prompts = []
    if args.mask:
        mask_path = Path(args.mask)
        if mask_path.suffix.lower() == ".dcm":
            from LinGuinELib.io.dicom_seg import read_seg_prompt, seg_lesions

            one = args.lesion_id[0] if len(args.lesion_id) == 1 else None  # lets one of overlapping segments be picked
            scan_id, labels = read_seg_prompt(mask_path, study, lesion_id=one)
            if args.source and study.resolve(args.source).scan_id != scan_id:
                raise InputError(f"{mask_path}: this SEG belongs to scan '{scan_id}', not --source {args.source}")
            known = seg_lesions(mask_path)  # keeps name and TrackingUID of a lesion we exported before
        else:
            if not args.source:
                raise InputError("--source is required with a label-map --mask")
            scan_id = study.resolve(args.source).scan_id
            labels = load_label_map(mask_path, study.scan(scan_id))
            known = {}
        present = [int(v) for v in np.unique(labels) if v > 0]
        wanted = args.lesion_id or present
        for n, value in enumerate(wanted):
            if value not in present:
                raise InputError(f"{mask_path}: lesion id {value} is not in the mask (ids present: {present or 'none'})")
            lesion = known.get(value) or Lesion(value)
            if n < len(args.name):
                lesion.name = args.name[n]
            prompts.append(LesionPrompt(lesion, scan_id, mask=labels == value))
        if not prompts:
            raise InputError(f"{mask_path}: the mask is empty")
    if points_given:
        if not args.source:
            raise InputError("--source is required with --point/--point-ras/--point-ijk")
        scan = study.resolve(args.source)
        points = [np.asarray(p, float) for p in args.point]
        points += [coords.ras_to_lps(p) for p in args.point_ras]
        points += [coords.ijk_to_lps(np.asarray(p, float), scan.index_to_lps) for p in args.point_ijk]
        used = {p.lesion.lesion_id for p in prompts}
        ids = args.lesion_id if (args.lesion_id and not args.mask) else []
        if ids and len(ids) != len(points):
            raise InputError(f"{len(ids)} --lesion-id value(s) for {len(points)} point(s): give one id per point")
        next_id = max(used, default=0) + 1
        for n, point in enumerate(points):
            lid = ids[n] if ids else next_id + n
            if not scan.contains_lps(point.reshape(1, 3))[0]:
                raise InputError(scan.outside_message(point))
            name_index = len(prompts)
            name = args.name[name_index] if name_index < len(args.name) else ""
            prompts.append(LesionPrompt(Lesion(lid, name), scan.scan_id, point_lps=point))
    return prompts


def tqdm_progress(desc: str):
    """(progress callback, close function) drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)

    def progress(message, done, total):
        bar.total = max(total, 1)
        bar.n = min(done, bar.total)
        bar.set_postfix_str(message[:60], refresh=True)

    return progress, bar.close


def print_table(rows: list[dict], file=None) -> None:
    file = file or sys.stdout
    print(f"{'lesion':<12} {'scan':<14} {'status':<12} {'volume mL':>10} {'long mm':>8} {'short mm':>8} {'vs base %':>9}",
          file=file)
    for r in rows:
        num = lambda v, f: format(v, f) if v is not None else "-"
        print(f"{r['lesion_name'][:12]:<12} {r['scan_id'][:14]:<14} {r['status']:<12} {num(r['volume_ml'], '10.2f')} "
              f"{num(r['longest_diameter_mm'], '8.1f')} {num(r['short_axis_mm'], '8.1f')} "
              f"{num(r['change_from_baseline_pct'], '9.1f')}", file=file)


def check_dicom_seg(study) -> None:
    """--dicom-seg needs every scan loaded from DICOM (InputError naming the others)."""
    not_dicom = [s.scan_id for s in study if "dicom" not in s.meta]
    if not_dicom:
        raise InputError(f"--dicom-seg needs a DICOM study; scans {', '.join(not_dicom)} were not loaded from DICOM")


def track_study(study, prompts: list, out_dir, settings: Settings, *, dicom_seg: bool = False, registration=None,
                segmenter=None, client=None, progress=None, log=print):
    """Track ``prompts`` through ``study`` and write into ``out_dir`` what ``linguine track`` writes there
    (label maps, lesions.csv, summary.json; with ``dicom_seg`` also ``dicom-seg/*.seg.dcm``).

    ``registration``/``segmenter``: already built backends to reuse (default: built from ``settings``);
    ``client``: an :class:`~LinGuinELib.service.client.EngineClient` that tracks on the engine service instead.
    Returns (TrackingResult, {name: path written}).
    """
    from LinGuinELib.core.tracking import Tracker
    from LinGuinELib.io.output import write_tracking_outputs

    if dicom_seg:
        check_dicom_seg(study)
    if client is not None:
        result = client.track(study, prompts, settings, progress=progress)
    else:
        tracker = Tracker(study, registration or settings.make_registration(),
                          segmenter or settings.make_segmenter(), progress=progress, **settings.tracker_options())
        result = tracker.track(prompts)
    written = write_tracking_outputs(result, out_dir)
    if dicom_seg:
        from LinGuinELib.io.dicom_seg import export_segs

        export_segs(study, {s.scan_id: result.label_map(s.scan_id) for s in study}, result.lesions,
                    Path(out_dir) / "dicom-seg", log=log,
                    algorithm_parameters={"registration": settings.registration, "segmentation": settings.segmentation,
                                          "boost": str(settings.boost), "chain": str(settings.chain)})
    return result, written


def run(args) -> int:
    from LinGuinELib.core.measure import measurement_rows
    from LinGuinELib.io.load import load_study

    study = load_study(args.study)
    if args.dicom_seg:
        check_dicom_seg(study)
    prompts = build_prompts(study, args)
    progress, close = tqdm_progress("tracking")
    try:
        client = None
        if args.server:
            from LinGuinELib.service.client import client_from_args

            client = client_from_args(args.server, args.token_file)
        result, written = track_study(study, prompts, args.out, Settings.from_args(args), dicom_seg=args.dicom_seg,
                                      client=client, progress=progress, log=lambda m: print(m, file=sys.stderr))
    finally:
        close()
    print_table(measurement_rows(result))
    stats = result.stats
    print(f"registrations computed: {stats['registration_calls']}, segmentations: {stats['segmentation_calls']}, "
          f"seconds: {stats['seconds']}", file=sys.stderr)
    print(f"outputs written to {Path(args.out).resolve()} ({len(written)} files)", file=sys.stderr)
    return 0
