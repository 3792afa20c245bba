"""Randomly initialised Vista3D weights at the published architecture (``vista3d132``), for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import vista3d132


def write_random_vista3d(folder: str | Path, seed: int = 0, mask_bias: float | None = None) -> Path:
    """Write ``<folder>/vista3d/models/model.pt`` (a ``state_dict``, as the bundle's) and return ``folder``,
    a ``--weights`` folder. ``mask_bias``: when set, the point head's mask token is set so that the
    hypernetwork's output is a constant scale, making the logits of the point head follow its image
    features with a known sign (see Testing/test_vista3d.py)."""
    torch.manual_seed(seed)
    network = vista3d132()
    if mask_bias is not None:
        with torch.no_grad():
            network.point_head.mask_tokens.weight.fill_(mask_bias)
    target = Path(folder) / "vista3d" / "models" / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), target)
    return Path(folder)
