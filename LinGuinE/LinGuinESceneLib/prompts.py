"""Prompts from the scene: a markups point (world RAS) or an existing segment, on the right timepoint."""

from __future__ import annotations

import slicer

from LinGuinELib.core.errors import InputError


class ScenePrompts:
    """Builds engine :class:`LesionPrompt` objects (LPS mm) for a session from markups and segments."""

    def __init__(self, timepoints):
        self.timepoints = timepoints  # SceneTimepoints

    def from_point(self, session, lesion, volume_id: str, markups):
        """The last control point of ``markups``, read in world RAS (parent transforms applied), as a
        prompt on the timepoint of volume ``volume_id``; rejected if it lies outside that scan."""
        if markups is None or markups.GetNumberOfControlPoints() < 1:
            raise InputError("place a point on the lesion first")
        point = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(markups.GetNumberOfControlPoints() - 1, point)
        return session.point_prompt(lesion, self.timepoints.label_of(volume_id), point)

    def from_segment(self, session, lesion, volume_id: str, segmentation, segment_id: str):
        """A segment as the prompt. Its timepoint is the segmentation's reference volume when that is a
        timepoint, else volume ``volume_id``; the mask is resampled onto that volume's grid."""
        if segmentation is None or not segment_id or segmentation.GetSegmentation().GetSegment(segment_id) is None:
            raise InputError("select a segmentation and a segment as the prompt")
        reference = segmentation.GetNodeReferenceID(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        try:
            label = self.timepoints.label_of(reference)
        except InputError:
            label = self.timepoints.label_of(volume_id)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, self.timepoints.volume_of(label))
        return session.mask_prompt(lesion, label, mask > 0)

    def correction_points(self, positive, negative):
        """World RAS (N, 3) arrays of the positive and negative correction markups (negative may be None)."""
        pos = slicer.util.arrayFromMarkupsControlPoints(positive, world=True) if positive is not None \
            and positive.GetNumberOfControlPoints() else []
        neg = slicer.util.arrayFromMarkupsControlPoints(negative, world=True) if negative is not None \
            and negative.GetNumberOfControlPoints() else None
        return pos, neg
