"""Write a tracking run's outputs: per-scan label maps, lesions.csv and summary.json (all atomic).

* ``<scan_id>.nii.gz``: int label map on that scan's own grid, lesion ids as values.
* ``lesions.csv``: one row per lesion x scan (:data:`LinGuinELib.core.measure.LESION_COLUMNS`).
* ``summary.json``: backends, seconds per stage, call counts, version, lesions (with TrackingUIDs).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from LinGuinELib.io.atomic import atomic_write, staged_outputs, write_image_atomic
from LinGuinELib.core.measure import LESION_COLUMNS, measurement_rows


def safe_filename(name: str) -> str:
    """A scan id made safe as a file name (path separators and odd characters replaced by '_')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "scan"


def label_map_names(scan_ids: list[str], suffix: str = ".nii.gz") -> dict[str, str]:
    """{scan_id: "<safe scan id><suffix>"}, unique (case-insensitively) even when two ids clean to the
    same name."""
    names, used = {}, set()
    for scan_id in scan_ids:
        base = safe_filename(scan_id)
        name, n = base, 1
        while name.lower() in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name.lower())
        names[scan_id] = name + suffix
    return names


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_rows_csv(rows: list[dict], columns, path: Path) -> None:
    with atomic_write(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in columns})


def write_json(data: dict, path: Path) -> None:
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))
        fh.write("\n")


def write_tracking_outputs(result, out_dir, extra_summary: dict | None = None) -> dict[str, Path]:
    """Write all outputs of ``result`` into ``out_dir`` together (staged, then moved in).

    Returns {"label:<scan_id>": path, "lesions": path, "summary": path}.
    """
    out_dir = Path(out_dir)
    rows = measurement_rows(result)
    summary = result.summary()
    summary["label_maps"] = label_map_names(result.study.scan_ids)
    summary.update(extra_summary or {})
    written = {}
    with staged_outputs(out_dir) as stage:
        for scan in result.study:
            name = summary["label_maps"][scan.scan_id]
            write_image_atomic(scan.to_sitk(result.label_map(scan.scan_id).astype(np.uint16)), stage / name)
            written[f"label:{scan.scan_id}"] = out_dir / name
        write_rows_csv(rows, LESION_COLUMNS, stage / "lesions.csv")
        write_json(summary, stage / "summary.json")
    written["lesions"] = out_dir / "lesions.csv"
    written["summary"] = out_dir / "summary.json"
    return written
