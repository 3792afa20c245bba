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

    @staticmethod
    def volume_of_placed_point(markups, app_logic):
        """Volume node ID shown in the slice view whose plane holds the last point of ``markups`` (the
        view it was just placed in), from the application logic's slice views; None if unknown."""
        from LinGuinELib.frontend.slicer_bridge import slice_view_containing

        n = markups.GetNumberOfControlPoints() if markups is not None else 0
        if n == 0:
            return None
        point = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(n - 1, point)
        views, background = {}, {}
        logics = app_logic.GetSliceLogics()
        for i in range(logics.GetNumberOfItems() if logics is not None else 0):
            logic = logics.GetItemAsObject(i)
            volume_id = logic.GetSliceCompositeNode().GetBackgroundVolumeID() if logic.GetSliceCompositeNode() else None
            if volume_id and logic.GetSliceNode() is not None and logic.GetSliceNode().IsMappedInLayout():
                name = logic.GetSliceNode().GetLayoutName()
                views[name] = slicer.util.arrayFromVTKMatrix(logic.GetSliceNode().GetSliceToRAS())
                background[name] = volume_id
        name = slice_view_containing(point, views)
        return background.get(name) if name else None

    def correction_points(self, positive, negative):
        """World RAS (N, 3) arrays of the positive and negative correction markups (negative may be None)."""
        pos = slicer.util.arrayFromMarkupsControlPoints(positive, world=True) if positive is not None \
            and positive.GetNumberOfControlPoints() else []
        neg = slicer.util.arrayFromMarkupsControlPoints(negative, world=True) if negative is not None \
            and negative.GetNumberOfControlPoints() else None
        return pos, neg
