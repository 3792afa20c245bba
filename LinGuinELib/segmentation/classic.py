"""``classic`` segmentation: a click-seeded CT lesion segmenter with no model weights (CPU only).

Input: a CT in Hounsfield units and voxel points in ``(k, j, i)`` order. Every length below is in
millimetres and every distance spacing-aware (5 mm slices stay 5 mm apart). Each positive point is
segmented on its own and the results are united:

1. Crop around the point and smooth lightly in-plane.
2. Lung surroundings: move the seed into the dense core nearby (a propagated seed often lands on a
   small lesion's partial-volume rim); no dense tissue within a few mm gives an empty mask.
3. Rays cast from the seed give the lesion's intensity window (half way from the core value to the
   darker / brighter surroundings the rays meet) and its radius (median exit distance).
4. Candidate = in-window voxels within twice that radius, inside a star-shaped bound traced from
   the seed, grown slice to slice at most at 45 degrees; in lung also inside the pleural envelope
   (lung air closed by a large ball), which cuts a tumour off the chest wall or mediastinum. A
   juxtapleural lesion straddles the envelope (its edge passes within half the radius of the seed,
   near the skin): beyond the envelope it ends half way to the chest wall's tissue instead (on the
   crop smoothed to ~1 mm, within 1.5 x the radius), where it stands out of that tissue clearly; its
   lung side still ends half way to air (:func:`_beyond_pleura`).
5. Negative points split the candidate (at the neck, by cheapest paths); an opening cuts thin
   bridges; the seed's component is regrown to the window's edge, hole-filled and capped at the
   volume of a sphere 1.5 x the radius. A result whose boundary is mostly cut by these caps rather
   than seen in the image is not a lesion: empty mask.
6. Steps 3-5 run again from the result's interior centre (twice at most, while its rays still meet
   air), so the result barely depends on where in the lesion the point fell; the last result that
   passes step 5's test and still reaches the seed is returned.
7. Steps 3-6 are the lung path, taken only where the surroundings the rays meet include air. In
   soft tissue, and where the lung path finds nothing (a low-contrast lesion beside lung), a maximally
   stable region around the seed (or, for a seed on a small lesion's partial-volume rim, around the
   darkest / brightest value within 3 mm), cut at half its contrast (half way to each side where it
   lies between darker and brighter tissue), is returned (:func:`_stable_region`) with a confidence:
   "low" when it barely stands out of the noise or is only fairly stable. Nothing stable and
   bounded: empty mask (e.g. a lesion gone).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.graph import MCP_Geometric

from LinGuinELib.core.study import Scan
from LinGuinELib.segmentation.base import HIGH, LOW, Segmenter

AIR_HU = -500.0  # below this a voxel holds air (lung parenchyma, airways, outside the body)
SEED_REACH_MM = 1.5  # a soft-tissue seed is taken to lie in the nearest region within this distance (noise)
RIM_REACH_MM = 3.0  # a soft-tissue seed with no stable band around its own value looks this far (box) for the lesion's core
RIM_COMPACTNESS = 4.0  # a rim seed's region may hold at most this many times its largest inscribed ball
TWO_SIDED_SHARE = 0.3  # a region whose shell is darker on one side and brighter on the other needs this share of each
SURE_NOISE_SDS = 5.0  # a soft-tissue region standing out this many noise SDs is sure (a radius-stable one must, to count)
STABLE_RADIUS_MM = 1.0  # a band level is also stable when its neighbours' equal-volume radii differ by at most this
FAR_SIDE_HU = 100.0  # a rim seed's one-sided band reaches this far beyond its core (fat lies >= ~130 HU below soft tissue)


MAX_RADIUS_MM = 50.0  # largest lesion radius looked for: rays stop there, the mask stays within +-(this + 2) mm
N_RAYS = 256  # rays cast from the seed to estimate the intensity window and the radius
MIN_EDGE_FRACTION = 0.7  # share of a lung-path mask's boundary that must be an image edge, not a cap
ENVELOPE_GRID_MM = 2.0  # the pleural envelope's grid; a straddling lesion's lung side ends at air this far beyond it
CHEST_WALL_MM = 40.0  # tissue this close to the skin is chest wall (the mediastinum lies deeper)
WALL_SMOOTH_MM = 0.7  # a straddling lesion is told from the chest wall on the crop smoothed again by this (~1 mm)
WALL_NOISE_SDS = 2.5  # ... if it stands out of the wall by this many noise SDs (and 8 HU)
WALL_REACH = 1.5  # ... and only within this many times its radius of its centre (the volume cap's factor)


class ClassicSegmenter(Segmenter):
    """Ray-estimated intensity window + leak control + morphology; see the module docstring. It has
    no options: its limits are the module constants above, read at each call."""

    name = "classic"

    def _segment(self, scan: Scan, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        """Union of the lesions found under each positive point (each segmented on its own)."""
        return self._segment_with_confidence(scan, positive, negative)[0]

    def _segment_with_confidence(self, scan: Scan, positive: np.ndarray, negative: np.ndarray):
        """(union mask, confidence): LOW if any point's lesion is uncertain, "" if none was found."""
        out = np.zeros(scan.shape, dtype=bool)
        levels = []
        for point in positive:
            found = self._one(scan, point, negative)
            if found is not None:
                out[found[0]] |= found[1]
                levels.append(found[2])
        return out, (LOW if LOW in levels else HIGH) if levels else ""

    def _one(self, scan: Scan, point: np.ndarray, negative: np.ndarray):
        """(box slices, mask within box) for one positive voxel, or None if nothing lesion-like."""
        sp = scan.spacing_kji
        lo, hi = _box(point[None], MAX_RADIUS_MM + 2.0, sp, scan.shape)
        crop = ndi.gaussian_filter(scan.array[_sl(lo, hi)].astype(np.float32), sigma=_smoothing(sp), mode="nearest")
        negs = negative - lo
        negs = negs[np.all((negs >= 0) & (negs < crop.shape), axis=1)]
        seed = _relocate(crop, point - lo, sp)
        if seed is None:
            return None
        lung = _window_and_radius(crop, seed, sp, MAX_RADIUS_MM, N_RAYS)[2]
        found = self._lung(scan, crop, lo, seed, negs) if lung else None
        if found is None:  # soft tissue, or a low-contrast lesion beside lung that the lung path misses
            found = _stable_region(crop, seed, negs, sp, MAX_RADIUS_MM)
        return None if found is None else (_sl(lo, hi), found[0], found[1])

    def _lung(self, scan, crop, lo, seed, negs):
        """(mask on ``crop``, HIGH) by steps 3-6 of the module docstring, or None."""
        sp = scan.spacing_kji
        grown = self._grow(scan, crop, lo, seed, negs)
        if grown is None:
            return None
        # Again from the region's interior centre (twice at most), so that the result does not depend
        # on where in the lesion the seed fell; a pass must keep half of the previous region.
        passes, seed0 = [grown], seed
        for _ in range(2):
            region = passes[-1][0]
            centre = np.asarray(np.unravel_index(np.argmax(ndi.distance_transform_edt(region, sampling=sp)),
                                                 region.shape))
            if np.array_equal(centre, seed):
                break
            again = self._grow(scan, crop, lo, centre, negs)
            if again is None or (again[0] & region).sum() < 0.5 * region.sum():
                break
            passes.append(again)
            seed = centre
        # The last pass whose boundary is mostly an image edge (not a cap) and that still reaches the
        # seed (within 2 mm: a rim seed may sit just outside); none: nothing lesion-like is there.
        near_seed = _dist_from(seed0, crop.shape, sp) <= 2.0
        seen = [region for region, edge in passes if edge >= MIN_EDGE_FRACTION and (region & near_seed).any()]
        return (seen[-1], HIGH) if seen else None

    def _grow(self, scan, crop, crop_lo, seed, negs):
        """(mask on ``crop``, edge fraction) for the lesion around ``seed``, away from negative voxels
        ``negs`` (crop indices; ``crop`` is the smoothed ``scan.array`` from index ``crop_lo``), or
        None if nothing bounded is there."""
        sp = scan.spacing_kji
        window, radius, lung = _window_and_radius(crop, seed, sp, MAX_RADIUS_MM, N_RAYS)
        if window is None or not lung:  # a pass from a centre deep in the wall has left the lung path
            return None
        cap = min(2.0 * radius + 2.0, MAX_RADIUS_MM)
        lo, hi = _box(seed[None], cap + 1.0, sp, crop.shape)
        sub, seed = crop[_sl(lo, hi)], seed - lo
        bounded = (sub >= window[0]) & (sub <= window[1])  # False where the lesion must end
        reach = _dist_from(seed, sub.shape, sp) <= cap
        at = crop_lo + lo
        envelope, to_skin = _pleural_envelope(scan, at, crop_lo + hi, at + seed, window[0], radius, cap, sp)
        at_wall = to_skin <= CHEST_WALL_MM + 0.5 * radius  # the pleura within half the radius is costal
        wall = _beyond_pleura(sub, seed, envelope, window[0], radius, sp) if at_wall else None
        if wall is not None:  # straddling the pleura: beyond it the lesion ends where it no longer stands out
            lung_side = ndi.distance_transform_edt(~envelope, sampling=sp) <= ENVELOPE_GRID_MM
            bounded &= lung_side | wall
            reach &= lung_side | (_dist_from(seed, sub.shape, sp) <= WALL_REACH * radius)
        elif envelope[tuple(seed)]:  # else the lesion is not wrapped by lung (e.g. mediastinal)
            bounded &= envelope
        candidate = bounded & reach
        candidate[tuple(seed)] = True
        candidate &= _star_hull(candidate, seed, sp, cap)
        candidate = _slice_cone(candidate, seed, sp)
        negs = negs - lo
        negs = negs[np.all((negs >= 0) & (negs < sub.shape), axis=1)]
        if len(negs):
            mine = _split_off(candidate, seed, negs, sp)
            bounded &= mine | ~candidate  # where the negatives' share begins is an edge too
            candidate &= mine
        kept = _limit_volume(_keep_seeded(candidate, seed, radius, sp), seed, radius, sp)
        region = np.zeros(crop.shape, dtype=bool)
        region[_sl(lo, hi)] = kept
        return region, _edge_fraction(kept, bounded)


def _sl(lo, hi):
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _box(points, half_mm, sp, shape):
    """Voxel box (lo, hi) covering ``points`` plus ``half_mm`` on every side, clipped to the scan."""
    half = np.ceil(half_mm / sp).astype(int)
    return np.maximum(points.min(0) - half, 0), np.minimum(points.max(0) + half + 1, shape)


def _smoothing(sp, sigma_mm: float = 0.7):
    """Gaussian sigma (voxels) of ``sigma_mm``, skipped along thick-slice axes."""
    return np.where(sp < 1.4, sigma_mm / sp, 0.0)


def _dist_from(point, shape, sp):
    """Distance (mm) of every voxel of an array of ``shape`` from voxel ``point``."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum(((g - p) * s) ** 2 for g, p, s in zip(grids, point, sp)))


def _ball_box(point, r_mm, sp, shape):
    """Voxel box (lo, hi) of the ball of ``r_mm`` around ``point``, clipped to ``shape``."""
    lo = np.maximum(point - np.floor(r_mm / sp).astype(int), 0)
    hi = np.minimum(point + np.floor(r_mm / sp).astype(int) + 1, shape)
    return lo, hi


def _relocate(crop, seed, sp, reach_mm: float = 5.5, core_mm: float = 3.0):
    """Seed moved into the dense core near it, or None if nothing dense is there.

    In air-containing surroundings (a neighbourhood split by Otsu into classes more than 300 HU
    apart, the darker one air) the seed moves to the nearest voxel of the dense class that lies at
    least ``core_mm`` deep in it (or as deep as any within ``reach_mm``; slices 5 mm apart stay
    reachable). A seed already that deep stays, so a deeper structure next to the lesion (chest
    wall) does not draw it away. Elsewhere the seed stays; an air seed gives None.
    """
    lo, hi = _ball_box(seed, reach_mm + 6.0, sp, crop.shape)
    patch = crop[_sl(lo, hi)]
    t = threshold_otsu(patch) if patch.max() > patch.min() else patch.max()
    dark, dense = patch[patch <= t], patch[patch > t]
    if dense.size == 0 or dark.size == 0 or dense.mean() - dark.mean() < 300 or np.median(dark) > AIR_HU:
        return None if crop[tuple(seed)] < AIR_HU else seed
    mask = patch > max(t, AIR_HU)
    near = _dist_from(seed - lo, patch.shape, sp)
    depth = np.where(near <= reach_mm, ndi.distance_transform_edt(mask, sampling=sp), 0.0)
    if depth.max() == 0:
        return None
    deep_enough = depth >= min(core_mm, depth.max())
    return np.asarray(np.unravel_index(np.argmin(np.where(deep_enough, near, np.inf)), patch.shape)) + lo


def _fibonacci_sphere(n):
    """``n`` unit vectors (z, y, x order as k, j, i) spread evenly over the sphere."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azim = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(azim), np.sin(polar) * np.cos(azim)], axis=1)


def _window_and_radius(crop, seed, sp, max_radius, n_rays, step=0.5, beyond_mm=5.0):
    """((lo, hi) HU window, median radius mm, lung context) from rays cast from ``seed``.

    Core value = median within 2 mm of the seed. Starting from core +- 4 x its spread (40-200 HU),
    each ray's exit is where it first leaves the window for 1 mm, and the extreme value within
    ``beyond_mm`` past the exit is the surrounding it meets; the window then reaches half way to the
    median darker (brighter) surrounding, if at least 10 % of rays meet one (twice). The radius is
    the median exit distance; lung context = the darker surrounding is air. (None, 0, False) if the
    core is air or most rays never leave the window (nothing bounded at the seed).
    """
    lo, hi = _ball_box(seed, 2.0, sp, crop.shape)
    core = crop[_sl(lo, hi)][_dist_from(seed - lo, hi - lo, sp) <= 2.0]
    mu = float(np.median(core))
    if mu < AIR_HU:
        return None, 0.0, False
    half = float(np.clip(4.0 * 1.4826 * np.median(np.abs(core - mu)), 40.0, 200.0))
    low, high = mu - half, mu + half
    t = np.arange(0.0, max_radius + step, step)
    pts = seed[None, None, :] + _fibonacci_sphere(n_rays)[:, None, :] * t[None, :, None] / sp
    prof = ndi.map_coordinates(crop, pts.reshape(-1, 3).T, order=1, mode="nearest").reshape(n_rays, len(t))
    run, skip = max(int(round(1.0 / step)), 1), int(round(beyond_mm / step))
    rows = np.arange(n_rays)
    darker = np.zeros(0)
    for _ in range(2):
        outside = ((prof < low) | (prof > high)).astype(np.uint8)
        leaving = ndi.minimum_filter1d(outside, run, axis=1, origin=-(run // 2)).astype(bool)
        first = np.where(leaving.any(1), leaving.argmax(1), len(t) - 1)
        ahead = prof[rows[:, None], np.minimum(first[:, None] + np.arange(skip + 1), len(t) - 1)]
        went_low = prof[rows, first] < low
        darker, brighter = ahead[went_low].min(1), ahead[~went_low].max(1)
        darker, brighter = darker[darker < low], brighter[brighter > high]
        if darker.size >= 0.1 * n_rays:
            low = (mu + float(np.median(darker))) / 2
        if brighter.size >= 0.1 * n_rays:
            high = (mu + float(np.median(brighter))) / 2
    outside = ((prof < low) | (prof > high)).astype(np.uint8)
    leaving = ndi.minimum_filter1d(outside, run, axis=1, origin=-(run // 2)).astype(bool)
    first = np.where(leaving.any(1), leaving.argmax(1), len(t) - 1)
    if np.mean(leaving.any(1)) < 0.5:  # most rays never leave: nothing bounded at the seed
        return None, 0.0, False
    radius = max(float(np.median(t[first])), 1.0)
    lung = bool(darker.size >= 0.1 * n_rays and np.median(darker) < AIR_HU)
    return (low, high), radius, lung


def _pleural_envelope(scan, lo, hi, seed, air_below, radius, cap, sp, grid_mm=ENVELOPE_GRID_MM):
    """(bool mask over the scan box [lo, hi): lung air closed by a ball of max(2 x radius, 15) mm,
    distance (mm) from ``seed`` to the air outside the body (inf if none is in the slab)).

    Inside: lung air and what it wraps around (a tumour); outside: tissue deeper than the ball
    reaches from the lung (chest wall, mediastinum, diaphragm). Air connected to the image's
    in-plane border is outside the body and does not count as lung (unless no other air is near
    the seed, e.g. a field of view that cuts the lung). Computed on a ~2 mm grid.
    """
    rho = max(2.0 * radius, 15.0)
    stride = np.maximum(np.round(grid_mm / sp).astype(int), 1)
    csp = sp * stride
    c_lo, c_hi = _box(seed[None], cap + 2.0 * rho + grid_mm, sp, scan.shape)
    slab = scan.array[int(c_lo[0]):int(c_hi[0]):int(stride[0]), ::int(stride[1]), ::int(stride[2])]
    air = slab < air_below
    labels, _ = ndi.label(air)
    border = np.unique(np.concatenate([labels[:, [0, -1], :].ravel(), labels[:, :, [0, -1]].ravel()]))
    outside = np.isin(labels, border[border > 0])
    lung = air & ~outside
    to_skin = _dist_from(np.r_[(seed[0] - c_lo[0]) // stride[0], seed[1:] // stride[1:]], slab.shape, csp)[outside]
    origin = np.r_[c_lo[0], (c_lo[1:] // stride[1:]) * stride[1:]]  # fine index of coarse voxel 0
    box = (slice(None),) + tuple(slice(int(a // s), int(-(-b // s)))
                                 for a, b, s in zip(origin[1:], c_hi[1:], stride[1:]))
    air, lung = air[box], lung[box]
    near = _dist_from(np.rint((seed - origin) / stride).astype(int), lung.shape, csp) <= cap
    if not (lung & near).any():
        lung = air
    dilated = ndi.distance_transform_edt(~lung, sampling=csp) <= rho
    closed = lung | (ndi.distance_transform_edt(dilated, sampling=csp) > rho)
    index = [np.clip(np.rint((np.arange(a, b) - o) / s).astype(int), 0, n - 1)
             for a, b, o, s, n in zip(lo, hi, origin, stride, closed.shape)]
    return closed[np.ix_(*index)], float(to_skin.min()) if to_skin.size else np.inf


def _beyond_pleura(sub, seed, envelope, air_edge, radius, sp):
    """Bool mask where a lesion straddling the pleural ``envelope`` (its edge passes within half the
    ray ``radius`` of the seed) still stands out of the tissue beyond it (the chest wall),
    or None if the lesion does not straddle it or does not stand out there.

    On ``sub`` smoothed again by WALL_SMOOTH_MM: lesion value = median of the tissue (above
    ``air_edge``) within half the radius of the seed; wall = median of the tissue beyond the envelope
    1.5-4 mm outside the radius. The lesion reaches half way to the wall (to the median of its darker
    part where the wall is darker on one side and brighter on the other, TWO_SIDED_SHARE of it each),
    and half way to its brighter part (a rib) where that makes up TWO_SIDED_SHARE of it. A step to
    the darker side under 8 HU or WALL_NOISE_SDS noise SDs does not stand out.
    """
    dist = _dist_from(seed, sub.shape, sp)
    if not (~envelope & (dist <= 0.5 * radius)).any():
        return None
    soft = ndi.gaussian_filter(sub, sigma=_smoothing(sp, WALL_SMOOTH_MM), mode="nearest")
    tissue = soft > air_edge
    beyond = tissue & ~envelope
    shell = beyond & (dist > radius + 1.5) & (dist <= radius + 4.0)
    inner = tissue & (dist <= max(0.5 * radius, 2.0))
    if not shell.any() or not inner.any():
        return None
    noise = 1.4826 * float(np.median(np.abs(soft - ndi.median_filter(soft, size=3))[beyond]))
    need = max(8.0, WALL_NOISE_SDS * noise)
    lesion, around = float(np.median(soft[inner])), soft[shell]
    darker, brighter = around[around < lesion], around[around > lesion]
    dark = float(np.median(around))
    if lesion - dark < need and min(darker.size, brighter.size) >= TWO_SIDED_SHARE * around.size:
        dark = float(np.median(darker))  # darker on one side, brighter on the other
    if lesion - dark < need:
        return None
    bright = float(np.median(brighter)) if brighter.size >= TWO_SIDED_SHARE * around.size else np.inf
    return (soft >= (lesion + dark) / 2) & (soft <= (lesion + bright) / 2)


def _star_hull(candidate, seed, sp, cap, n_polar=24, n_azim=48, step=0.5, grow=1.2, margin=2.0):
    """Voxels within reach of ``seed`` along their direction: a star-shaped bound on the lesion.

    Rays on a (polar, azimuth) grid (7.5 degree bins) measure how far the candidate reaches from the
    seed before a 1 mm gap; each bin's reach is the largest among its neighbours, x ``grow`` +
    ``margin`` mm. A leak that the seed only reaches around a corner (a vessel, a structure
    touching the lesion beyond lung) falls outside.
    """
    polar = (np.arange(n_polar) + 0.5) * np.pi / n_polar
    azim = (np.arange(n_azim) + 0.5) * 2 * np.pi / n_azim
    p, a = np.meshgrid(polar, azim, indexing="ij")
    dirs = np.stack([np.cos(p), np.sin(p) * np.sin(a), np.sin(p) * np.cos(a)], -1).reshape(-1, 3)
    t = np.arange(0.0, cap + step, step)
    pts = seed[None, None, :] + dirs[:, None, :] * t[None, :, None] / sp
    inside = ndi.map_coordinates(candidate.astype(np.float32), pts.reshape(-1, 3).T, order=1, mode="grid-constant")
    run = max(int(round(1.0 / step)), 1)
    gap = ndi.minimum_filter1d((inside.reshape(len(dirs), len(t)) < 0.5).astype(np.uint8), run, axis=1,
                               origin=-(run // 2)).astype(bool)
    reach = np.where(gap.any(1), t[gap.argmax(1)], cap).reshape(n_polar, n_azim)
    reach = ndi.maximum_filter(reach, size=3, mode=("nearest", "wrap")) * grow + margin
    grids = np.ogrid[tuple(slice(0, n) for n in candidate.shape)]
    dk, dj, di = [(g - c) * s for g, c, s in zip(grids, seed, sp)]
    dist = np.sqrt(dk ** 2 + dj ** 2 + di ** 2)
    polar_of = np.arccos(np.clip(dk / np.maximum(dist, 1e-9), -1, 1))
    pb = np.minimum((polar_of / np.pi * n_polar).astype(int), n_polar - 1)
    ab = ((np.arctan2(dj, di) % (2 * np.pi)) / (2 * np.pi) * n_azim).astype(int) % n_azim
    return dist <= reach[pb, ab]


def _slice_cone(candidate, seed, sp):
    """Candidate limited slice by slice, outward from the seed's slice: a slice keeps only what lies
    within one slice spacing (in-plane, mm) of what the slice before it kept (a 45 degree slope)."""
    out = np.zeros_like(candidate)
    k0 = int(seed[0])
    out[k0] = candidate[k0]
    for ks in (range(k0 + 1, candidate.shape[0]), range(k0 - 1, -1, -1)):
        prev = out[k0]
        for k in ks:
            if not prev.any():
                break
            near = ndi.distance_transform_edt(~prev, sampling=sp[1:]) <= sp[0]
            out[k] = prev = candidate[k] & near
    return out


def _limit_volume(region, seed, radius, sp, factor=1.5):
    """``region`` trimmed to the ball around ``seed`` that leaves it no larger than a sphere of
    ``factor`` x the estimated radius (a leak, not a lesion, makes it larger); seeded part kept."""
    limit = 4.0 / 3.0 * np.pi * (factor * radius) ** 3 / np.prod(sp)
    if region.sum() <= limit:
        return region
    dist = _dist_from(seed, region.shape, sp)
    reach = np.sort(dist[region])[int(limit) - 1]
    return _component_at(region & (dist <= reach), seed)


def _component_at(mask, seed):
    """The connected component of ``mask`` holding voxel ``seed`` (empty if it is not in the mask)."""
    labels, _ = ndi.label(mask)
    return labels == labels[tuple(seed)] if labels[tuple(seed)] else np.zeros_like(mask)


def _edge_fraction(region, in_window):
    """Share of the region's boundary voxels that touch a voxel outside ``in_window`` (the intensity
    window, pleural envelope and negative points' share): edges the image shows, not caps."""
    boundary = region & ~ndi.binary_erosion(region, border_value=1)
    if not boundary.any():
        return 0.0
    solid = ndi.binary_opening(~in_window, np.ones((1, 3, 3), bool))  # not specks of noise
    edge = boundary & ndi.binary_dilation(solid, border_value=0)
    return float(edge.sum() / boundary.sum())


def _split_off(candidate, seed, negs, sp):
    """Candidate voxels nearer to ``seed`` than to any negative voxel, along paths inside the
    candidate whose cost per mm is 1 / depth (mm from the candidate's edge): thin parts are dear,
    so the split falls on the neck between the lesion and what a negative click marks."""
    negs = [tuple(n) for n in negs if candidate[tuple(n)]]
    if not negs:
        return candidate
    depth = ndi.distance_transform_edt(candidate, sampling=sp)
    cost = np.where(candidate, 1.0 / np.maximum(depth, sp.min()), np.inf)
    to_seed = MCP_Geometric(cost, sampling=tuple(sp)).find_costs([tuple(seed)])[0]
    to_neg = MCP_Geometric(cost, sampling=tuple(sp)).find_costs(negs)[0]
    return candidate & (to_seed < to_neg)


def _keep_seeded(candidate, seed, radius, sp):
    """Open (cut bridges narrower than half the radius, at least 2 mm), keep the component at the
    seed, regrow it within the candidate by the opening radius, fill holes."""
    r_open = float(np.clip(0.25 * radius, 1.0, 8.0))
    inner = ndi.distance_transform_edt(candidate, sampling=sp) > r_open
    kept = _component_at(ndi.distance_transform_edt(~inner, sampling=sp) <= r_open, seed)
    if not kept.any():  # thinner than the opening everywhere near the seed: keep it unopened
        return ndi.binary_fill_holes(_component_at(candidate, seed))
    grown = candidate & (ndi.distance_transform_edt(~kept, sampling=sp) <= r_open + sp.min())
    return ndi.binary_fill_holes(_component_at(grown, seed))


def _stable_region(crop, seed, negs, sp, max_radius, n_levels=20):
    """(mask on ``crop``, confidence) of the lesion at ``seed`` in soft tissue, or None.

    Low-contrast path (no air around the seed): a maximally stable region. On ``crop`` smoothed to
    about 1 mm and sampled on a ~1 mm grid, the seed's component of ``|I - core| < delta`` is taken for
    ``delta`` from 5 to 150 HU (geometric steps; the component is cut at necks under 3 voxels,
    :func:`_thick_component`); a lesion is the range of ``delta`` over which that component stays
    bounded (clear of the ``max_radius`` ball's surface) and changes least in volume: by at most half
    across neighbouring levels. A seed on a lesion's partial-volume rim has a core value half way
    between lesion and tissue, so that band takes in both at once; if it finds nothing, one-sided bands
    are tried, ``m - FAR_SIDE_HU < I < m + delta`` (a darker lesion) with ``m`` the core value and with
    ``m`` the darkest value within +-RIM_REACH_MM, and their mirrors from the core and the brightest
    value (a brighter lesion); the stablest roughly round one wins (:func:`_compact`). They hold the
    lesion's interior from the start and stay bounded until ``delta`` reaches the tissue; from a point
    in plain tissue such a band soon holds most of the tissue and is unbounded.
    The region's contrast C = median of a 1.5-4 mm shell outside it minus its median; the mask is the
    seed's component within C / 2 of that median at full resolution (the half-way edge of a blurred
    step), split from negative points, opened and hole-filled. Where the shell is darker on one side
    and brighter on the other (at least TWO_SIDED_SHARE of it each, e.g. a lesion between fat and
    muscle) its median may not stand out at all: the mask then reaches half way to the median of the
    darker part and half way to that of the brighter part, and C is the smaller of those two steps.
    None if nothing stable and bounded stands at least 8 HU and 2.5 noise SDs out (5 SDs for a region
    stable only by its radius: noise blobs in plain tissue grow steadily too); confidence LOW if it
    stands out less than 5 noise SDs or its volume changes by more than 30 % across neighbouring levels.
    """
    step = np.maximum(np.round(1.0 / sp).astype(int), 1)
    fine = ndi.gaussian_filter(crop, sigma=np.where(sp < 2.0, 0.8 / sp, 0.0), mode="nearest")
    coarse, csp = fine[::step[0], ::step[1], ::step[2]], sp * step
    cseed = np.minimum(seed // step, np.asarray(coarse.shape) - 1)
    lo, hi = _ball_box(cseed, 2.0, csp, coarse.shape)
    core = float(np.median(coarse[_sl(lo, hi)]))
    noise = 1.4826 * float(np.median(np.abs(fine - ndi.median_filter(fine, size=3))))  # smoothed-image SD
    from_seed = _dist_from(cseed, coarse.shape, csp)
    inside_ball = from_seed < max_radius
    deltas = np.geomspace(5.0, 150.0, n_levels)
    deviation = np.abs(coarse - core)
    best = _most_stable(lambda d: deviation < d, deltas, from_seed, inside_ball, csp)
    if best is None:  # a rim seed: one-sided bands from its own value and from the extremes near it
        near = coarse[_sl(*_ball_box(cseed, RIM_REACH_MM, csp, coarse.shape))]
        bands = [lambda d, m=m: (coarse > m - FAR_SIDE_HU) & (coarse < m + d)  # a darker lesion
                 for m in (core, float(near.min()))]
        bands += [lambda d, m=m: (coarse > m - d) & (coarse < m + FAR_SIDE_HU)  # a brighter one
                  for m in (core, float(near.max()))]
        found = [_most_stable(band, deltas, from_seed, inside_ball, csp) for band in bands]
        sided = [one for one in found if one is not None and _compact(one[0], csp)]
        best = min(sided, key=lambda one: one[1]) if sided else None
    if best is None:
        return None
    region, best_score = best
    dist_out = ndi.distance_transform_edt(~region, sampling=csp)
    shell = (dist_out > 1.5) & (dist_out <= 4.0)
    inner = float(np.median(coarse[region]))
    around = coarse[shell]
    need = max(8.0, (2.5 if best_score <= 0.5 else SURE_NOISE_SDS) * noise)  # a steadily growing region must stand out more
    contrast = float(np.median(around)) - inner if around.size else 0.0
    if abs(contrast) >= need:
        low, high = inner - abs(contrast) / 2, inner + abs(contrast) / 2
    else:  # darker tissue on one side, brighter on the other (a lesion between fat and muscle)
        darker, brighter = around[around < inner], around[around > inner]
        if min(darker.size, brighter.size) < TWO_SIDED_SHARE * max(around.size, 1):
            return None
        dark, bright = float(np.median(darker)), float(np.median(brighter))
        contrast = min(inner - dark, bright - inner)
        if contrast < need:
            return None
        low, high = (inner + dark) / 2, (inner + bright) / 2
    full = (fine > low) & (fine < high)
    near = ndi.binary_dilation(np.repeat(np.repeat(np.repeat(region, step[0], 0), step[1], 1), step[2], 2)
                               [:crop.shape[0], :crop.shape[1], :crop.shape[2]], iterations=2)
    candidate = full & np.pad(near, [(0, max(n - m, 0)) for n, m in zip(crop.shape, near.shape)])
    candidate[tuple(seed)] = True
    if len(negs):
        candidate &= _split_off(candidate, seed, negs, sp)
    radius = (3.0 * region.sum() * np.prod(csp) / (4.0 * np.pi)) ** (1.0 / 3.0)
    mask = _keep_seeded(candidate, seed, radius, sp)
    if not mask.any():
        return None
    sure = abs(contrast) >= SURE_NOISE_SDS * noise and best_score <= 0.3
    return mask, HIGH if sure else LOW


def _compact(region, sp):
    """Whether ``region`` is roughly round, as a lesion is: its volume at most RIM_COMPACTNESS x the
    largest ball inside it (a band that follows a muscle or an organ's edge is long or flat)."""
    depth = ndi.distance_transform_edt(np.pad(region, 1), sampling=sp).max()
    return region.sum() * np.prod(sp) <= RIM_COMPACTNESS * 4.0 / 3.0 * np.pi * depth ** 3


def _most_stable(band, deltas, from_seed, inside_ball, csp):
    """(region, score) over the nested threshold bands ``band(delta)`` (bool mask on the ~1 mm grid,
    growing with ``delta``): the seed's component (:func:`_thick_component`) at the level whose
    neighbours differ least in volume, score = that difference / its volume; only levels while the
    component stays inside the ball and holds at least 10 mm3 (bands past the first unbounded one are
    never built). A small blurred lesion grows steadily with ``delta`` (its partial-volume rim), so a
    level whose neighbours' equal-volume radii differ by at most STABLE_RADIUS_MM also counts, after
    every level that keeps its volume within half. None if no level does either."""
    volumes = np.full(len(deltas), np.inf)
    regions = [None] * len(deltas)
    for n, delta in enumerate(deltas):
        comp = _thick_component(band(delta), from_seed, csp)
        if comp is None:  # the seed's own value lies outside this band (noise): next level
            volumes[n] = 0.0
            continue
        if (comp & ~inside_ball).any():
            break  # unbounded from here on
        volumes[n], regions[n] = comp.sum(), comp
    radius = (3.0 * volumes * np.prod(csp) / (4.0 * np.pi)) ** (1.0 / 3.0)  # of the equal-volume sphere, mm
    best, best_key = None, (2, np.inf)
    for n in range(1, len(deltas) - 1):
        if not np.isfinite(volumes[n + 1]) or volumes[n] * np.prod(csp) < 10.0 or regions[n] is None:
            continue
        score = abs(volumes[n + 1] - volumes[n - 1]) / volumes[n]
        widening = radius[n + 1] - radius[n - 1]
        key = (0, score) if score <= 0.5 else (1, widening) if widening <= STABLE_RADIUS_MM else (2, np.inf)
        if key < best_key:
            best, best_key, best_score = n, key, score
    return None if best is None else (regions[best], best_score)


def _thick_component(mask, from_seed, sp, reach_mm=SEED_REACH_MM):
    """The seed's component of ``mask`` (on a ~1 mm grid) without what joins it only through necks
    under 3 voxels thick, or None if ``mask`` has no voxel within ``reach_mm`` of the seed
    (``from_seed``: distance map, mm; the nearest such voxel stands for the seed).

    One erosion (in-plane only across slices thicker than 2 mm) cuts the 1-2 voxel shells of partial
    volume between a brighter and a darker tissue, whose in-between values would otherwise join a
    lesion to everything along that interface; the eroded part nearest the seed is dilated back
    inside the component. A component too thin to survive the erosion is kept whole.
    """
    near = (from_seed <= reach_mm) & mask
    if not near.any():
        return None
    labels, _ = ndi.label(mask)
    comp = labels == labels[near][np.argmin(from_seed[near])]
    structure = ndi.generate_binary_structure(3, 1)
    if sp[0] > 2.0:
        structure[0] = structure[2] = False
    labels, count = ndi.label(ndi.binary_erosion(comp, structure))
    if not count:
        return comp
    inner = labels > 0
    return ndi.binary_dilation(labels == labels[inner][np.argmin(from_seed[inner])], structure) & comp
