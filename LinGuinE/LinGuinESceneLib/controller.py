"""What the module's buttons do, without Qt: the scene classes wired together, plus the engine connection.

The Widget (LinGuinE.py) calls these methods and shows their results; dialogs come in as callables
(``confirm(text, title) -> bool``, ``inform(text)``), and the engine connection from
``connection_factory(mode, url, token)`` (``LinGuinELib.frontend.engine.EngineConnection`` in Slicer).
"""

from __future__ import annotations

import slicer

from LinGuinELib.core.errors import InputError
from LinGuinESceneLib.export import SceneExport
from LinGuinESceneLib.hierarchy import SubjectHierarchy
from LinGuinESceneLib.install import Installer
from LinGuinESceneLib.jobs import EngineJobs
from LinGuinESceneLib.measurements import MeasurementNodes
from LinGuinESceneLib.prompts import ScenePrompts
from LinGuinESceneLib.results import SceneResults
from LinGuinESceneLib.review import ReviewLayout
from LinGuinESceneLib.timepoints import SceneTimepoints

MARKUPS = (("promptPoints", "LinGuinE prompt", (1.0, 0.8, 0.1)),
           ("positiveClicks", "LinGuinE positive", (0.2, 0.9, 0.2)),
           ("negativeClicks", "LinGuinE negative", (0.95, 0.2, 0.2)))


def _text(path) -> str:
    text = str(path or "")
    return "" if text in ("", ".") else text


class SceneController:
    def __init__(self, resources, app_logic, connection_factory, confirm, inform, dicom_values=None):
        self.timepoints = SceneTimepoints(dicom_values)
        self.results = SceneResults(self.timepoints)
        self.prompts = ScenePrompts(self.timepoints)
        self.review = ReviewLayout(self.timepoints, self.results, app_logic)
        self.installer = Installer(resources, confirm, inform)
        self.jobs = EngineJobs(self.timepoints, self.results, None)
        self._factory, self._engineKey = connection_factory, None
        self._accepted: set[str] = set()  # model ids whose weight licences the user accepted

    @property
    def session(self):
        return self.timepoints.session

    @staticmethod
    def settings(p):
        from LinGuinELib.frontend.settings import Settings

        return Settings(registration=p.registration, segmentation=p.segmentation, boost=p.boost, chain=p.chain,
                        radius_mm=float(p.radiusMm), device=p.device, weights=_text(p.weightsFolder) or None)

    @staticmethod
    def ensureMarkupsNodes(p) -> None:
        """Create the prompt and correction point lists once per scene."""
        for attribute, name, colour in MARKUPS:
            if getattr(p, attribute) is None:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().SetSelectedColor(*colour)
                setattr(p, attribute, node)

    def loadStudy(self, path) -> list:
        """Load a study.csv or one patient's DICOM folder through the engine, add its scans as volumes
        (with reference label maps as segmentations); nothing is left behind on failure."""
        from LinGuinELib.frontend import slicer_bridge as bridge
        from LinGuinELib.frontend import timepoints as tp
        from LinGuinELib.io.load import load_study

        study, added = load_study(path), []
        try:
            for scan in study:
                volume = slicer.util.addVolumeFromArray(scan.array, bridge.ijk_to_ras_from_scan(scan), scan.scan_id)
                added.append(volume)
                source = tp.DICOM if "dicom" in scan.meta else tp.STUDY_FILE
                self.timepoints.loaded_meta[volume.GetID()] = {**scan.meta, "_date": scan.date, "_date_source": source}
                if scan.label is not None and scan.label.any():
                    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{scan.scan_id} reference labels")
                    seg.CreateDefaultDisplayNodes()
                    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
                    added.append(seg)
                    labels = _labelVolume(volume, scan.label)
                    try:
                        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, seg)
                    finally:
                        slicer.mrmlScene.RemoveNode(labels)
        except Exception:
            for node in added:
                slicer.mrmlScene.RemoveNode(node)
            raise
        self.timepoints.refresh()
        self.timepoints.table.sort_by_date()
        return added

    def _engine(self, p):
        """The engine connection for the panel's choice (replaced when the choice changes)."""
        token = ""
        if p.engineMode == "remote":
            if not p.engineUrl.strip():
                raise InputError("enter the engine server's URL (Settings), or choose the local engine")
            if _text(p.engineTokenFile):
                with open(_text(p.engineTokenFile), encoding="utf-8") as f:
                    token = f.read().strip()
        key = (p.engineMode, p.engineUrl.strip(), token)
        if key != self._engineKey:
            self.jobs.close_remote()
            if self.jobs.connection is not None:
                self.jobs.connection.shutdown()
            self.jobs.connection, self._engineKey = self._factory(*key), key
        return self.jobs.connection

    def prepare(self, p, confirm=None) -> bool:
        """Before any job: packages (local engine only), the engine connection and the session (see
        :meth:`SceneTimepoints.ensure_session` for ``confirm``), and hand edits read back."""
        if self.jobs.busy:
            raise InputError("LinGuinE is still working; wait for it to finish or press Cancel")
        if p.engineMode == "local" and not (self.installer.ensure(self.settings(p)) and self._licences(p)):
            return False
        self._engine(p)
        if self.timepoints.ensure_session(confirm) is None:
            return False
        self.results.sync_edits()
        return True

    def _licences(self, p) -> bool:
        """Show the licence and size of model weights the local engine will download, once accepted."""
        from LinGuinELib.backends import models
        from LinGuinELib.frontend.install_plan import models_to_download

        specs = models_to_download(models.default_manager(), self.settings(p))
        if not specs or self._accepted >= {s.id for s in specs}:
            return True
        lines = [f"- {s.name}: about {s.approx_bytes / 1e6:.0f} MB, license {s.license} ({s.license_url})"
                 + (f"\n  {s.notice}" if s.show_license and s.notice else "") for s in specs]
        if not self.installer.confirm(f"The chosen backends need model weights, downloaded once to "
                                      f"{models.linguine_home()}:\n\n" + "\n".join(lines)
                                      + "\n\nDownload them and accept these licenses?", "LinGuinE - model weights"):
            return False
        self._accepted |= {s.id for s in specs}
        return True

    def track(self, p, volumeId, markups=None, segmentation=None, segmentId=None) -> None:
        session = self.session
        if markups is not None:
            lesion = session.next_lesion(p.lesionName)
            prompt = self.prompts.from_point(session, lesion, volumeId, markups)
        else:
            name = segmentation.GetSegmentation().GetSegment(segmentId).GetName() if segmentation and segmentId else ""
            lesion = session.next_lesion(p.lesionName or name)
            prompt = self.prompts.from_segment(session, lesion, volumeId, segmentation, segmentId)
        self.jobs.track([prompt], self.settings(p))

    def correct(self, p, lesionId, label) -> None:
        positive, negative = self.prompts.correction_points(p.positiveClicks, p.negativeClicks)
        self.jobs.correct(lesionId, label, positive, negative, self.settings(p))

    def afterJob(self, p, outcome) -> None:
        """After a successful job: clear the clicks used, place the segmentations in the subject hierarchy."""
        for node in (p.promptPoints, p.positiveClicks, p.negativeClicks):
            if node is not None:
                node.RemoveAllControlPoints()
        p.lesionName = ""
        hierarchy = SubjectHierarchy()
        patient = self.session.study.patient_id or "LinGuinE patient"
        for row in self.timepoints.table.rows:
            volume = self.timepoints.volume_of(row.label)
            hierarchy.place(volume, self.results.segmentation_node(volume, create=False), patient,
                            f"{row.label} ({row.date_text})")

    def updateMeasurements(self, p):
        self.results.sync_edits()
        p.measurementTable, p.volumePlot = MeasurementNodes(self.timepoints).update(p.measurementTable, p.volumePlot)
        return p.measurementTable

    def exportResults(self, p):
        return SceneExport(self.timepoints, self.results).export(
            _text(p.exportFolder), p.labelmapFormat, csv=p.exportCsv, dicom_seg=p.exportDicomSeg,
            algorithm_parameters={"registration": p.registration, "segmentation": p.segmentation})

    def reset(self) -> None:
        """Forget the session (the scene is being closed); a running job's result is dropped."""
        self.jobs.reset()
        self.review.end(restore_layout=False)
        self.results.reset()
        self.timepoints.reset()

    def shutdown(self) -> None:
        """Cancel, close the service session, stop the local service (terminate, then kill)."""
        self.jobs.reset()
        if self.jobs.connection is not None:
            self.jobs.connection.shutdown()
            self.jobs.connection, self._engineKey = None, None


def _labelVolume(volume, label_kji):
    """A temporary label-map volume on ``volume``'s grid (the caller removes it once imported)."""
    import numpy as np

    node = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volume, "__LinGuinE_temp__")
    slicer.util.updateVolumeFromArray(node, np.asarray(label_kji, dtype=np.int16))
    return node
