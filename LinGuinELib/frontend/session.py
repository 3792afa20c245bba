"""A GUI-free tracking session: the state a front end (the Slicer module) drives, one study at a time.

Threading contract: the ``*_job`` methods validate on the caller's (main) thread and return a callable
that does the heavy work on a worker thread (backend construction, registration, segmentation) and
touches no session state; the caller applies the callable's result on the main thread with
:meth:`TrackingSession.merge` or :meth:`TrackingSession.apply_correction`. A cancelled or failed job
therefore leaves the session unchanged.

Registrations are cached per registration backend for the session's lifetime, so tracking a second
lesion (or re-tracking one) costs only segmentation. Edited observations -- correction clicks or
masks edited by hand -- are never overwritten by a later run unless the caller passes
``overwrite_edits=True`` (after asking the user). Points given by the front end are RAS mm and are
converted to LPS here.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from LinGuinELib.core import coords
from LinGuinELib.backends import make_registration, make_segmenter
from LinGuinELib.core.errors import InputError
from LinGuinELib.frontend.settings import Settings
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.measure import measurement_rows
from LinGuinELib.registration.base import RegistrationCache
from LinGuinELib.frontend.slicer_bridge import EDIT_CLICKS, EDIT_MANUAL, STATUS_TEXT
from LinGuinELib.core.study import Study
from LinGuinELib.core.tracking import FOUND, NOT_FOUND, SOURCE, LesionPrompt, Observation, Tracker, TrackingResult, interior_centre

BackendFactory = Callable[[str, str, dict], object]  # (kind "registration"|"segmentation", name, options)


def default_backend_factory(kind: str, name: str, options: dict):
    return (make_registration if kind == "registration" else make_segmenter)(name, **options)


@dataclass
class MergeReport:
    """What a merge changed: (lesion_id, scan_id) pairs replaced and edited pairs kept."""

    updated: list[tuple[int, str]]
    kept: list[tuple[int, str]]


class TrackingSession:
    """Lesions, their observations on every timepoint, and which of them the user edited."""

    def __init__(self, study: Study, backend_factory: BackendFactory = default_backend_factory):
        self.study = study
        self.lesions: dict[int, Lesion] = {}
        self.observations: dict[int, dict[str, Observation]] = {}
        self.edits: dict[tuple[int, str], str] = {}
        self.cancel_event = threading.Event()
        self._factory = backend_factory
        self._backends: dict[tuple, object] = {}
        self._caches: dict[tuple, RegistrationCache] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self._progress: tuple[str, int, int] = ("", 0, 0)

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

    # -- worker jobs (validated here, run elsewhere) -----------------------------------------------
    def track_job(self, prompts: list[LesionPrompt], settings: Settings) -> Callable[[], TrackingResult]:
        """Tracking of ``prompts`` to every timepoint, as a callable for the worker thread."""
        if not prompts:
            raise InputError("no lesion prompt given")
        for prompt in prompts:
            self.study.scan(prompt.scan_id)
        self.cancel_event.clear()
        self._report("starting", 0, 1)
        return lambda: self._tracker(settings).track(prompts)

    def correction_job(self, lesion_id: int, scan_id: str, positive_ras, negative_ras,
                       settings: Settings) -> Callable[[], Observation]:
        """Correction clicks (world RAS mm) re-segmenting one lesion on one timepoint only."""
        lesion = self.lesion(lesion_id)
        current = self.observation(lesion_id, scan_id)
        positive = coords.ras_to_lps(np.asarray(positive_ras, dtype=float).reshape(-1, 3))
        if len(positive) == 0:
            raise InputError("place at least one positive correction point on the lesion")
        negative = None if negative_ras is None else coords.ras_to_lps(np.asarray(negative_ras, float).reshape(-1, 3))
        negative = negative if negative is not None and len(negative) else None
        scratch = TrackingResult(self.study, [lesion], {lesion_id: {scan_id: current}})
        self.cancel_event.clear()
        self._report(f"{lesion.name}: correcting {scan_id}", 0, 1)
        return lambda: self._tracker(settings).resegment(scratch, lesion_id, scan_id, positive, negative)

    def retrack_job(self, lesion_id: int, scan_id: str, settings: Settings) -> Callable[[], TrackingResult]:
        """Track again with this timepoint's current (e.g. corrected) mask as the new source."""
        obs = self.observation(lesion_id, scan_id)
        if not obs.found:
            raise InputError(f"{self.lesions[lesion_id].name} has no segment on '{scan_id}' to re-track from")
        return self.track_job([LesionPrompt(self.lesions[lesion_id], scan_id, mask=obs.mask.copy())], settings)

    def download_job(self, specs: list, weights: str | None, manager_factory) -> Callable[[], list]:
        """Download model weights (after the user accepted their licenses) with cancellable progress;
        ``manager_factory(progress=..., acknowledge=...)`` builds a :class:`~LinGuinELib.backends.models.ModelManager`."""
        self.cancel_event.clear()

        def progress(message: str, done: int, total: int) -> bool:
            self._report(message, done, total)
            return not self.cancel_event.is_set()

        manager = manager_factory(progress=progress, acknowledge=lambda spec: True)
        return lambda: [manager.ensure(spec.id, weights) for spec in specs]

    def _tracker(self, settings: Settings) -> Tracker:
        """A tracker with cached backends (built on first use, on the calling worker thread)."""
        options = settings.options()
        reg_key = ("registration", settings.registration, tuple(sorted(options.items())))
        seg_key = ("segmentation", settings.segmentation, tuple(sorted(options.items())))
        for key in (reg_key, seg_key):
            if key not in self._backends:
                self._backends[key] = self._factory(key[0], key[1], dict(options))
        registration = self._backends[reg_key]
        if reg_key not in self._caches:
            self._caches[reg_key] = RegistrationCache(registration)
        return Tracker(self.study, registration, self._backends[seg_key], progress=self._report,
                       cancel=self.cancel_event.is_set, cache=self._caches[reg_key], **settings.tracker_options())

    def registrations_computed(self) -> int:
        return sum(c.computed for c in self._caches.values())

    # -- progress and cancel (thread-safe) ------------------------------------------------------
    def _report(self, message: str, done: int, total: int) -> None:
        with self._lock:
            self._progress = (message, done, total)

    def progress(self) -> tuple[str, int, int]:
        """The latest (message, steps done, steps total) reported by the running job."""
        with self._lock:
            return self._progress

    def request_cancel(self) -> None:
        """Ask the running job to stop at its next step (it then raises TrackingCancelled)."""
        self.cancel_event.set()

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
MEASUREMENT_COLUMNS = (  # (title, row key, kind)
    ("Lesion", "lesion_name", "string"), ("Timepoint", "scan_id", "string"), ("Date", "date", "string"),
    ("Status", "status", "string"), ("Volume (mL)", "volume_ml", "double"),
    ("Longest diameter (mm)", "longest_diameter_mm", "double"), ("Short axis (mm)", "short_axis_mm", "double"),
    ("Change from baseline (%)", "change_from_baseline_pct", "double"),
    ("Change from nadir (%)", "change_from_nadir_pct", "double"), ("Edited", "edit", "string"),
)


def measurement_table(rows: list[dict]) -> list[tuple[str, str, list]]:
    """Columns (title, "string"|"double", values) of the measurements table; unmeasured values are NaN
    and statuses are written as the user reads them."""
    columns = []
    for title, key, kind in MEASUREMENT_COLUMNS:
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
