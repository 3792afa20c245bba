"""Applying tracking results to the scene: one segmentation node per timepoint, one segment per lesion.

Every timepoint's lesions share ONE binary-labelmap layer (label value = lesion id), cropped to the
lesions' bounding box, so the scene holds far less than one full-size label map per lesion. Segments
carry the same ID, name and colour on every timepoint, the Neoplasm terminology entry, Slicer's segment
status and LinGuinE's tags. Segments changed in the scene since LinGuinE wrote them are hand edits:
they are recorded in the session (and never overwritten without the user's confirmation).
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from LinGuinELib.core.tracking import NOT_FOUND, OUTSIDE_FOV
from LinGuinELib.frontend import slicer_bridge as bridge

VOLUME_ATTRIBUTE = "LinGuinE.VolumeID"  # on each timepoint's segmentation node
ALGORITHM_NAME = "LinGuinE"


def segment_status(status: str, edit: str) -> int:
    """Slicer's segment status of an observation: edited -> Completed, tracked -> InProgress (to review),
    not found / outside the field of view -> Flagged."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if status in (NOT_FOUND, OUTSIDE_FOV):
        return logic.Flagged
    return logic.Completed if edit else logic.InProgress


def _labelmap_name() -> str:
    return slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


class SceneResults:
    """Writes a :class:`TrackingSession`'s lesions into the scene and reads hand edits back."""

    def __init__(self, timepoints):
        self.timepoints = timepoints  # SceneTimepoints (session, volume_of)
        self._written: dict[tuple[str, str], int] = {}  # (segmentation ID, segment ID) -> labelmap MTime we left

    # -- nodes ------------------------------------------------------------------------------------
    def segmentation_node(self, volume, create: bool = True):
        """The timepoint's LinGuinE segmentation node: named after the volume, with the volume as its
        reference geometry, under the volume's parent transform and subject-hierarchy parent."""
        for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            if node.GetAttribute(VOLUME_ATTRIBUTE) == volume.GetID():
                return node
        if not create:
            return None
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} lesions")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        seg.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        seg.SetAttribute(VOLUME_ATTRIBUTE, volume.GetID())
        return seg

    # -- writing ----------------------------------------------------------------------------------
    def apply(self, labels=None) -> None:
        """Write every tracked lesion on the given timepoints (default all) from the session, one shared
        layer per timepoint. On failure the touched nodes are restored and nodes created here removed."""
        session = self.timepoints.session
        result = session.result()
        labels = list(labels or session.study.scan_ids)
        created, backups = [], []
        try:
            for label in labels:
                volume = self.timepoints.volume_of(label)
                seg = self.segmentation_node(volume, create=False)
                if seg is None:
                    seg = self.segmentation_node(volume)
                    created.append(seg)
                else:
                    backup = slicer.vtkSegmentation()
                    backup.DeepCopy(seg.GetSegmentation())
                    backups.append((seg, backup))
                self._write_timepoint(seg, volume, label, result)
        except Exception:
            for seg, backup in backups:
                seg.GetSegmentation().DeepCopy(backup)
            for seg in created:
                slicer.mrmlScene.RemoveNode(seg)
            raise

    def _write_timepoint(self, seg, volume, label, result) -> None:
        session = self.timepoints.session
        label_map = result.label_map(label)
        lesions = [l for l in result.lesions if label in session.observations[l.lesion_id]]
        layer = self._cropped_layer(volume, label_map)
        segmentation = seg.GetSegmentation()
        with _batch(seg):
            for lesion in lesions:
                sid = bridge.segment_id(lesion.lesion_id)
                if segmentation.GetSegment(sid) is None:
                    segmentation.AddEmptySegment(sid, lesion.name, list(lesion.colour))
                segment = segmentation.GetSegment(sid)
                segment.RemoveRepresentation(_labelmap_name())
                segment.AddRepresentation(_labelmap_name(), layer)  # one shared object = one layer
                segment.SetLabelValue(lesion.lesion_id)
                self._describe(segment, lesion, session.observations[lesion.lesion_id][label],
                               session.edits.get((lesion.lesion_id, label), ""))
            for lesion in lesions:
                sid = bridge.segment_id(lesion.lesion_id)
                self._written[(seg.GetID(), sid)] = self._mtime(seg, sid)

    @staticmethod
    def _cropped_layer(volume, label_map) -> "slicer.vtkOrientedImageData":
        """The timepoint's label map (lesion ids, ``[k, j, i]`` on the volume's grid) as an oriented
        image cropped to the lesions' bounding box (uint8 up to 255 lesions, else uint16)."""
        found = np.nonzero(label_map)
        lo = [int(a.min()) for a in found] if found[0].size else [0, 0, 0]
        hi = [int(a.max()) + 1 for a in found] if found[0].size else [1, 1, 1]
        crop = label_map[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        crop = crop.astype(np.uint8 if label_map.max() < 256 else np.uint16)
        image = slicer.vtkOrientedImageData()
        image.SetExtent(lo[2], hi[2] - 1, lo[1], hi[1] - 1, lo[0], hi[0] - 1)
        scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(crop).ravel(), deep=True,
                                             array_type=numpy_support.get_vtk_array_type(crop.dtype))
        image.GetPointData().SetScalars(scalars)
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)  # local RAS: the segmentation sits under the volume's transform
        image.SetImageToWorldMatrix(matrix)
        return image

    @staticmethod
    def _describe(segment, lesion, obs, edit: str) -> None:
        segment.SetName(lesion.name)
        segment.SetColor(*lesion.colour)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        segment.SetTerminology(bridge.TERMINOLOGY_TUMOUR)
        for tag, value in bridge.segment_tags(lesion, obs.status, edit, ALGORITHM_NAME).items():
            segment.SetTag(tag, value)
        slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(segment, segment_status(obs.status, edit))

    @staticmethod
    def _mtime(seg, sid):
        segment = seg.GetSegmentation().GetSegment(sid)
        rep = segment.GetRepresentation(_labelmap_name()) if segment is not None else None
        return rep.GetMTime() if rep is not None else None

    # -- reading back -------------------------------------------------------------------------------
    def sync_edits(self) -> list[tuple[int, str]]:
        """Read back segments changed since LinGuinE wrote them (hand edits): recorded in the session
        as edited (kept on re-track unless the user confirms), tagged MANUAL, status Completed."""
        session = self.timepoints.session
        if session is None:
            return []
        changed = []
        lesions = session.result().lesions
        for label in session.study.scan_ids:
            volume = self.timepoints.volume_of(label)
            seg = self.segmentation_node(volume, create=False)
            if seg is None:
                continue
            for lesion in lesions:
                sid = bridge.segment_id(lesion.lesion_id)
                if seg.GetSegmentation().GetSegment(sid) is None or label not in session.observations[lesion.lesion_id]:
                    continue
                if self._mtime(seg, sid) == self._written.get((seg.GetID(), sid)):
                    continue
                mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, volume) > 0
                if session.set_edited_mask(lesion.lesion_id, label, mask):
                    changed.append((lesion.lesion_id, label))
                    self._describe(seg.GetSegmentation().GetSegment(sid), lesion,
                                   session.observations[lesion.lesion_id][label], bridge.EDIT_MANUAL)
                self._written[(seg.GetID(), sid)] = self._mtime(seg, sid)
        return changed

    def mask(self, lesion_id: int, label: str) -> np.ndarray:
        """bool ``[k, j, i]`` of a lesion's segment on a timepoint, on that volume's grid."""
        volume = self.timepoints.volume_of(label)
        seg = self.segmentation_node(volume, create=False)
        if seg is None:
            return np.zeros(slicer.util.arrayFromVolume(volume).shape, bool)
        return slicer.util.arrayFromSegmentBinaryLabelmap(seg, bridge.segment_id(lesion_id), volume) > 0

    # -- lesion edits -----------------------------------------------------------------------------
    def _segments(self, lesion_id: int):
        for label in self.timepoints.session.study.scan_ids:
            seg = self.segmentation_node(self.timepoints.volume_of(label), create=False)
            if seg is not None and seg.GetSegmentation().GetSegment(bridge.segment_id(lesion_id)) is not None:
                yield seg, seg.GetSegmentation().GetSegment(bridge.segment_id(lesion_id))

    def rename(self, lesion_id: int, name: str) -> None:
        self.timepoints.session.rename_lesion(lesion_id, name)
        for _seg, segment in self._segments(lesion_id):
            segment.SetName(self.timepoints.session.lesion(lesion_id).name)

    def remove(self, lesion_id: int) -> None:
        """Remove a lesion from the session and its segment from every timepoint."""
        segments = list(self._segments(lesion_id))
        self.timepoints.session.remove_lesion(lesion_id)
        for seg, _segment in segments:
            seg.GetSegmentation().RemoveSegment(bridge.segment_id(lesion_id))
            self._written.pop((seg.GetID(), bridge.segment_id(lesion_id)), None)

    def reset(self) -> None:
        self._written.clear()


class _batch:
    """Segmentation modified events held back while segments are rewritten (one update at the end)."""

    def __init__(self, seg):
        self.seg = seg

    def __enter__(self):
        self.was = self.seg.StartModify()

    def __exit__(self, *exc):
        self.seg.EndModify(self.was)
