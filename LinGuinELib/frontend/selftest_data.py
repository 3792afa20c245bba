"""A small synthetic longitudinal study with a known lesion, shared by the Slicer self-test (which loads it
as volumes) and its pytest twin. Pure NumPy; arrays are ``[k, j, i]``, matrices Slicer ``IJKToRAS``."""

from __future__ import annotations

import numpy as np

SHAPE = (40, 80, 80)  # (k, j, i)
SPACING = (1.5, 1.5, 3.0)  # (i, j, k) mm
# (shift of the patient along i in mm, lesion radius in mm) per timepoint: the lesion moves and grows.
TIMEPOINTS = ((0.0, 9.0), (4.5, 10.5), (9.0, 12.0))
DATES = ("2020-01-15", "2020-02-15", "2020-03-15")


def moving_lesion_study(seed: int = 0) -> list[dict]:
    """Three chest-like int16 volumes (soft-tissue body tapering along z, two lungs with vessels, a
    spine, a table that stays put) with one soft-tissue lesion in a lung that moves with the patient
    and grows. Per timepoint: ``name`` (with its date), ``array``, ``ijk_to_ras``, ``truth`` (bool lesion
    mask), ``centre_ras`` (lesion centre, world RAS mm)."""
    noise = np.random.default_rng(seed)
    anatomy = np.random.default_rng(1234)  # the same patient at every timepoint
    spacing = np.asarray(SPACING, dtype=float)
    kk, jj, ii = np.indices(SHAPE)
    vessels = [(anatomy.uniform(6, 34), anatomy.uniform(22, 52), anatomy.uniform(-24, 24), anatomy.uniform(1.2, 2.2))
               for _ in range(40)]  # (k, j, i offset from the midline, radius) in voxels
    ijk_to_ras = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-aligned axes, origin 0
    out = []
    for (shift_mm, radius_mm), date in zip(TIMEPOINTS, DATES):
        mid = 40.0 + shift_mm / spacing[0]  # the patient's midline column i
        taper = 1.0 - 0.35 * ((kk - 20) / 24.0) ** 2
        body = ((jj - 40) / (30 * taper)) ** 2 + ((ii - mid) / (36 * taper)) ** 2 < 1
        array = np.where(body, 20.0, -1000.0)
        for side in (-1, 1):
            lung = ((kk - 20) / 15.0) ** 2 + ((jj - 37) / 20.0) ** 2 + ((ii - mid - side * 15) / 12.0) ** 2 < 1
            array[lung] = -820.0
        for k, j, di, r in vessels:
            vessel = ((kk - k) * spacing[2] / spacing[0]) ** 2 + (jj - j) ** 2 + (ii - mid - di) ** 2 < r * r
            array[vessel & (array < -500)] = -60.0
        array[((jj - 62) ** 2 + (ii - mid) ** 2 < 25) & body] = 450.0  # spine
        array[:, 74:, :] = 200.0  # the table does not move with the patient
        centre = np.array([20.0, 36.0, mid - 13.0])  # (k, j, i), in the right lung
        d = np.sqrt(((kk - centre[0]) * spacing[2]) ** 2 + ((jj - centre[1]) * spacing[1]) ** 2
                    + ((ii - centre[2]) * spacing[0]) ** 2)
        truth = d <= radius_mm
        array[truth] = 40.0
        array += noise.normal(0, 15, SHAPE)
        centre_ras = (ijk_to_ras @ np.array([centre[2], centre[1], centre[0], 1.0]))[:3]
        out.append({"name": f"CT_{date}", "array": array.astype(np.int16), "ijk_to_ras": ijk_to_ras.copy(),
                    "truth": truth, "centre_ras": centre_ras})
    return out
