"""A GUI-free tracking session: the state a front end (the Slicer module) keeps, one study at a time.

The session holds the lesions, their observations on every timepoint and which of them the user edited;
the tracking itself runs in the engine service (``LinGuinE/LinGuinESceneLib/jobs.py`` submits it and
applies each result here with :meth:`TrackingSession.merge` or :meth:`TrackingSession.apply_correction`,
rolling back with :meth:`TrackingSession.checkpoint`/:meth:`TrackingSession.rollback` if applying fails).
Edited observations -- correction clicks or masks edited by hand -- are never overwritten by a later
run unless the caller passes ``overwrite_edits=True`` (after asking the user). Points given by the front
end are RAS mm and are converted to LPS here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from LinGuinELib.core import coords
from LinGuinELib.core.errors import InputError
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.measure import LESION_COLUMNS, LESION_FIELDS, measurement_rows
from LinGuinELib.frontend.slicer_bridge import EDIT_CLICKS, EDIT_MANUAL, STATUS_TEXT
from LinGuinELib.core.study import Study
from LinGuinELib.core.tracking import FOUND, NOT_FOUND, SOURCE, LesionPrompt, Observation, TrackingResult, interior_centre


@dataclass
class MergeReport:
    """What a merge changed: (lesion_id, scan_id) pairs replaced and edited pairs kept."""

    updated: list[tuple[int, str]]
    kept: list[tuple[int, str]]


class TrackingSession:
    """Lesions, their observations on every timepoint, and which of them the user edited."""

    def __init__(self, study: Study):
        self.study = study
        self.lesions: dict[int, Lesion] = {}
        self.observations: dict[int, dict[str, Observation]] = {}
        self.edits: dict[tuple[int, str], str] = {}
        self._next_id = 1

    # -- lesions ------------------------------------------------------------------------------
    def next_lesion(self, name: str = "") -> Lesion:
        """A new lesion identity (not registered until a tracking run that uses it is merged)."""
        name = (name or "").strip() or f"Lesion {self._next_id}"
        if any(l.name == name for l in self.lesions.values()):
            raise InputError(f"a lesion named '{name}' already exists; choose another name")
        lesion = Lesion(self._next_id, name)
        self._next_id += 1
        return lesion

    def lesion(self, lesion_id: int) -> Lesion:
        if lesion_id not in self.lesions:
            raise InputError(f"unknown lesion id {lesion_id}")
        return self.lesions[lesion_id]

    def rename_lesion(self, lesion_id: int, name: str) -> None:
        name = (name or "").strip()
        if not name:
            raise InputError("a lesion name cannot be empty")
        if any(l.name == name and l.lesion_id != lesion_id for l in self.lesions.values()):
            raise InputError(f"a lesion named '{name}' already exists")
        self.lesion(lesion_id).name = name

    def remove_lesion(self, lesion_id: int) -> None:
        self.lesion(lesion_id)
        del self.lesions[lesion_id]
        self.observations.pop(lesion_id, None)
        self.edits = {k: v for k, v in self.edits.items() if k[0] != lesion_id}

    # -- prompts ------------------------------------------------------------------------------
    def point_prompt(self, lesion: Lesion, scan_id: str, point_ras) -> LesionPrompt:
        """A click (world RAS mm) on timepoint ``scan_id``; rejected if it lies outside that scan."""
        scan = self.study.scan(scan_id)
        point = coords.ras_to_lps(np.asarray(point_ras, dtype=float).reshape(3))
        if not scan.contains_lps(point.reshape(1, 3))[0]:
            low, high = coords.lps_to_ras(np.array(scan.extent_lps()))
            span = ", ".join(f"{axis} {min(low[n], high[n]):.1f}..{max(low[n], high[n]):.1f}"
                             for n, axis in enumerate("RAS"))
            raise InputError(f"the point {coords.fmt_point(point_ras)} (RAS mm) lies outside timepoint '{scan_id}', "
                             f"which spans {span} (RAS mm); place it on the lesion in that timepoint's view")
        return LesionPrompt(lesion, scan_id, point_lps=point)

    def mask_prompt(self, lesion: Lesion, scan_id: str, mask) -> LesionPrompt:
        """An existing segment (bool ``[k, j, i]`` on timepoint ``scan_id``) as the prompt."""
        scan = self.study.scan(scan_id)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != scan.shape:
            raise InputError(f"the prompt segment's grid {mask.shape} does not match timepoint '{scan_id}' {scan.shape}")
        if not mask.any():
            raise InputError(f"the prompt segment is empty on timepoint '{scan_id}'")
        return LesionPrompt(lesion, scan_id, mask=mask)

    # -- applying results (main thread) ---------------------------------------------------------
    def checkpoint(self) -> tuple:
        """A copy of the lesion/observation/edit state, for :meth:`rollback` if applying a result fails."""
        return (dict(self.lesions), {lid: dict(obs) for lid, obs in self.observations.items()}, dict(self.edits),
                {lid: {sid: o.status for sid, o in obs.items()} for lid, obs in self.observations.items()},
                {lid: l.name for lid, l in self.lesions.items()})

    def rollback(self, state: tuple) -> None:
        lesions, observations, edits, statuses, names = state
        self.lesions, self.observations, self.edits = lesions, observations, edits
        for lid, per_scan in statuses.items():
            for sid, status in per_scan.items():
                observations[lid][sid].status = status
        for lid, name in names.items():
            lesions[lid].name = name

    def protected(self, lesion_ids, keep_scan: str | None = None) -> list[tuple[int, str]]:
        """Edited (lesion, scan) pairs a run on ``lesion_ids`` would overwrite (``keep_scan`` excluded)."""
        ids = set(lesion_ids)
        return sorted(k for k in self.edits if k[0] in ids and k[1] != keep_scan)

    def merge(self, result: TrackingResult, overwrite_edits: bool = False) -> MergeReport:
        """Take a finished run's observations; edited pairs are kept unless ``overwrite_edits``."""
        updated, kept = [], []
        for lesion in result.lesions:
            lid = lesion.lesion_id
            self.lesions[lid] = lesion
            self._next_id = max(self._next_id, lid + 1)
            mine = self.observations.setdefault(lid, {})
            for sid, obs in result.observations[lid].items():
                if (lid, sid) in self.edits and not overwrite_edits:
                    if obs.status == SOURCE and sid in mine and _same_mask(mine[sid].mask, obs.mask):
                        mine[sid].status = SOURCE  # re-tracked from this edited segment
                    kept.append((lid, sid))
                    continue
                mine[sid] = obs
                self.edits.pop((lid, sid), None)
                updated.append((lid, sid))
        return MergeReport(updated, kept)

    def apply_correction(self, obs: Observation) -> None:
        """Store a correction-click result (marked as edited by clicks)."""
        self.observation(obs.lesion_id, obs.scan_id)
        self.observations[obs.lesion_id][obs.scan_id] = obs
        self.edits[(obs.lesion_id, obs.scan_id)] = EDIT_CLICKS

    def set_edited_mask(self, lesion_id: int, scan_id: str, mask) -> bool:
        """Record a mask the user edited by hand (e.g. in the Segment Editor); False if it equals what the
        session shows for that lesion there (its overlap-resolved mask, as written to the scene)."""
        previous = self.observation(lesion_id, scan_id)
        scan = self.study.scan(scan_id)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != scan.shape:
            raise InputError(f"edited segment of {self.lesions[lesion_id].name} on '{scan_id}' has grid {mask.shape}, "
                             f"expected {scan.shape}")
        if _same_mask(self.label_map(scan_id) == lesion_id, mask):
            return False
        found = bool(mask.any())
        status = (SOURCE if previous.status == SOURCE else FOUND) if found else NOT_FOUND
        point = interior_centre(mask, scan) if found else previous.point_lps
        self.observations[lesion_id][scan_id] = Observation(lesion_id, scan_id, status, point,
                                                            mask if found else None, previous.propagated_from)
        self.edits[(lesion_id, scan_id)] = EDIT_MANUAL
        return True

    def manual_pairs(self) -> set[tuple[int, str]]:
        """(lesion, scan) pairs edited by hand (DICOM-SEG algorithm type MANUAL)."""
        return {k for k, v in self.edits.items() if v == EDIT_MANUAL}

    # -- views --------------------------------------------------------------------------------
    def observation(self, lesion_id: int, scan_id: str) -> Observation:
        self.study.scan(scan_id)
        name = self.lesion(lesion_id).name
        obs = self.observations.get(lesion_id, {}).get(scan_id)
        if obs is None:
            raise InputError(f"{name} has not been tracked to '{scan_id}' yet")
        return obs

    def result(self) -> TrackingResult:
        """All tracked lesions as one engine result (for label maps, measurements and export)."""
        lesions = [self.lesions[lid] for lid in sorted(self.observations) if lid in self.lesions]
        return TrackingResult(self.study, lesions, {l.lesion_id: self.observations[l.lesion_id] for l in lesions})

    def label_map(self, scan_id: str) -> np.ndarray:
        """int32 ``[k, j, i]`` lesion ids on one timepoint, overlaps resolved as in the engine."""
        return self.result().label_map(scan_id)

    def status_rows(self) -> list[dict]:
        """One row per lesion: id, name, colour, TrackingUID and per timepoint (status, confidence, text, edit)."""
        rows = []
        for lesion in self.result().lesions:
            cells = []
            for scan in self.study:
                obs = self.observations[lesion.lesion_id].get(scan.scan_id)
                status = obs.status if obs else ""
                edit = self.edits.get((lesion.lesion_id, scan.scan_id), "")
                text = STATUS_TEXT.get(status, "not tracked") + (f" ({'edited' if edit == EDIT_MANUAL else 'corrected'})"
                                                                if edit else "")
                confidence = obs.confidence if obs and not edit else ""
                if confidence == "low":
                    text += " (uncertain)"
                cells.append({"scan_id": scan.scan_id, "status": status, "confidence": confidence, "text": text,
                              "edit": edit})
            rows.append({"lesion_id": lesion.lesion_id, "name": lesion.name, "colour": lesion.colour,
                         "tracking_uid": lesion.tracking_uid, "cells": cells})
        return rows

    def measurement_rows(self) -> list[dict]:
        """The engine's measurement rows (lesion x timepoint), each with the edit kind added."""
        rows = measurement_rows(self.result())
        for row in rows:
            row["edit"] = self.edits.get((row["lesion_id"], row["scan_id"]), "")
        return rows

    def days_from_baseline(self) -> list[float]:
        """Days from the first timepoint to each timepoint (study order)."""
        first = self.study.scans[0].date
        return [(s.date - first).total_seconds() / 86400.0 for s in self.study]


def _same_mask(a, b) -> bool:
    a_any = a is not None and bool(np.any(a))
    b_any = b is not None and bool(np.any(b))
    if not a_any or not b_any:
        return a_any == b_any
    return np.array_equal(np.asarray(a, bool), np.asarray(b, bool))


# -- table and plot data for front ends ------------------------------------------------------------
# The session's measurement rows: the engine's lesion fields plus how the user edited the segment.
SESSION_FIELDS = {**LESION_FIELDS, "edit": ("Edited", "string")}
SESSION_COLUMNS = LESION_COLUMNS + ("edit",)  # the exported lesions.csv
TABLE_COLUMNS = ("lesion_name", "scan_id", "date", "status", "volume_ml", "longest_diameter_mm", "short_axis_mm",
                 "change_from_baseline_pct", "change_from_nadir_pct", "edit")  # the measurements table shown


def measurement_table(rows: list[dict]) -> list[tuple[str, str, list]]:
    """Columns (title, "string"|"double", values) of the measurements table; unmeasured values are NaN
    and statuses are written as the user reads them."""
    columns = []
    for key in TABLE_COLUMNS:
        title, kind = SESSION_FIELDS[key]
        if kind == "double":
            values = [math.nan if r.get(key) is None else float(r[key]) for r in rows]
        elif key == "status":
            values = [STATUS_TEXT.get(r[key], r[key]) for r in rows]
        else:
            values = ["" if r.get(key) is None else str(r[key]) for r in rows]
        columns.append((title, kind, values))
    return columns


def volume_series(rows: list[dict], days: list[float], lesions: list[Lesion]) -> list[dict]:
    """Volume-over-time plot series, one per lesion: name, colour, x = days from baseline, y = volume
    (mL, NaN where the lesion was not measured). ``rows`` are :meth:`TrackingSession.measurement_rows`."""
    series = []
    for lesion in lesions:
        mine = [r for r in rows if r["lesion_id"] == lesion.lesion_id]
        if len(mine) != len(days):
            raise ValueError(f"lesion {lesion.lesion_id}: {len(mine)} rows for {len(days)} timepoints")
        series.append({"lesion_id": lesion.lesion_id, "name": lesion.name, "colour": lesion.colour,
                       "x": list(days), "y": [math.nan if r["volume_ml"] is None else r["volume_ml"] for r in mine]})
    return series
