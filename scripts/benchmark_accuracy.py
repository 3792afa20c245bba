"""Accuracy benchmark: ``linguine evaluate`` over semi-synthetic studies made from the real CTs.

For each ``<name>_image.nrrd`` + ``<name>_label.nrrd`` in the CT folder (lung1: small nodule, lung2: large
tumour), one study per seed x difficulty (:func:`LinGuinELib.research.synthetic.make_benchmark_studies`, cached in
``--work``). Every lesion is prompted on the first scan and again on the last scan and tracked to every
other scan; the script prints median Dice, median centre distance (ED, mm) and median propagation error
(mm) per study and overall, and writes each source's ``evaluate`` outputs under ``--work``.

    .venv/bin/python scripts/benchmark_accuracy.py                 # sitk + classic, 2 seeds x 3 levels
    .venv/bin/python scripts/benchmark_accuracy.py --seeds 0 --levels medium --scans 3   # quicker
    .venv/bin/python scripts/benchmark_accuracy.py --inserted 4 --registration identity  # low-contrast lesions
    .venv/bin/python scripts/benchmark_accuracy.py --levels multi --at-truth   # + the segmenter's own ED floor
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LinGuinELib.backends import make_registration, make_segmenter  # noqa: E402
from LinGuinELib.research.evaluation import evaluate_study, summarise, write_evaluation  # noqa: E402
from LinGuinELib.core.study import load_study_csv  # noqa: E402
from LinGuinELib.research.lesion_insertion import lesion_shapes, make_inserted_study, place_lesions, size_class  # noqa: E402
from LinGuinELib.research.synthetic import LEVELS, make_benchmark_studies  # noqa: E402
from LinGuinELib.core.study import Scan, read_image  # noqa: E402


def _f(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def print_table(title: str, groups: dict[str, list[dict]], seg_seconds: dict[tuple[str, str], float]) -> None:
    """One line per group of pair rows; ``seg_seconds``: segmentation seconds per pair (one call) of each
    (patient_id, source scan) evaluation."""
    print(f"\n{title}")
    print(f"{'study':<24} {'pairs':>5} {'found':>6} {'Dice':>6} {'ED mm':>7} {'ED undef':>8} {'prop mm':>8} "
          f"{'inside':>6} {'Dice/wk':>8} {'s/seg':>6}")
    for name, rows in groups.items():
        s = summarise(rows)
        undef = None if s["ed_undefined_fraction"] is None else 100 * s["ed_undefined_fraction"]
        inside = None if s["point_in_lesion_fraction"] is None else 100 * s["point_in_lesion_fraction"]
        present = [r for r in rows if r["truth"] == "present"]
        found = 100 * sum(r["outcome"] == "found" for r in present) / len(present) if present else None
        seconds = float(np.mean([seg_seconds[r["patient_id"], r["source_scan"]] for r in rows])) if rows else None
        print(f"{name:<24} {s['n_pairs']:>5} {_f(found, '.0f'):>5}% {_f(s['median_dice']):>6} "
              f"{_f(s['median_ed_mm'], '.2f'):>7} {_f(undef, '.0f'):>7}% {_f(s['median_propagation_error_mm'], '.2f'):>8} "
              f"{_f(inside, '.0f'):>5}% {_f(s['dice_slope_per_week'], '+.4f'):>8} {_f(seconds, '.2f'):>6}")


def inserted_studies(ct_dir, out_dir, n: int, seed: int) -> tuple[list[Path], dict[str, str]]:
    """(``n`` shrinking inserted-lesion studies per CT (LinGuinELib.research.lesion_insertion), cached;
    {patient_id: lesion class, e.g. "medium-blob"} by the first scan's diameter)."""
    rng, out, classes = np.random.default_rng(seed), [], {}
    for image in sorted(Path(ct_dir).glob("*_image.nrrd")):
        name = image.name[: -len("_image.nrrd")]
        scan = Scan.from_sitk(read_image(image), name, dt.datetime(2020, 1, 1),
                              read_image(image.with_name(f"{name}_label.nrrd")))
        for m, (shape, site) in enumerate(place_lesions(scan, lesion_shapes(rng, n), rng, exclude=scan.label > 0)):
            target = Path(out_dir) / f"{name}-lesion{m}-s{seed}"
            if not (target / "study.csv").is_file():
                make_inserted_study(scan, target, shape, site, scales=(1.0, 0.75, 0.5), patient_id=target.name)
            out.append(target / "study.csv")
            classes[target.name] = f"{size_class(shape.diameter_mm)}-{shape.kind}"
    return out, classes


def at_truth(csvs, segmenter, radius_mm: float = 10.0) -> list[dict]:
    """Per (study, scan, lesion) of synthetic studies: Dice and ED of the segmenter prompted at the lesion's
    true centre (``truth.json``), i.e. tracking without registration error: the segmentation's own floor."""
    import numpy as np
    from LinGuinELib.core.tracking import select_component
    from LinGuinELib.research.evaluation import centre_distance_mm, dice
    from LinGuinELib.research.synthetic import load_truth
    rows = []
    for path in csvs:
        study, truth = load_study_csv(path), load_truth(path)
        for entry in truth["scans"]:
            scan = study.scan(entry["scan_id"])
            for lesion_id, info in entry["lesions"].items():
                point, true_mask = np.array(info["centre_lps"]), scan.label == int(lesion_id)
                mask = select_component(segmenter.segment(scan, np.array([scan.nearest_voxel(point)])), point, scan,
                                        radius_mm)
                rows.append({"patient_id": study.patient_id, "scan": scan.scan_id, "lesion_id": int(lesion_id),
                             "dice": dice(mask, true_mask), "ed_mm": centre_distance_mm(mask, true_mask, scan)})
            segmenter.forget(scan.scan_id)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct-dir", default=os.environ.get("LINGUINE_CT_DIR", str(REPO.parent / "shared" / "data" / "ct")))
    p.add_argument("--work", default=str(REPO.parent / "linguine-benchmark"), help="studies and outputs folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--levels", nargs="+", default=["easy", "medium", "hard"], choices=list(LEVELS))
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--sources", nargs="+", default=["first", "last"])
    p.add_argument("--prompt", choices=("mask", "click"), default="mask")
    p.add_argument("--registration", default="sitk")
    p.add_argument("--segmentation", default="classic")
    p.add_argument("--boost", action="store_true")
    p.add_argument("--inserted", type=int, default=0, metavar="N",
                   help="instead, N studies per CT of one low-contrast soft-tissue lesion (10-50 mm, +-20-60 HU) "
                        "inserted into the same real scan and shrinking 1 -> 0.75 -> 0.5 (anatomy fixed: use "
                        "--registration identity to score the segmenter alone)")
    p.add_argument("--at-truth", action="store_true",
                   help="also prompt the segmenter at each lesion's true centre on every scan (synthetic truth: no "
                        "registration error) and print its median Dice and ED per study: the segmentation's floor")
    args = p.parse_args(argv)

    work = Path(args.work)
    start = time.perf_counter()
    print(f"making (or reusing) the studies in {work / 'studies'} ...", file=sys.stderr)
    csvs, classes = inserted_studies(args.ct_dir, work / "inserted", args.inserted, args.seeds[0]) if args.inserted \
        else (make_benchmark_studies(args.ct_dir, work / "studies", seeds=args.seeds, levels=args.levels,
                                     n_scans=args.scans), {})
    print(f"{len(csvs)} studies ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    registration, segmenter = make_registration(args.registration), make_segmenter(args.segmentation)
    all_rows, seg_seconds = [], {}
    for source in args.sources:
        rows = []
        for path in csvs:
            study = load_study_csv(path)
            t0 = time.perf_counter()
            ev = evaluate_study(study, registration, segmenter, source=source, prompt=args.prompt, boost=args.boost)
            rows += ev.rows
            seg_seconds[study.patient_id, ev.source_id] = ev.result.stats["seconds"]["segmentation"] / max(len(ev.rows), 1)
            s = summarise(ev.rows)
            print(f"[{source}] {study.patient_id}: Dice {_f(s['median_dice'])}, ED {_f(s['median_ed_mm'], '.2f')} mm, "
                  f"prop {_f(s['median_propagation_error_mm'], '.2f')} mm ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
        config = {"registration": registration.name, "segmentation": segmenter.name, "source": source,
                  "prompt": args.prompt, "boost": args.boost, "chain": False, "studies": [str(c) for c in csvs]}
        write_evaluation(rows, work / f"eval-{source}", config)
        groups = {pid: [r for r in rows if r["patient_id"] == pid] for pid in dict.fromkeys(r["patient_id"] for r in rows)}
        for name in sorted({pid.split("-")[0] for pid in groups}):
            if sum(pid.split("-")[0] == name for pid in groups) > 1:
                groups[f"all {name}"] = [r for r in rows if r["patient_id"].split("-")[0] == name]
        for name in sorted(set(classes.values())):
            groups[f"class {name}"] = [r for r in rows if classes.get(r["patient_id"]) == name]
        groups["ALL"] = rows
        print_table(f"source = {source} scan ({registration.name} + {segmenter.name}, {args.prompt} prompt)", groups,
                    seg_seconds)
        all_rows += rows
    if len(args.sources) > 1:
        print_table("both sources", {"ALL": all_rows}, seg_seconds)
    if args.at_truth and not args.inserted:
        import numpy as np
        floor = at_truth(csvs, segmenter)
        print(f"\nprompted at the true centre ({segmenter.name}; every scan of every study, no registration)")
        print(f"{'study':<24} {'prompts':>7} {'Dice':>6} {'ED mm':>7}")
        for name in [*dict.fromkeys(r["patient_id"] for r in floor), "ALL"]:
            chosen = [r for r in floor if name in ("ALL", r["patient_id"])]
            eds = [r["ed_mm"] for r in chosen if r["ed_mm"] is not None]
            print(f"{name:<24} {len(chosen):>7} {np.median([r['dice'] for r in chosen]):>6.3f} "
                  f"{_f(float(np.median(eds)) if eds else None, '.2f'):>7}")
    print(f"\n{time.perf_counter() - start:.0f} s in all; outputs in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
