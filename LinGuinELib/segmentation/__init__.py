"""Point-prompted segmentation backends behind :class:`~LinGuinELib.segmentation.base.Segmenter`."""

from LinGuinELib.segmentation.base import Segmenter

__all__ = ["Segmenter"]
