"""Subject hierarchy: each timepoint's volume and lesion segmentation under its patient and study.

In Slicer, subject-hierarchy items of new data nodes are made by its Qt plugins (and the DICOM browser
builds patient/study items); here they are created explicitly, so the layout is the same with or without
those plugins. Volumes that already sit under a study (loaded from DICOM) keep it.
"""

from __future__ import annotations

import slicer


class SubjectHierarchy:
    def __init__(self, scene=None):
        self.sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene or slicer.mrmlScene)

    def item(self, node) -> int:
        """The node's item, created under the scene if it has none yet."""
        item = self.sh.GetItemByDataNode(node)
        return item or self.sh.CreateItem(self.sh.GetSceneItemID(), node)

    def _child(self, parent: int, name: str, level: str) -> int:
        for n in range(self.sh.GetNumberOfItemChildren(parent)):
            child = self.sh.GetItemByPositionUnderParent(parent, n)
            if self.sh.GetItemLevel(child) == level and self.sh.GetItemName(child) == name:
                return child
        item = self.sh.CreateFolderItem(parent, name)
        self.sh.SetItemLevel(item, level)
        return item

    def place(self, volume, segmentation, patient: str, study: str) -> int:
        """Put ``volume`` under patient/study (unless it already has a study) and ``segmentation`` beside
        it; returns the study item."""
        volume_item = self.item(volume)
        parent = self.sh.GetItemParent(volume_item)
        if parent == self.sh.GetSceneItemID() or self.sh.GetItemLevel(parent) != slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy():
            patient_item = self._child(self.sh.GetSceneItemID(), patient,
                                       slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelPatient())
            parent = self._child(patient_item, study, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
            self.sh.SetItemParent(volume_item, parent)
        if segmentation is not None:
            self.sh.SetItemParent(self.item(segmentation), parent)
        return parent
