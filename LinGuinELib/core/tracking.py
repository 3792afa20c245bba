"""Longitudinal tracking: one prompt on any timepoint -> the lesion segmented on every scan.

For each lesion the interior centre of the source mask (or the click) is mapped source -> target
through the registration (LPS mm), the segmenter is prompted at the nearest voxel, and the connected
component containing that voxel (else the nearest one within ``radius_mm``) is kept.

* ``boost``: re-prompt a fresh segmenter at the interior centre of the first mask (paper eq. 5).
* ``chain``: propagate scan to scan outward from the source (source -> next -> next ...), each step
  starting from the previous scan's result.

Registrations are cached per scan pair (:class:`RegistrationCache`), so L lesions from one source on
T scans cost at most T - 1 registrations.

Overlap rule (deterministic): a voxel claimed by several lesions on one scan goes to the lesion whose
prompt point on that scan is nearest in mm; equal distances go to the lower lesion id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import cc3d
import numpy as np
from scipy import ndimage

from LinGuinELib import __version__
from LinGuinELib.core.errors import InputError, TrackingCancelled
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.registration.base import Registration, RegistrationCache
from LinGuinELib.segmentation.base import Segmenter
from LinGuinELib.core.study import Scan, Study

SOURCE, FOUND, NOT_FOUND, OUTSIDE_FOV = "source", "found", "not_found", "outside_fov"

Progress = Callable[[str, int, int], None]  # (message, steps done, steps total)


@dataclass
class LesionPrompt:
    """What the user gave for one lesion on ``scan_id``: a click (LPS mm) or a mask (bool [k, j, i])."""

    lesion: Lesion
    scan_id: str
    point_lps: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class Observation:
    """One lesion on one scan. ``point_lps`` is the prompt used there (LPS mm; after a boost, the re-prompt
    point); ``propagated_lps`` the point the registration mapped onto this scan (before any boost);
    ``mask`` bool [k, j, i]; ``propagated_from`` the scan id the point came from; ``confidence`` the
    segmenter's: "high", "low" (found, but uncertain: check it) or "" (no opinion, a given mask, nothing found)."""

    lesion_id: int
    scan_id: str
    status: str
    point_lps: np.ndarray | None = None
    mask: np.ndarray | None = None
    propagated_from: str | None = None
    propagated_lps: np.ndarray | None = None
    confidence: str = ""

    @property
    def found(self) -> bool:
        return self.status in (SOURCE, FOUND) and self.mask is not None and bool(self.mask.any())


def interior_centre(mask: np.ndarray, scan: Scan) -> np.ndarray:
    """The lesion's interior centre in LPS mm: the voxel farthest (spacing-aware Euclidean distance)
    from the mask's boundary; ties are broken toward the centre of mass. Always inside the mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InputError(f"scan '{scan.scan_id}': the lesion mask is empty")
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    crop = np.pad(mask[box], 1)
    dist = ndimage.distance_transform_edt(crop, sampling=scan.spacing_kji)
    best = dist.max()
    ties = np.argwhere(np.isclose(dist, best, rtol=1e-6, atol=1e-9))
    offset = np.array([s.start for s in box]) - 1
    ties_kji = ties + offset
    com = np.array(ndimage.center_of_mass(crop)) + offset  # on the crop: a full-scan pass costs ~0.1 s
    d2 = (((ties_kji - com) * scan.spacing_kji) ** 2).sum(axis=1)
    return scan.kji_to_lps(ties_kji[int(np.argmin(d2))].reshape(1, 3))[0]


def select_component(mask: np.ndarray, point_lps: np.ndarray, scan: Scan, radius_mm: float) -> np.ndarray:
    """The connected component (26-connected) of ``mask`` that contains the voxel nearest ``point_lps``,
    else the component with the voxel nearest the point within ``radius_mm``; empty if none."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    labels = cc3d.connected_components(mask.view(np.uint8), connectivity=26)
    seed = scan.nearest_voxel(point_lps)
    if labels[seed]:
        return labels == labels[seed]
    kji = scan.lps_to_kji(np.asarray(point_lps, dtype=float).reshape(1, 3))[0]
    reach = np.ceil(radius_mm / scan.spacing_kji).astype(int) + 1
    lo = np.maximum(np.floor(kji).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(kji).astype(int) + reach + 1, np.asarray(mask.shape))
    sub = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    hits = np.argwhere(sub > 0)
    if len(hits) == 0:
        return np.zeros_like(mask)
    dist = np.linalg.norm(scan.kji_to_lps(hits + lo) - np.asarray(point_lps, dtype=float), axis=1)
    nearest = int(np.argmin(dist))
    if dist[nearest] > radius_mm:
        return np.zeros_like(mask)
    return labels == sub[tuple(hits[nearest])]


@dataclass
class TrackingResult:
    """Every lesion on every scan of a study, plus run statistics."""

    study: Study
    lesions: list[Lesion]
    observations: dict[int, dict[str, Observation]] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def observation(self, lesion_id: int, scan_id: str) -> Observation:
        return self.observations[lesion_id][scan_id]

    def label_map(self, scan_id: str) -> np.ndarray:
        """int32 [k, j, i] label map of one scan: lesion ids as values, overlaps resolved (module doc)."""
        scan = self.study.scan(scan_id)
        out = np.zeros(scan.shape, dtype=np.int32)
        claimed = [(l.lesion_id, self.observations[l.lesion_id][scan_id]) for l in sorted(self.lesions, key=lambda l: l.lesion_id)
                   if scan_id in self.observations.get(l.lesion_id, {})]
        claimed = [(lid, obs) for lid, obs in claimed if obs.found]
        count = np.zeros(scan.shape, dtype=np.uint8)
        for lid, obs in claimed:
            out[obs.mask] = lid
            count += obs.mask
        contested = np.argwhere(count > 1)
        if len(contested):
            pts = scan.kji_to_lps(contested)
            best = np.full(len(contested), np.inf)
            winner = np.zeros(len(contested), dtype=np.int32)
            for lid, obs in claimed:  # ascending ids: strict '<' keeps the lower id on ties
                inside = obs.mask[tuple(contested.T)]
                d = np.linalg.norm(pts - obs.point_lps, axis=1)
                better = inside & (d < best)
                best[better], winner[better] = d[better], lid
            out[tuple(contested.T)] = winner
        return out

    def summary(self) -> dict:
        """JSON-ready run summary: backends, seconds per stage, call counts, version, lesions, statuses."""
        return {
            "software": "LinGuinE", "version": __version__, "patient_id": self.study.patient_id,
            "scans": [{"scan_id": s.scan_id, "date": s.date.isoformat()} for s in self.study],
            "lesions": [l.to_dict() for l in self.lesions],
            "status": {str(lid): {sid: o.status for sid, o in obs.items()} for lid, obs in self.observations.items()},
            "confidence": {str(lid): {sid: o.confidence for sid, o in obs.items()}
                           for lid, obs in self.observations.items()},
            **self.stats,
        }


class Tracker:
    """Tracks lesions through one study with one registration and one segmentation backend.

    Keep one Tracker per study (or pass the same ``cache`` to each): its registration cache makes every
    further lesion cost only segmentation. ``progress(message, done, total)`` is called before each step; ``cancel()``
    returning True stops the run with :class:`TrackingCancelled` between steps.
    """

    def __init__(self, study: Study, registration: Registration, segmenter: Segmenter, *, boost: bool = False,
                 chain: bool = False, radius_mm: float = 10.0, progress: Progress | None = None,
                 cancel: Callable[[], bool] | None = None, cache: RegistrationCache | None = None):
        self.study = study
        self.registration = registration
        self.cache = cache if cache is not None else RegistrationCache(registration)
        self.segmenter = segmenter
        self.boost, self.chain, self.radius_mm = boost, chain, float(radius_mm)
        self.progress = progress or (lambda message, done, total: None)
        self.cancel = cancel or (lambda: False)
        self.segmentation_calls = 0
        self.segmentation_seconds = 0.0
        self._done = self._total = 0

    # -- steps -------------------------------------------------------------------------------
    def _step(self, message: str) -> None:
        if self.cancel():
            raise TrackingCancelled("tracking cancelled by the user")
        self.progress(message, self._done, self._total)
        self._done += 1

    def _segment(self, scan: Scan, point_lps: np.ndarray,
                 negative_lps: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """(component of the mask at the point, the segmenter's confidence; "" if nothing is left)."""
        start = time.perf_counter()
        positive = np.array([scan.nearest_voxel(point_lps)])
        negative = None
        if negative_lps is not None and len(negative_lps):
            negative = np.array([scan.nearest_voxel(p) for p in np.atleast_2d(negative_lps)])
        mask, confidence = self.segmenter.segment_with_confidence(scan, positive, negative)
        self.segmentation_calls += 1
        self.segmentation_seconds += time.perf_counter() - start
        mask = select_component(mask, point_lps, scan, self.radius_mm)
        return mask, confidence if mask.any() else ""

    def _segment_boosted(self, scan: Scan, point_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """(mask, point used, confidence): segment at the point; with boost, re-prompt at the first
        mask's interior centre."""
        mask, confidence = self._segment(scan, point_lps)
        if self.boost and mask.any():
            centre = interior_centre(mask, scan)
            boosted, boosted_confidence = self._segment(scan, centre)
            if boosted.any():
                return boosted, centre, boosted_confidence
        return mask, point_lps, confidence

    def _observe(self, lesion_id: int, target: Scan, point_lps: np.ndarray, origin_id: str) -> Observation:
        if not target.contains_lps(point_lps.reshape(1, 3))[0]:
            return Observation(lesion_id, target.scan_id, OUTSIDE_FOV, point_lps, None, origin_id, point_lps)
        mask, used, confidence = self._segment_boosted(target, point_lps)
        status = FOUND if mask.any() else NOT_FOUND
        return Observation(lesion_id, target.scan_id, status, used, mask if mask.any() else None, origin_id,
                           point_lps, confidence)

    # -- public API --------------------------------------------------------------------------
    def source_observation(self, prompt: LesionPrompt) -> Observation:
        """The lesion on its prompt scan: the given mask, or the segmentation at the click."""
        scan = self.study.scan(prompt.scan_id)
        lid = prompt.lesion.lesion_id
        self._step(f"{prompt.lesion.name}: {scan.scan_id} (source)")
        if prompt.mask is not None:
            mask = np.asarray(prompt.mask, dtype=bool)
            if mask.shape != scan.shape:
                raise InputError(f"lesion {lid}: mask shape {mask.shape} does not match scan '{scan.scan_id}' {scan.shape}")
            if not mask.any():
                raise InputError(f"lesion {lid}: the prompt mask on scan '{scan.scan_id}' is empty")
            return Observation(lid, scan.scan_id, SOURCE, interior_centre(mask, scan), mask)
        if prompt.point_lps is None:
            raise InputError(f"lesion {lid}: give a click or a mask")
        point = np.asarray(prompt.point_lps, dtype=float).reshape(3)
        if not scan.contains_lps(point.reshape(1, 3))[0]:
            raise InputError(f"lesion {lid}: {scan.outside_message(point)}")
        mask, confidence = self._segment(scan, point)
        return Observation(lid, scan.scan_id, SOURCE if mask.any() else NOT_FOUND, point,
                           mask if mask.any() else None, confidence=confidence)

    def track(self, prompts: list[LesionPrompt]) -> TrackingResult:
        """Track every prompt's lesion to every scan of the study."""
        ids = [p.lesion.lesion_id for p in prompts]
        if len(set(ids)) != len(ids):
            raise InputError(f"duplicate lesion ids in prompts: {ids}")
        for p in prompts:
            self.study.scan(p.scan_id)  # unknown scan -> InputError before any work
        start = time.perf_counter()
        calls_before = self.cache.computed, self.segmentation_calls
        self._done, self._total = 0, len(prompts) * len(self.study)
        result = TrackingResult(self.study, [p.lesion for p in prompts])
        for prompt in prompts:
            result.observations[prompt.lesion.lesion_id] = self.track_lesion(prompt)
        self.progress("done", self._total, self._total)
        result.stats = {
            "registration": self.registration.name, "segmentation": self.segmenter.name,
            "options": {"boost": self.boost, "chain": self.chain, "radius_mm": self.radius_mm},
            "registration_calls": self.cache.computed - calls_before[0],
            "segmentation_calls": self.segmentation_calls - calls_before[1],
            "registration_calls_total": self.cache.computed,
            "seconds": {"registration": round(self.cache.seconds, 3),
                        "segmentation": round(self.segmentation_seconds, 3),
                        "total": round(time.perf_counter() - start, 3)},
        }
        return result

    def track_lesion(self, prompt: LesionPrompt) -> dict[str, Observation]:
        """One lesion on every scan: {scan_id: Observation}, in study order."""
        source_obs = self.source_observation(prompt)
        src_index = self.study.index(prompt.scan_id)
        out = {prompt.scan_id: source_obs}
        scans = self.study.scans
        if self.chain:
            for direction in (1, -1):
                prev, point = scans[src_index], source_obs.point_lps
                for t in range(src_index + direction, len(scans) if direction > 0 else -1, direction):
                    target = scans[t]
                    point = self._map(prev, target, point, prompt.lesion.name)
                    obs = self._observe(prompt.lesion.lesion_id, target, point, prev.scan_id)
                    out[target.scan_id] = obs
                    if obs.found:
                        point = interior_centre(obs.mask, target)
                    prev = target
        else:
            source = scans[src_index]
            for target in scans:
                if target.scan_id == source.scan_id:
                    continue
                point = self._map(source, target, source_obs.point_lps, prompt.lesion.name)
                out[target.scan_id] = self._observe(prompt.lesion.lesion_id, target, point, source.scan_id)
        return {s.scan_id: out[s.scan_id] for s in scans}

    def _map(self, source: Scan, target: Scan, point_lps: np.ndarray, name: str) -> np.ndarray:
        if not self.cache.has(source.scan_id, target.scan_id):
            self._step(f"registering {source.scan_id} -> {target.scan_id}")
            self._total += 1
        self._step(f"{name}: segmenting {target.scan_id}")
        return np.asarray(self.cache.get(source, target)(np.asarray(point_lps, dtype=float).reshape(1, 3))[0])

    def resegment(self, result: TrackingResult, lesion_id: int, scan_id: str, positive_lps: np.ndarray,
                  negative_lps: np.ndarray | None = None) -> Observation:
        """Correction clicks: re-segment one lesion on one scan only from positive/negative LPS points."""
        scan = self.study.scan(scan_id)
        positive_lps = np.atleast_2d(np.asarray(positive_lps, dtype=float))
        inside = scan.contains_lps(positive_lps)
        if not inside.all():
            raise InputError(scan.outside_message(positive_lps[~inside][0], "correction point"))
        start = time.perf_counter()
        kji = np.array([scan.nearest_voxel(p) for p in positive_lps])
        negative = None
        if negative_lps is not None and len(negative_lps):
            negative = np.array([scan.nearest_voxel(p) for p in np.atleast_2d(negative_lps)])
        mask, confidence = self.segmenter.segment_with_confidence(scan, kji, negative)
        self.segmentation_calls += 1
        self.segmentation_seconds += time.perf_counter() - start
        mask = select_component(mask, positive_lps[0], scan, self.radius_mm)
        previous = result.observations[lesion_id][scan_id]
        status = (SOURCE if previous.status == SOURCE else FOUND) if mask.any() else NOT_FOUND
        obs = Observation(lesion_id, scan_id, status, positive_lps[0], mask if mask.any() else None,
                          previous.propagated_from, previous.propagated_lps, confidence if mask.any() else "")
        result.observations[lesion_id][scan_id] = obs
        return obs
