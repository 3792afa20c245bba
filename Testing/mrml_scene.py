"""A real MRML scene set up the way Slicer 5.12 does at startup, without Qt (PyPI ``slicer-core``).

As in ``trame_slicer.core.slicer_app.SlicerApp``: a ``vtkSlicerApplicationLogic`` with the colour logic's
default nodes, and each module logic given the scene and the application logic and registered by name.
As Slicer's Segmentations module does at startup, the segmentation converter rules are registered. As
Slicer's Python start-up does, ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` are provided,
so ``slicer.util`` helpers work. Not available without Qt: rendering, widgets, the DICOM database, and
Slicer's terminology JSON files (not in the wheel): :func:`load_dicom_terminology` loads the entries
LinGuinE uses from a file written in Slicer's own terminology JSON schema.
"""

from __future__ import annotations

import types

LOGICS = {  # slicer.modules name -> (module logic class, name registered with the application logic)
    "volumes": ("vtkSlicerVolumesLogic", "Volumes"),
    "segmentations": ("vtkSlicerSegmentationsModuleLogic", "Segmentations"),
    "terminologies": ("vtkSlicerTerminologiesModuleLogic", "Terminologies"),
    "subjecthierarchy": ("vtkSlicerSubjectHierarchyModuleLogic", "SubjectHierarchy"),
    "markups": ("vtkSlicerMarkupsLogic", "Markups"),
    "tables": ("vtkSlicerTablesLogic", "Tables"),
    "plots": ("vtkSlicerPlotsLogic", "Plots"),
    "transforms": ("vtkSlicerTransformLogic", "Transforms"),
}


class MRMLApp:
    """The scene, the application logic and the module logics (``logics[name]``)."""

    def __init__(self):
        import slicer
        import vtk

        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().SetMRMLScene(self.scene)
        self.app_logic.SetMRMLSceneDataIO(self.scene, None, None)
        self.app_logic.SetModuleLogic("Colors", self.app_logic.GetColorLogic())
        self.slice_logics = vtk.vtkCollection()
        self.app_logic.SetSliceLogics(self.slice_logics)
        self.layout_logic = slicer.vtkMRMLLayoutLogic()
        self.layout_logic.SetMRMLScene(self.scene)
        self.logics = {}
        for key, (cls, name) in LOGICS.items():
            logic = getattr(slicer, cls)()
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.app_logic)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[key] = logic
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        for rule in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                     "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                     "vtkFractionalLabelmapToClosedSurfaceConversionRule"):
            if not any(factory.GetConverterRules()[n].GetClassName() == rule
                       for n in range(len(factory.GetConverterRules()))):
                factory.RegisterConverterRule(getattr(slicer, rule)())
        self._slice_logics = []
        self._saved = {k: getattr(slicer, k, None) for k in ("mrmlScene", "modules", "app")}
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(**{k: _Module(v) for k, v in self.logics.items()})

    def add_slice_view(self, layout_name: str):
        """A slice view's logic, slice node and composite node, as Slicer's layout manager creates them
        for each view of a layout (a qMRMLSliceWidget does this in Slicer)."""
        logic = slicer_module().vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetMRMLScene(self.scene)
        existing = self.scene.GetSingletonNode(layout_name, "vtkMRMLSliceNode")  # made by the layout logic
        if existing is not None:
            logic.SetSliceNode(existing)
        else:
            logic.AddSliceNode(layout_name)
        self.slice_logics.AddItem(logic)
        self._slice_logics.append(logic)
        return logic

    def close(self):
        import slicer

        for key, value in self._saved.items():
            if value is None:
                if hasattr(slicer, key):
                    delattr(slicer, key)
            else:
                setattr(slicer, key, value)
        self._slice_logics.clear()
        self.slice_logics.RemoveAllItems()


class _Module:
    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


def slicer_module():
    import slicer

    return slicer
