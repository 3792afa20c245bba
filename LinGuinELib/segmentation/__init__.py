"""Point-prompted segmentation backends behind :class:`~LinGuinELib.segmentation.base.Segmenter`."""

from .base import Segmenter

__all__ = ["Segmenter"]
