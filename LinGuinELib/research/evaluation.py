"""Accuracy evaluation on labelled longitudinal studies (the paper's Table 1 metrics).

For every lesion id in the source scan's label map, the lesion is prompted there (its mask, or a
click at its interior centre) and tracked to every other scan; each (lesion, target scan) pair is
scored against the target's label map:

* ``dice``: 2|P∩T| / (|P|+|T|) of the predicted mask P (the lesion's id on the overlap-resolved
  label map that ``linguine track`` writes) and the true mask T, only where the lesion is present (as
  the paper scores): 0 when nothing was found there (or the point left the field of view). On a scan
  without the lesion there is no Dice: a predicted mask is a false positive (``n_false_positive``,
  ``false_positive_fraction`` of the absent pairs, its volume), an empty one is ``n_correct_empty``.
  The Dice median and slope are therefore over present pairs only.
* ``ed_mm``: distance (mm) between the centres of mass of P and T (the paper's ED); undefined when
  P or T is empty.
* ``propagation_error_mm``: distance (mm) from the registration-propagated point (before any boost
  re-prompt) to the true lesion centre, taken as the interior centre of T
  (:func:`LinGuinELib.core.tracking.interior_centre`, the point farthest inside the lesion);
  ``point_in_lesion`` tells whether that point's nearest voxel lies in T. Undefined without T.
* ``weeks``: signed (target - source) in weeks; ``weeks_elapsed`` is its absolute value.

Summaries (overall and per study) give medians over the defined values, the fraction of pairs with
the lesion present whose ED is undefined (nothing found), and the least-squares slope of Dice
against weeks elapsed (Dice per week).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from LinGuinELib.core.errors import InputError
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.measure import centre_of_mass_lps, dice
from LinGuinELib.registration.base import Registration
from LinGuinELib.segmentation.base import Segmenter
from LinGuinELib.core.study import Scan, Study
from LinGuinELib.core.tracking import OUTSIDE_FOV, LesionPrompt, Tracker, TrackingResult, interior_centre

PAIR_COLUMNS = ("patient_id", "lesion_id", "source_scan", "target_scan", "source_date", "target_date", "weeks",
                "weeks_elapsed", "prompt", "status", "truth", "outcome", "dice", "ed_mm", "propagation_error_mm",
                "point_in_lesion", "predicted_volume_ml", "true_volume_ml", "propagated_x", "propagated_y",
                "propagated_z")

SUMMARY_KEYS = ("median_dice", "median_ed_mm", "n_pairs", "ed_undefined_fraction", "median_propagation_error_mm")

PROMPTS = ("mask", "click")


# -- metrics -------------------------------------------------------------------------------------
def centre_distance_mm(predicted: np.ndarray, truth: np.ndarray, scan: Scan) -> float | None:
    """Distance (mm) between the centres of mass of two masks (the paper's ED); None if either is empty."""
    a, b = centre_of_mass_lps(predicted, scan), centre_of_mass_lps(truth, scan)
    if a is None or b is None:
        return None
    return float(np.linalg.norm(a - b))


def propagation_error(point_lps: np.ndarray | None, truth: np.ndarray, scan: Scan) -> tuple[float | None, bool | None]:
    """(distance mm from the point to the interior centre of ``truth``, point's nearest voxel inside ``truth``).
    (None, None) without a point or a true lesion; a point outside the scan is never inside."""
    if point_lps is None or not truth.any():
        return None, None
    point = np.asarray(point_lps, dtype=float).reshape(3)
    error = float(np.linalg.norm(point - interior_centre(truth, scan)))
    inside = bool(scan.contains_lps(point.reshape(1, 3))[0]) and bool(truth[scan.nearest_voxel(point)])
    return error, inside


@dataclass
class StudyEvaluation:
    """One study's tracking result, scored pairs and the propagated point per (lesion, target)."""

    result: TrackingResult
    rows: list[dict]
    propagated: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    source_id: str = ""


def check_labelled(study: Study) -> None:
    """Every scan needs a label map to be scored."""
    where = study.source_path or f"study of patient '{study.patient_id}'"
    missing = [s.scan_id for s in study if s.label is None]
    if missing:
        raise InputError(f"{where}: scan(s) {', '.join(missing)} have no label map; evaluation needs a label "
                         "on every scan (column 'label')")


def evaluate_study(study: Study, registration: Registration, segmenter: Segmenter, source: str = "first",
                   prompt: str = "mask", boost: bool = False, chain: bool = False, radius_mm: float = 10.0,
                   progress: Callable[[str, int, int], None] | None = None) -> StudyEvaluation:
    """Prompt every lesion of the source scan's label, track it to every other scan and score each pair.

    The tracker sees ``study.without_labels()``; labels serve only to build the source prompt and to score."""
    if prompt not in PROMPTS:
        raise InputError(f"unknown prompt kind {prompt!r}; choose one of: {', '.join(PROMPTS)}")
    check_labelled(study)
    src = study.resolve(source)
    ids = [int(v) for v in np.unique(src.label) if v > 0]
    if not ids:
        raise InputError(f"{study.source_path or study.patient_id}: the label of source scan '{src.scan_id}' "
                         "holds no lesion")
    blind = study.without_labels()
    tracker = Tracker(blind, registration, segmenter, boost=boost, chain=chain, radius_mm=radius_mm, progress=progress)
    lesions, observations, propagated, seconds = [], {}, {}, 0.0
    try:
        for lid in ids:
            lesion = Lesion(lid)
            mask = src.label == lid
            lesion_prompt = (LesionPrompt(lesion, src.scan_id, mask=mask) if prompt == "mask" else
                             LesionPrompt(lesion, src.scan_id, point_lps=interior_centre(mask, src)))
            part = tracker.track([lesion_prompt])
            seconds += part.stats["seconds"]["total"]
            lesions.append(lesion)
            observations[lid] = part.observations[lid]
            propagated[lid] = {sid: obs.propagated_lps for sid, obs in part.observations[lid].items()
                               if obs.propagated_lps is not None}
    finally:
        for scan in study:  # backends cache per scan id, and ids (t0, t1, ...) repeat across studies
            registration.forget(scan.scan_id)
            segmenter.forget(scan.scan_id)
    result = TrackingResult(blind, lesions, observations,
                            stats={"registration": registration.name, "segmentation": segmenter.name,
                                   "registration_calls": tracker.cache.computed,
                                   "seconds": {"registration": round(tracker.cache.seconds, 3),
                                               "segmentation": round(tracker.segmentation_seconds, 3),
                                               "total": round(seconds, 3)}})
    rows = score_pairs(result, study, src.scan_id, propagated, prompt)
    return StudyEvaluation(result, rows, propagated, src.scan_id)


def score_pairs(result: TrackingResult, study: Study, source_id: str, propagated: dict[int, dict[str, np.ndarray]],
                prompt: str) -> list[dict]:
    """One row (:data:`PAIR_COLUMNS`) per lesion x target scan of ``result`` scored against labelled ``study``.

    ``dice`` is defined only where the lesion is present; a mask predicted where it is absent is an
    ``outcome`` of ``false_positive`` (with its ``predicted_volume_ml``), never a Dice of 0."""
    src = study.scan(source_id)
    rows = []
    for scan in study:
        if scan.scan_id == source_id:
            continue
        predicted_map = result.label_map(scan.scan_id)
        for lesion in result.lesions:
            lid = lesion.lesion_id
            obs = result.observations[lid][scan.scan_id]
            predicted, truth = predicted_map == lid, scan.label == lid
            present = bool(truth.any())
            point = propagated.get(lid, {}).get(scan.scan_id)
            error, inside = propagation_error(point, truth, scan)
            if present:
                outcome = OUTSIDE_FOV if obs.status == OUTSIDE_FOV else ("found" if predicted.any() else "missed")
            else:
                outcome = "false_positive" if predicted.any() else "correct_empty"
            weeks = (scan.date - src.date).total_seconds() / (7 * 86400)
            rows.append({
                "patient_id": study.patient_id, "lesion_id": lid, "source_scan": source_id,
                "target_scan": scan.scan_id, "source_date": src.date.date().isoformat(),
                "target_date": scan.date.date().isoformat(), "weeks": weeks, "weeks_elapsed": abs(weeks),
                "prompt": prompt, "status": obs.status, "truth": "present" if present else "absent",
                "outcome": outcome, "dice": dice(predicted, truth) if present else None, "ed_mm": centre_distance_mm(predicted, truth, scan),
                "propagation_error_mm": error, "point_in_lesion": inside,
                "predicted_volume_ml": float(predicted.sum()) * scan.voxel_volume_mm3 / 1000.0,
                "true_volume_ml": float(truth.sum()) * scan.voxel_volume_mm3 / 1000.0,
                "propagated_x": None if point is None else float(point[0]),
                "propagated_y": None if point is None else float(point[1]),
                "propagated_z": None if point is None else float(point[2]),
            })
    return rows


# -- aggregation ---------------------------------------------------------------------------------
def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def dice_slope(rows: list[dict]) -> float | None:
    """Least-squares slope of Dice against weeks elapsed (Dice per week); None without two distinct times."""
    pts = [(r["weeks_elapsed"], r["dice"]) for r in rows if r["dice"] is not None]
    if len({w for w, _ in pts}) < 2:
        return None
    w, d = np.array(pts, dtype=float).T
    return float(np.polyfit(w, d, 1)[0])


def summarise(rows: list[dict]) -> dict:
    """Figures for a set of pair rows: the :data:`SUMMARY_KEYS` plus counts, inside fraction and slope.
    Undefined figures are None."""
    scored = [r for r in rows if r["dice"] is not None]
    present = [r for r in rows if r["truth"] == "present"]
    absent = [r for r in rows if r["truth"] == "absent"]
    inside = [r["point_in_lesion"] for r in present if r["point_in_lesion"] is not None]
    return {
        "median_dice": _median(r["dice"] for r in scored),
        "median_ed_mm": _median(r["ed_mm"] for r in rows),
        "n_pairs": len(scored),
        "ed_undefined_fraction": (sum(r["ed_mm"] is None for r in present) / len(present)) if present else None,
        "median_propagation_error_mm": _median(r["propagation_error_mm"] for r in rows),
        "mean_dice": float(np.mean([r["dice"] for r in scored])) if scored else None,
        "point_in_lesion_fraction": (sum(inside) / len(inside)) if inside else None,
        "n_correct_empty": sum(r["outcome"] == "correct_empty" for r in rows),
        "n_false_positive": sum(r["outcome"] == "false_positive" for r in rows),
        "false_positive_fraction": (sum(r["outcome"] == "false_positive" for r in absent) / len(absent)
                                    if absent else None),
        "false_positive_volume_ml": _median(r["predicted_volume_ml"] for r in absent
                                            if r["outcome"] == "false_positive"),
        "dice_slope_per_week": dice_slope(rows),
    }


def summary_json(rows: list[dict], config: dict | None = None) -> dict:
    """Overall figures, ``per_study`` {patient_id: figures} and the run configuration."""
    per_study = {}
    for pid in dict.fromkeys(r["patient_id"] for r in rows):
        per_study[pid] = summarise([r for r in rows if r["patient_id"] == pid])
    return {**summarise(rows), "per_study": per_study, "config": dict(config or {})}


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def summary_markdown(summary: dict) -> str:
    """Table 1-style report: one row per study and one overall, plus the Dice-vs-time slope."""
    cfg = summary.get("config", {})
    method = f"{cfg.get('registration', '?')} + {cfg.get('segmentation', '?')}"
    options = [o for o in ("boost", "chain") if cfg.get(o)]
    lines = [
        "# LinGuinE evaluation", "",
        f"Method: **{method}**{' (' + ', '.join(options) + ')' if options else ''}; "
        f"prompt: {cfg.get('prompt', '?')} on the {cfg.get('source', '?')} scan; "
        f"{len(summary['per_study'])} stud{'y' if len(summary['per_study']) == 1 else 'ies'}.", "",
        "Dice: median over (lesion, target scan) pairs with the lesion present (0 when missed). ED: median distance "
        "between predicted and true centres of mass (mm); *ED undef.*: share of pairs with the lesion present "
        "where nothing was found. Prop. error: distance from the propagated point to the true lesion's interior "
        "centre (mm); *in lesion*: share of propagated points that fell inside the true lesion. "
        "Pairs and Dice count only scans where the lesion is present. On scans without it, a predicted mask is "
        "a *false positive* (median volume in mL), apart from Dice; an empty result is *correct empty*.", "",
        "| Study | Pairs | Dice | ED (mm) | ED undef. | Prop. error (mm) | In lesion | Correct empty | "
        "False pos. | FP vol. (mL) | Dice slope (/week) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, s: dict) -> str:
        return (f"| {name} | {s['n_pairs']} | {_fmt(s['median_dice'], '.3f')} | {_fmt(s['median_ed_mm'], '.2f')} | "
                f"{_fmt(s['ed_undefined_fraction'], '.1f', 100)}% | {_fmt(s['median_propagation_error_mm'], '.2f')} | "
                f"{_fmt(s['point_in_lesion_fraction'], '.1f', 100)}% | {s['n_correct_empty']} | "
                f"{s['n_false_positive']} | {_fmt(s['false_positive_volume_ml'], '.2f')} | "
                f"{_fmt(s['dice_slope_per_week'], '+.4f')} |")

    lines += [row(pid, s) for pid, s in summary["per_study"].items()]
    lines.append(row("**All**", summary))
    slope = summary["dice_slope_per_week"]
    lines += ["", f"Dice against weeks elapsed: slope {_fmt(slope, '+.4f')} per week "
              f"({_fmt(None if slope is None else slope * 52, '+.3f')} per year) over {summary['n_pairs']} pairs; "
              "see dice_vs_weeks.png.", ""]
    return "\n".join(lines)


def plot_dice_vs_weeks(rows: list[dict], path: Path, slope: float | None) -> None:
    """Scatter of Dice against weeks elapsed, one colour per study, with the least-squares line (PNG, Agg)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from LinGuinELib.io.atomic import atomic_path

    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    studies = list(dict.fromkeys(r["patient_id"] for r in rows))
    cmap = matplotlib.colormaps["tab10"]
    for n, pid in enumerate(studies):
        pts = [(r["weeks_elapsed"], r["dice"]) for r in rows if r["patient_id"] == pid and r["dice"] is not None]
        if pts:
            w, d = np.array(pts).T
            ax.scatter(w, d, s=22, alpha=0.8, label=pid if len(studies) <= 12 else None,
                       color=cmap(n % 10))
    scored = [(r["weeks_elapsed"], r["dice"]) for r in rows if r["dice"] is not None]
    if slope is not None and scored:
        w, d = np.array(scored).T
        intercept = float(np.mean(d) - slope * np.mean(w))
        xs = np.array([0.0, float(w.max())])
        ax.plot(xs, intercept + slope * xs, "k--", lw=1.2, label=f"fit: {slope:+.4f} Dice/week")
    ax.set_xlabel("weeks elapsed between source and target scan")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"Dice against time elapsed ({len(scored)} pairs)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_evaluation(rows: list[dict], out_dir, config: dict | None = None) -> dict:
    """Write ``per_lesion.csv``, ``summary.json``, ``summary.md`` and ``dice_vs_weeks.png`` into ``out_dir``
    (all together, atomically); returns the summary dict."""
    from LinGuinELib.io.atomic import atomic_write, staged_outputs
    from LinGuinELib.io.output import write_rows_csv

    summary = summary_json(rows, config)
    with staged_outputs(out_dir) as stage:
        write_rows_csv(rows, PAIR_COLUMNS, stage / "per_lesion.csv")
        with atomic_write(stage / "summary.json") as fh:
            json.dump(summary, fh, indent=2)
            fh.write("\n")
        with atomic_write(stage / "summary.md") as fh:
            fh.write(summary_markdown(summary))
        plot_dice_vs_weeks(rows, stage / "dice_vs_weeks.png", summary["dice_slope_per_week"])
    return summary
