"""The review layout: every timepoint side by side, each view centred on its own timepoint's lesion.

The views are deliberately NOT linked: linked slice views broadcast ``SliceToRAS``, so one scroll (or
one centring) would move every view to the same RAS point, while the lesion sits elsewhere on each
timepoint. Each timepoint's segmentation is shown only in its own review view (plus the standard views)
while reviewing; the review ends when the user switches to another layout (or :meth:`ReviewLayout.end`
is called), which restores the view restrictions and linking found.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from LinGuinELib.core import coords
from LinGuinELib.frontend import slicer_bridge as bridge

REVIEW_LAYOUT_BASE = 74100  # + number of timepoints
STANDARD_VIEWS = ("vtkMRMLSliceNodeRed", "vtkMRMLSliceNodeYellow", "vtkMRMLSliceNodeGreen", "vtkMRMLViewNode1")


class ReviewLayout:
    """``app_logic`` gives the slice logics by layout name (``slicer.app.applicationLogic()`` in Slicer)."""

    def __init__(self, timepoints, results, app_logic):
        self.timepoints, self.results, self.app_logic = timepoints, results, app_logic
        self._saved = None  # (layout arrangement, {display node ID: view node IDs}, {composite ID: linked})
        self._layout_id, self._observer = None, None

    @staticmethod
    def layout_node():
        node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if node is None:
            raise RuntimeError("the scene has no layout node")
        return node

    def view_names(self) -> list[str]:
        return [f"LinGuinE{n + 1}" for n in range(len(self.timepoints.session.study.scan_ids))]

    def activate(self) -> list[str]:
        """Register the layout (one axial view per timepoint) and switch to it; returns the view names."""
        labels = self.timepoints.session.study.scan_ids
        layout = self.layout_node()
        layout_id = REVIEW_LAYOUT_BASE + len(labels)
        xml = bridge.review_layout_xml(self.view_names(), labels)
        if layout.IsLayoutDescription(layout_id):
            layout.SetLayoutDescription(layout_id, xml)
        else:
            layout.AddLayoutDescription(layout_id, xml)
        if self._saved is None:
            self._saved = (layout.GetViewArrangement(), {}, {})
            self._observer = layout.AddObserver(vtk.vtkCommand.ModifiedEvent, self._on_layout_modified)
        self._layout_id = layout_id
        layout.SetViewArrangement(layout_id)
        return self.view_names()

    def _on_layout_modified(self, layout, _event) -> None:
        if self._saved is not None and layout.GetViewArrangement() != self._layout_id:
            self.end(restore_layout=False)  # the user chose another layout: keep it

    def show(self, lesion_id: int | None = None) -> dict[str, np.ndarray]:
        """Fill the (existing) review views: each timepoint's volume, its own segmentation only, and
        centred on the lesion there (its measured centre, else where it was looked for). Returns the
        centre RAS per timepoint label that was centred."""
        if self._saved is None:
            raise RuntimeError("activate the review layout first")
        session = self.timepoints.session
        rows = {(r["lesion_id"], r["scan_id"]): r for r in session.measurement_rows()} if lesion_id else {}
        centred = {}
        _arrangement, displays, links = self._saved
        for view, label in zip(self.view_names(), session.study.scan_ids):
            logic = self.app_logic.GetSliceLogicByLayoutName(view)
            if logic is None:
                raise RuntimeError(f"review view {view} was not created")
            composite, slice_node = logic.GetSliceCompositeNode(), logic.GetSliceNode()
            links.setdefault(composite.GetID(), composite.GetLinkedControl())
            composite.SetLinkedControl(False)
            composite.SetBackgroundVolumeID(self.timepoints.volume_of(label).GetID())
            composite.SetForegroundVolumeID(None)
            seg = self.results.segmentation_node(self.timepoints.volume_of(label), create=False)
            if seg is not None and seg.GetDisplayNode() is not None:
                display = seg.GetDisplayNode()
                displays.setdefault(display.GetID(), [display.GetNthViewNodeID(n)
                                                      for n in range(display.GetNumberOfViewNodeIDs())])
                display.RemoveAllViewNodeIDs()
                for view_id in STANDARD_VIEWS + (slice_node.GetID(),):
                    display.AddViewNodeID(view_id)
            point = self._centre(session, lesion_id, label, rows)
            if point is None:
                logic.FitSliceToBackground() if hasattr(logic, "FitSliceToBackground") else logic.FitSliceToAll()
                continue
            ras = coords.lps_to_ras(point)
            slice_node.JumpSliceByCentering(*ras)
            row = rows.get((lesion_id, label))
            fov = bridge.field_of_view_mm(row["longest_diameter_mm"] if row else None)
            width, height = slice_node.GetDimensions()[:2]
            slice_node.SetFieldOfView(fov, fov * max(height, 1) / max(width, 1), slice_node.GetFieldOfView()[2])
            centred[label] = ras
        return centred

    @staticmethod
    def _centre(session, lesion_id, label, rows):
        if lesion_id is None:
            return None
        row = rows.get((lesion_id, label))
        if row and row["centre_x"] is not None:
            return np.array([row["centre_x"], row["centre_y"], row["centre_z"]], float)
        obs = session.observations.get(lesion_id, {}).get(label)
        return None if obs is None or obs.point_lps is None else np.asarray(obs.point_lps, float)

    @property
    def active(self) -> bool:
        return self._saved is not None

    def end(self, restore_layout: bool = True) -> None:
        """Restore the view restrictions of the segmentation displays, the views' linking and (unless the
        user already chose another one) the layout."""
        if self._saved is None:
            return
        arrangement, displays, links = self._saved
        self._saved = None
        layout = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")  # None while a scene closes
        if self._observer is not None and layout is not None:
            layout.RemoveObserver(self._observer)
        self._observer = None
        for display_id, views in displays.items():
            display = slicer.mrmlScene.GetNodeByID(display_id)
            if display is not None:
                display.RemoveAllViewNodeIDs()
                for view_id in views:
                    display.AddViewNodeID(view_id)
        for composite_id, linked in links.items():
            composite = slicer.mrmlScene.GetNodeByID(composite_id)
            if composite is not None:
                composite.SetLinkedControl(linked)
        if restore_layout and layout is not None:
            layout.SetViewArrangement(arrangement)
