"""Scene memory of a tracking result: 10 lesions x 5 CTs applied to Slicer 5.12's real MRML (slicer-core).

Prints the volumes' own size, the lesion segmentations' size (all lesions of a timepoint in one shared
label-map layer, cropped to the lesions' bounding box), their ratio (goal: scene <= 1.5x the volumes),
the size one full-size label map per lesion and timepoint would take, and the time to apply. The
process's peak RSS is printed too; it includes the synthetic engine masks (one full-size bool mask per
lesion and timepoint, as the session holds them), which are not part of the scene. Synthetic spheres (radius 8-25 mm) spread at random through each CT.

    PYTHONPATH=$PWD python scripts/bench_scene_memory.py [--z 300] [--lesions 10] [--timepoints 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "LinGuinE"), str(REPO / "Testing")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--z", type=int, default=300, help="slices per CT (512 x 512 each)")
    parser.add_argument("--lesions", type=int, default=10)
    parser.add_argument("--timepoints", type=int, default=5)
    args = parser.parse_args()

    import slicer
    from mrml_scene import MRMLApp

    from LinGuinELib.core.tracking import Observation, TrackingResult
    from LinGuinESceneLib.results import SceneResults
    from LinGuinESceneLib.timepoints import SceneTimepoints

    app = MRMLApp()
    shape, spacing = (args.z, 512, 512), np.array([0.7, 0.7, 1.25])  # (k, j, i); (i, j, k) mm
    ijk_to_ras = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    rng = np.random.default_rng(0)
    volumes = []
    for t in range(args.timepoints):
        array = rng.integers(-1000, 400, size=shape, dtype=np.int16)
        volumes.append(slicer.util.addVolumeFromArray(array, ijk_to_ras, f"CT {2020 + t}-01-01"))
        del array
    timepoints = SceneTimepoints()
    timepoints.refresh()
    session = timepoints.ensure_session()
    kk, jj, ii = np.ogrid[:shape[0], :shape[1], :shape[2]]
    lesions = [session.next_lesion() for _ in range(args.lesions)]
    observations = {}
    for lesion in lesions:
        observations[lesion.lesion_id] = {}
        centre = rng.uniform([10, 80, 80], [shape[0] - 10, shape[1] - 80, shape[2] - 80])
        radius = rng.uniform(8.0, 25.0)
        for t, scan_id in enumerate(session.study.scan_ids):
            c = centre + rng.normal(0, 2.0, 3)
            r = radius * (1 + 0.05 * t)
            mask = (((kk - c[0]) * spacing[2]) ** 2 + ((jj - c[1]) * spacing[1]) ** 2
                    + ((ii - c[2]) * spacing[0]) ** 2) <= r * r
            observations[lesion.lesion_id][scan_id] = Observation(lesion.lesion_id, scan_id, "found",
                                                                  np.zeros(3), mask)
    session.merge(TrackingResult(session.study, lesions, observations))
    results = SceneResults(timepoints)
    start = time.perf_counter()
    results.apply()
    seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)

    volume_mib = sum(v.GetImageData().GetActualMemorySize() for v in volumes) / 1024
    layers = {}
    for volume in volumes:
        segmentation = results.segmentation_node(volume, create=False).GetSegmentation()
        for n in range(segmentation.GetNumberOfLayers()):
            layer = segmentation.GetLayerDataObject(n)
            layers[layer.GetAddressAsString("vtkDataObject")] = layer.GetActualMemorySize() / 1024
    seg_mib = sum(layers.values())
    full = args.lesions * args.timepoints * np.prod(shape) / 2 ** 20  # one uint8 label map per lesion x timepoint
    print(f"{args.lesions} lesions x {args.timepoints} CTs of 512x512x{args.z} (int16)")
    print(f"volumes:            {volume_mib:9.1f} MiB")
    print(f"segmentations:      {seg_mib:9.1f} MiB in {len(layers)} layers (one per timepoint)")
    print(f"scene / volumes:    {(volume_mib + seg_mib) / volume_mib:9.2f} x   (goal <= 1.5 x)")
    print(f"one full label map per lesion and timepoint would be {full:.1f} MiB")
    print(f"apply: {seconds:.1f} s; process peak RSS {peak_rss:.0f} MiB (engine masks included)")
    app.close()


if __name__ == "__main__":
    main()
