"""``overview.png``: one axial slice per timepoint through a tracked lesion, predicted and true contours.

Each panel shows an axial slice (array plane k) through the lesion: the click's slice on the source scan,
elsewhere the slice where the true lesion is largest (else the prediction, else the prompt point's), cropped around the lesion, in radiological display (patient left on the image
right for the usual LPS-aligned axial CT). Rendered with Matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from LinGuinELib.io.atomic import atomic_path
from LinGuinELib.core.study import Scan

WINDOW_HU = (-1000.0, 400.0)  # lung-to-soft-tissue window
MIN_FIELD_MM = 90.0
MARGIN_MM = 20.0
TRUE_COLOUR = "#00e5ff"


def _slice_index(scan: Scan, truth: np.ndarray | None, predicted: np.ndarray | None, point_lps,
                 through_point: bool) -> int:
    if through_point and point_lps is not None and scan.contains_lps(np.reshape(point_lps, (1, 3)))[0]:
        return scan.nearest_voxel(point_lps)[0]
    for mask in (truth, predicted):
        if mask is not None and mask.any():
            return int(np.argmax(mask.sum(axis=(1, 2))))
    if point_lps is not None:
        return scan.nearest_voxel(point_lps)[0]
    return scan.shape[0] // 2


def _crop(scan: Scan, k: int, masks, point_lps) -> tuple[slice, slice]:
    """(rows j, columns i) window around the lesion in plane k: at least MIN_FIELD_MM wide."""
    sp_j, sp_i = scan.spacing_kji[1:]
    pts = np.vstack([np.argwhere(m[k]) for m in masks if m is not None and m[k].any()] or [np.zeros((0, 2))])
    if len(pts):
        lo, hi = pts.min(axis=0).astype(float), pts.max(axis=0).astype(float)
    elif point_lps is not None:
        lo = hi = np.array(scan.nearest_voxel(point_lps)[1:], dtype=float)
    else:
        lo = hi = (np.asarray(scan.shape[1:], dtype=float) - 1) / 2
    centre = (lo + hi) / 2
    half_mm = np.maximum((hi - lo) * (sp_j, sp_i) / 2 + MARGIN_MM, MIN_FIELD_MM / 2).max()
    half = np.ceil(half_mm / np.array([sp_j, sp_i])).astype(int)
    start = np.clip(np.round(centre).astype(int) - half, 0, None)
    stop = np.minimum(np.round(centre).astype(int) + half + 1, scan.shape[1:])
    return slice(int(start[0]), int(stop[0])), slice(int(start[1]), int(stop[1]))


def write_overview(result, lesion_id: int, path, truth: dict[str, np.ndarray] | None = None,
                   dice: dict[str, float | None] | None = None, title: str = "") -> Path:
    """Write the figure for one lesion of a :class:`~LinGuinELib.core.tracking.TrackingResult`.

    ``truth``: scan id -> true bool mask [k, j, i] (optional); ``dice``: scan id -> Dice shown in titles.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    scans = list(result.study)
    lesion = next(l for l in result.lesions if l.lesion_id == lesion_id)
    truth, dice = truth or {}, dice or {}
    fig = Figure(figsize=(3.4 * len(scans), 4.1), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(scans), squeeze=False)[0]
    for ax, scan in zip(axes, scans):
        obs = result.observations[lesion_id][scan.scan_id]
        predicted = result.label_map(scan.scan_id) == lesion_id
        true_mask = truth.get(scan.scan_id)
        k = _slice_index(scan, true_mask, predicted, obs.point_lps, through_point=obs.status == "source")
        rows, cols = _crop(scan, k, (true_mask, predicted), obs.point_lps)
        sp_j, sp_i = scan.spacing_kji[1:]
        ax.imshow(scan.array[k, rows, cols], cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1],
                  interpolation="nearest", aspect=sp_j / sp_i)
        if true_mask is not None and true_mask[k, rows, cols].any():
            ax.contour(true_mask[k, rows, cols].astype(float), levels=[0.5], colors=TRUE_COLOUR, linewidths=1.6,
                       linestyles="--")
        if predicted[k, rows, cols].any():
            ax.contour(predicted[k, rows, cols].astype(float), levels=[0.5], colors=[lesion.colour], linewidths=1.8)
        if obs.point_lps is not None and scan.contains_lps(np.reshape(obs.point_lps, (1, 3)))[0]:
            kji = scan.lps_to_kji(np.reshape(obs.point_lps, (1, 3)))[0]
            on_slice = abs(kji[0] - k) < 0.5
            ax.plot(kji[2] - cols.start, kji[1] - rows.start, "+" if on_slice else "x", color="red",
                    ms=12 if on_slice else 8, mew=2 if on_slice else 1.2)
        role = "source (click)" if obs.status == "source" else obs.status.replace("_", " ")
        score = dice.get(scan.scan_id)
        ax.set_title(f"{scan.scan_id}  {scan.date.date().isoformat()}\n{role}"
                     + (f"  Dice {score:.2f}" if score is not None else ""), fontsize=10)
        ax.text(0.02, 0.02, f"axial slice {k + 1}/{scan.shape[0]}", transform=ax.transAxes, fontsize=8,
                color="white", va="bottom")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=lesion.colour, lw=2, label="LinGuinE"),
               Line2D([], [], color=TRUE_COLOUR, lw=2, ls="--", label="true"),
               Line2D([], [], color="red", marker="+", ls="", ms=10, mew=2, label="prompt point"),
               Line2D([], [], color="red", marker="x", ls="", ms=7, mew=1.2, label="prompt point, other slice")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, y=0.995)
    fig.tight_layout(rect=(0, 0.06, 1, 0.93 if title else 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
