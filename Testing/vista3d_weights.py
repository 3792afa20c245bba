"""Randomly initialised Vista3D weights at the published architecture (``vista3d132``), for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import vista3d132


def write_random_vista3d(folder: str | Path, seed: int = 0) -> Path:
    """Write ``<folder>/vista3d/models/model.pt`` (a ``state_dict``, as the bundle's) and return ``folder``,
    a ``--weights`` folder."""
    torch.manual_seed(seed)
    network = vista3d132()
    target = Path(folder) / "vista3d" / "models" / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), target)
    return Path(folder)
