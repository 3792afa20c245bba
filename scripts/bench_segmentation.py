"""Benchmark a click-seeded segmentation backend on the real chest CTs (lung1, lung2).

For each lesion (as scanned, and shrunk/grown by a radial resampling around its centre; or, with
``--synthetic LEVEL``, on the follow-ups of LinGuinELib.research.synthetic studies) the backend is seeded at
the lesion's interior centre (maximum of the spacing-aware distance transform) and at points
shifted by 3 and 6 mm in random 3-D directions. Prints Dice, seconds per call and whether each seed
lies in the lesion, then per lesion and overall the median Dice, the found rate (seeds inside) and the
median seconds per call, and peak RSS.

    .venv/bin/python scripts/bench_segmentation.py [--backend classic] [--ct-dir ../shared/data/ct]
    .venv/bin/python scripts/bench_segmentation.py --inserted 6   # low-contrast soft-tissue lesions
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LinGuinELib.backends import make_segmenter  # noqa: E402
from LinGuinELib.core.study import Scan, read_image  # noqa: E402
from LinGuinELib.io.load import load_study
from LinGuinELib.research.lesion_insertion import (insert_lesion, lesion_shapes, place_lesions, resample,  # noqa: E402
                                                   size_class)
from LinGuinELib.research.synthetic import make_study  # noqa: E402


def interior_centre(mask: np.ndarray, spacing_kji) -> np.ndarray:
    """(k, j, i) voxel farthest (mm) from the mask's edge."""
    depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    return np.asarray(np.unravel_index(np.argmax(depth), mask.shape))


def scale_lesion(scan: Scan, mask: np.ndarray, factor: float, blend_mm: float = 15.0):
    """(image, mask) with the lesion's diameter scaled by ``factor`` about its interior centre.

    Radial remap: a destination point at distance r from the centre samples the source at
    r / factor out to the scaled lesion edge, blending linearly back to identity ``blend_mm`` beyond.
    """
    sp = scan.spacing_kji
    centre = interior_centre(mask, sp)
    pts = np.argwhere(mask)
    r_lesion = float(np.sqrt((((pts - centre) * sp) ** 2).sum(1)).max()) + sp.min()
    a = factor * r_lesion
    b = max(a, r_lesion) + blend_mm
    half = np.ceil(b / sp).astype(int) + 1
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, scan.shape)
    grid = np.stack(np.meshgrid(*[np.arange(x, y) for x, y in zip(lo, hi)], indexing="ij"), -1).astype(float)
    rel = (grid - centre) * sp
    r = np.sqrt((rel ** 2).sum(-1))
    src_r = np.where(r <= a, r / factor, np.where(r >= b, r, r_lesion + (r - a) * (b - r_lesion) / (b - a)))
    ratio = np.divide(src_r, r, out=np.full_like(r, 1.0 / factor), where=r > 0)
    src = centre + rel * ratio[..., None] / sp
    coords = src.reshape(-1, 3).T
    image, label = scan.array.copy(), mask.copy()
    box = tuple(slice(x, y) for x, y in zip(lo, hi))
    image[box] = np.rint(ndi.map_coordinates(scan.array.astype(np.float32), coords, order=1, mode="nearest")
                         .reshape(r.shape)).astype(image.dtype)
    label[box] = ndi.map_coordinates(mask.astype(np.uint8), coords, order=0, mode="nearest").reshape(r.shape) > 0
    return image, label


def shifted_seeds(centre, spacing_kji, shape, shifts_mm, n_dirs, rng):
    """[(shift_mm, (k, j, i)), ...]: the centre, then n_dirs random directions per shift."""
    seeds = [(0.0, tuple(int(v) for v in centre))]
    for shift in shifts_mm:
        for _ in range(n_dirs):
            d = rng.normal(size=3)
            p = np.rint(centre + shift * d / np.linalg.norm(d) / spacing_kji).astype(int)
            seeds.append((shift, tuple(int(v) for v in np.clip(p, 0, np.asarray(shape) - 1))))
    return seeds


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / total) if total else 1.0


def lesions(args, tmp: Path):
    """(name, scan, reference mask) per lesion: each CT's lesion scaled by each factor, or the
    follow-ups of a synthetic study made from each CT."""
    ct = Path(args.ct_dir)
    for case in args.cases:
        if args.synthetic:
            csv = make_study(ct / f"{case}_image.nrrd", ct / f"{case}_label.nrrd", tmp / case, n_scans=4,
                             seed=args.seed, difficulty=args.synthetic)
            for scan in load_study(csv).scans[1:]:
                yield f"{case}-{scan.scan_id}", scan, scan.label > 0
            continue
        scan = Scan.from_sitk(read_image(ct / f"{case}_image.nrrd"), case, dt.datetime(2020, 1, 1),
                              read_image(ct / f"{case}_label.nrrd"))
        for factor in args.scales:
            image, ref = scale_lesion(scan, scan.label > 0, factor) if factor != 1.0 else (scan.array, scan.label > 0)
            yield f"{case}x{factor:g}", Scan(scan_id=f"{case}x{factor:g}", array=image, origin=scan.origin,
                                             spacing=scan.spacing, direction=scan.direction, date=scan.date), ref


def inserted_lesions(args, rng):
    """(class name, scan, truth mask) per low-contrast lesion inserted into each CT's soft tissue
    (LinGuinELib.research.lesion_insertion), at each scale (0 = disappeared: empty truth) and slice
    spacing; each scan is a k-crop of +-(radius + 20) mm around the lesion, resampled."""
    ct = Path(args.ct_dir)
    for case in args.cases:
        scan = Scan.from_sitk(read_image(ct / f"{case}_image.nrrd"), case, dt.datetime(2020, 1, 1),
                              read_image(ct / f"{case}_label.nrrd"))
        for shape, site in place_lesions(scan, lesion_shapes(rng, args.inserted), rng, exclude=scan.label > 0):
            half = int(np.ceil((0.8 * shape.diameter_mm + 20.0) / scan.spacing_kji[0]))
            k0 = max(int(site[0]) - half, 0)
            sub = Scan(f"{case}-crop", scan.array[k0:int(site[0]) + half + 1],
                       scan.kji_to_lps(np.array([[k0, 0, 0]]))[0], scan.spacing, scan.direction, scan.date)
            site_lps = sub.kji_to_lps(np.array([[site[0] - k0, site[1], site[2]]]))
            for slice_mm in args.slices:
                grid = sub if slice_mm == scan.spacing[2] else resample(
                    sub, (args.in_plane, args.in_plane, slice_mm))
                where = np.rint(grid.lps_to_kji(site_lps)[0]).astype(int)
                for scale in args.inserted_scales:
                    made, truth = insert_lesion(grid, where, shape, scale)
                    name = ("gone" if scale == 0 else size_class(shape.diameter_mm * scale)) + f"-{shape.kind}"
                    yield (f"{name} {slice_mm:g}mm", made, truth, where,
                           f"{case} d={shape.diameter_mm * scale:.1f}mm {shape.contrast_hu:+.0f}HU")


def run_inserted(args, segmenter, rng) -> int:
    """Found rate, Dice and seconds per call per low-contrast lesion class (seeds inside the lesion:
    its interior centre and 3 mm shifts that stay inside); not-found rate where the lesion is gone."""
    rows = []
    print(f"{'class':<24} {'lesion':<30} {'shift':>5} {'dice':>6} {'conf':>5} {'s':>5}")
    for name, scan, truth, site, what in inserted_lesions(args, rng):
        if not truth.any():
            t0 = time.perf_counter()
            mask, conf = segmenter.segment_with_confidence(scan, np.array([site]))
            rows.append((name, not mask.any(), 0.0, time.perf_counter() - t0, conf))
            print(f"{name:<24} {what:<30} {0:5.1f} {'empty' if not mask.any() else 'FOUND':>6} {conf:>5}", flush=True)
            continue
        centre = interior_centre(truth, scan.spacing_kji)
        for shift, seed in shifted_seeds(centre, scan.spacing_kji, scan.shape, [3.0], args.n_dirs, rng):
            if not truth[seed]:
                continue
            t0 = time.perf_counter()
            mask, conf = segmenter.segment_with_confidence(scan, np.array([seed]))
            seconds = time.perf_counter() - t0
            d = dice(mask, truth)
            rows.append((name, bool((mask & truth).any()), d, seconds, conf))
            print(f"{name:<24} {what:<30} {shift:5.1f} {d:6.3f} {conf:>5} {seconds:5.2f}", flush=True)
    print(f"\n{'class':<24} {'calls':>5} {'found':>6} {'Dice':>6} {'low conf':>8} {'s/call':>6}   (gone: found = empty mask)")
    for name in sorted({r[0] for r in rows}) + ["ALL lesions"]:
        sel = [r for r in rows if r[0] == name or (name == "ALL lesions" and not r[0].startswith("gone"))]
        dices = [r[2] for r in sel]
        print(f"{name:<24} {len(sel):5d} {100 * np.mean([r[1] for r in sel]):5.0f}% "
              f"{'-' if name.startswith('gone') else format(np.median(dices), '.3f'):>6} "
              f"{100 * np.mean([r[4] == 'low' for r in sel]):7.0f}% {np.median([r[3] for r in sel]):6.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="classic")
    parser.add_argument("--ct-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"))
    parser.add_argument("--cases", nargs="+", default=["lung1", "lung2"])
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0, 0.6, 1.5])
    parser.add_argument("--shifts", nargs="+", type=float, default=[3.0, 6.0])
    parser.add_argument("--n-dirs", type=int, default=8, help="random directions per shift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", choices=["easy", "medium", "hard"],
                        help="instead of scaling, use the follow-ups of LinGuinELib.research.synthetic studies (moved, "
                             "deformed, grown/shrunk, noisy) at this difficulty")
    parser.add_argument("--inserted", type=int, default=0, metavar="N",
                        help="instead, N low-contrast lesions (10-50 mm, +-20-60 HU) inserted into each CT's soft "
                             "tissue, at each --inserted-scales and --slices")
    parser.add_argument("--inserted-scales", nargs="+", type=float, default=[1.0, 0.5, 0.0])
    parser.add_argument("--slices", nargs="+", type=float, default=[5.0, 2.5, 1.0],
                        help="slice spacings (mm) of the inserted lesions' scans (5 = as scanned)")
    parser.add_argument("--in-plane", type=float, default=0.7, help="pixel size (mm) of resampled scans")
    args = parser.parse_args(argv)

    segmenter = make_segmenter(args.backend)
    rng = np.random.default_rng(args.seed)
    if args.inserted:
        return run_inserted(args, segmenter, rng)
    rows = []
    print(f"{'lesion':<14} {'shift':>5} {'seed (k,j,i)':>16} {'in':>3} {'dice':>6} {'vol/ref':>7} {'s':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for lesion, test, ref in lesions(args, Path(tmp)):
            centre = interior_centre(ref, test.spacing_kji)
            for shift, seed in shifted_seeds(centre, test.spacing_kji, test.shape, args.shifts, args.n_dirs, rng):
                t0 = time.perf_counter()
                mask = segmenter.segment(test, np.array([seed]))
                seconds = time.perf_counter() - t0
                inside = bool(ref[seed])
                d = dice(mask, ref)
                rows.append((lesion, shift, inside, d, seconds, bool((mask & ref).any())))
                print(f"{lesion:<14} {shift:5.1f} {str(seed):>16} {'y' if inside else 'n':>3} {d:6.3f} "
                      f"{mask.sum() / ref.sum():7.2f} {seconds:5.2f}", flush=True)

    print("\nmedian Dice (seeds inside the lesion; seeds outside in brackets); found = mask touches the lesion")
    names = list(dict.fromkeys(r[0] for r in rows))
    shifts = sorted({r[1] for r in rows})
    print(f"{'lesion':<14} " + " ".join(f"{f'{s:g} mm':>14}" for s in shifts) + f" {'all inside':>11} {'found':>6} {'s/call':>6}")
    for lesion in names + ["ALL"]:
        cells = []
        for s in shifts:
            sel = [r for r in rows if (lesion == "ALL" or r[0] == lesion) and r[1] == s]
            ins = [r[3] for r in sel if r[2]]
            out = [r[3] for r in sel if not r[2]]
            cells.append(f"{np.median(ins) if ins else float('nan'):.3f}/{len(ins)}"
                         + (f" ({np.median(out):.2f}/{len(out)})" if out else ""))
        every = [r for r in rows if (lesion == "ALL" or r[0] == lesion) and r[2]]
        secs = [r[4] for r in rows if lesion == "ALL" or r[0] == lesion]
        print(f"{lesion:<14} " + " ".join(f"{c:>14}" for c in cells) + f" {np.median([r[3] for r in every]):11.3f} "
              f"{100 * np.mean([r[5] for r in every]):5.0f}% {np.median(secs):6.2f}")
    inside = [r[3] for r in rows if r[2]]
    print(f"\ninside seeds: {len(inside)}, Dice < 0.5: {sum(d < 0.5 for d in inside)}; "
          f"median over all inside seeds {np.median(inside):.3f}")
    secs = [r[4] for r in rows]
    print(f"seconds per call: median {np.median(secs):.2f}, max {max(secs):.2f}; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
