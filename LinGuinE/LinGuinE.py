"""LinGuinE 3D Slicer module: track a tumour through a patient's longitudinal CT scans.

Glue only: the Module, its parameter node, the Widget (Qt), dialogs and the self-test. The scene work
is in the Qt-free ``LinGuinESceneLib`` beside this file; tracking runs in the engine service (a local
subprocess on Slicer's Python, or a remote GPU server), driven by short polls from a QTimer: no Python
thread runs in Slicer. Importing this file imports no heavy package.
"""

import os
import pathlib
import sys
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLPlotChartNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin


def _packageRoot() -> str:
    """Folder holding ``LinGuinELib`` and ``Resources``: this file's folder once installed, the
    repository root in a source checkout (module path added in Application Settings)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(root, "LinGuinELib", "__init__.py")):
            return root
    return here


ROOT = _packageRoot()
RESOURCES = os.path.join(ROOT, "Resources")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from LinGuinELib.backends import DEFAULT_REGISTRATION, DEFAULT_SEGMENTATION, REGISTRATIONS, SEGMENTERS  # noqa: E402

DEVICES = ["auto", "cpu", "cuda"]
LABELMAP_FORMATS = ["nrrd", "nii.gz", "none"]
ENGINE_MODES = ["local", "remote"]



class LinGuinE(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LinGuinE")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Markups", "Plots"]
        self.parent.contributors = ["LinGuinE developers"]
        self.parent.helpText = _("""
Track a tumour through a patient's longitudinal CT scans from one click: the lesion's centre is carried
to every other timepoint by image registration and segmented there by a point-prompted segmenter.
Review the timepoints side by side, correct any of them, re-track from a corrected timepoint, measure
volumes and diameters, and export DICOM-SEG (with shared TrackingUIDs), label maps and CSV.
""")
        self.parent.acknowledgementText = _("""
LinGuinE implements the method of N. Garibli, M. Patwari, B. Csiba, Y. Wei, K. Sidiropoulos,
"LinGuinE: Longitudinal Guidance Estimation for Volumetric Tumour Segmentation", arXiv:2506.06092 (2025).
The nnInteractive weights (MIC-DKFZ) are licensed CC BY-NC-SA 4.0; uniGradICON/multiGradICON (UNC biag) Apache-2.0.
""")
        iconPath = os.path.join(RESOURCES, "Icons", "LinGuinE.png")
        if os.path.isfile(iconPath):
            parent.icon = qt.QIcon(iconPath)

    def resourcePath(self, filename):
        return os.path.join(RESOURCES, filename)



@parameterNodeWrapper
class LinGuinEParameterNode:
    """Choices of the panel, saved with the scene.

    registration, segmentation - backend names (as in the ``linguine`` command line).
    boost - re-prompt at the interior centre of the first mask; chain - propagate scan to scan.
    device - torch device of deep-learning backends; radiusMm - component search radius.
    weightsFolder - local model weights (optional; downloads go to the user's cache folder).
    engineMode - "local" (a service subprocess on this computer) or "remote" (engineUrl, with the access
    token read from engineTokenFile: the token itself is never saved in the scene).
    promptPoints / positiveClicks / negativeClicks - markups for the prompt and correction clicks.
    measurementTable / volumePlot - where measurements are written.
    """

    lesionName: str = ""
    registration: Annotated[str, Choice(list(REGISTRATIONS))] = DEFAULT_REGISTRATION
    segmentation: Annotated[str, Choice(list(SEGMENTERS))] = DEFAULT_SEGMENTATION
    boost: bool = False
    chain: bool = False
    device: Annotated[str, Choice(DEVICES)] = "auto"
    radiusMm: Annotated[float, WithinRange(1.0, 50.0)] = 10.0
    engineMode: Annotated[str, Choice(ENGINE_MODES)] = "local"
    engineUrl: str = ""
    engineTokenFile: pathlib.Path
    weightsFolder: pathlib.Path
    exportFolder: pathlib.Path
    exportDicomSeg: bool = True
    exportCsv: bool = True
    labelmapFormat: Annotated[str, Choice(LABELMAP_FORMATS)] = "nrrd"
    promptPoints: vtkMRMLMarkupsFiducialNode
    positiveClicks: vtkMRMLMarkupsFiducialNode
    negativeClicks: vtkMRMLMarkupsFiducialNode
    measurementTable: vtkMRMLTableNode
    volumePlot: vtkMRMLPlotChartNode


def _pathOrNone(path) -> str | None:
    text = str(path or "")
    return None if text in ("", ".") else text


def _pythonLauncher() -> str:
    """Slicer's Python launcher (PythonSlicer): the local engine service runs on Slicer's own Python."""
    home = slicer.app.slicerHome
    for name in ("PythonSlicer.exe", "PythonSlicer"):
        for folder in ("bin", ""):
            path = os.path.join(home, folder, name)
            if os.path.isfile(path):
                return path
    raise RuntimeError(f"Slicer's Python launcher (PythonSlicer) was not found under {home}")



class LinGuinEWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingTables = False

    def resourcePath(self, filename):
        return os.path.join(RESOURCES, filename)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LinGuinE.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LinGuinELogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(150)
        self._timer.connect("timeout()", self.onTick)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.promptPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.positiveClicksPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.negativeClicksPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        table = lambda: self.logic.timepoints.table  # noqa: E731 - the table object is replaced on scene close
        for button, slot in ((self.ui.refreshTimepointsButton, self.onRefreshTimepoints),
                             (self.ui.moveUpButton, lambda: self._editTable(lambda r: table().move(r, -1), -1)),
                             (self.ui.moveDownButton, lambda: self._editTable(lambda r: table().move(r, 1), 1)),
                             (self.ui.removeTimepointButton, lambda: self._editTable(table().remove)),
                             (self.ui.sortByDateButton, lambda: self._editTable(lambda r: table().sort_by_date(), None)),
                             (self.ui.loadStudyCsvButton, self.onLoadStudyCsv),
                             (self.ui.loadDicomFolderButton, self.onLoadDicomFolder),
                             (self.ui.trackButton, self.onTrack), (self.ui.cancelButton, self.onCancel),
                             (self.ui.reviewButton, self.onReview), (self.ui.removeLesionButton, self.onRemoveLesion),
                             (self.ui.editSegmentButton, self.onEditSegment),
                             (self.ui.applyCorrectionButton, self.onApplyCorrection),
                             (self.ui.retrackButton, self.onRetrack),
                             (self.ui.updateMeasurementsButton, self.onUpdateMeasurements),
                             (self.ui.exportButton, self.onExport)):
            button.connect("clicked(bool)", lambda _checked=False, slot=slot: slot())
        self.ui.timepointsTable.connect("itemChanged(QTableWidgetItem*)", self.onTimepointEdited)
        self.ui.pointPromptRadioButton.connect("toggled(bool)", self.updateButtons)
        self.ui.lesionsTable.connect("itemSelectionChanged()", self.updateButtons)
        self.ui.lesionsTable.connect("itemChanged(QTableWidgetItem*)", self.onLesionRenamed)
        self.initializeParameterNode()
        self.updateTimepointsTable()
        self.updateLesionsTable()

    def cleanup(self) -> None:
        self.removeObservers()
        self._timer.stop()
        if self.logic:
            self.logic.shutdown()  # stops the local engine service: terminate, then kill

    def enter(self) -> None:
        self.initializeParameterNode()
        if self.logic.session is not None and not self.logic.jobs.busy:
            with slicer.util.tryWithErrorDisplay(_("Could not read back edited segments."), waitCursor=True):
                if self.logic.results.sync_edits():
                    self.updateLesionsTable()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.logic.reset()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.updateTimepointsTable()
        self.updateLesionsTable()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.logic.ensureMarkupsNodes(self._parameterNode)
        for widget, node in ((self.ui.promptPlaceWidget, self._parameterNode.promptPoints),
                             (self.ui.positiveClicksPlaceWidget, self._parameterNode.positiveClicks),
                             (self.ui.negativeClicksPlaceWidget, self._parameterNode.negativeClicks)):
            widget.setCurrentNode(node)
        points, event = self._parameterNode.promptPoints, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
        self.removeObserver(points, event, self.onPromptPointPlaced)
        self.addObserver(points, event, self.onPromptPointPlaced)

    def onPromptPointPlaced(self, caller, event) -> None:
        """The prompt's timepoint follows the view the point was placed in."""
        index = self.ui.promptTimepointComboBox.findData(
            self.logic.prompts.volume_of_placed_point(caller, slicer.app.applicationLogic()))
        if index >= 0:
            self.ui.promptTimepointComboBox.currentIndex = index

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()

    # -- study table ---------------------------------------------------------------------------
    def onRefreshTimepoints(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not list the loaded volumes."), waitCursor=True):
            self.logic.timepoints.refresh()
        self.updateTimepointsTable()

    def _editTable(self, edit, step=0) -> None:
        row = self.ui.timepointsTable.currentRow()
        if row < 0 and step is not None:
            return
        newRow = edit(row)
        self.updateTimepointsTable()
        if isinstance(newRow, int):
            self.ui.timepointsTable.selectRow(newRow)

    def onTimepointEdited(self, item) -> None:
        if self._updatingTables:
            return
        with slicer.util.tryWithErrorDisplay(_("Invalid timepoint value."), waitCursor=False):
            try:
                table = self.logic.timepoints.table
                if item.column() == 1:
                    table.set_date(item.row(), item.text())
                elif item.column() == 2:
                    table.set_label(item.row(), item.text())
            finally:
                self.updateTimepointsTable()

    def onLoadStudyCsv(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Load study.csv"), "", _("Study table (*.csv)"))
        if path:
            self._loadStudy(path)

    def onLoadDicomFolder(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Load one patient's DICOM folder"))
        if path:
            self._loadStudy(path)

    def _loadStudy(self, path) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the study."), waitCursor=True):
            self.logic.loadStudy(path)
        self.updateTimepointsTable()

    def updateTimepointsTable(self) -> None:
        table, rows = self.ui.timepointsTable, self.logic.timepoints.table.rows
        self._updatingTables = True
        try:
            table.setRowCount(len(rows))
            fixed = qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled
            for n, row in enumerate(rows):
                date = qt.QTableWidgetItem(row.date_text)
                date.setToolTip(_("Date from {source}").format(source=row.date_source) if row.date_source
                                else _("Enter the acquisition date (YYYY-MM-DD)"))
                date.setFlags(fixed | qt.Qt.ItemIsEditable if row.date_editable else fixed)
                items = (qt.QTableWidgetItem(row.name), date, qt.QTableWidgetItem(row.label))
                items[0].setFlags(fixed)
                items[2].setFlags(fixed | qt.Qt.ItemIsEditable)
                for column, item in enumerate(items):
                    table.setItem(n, column, item)
            self.ui.promptTimepointComboBox.clear()
            for row in rows:
                self.ui.promptTimepointComboBox.addItem(row.label, row.key)
        finally:
            self._updatingTables = False
        self.updateButtons()

    # -- jobs --------------------------------------------------------------------------------
    def _promptTimepointKey(self):
        return self.ui.promptTimepointComboBox.itemData(self.ui.promptTimepointComboBox.currentIndex)

    def _run(self, what, start) -> None:
        """Prepare (dependencies, engine, session) and submit a job; the QTimer polls it."""
        with slicer.util.tryWithErrorDisplay(_("{what} could not start.").format(what=what), waitCursor=True):
            if start() is not False:
                self._timer.start()
                self.onTick()
        self.updateButtons()

    def onTrack(self) -> None:
        def start():
            if not self.logic.prepare(self._parameterNode, confirm=self._confirmNewSession):
                return False
            if self.ui.pointPromptRadioButton.checked:
                self.logic.track(self._parameterNode, self._promptTimepointKey(), markups=self._parameterNode.promptPoints)
            else:
                self.logic.track(self._parameterNode, self._promptTimepointKey(),
                                 segmentation=self.ui.promptSegmentSelector.currentNode(),
                                 segmentId=self.ui.promptSegmentSelector.currentSegmentID())
        self._run(_("Tracking"), start)

    def onApplyCorrection(self) -> None:
        lesionId, label = self.selectedCell()
        self._run(_("Correction"), lambda: self.logic.prepare(self._parameterNode, confirm=None) and self.logic.correct(
            self._parameterNode, lesionId, label))

    def onRetrack(self) -> None:
        lesionId, label = self.selectedCell()

        def start():
            if not self.logic.prepare(self._parameterNode, confirm=None):
                return False
            protected = self.logic.session.protected([lesionId], keep_scan=label)
            overwrite = bool(protected) and self._confirmOverwrite(
                [(self.logic.session.lesion(lid).name, sid) for lid, sid in protected])
            self.logic.jobs.retrack(lesionId, label, self.logic.settings(self._parameterNode), overwrite_edits=overwrite)
        self._run(_("Re-tracking"), start)

    def onTick(self) -> None:
        running = self.logic.jobs.tick()
        text, fraction = self.logic.jobs.progress
        self.ui.statusLabel.text = text
        self.ui.progressBar.maximum = 100
        self.ui.progressBar.value = int(round(100 * fraction))
        if running:
            return
        self._timer.stop()
        outcome = self.logic.jobs.outcome
        if outcome is not None and outcome.ok:
            self.logic.afterJob(self._parameterNode, outcome)
            self.updateLesionsTable(select=(outcome.lesion_id, outcome.scan_id))
        elif outcome is not None and not outcome.message.startswith("Cancelled") and not slicer.app.testingEnabled():
            slicer.util.errorDisplay(_("LinGuinE could not finish: {error}").format(error=outcome.message),
                                     detailedText=_("Nothing was changed in the scene."))
        self.updateButtons()

    def onCancel(self) -> None:
        self.logic.jobs.cancel()
        self.ui.statusLabel.text = _("Cancelling...")

    def _confirmNewSession(self) -> bool:
        return slicer.util.confirmOkCancelDisplay(
            _("The study table changed since lesions were tracked. Start a new tracking session with the new "
              "timepoints? The lesions list is cleared; segmentations already in the scene stay."),
            _("LinGuinE - new session"))

    def _confirmOverwrite(self, pairs) -> bool:
        listing = "\n".join(f"- {name} on {label}" for name, label in pairs)
        return slicer.util.confirmYesNoDisplay(
            _("These segments were corrected or edited by you:\n{listing}\n\nOverwrite them with the new "
              "tracking result? (No keeps your edits and updates the other timepoints.)").format(listing=listing),
            _("LinGuinE - keep your edits?"))

    # -- results -----------------------------------------------------------------------------
    def updateLesionsTable(self, select=None) -> None:
        table, session = self.ui.lesionsTable, self.logic.session
        rows = session.status_rows() if session else []
        labels = session.study.scan_ids if session else []
        self._updatingTables = True
        try:
            table.clear()
            table.setColumnCount(1 + len(labels))
            table.setHorizontalHeaderLabels([_("Lesion")] + labels)
            table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                name = qt.QTableWidgetItem(row["name"])
                name.setData(qt.Qt.UserRole, row["lesion_id"])
                name.setBackground(qt.QBrush(qt.QColor.fromRgbF(*row["colour"])))
                name.setToolTip(_("TrackingUID {uid}").format(uid=row["tracking_uid"]))
                name.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled | qt.Qt.ItemIsEditable)
                table.setItem(r, 0, name)
                for c, cell in enumerate(row["cells"], start=1):
                    item = qt.QTableWidgetItem(cell["text"])
                    item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                    table.setItem(r, c, item)
                if select and select[0] == row["lesion_id"]:
                    table.setCurrentCell(r, 1 + labels.index(select[1]) if select[1] in labels else 0)
        finally:
            self._updatingTables = False
        self.updateButtons()

    def selectedCell(self):
        """(lesion id, timepoint label or None) of the selected lesions-table cell, or (None, None)."""
        table = self.ui.lesionsTable
        row, column = table.currentRow(), table.currentColumn()
        if row < 0 or not table.item(row, 0) or self.logic.session is None:
            return None, None
        lesionId = int(table.item(row, 0).data(qt.Qt.UserRole))
        if lesionId not in self.logic.session.lesions:
            return None, None
        return lesionId, table.horizontalHeaderItem(column).text() if column > 0 else None

    def onLesionRenamed(self, item) -> None:
        if self._updatingTables or item.column() != 0:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not rename the lesion."), waitCursor=True):
            try:
                self.logic.results.rename(int(item.data(qt.Qt.UserRole)), item.text())
            finally:
                self.updateLesionsTable()

    def onReview(self) -> None:
        lesionId, _label = self.selectedCell()
        with slicer.util.tryWithErrorDisplay(_("Could not show the review layout."), waitCursor=True):
            self.logic.review.activate()
            slicer.app.processEvents()  # the layout manager creates the views
            self.logic.review.show(lesionId)

    def onRemoveLesion(self) -> None:
        lesionId, _label = self.selectedCell()
        if lesionId is None or not slicer.util.confirmOkCancelDisplay(
                _("Remove {name} and its segments on every timepoint?").format(name=self.logic.session.lesion(lesionId).name)):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not remove the lesion."), waitCursor=True):
            self.logic.results.remove(lesionId)
        self.updateLesionsTable()

    def onEditSegment(self) -> None:
        lesionId, label = self.selectedCell()
        with slicer.util.tryWithErrorDisplay(_("Could not open the Segment Editor."), waitCursor=True):
            from LinGuinELib.frontend.slicer_bridge import segment_id

            self.logic.review.end()  # the editor needs the segments drawn where the user edits
            self.logic.session.observation(lesionId, label)
            volume = self.logic.timepoints.volume_of(label)
            slicer.util.setSliceViewerLayers(background=volume)
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            editor.setSegmentationNode(self.logic.results.segmentation_node(volume))
            editor.setSourceVolumeNode(volume)
            editor.setCurrentSegmentID(segment_id(lesionId))

    def onUpdateMeasurements(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not compute the measurements."), waitCursor=True):
            self.ui.measurementsTableView.setMRMLTableNode(self.logic.updateMeasurements(self._parameterNode))

    def onExport(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Export failed; nothing was written."), waitCursor=True):
            report = self.logic.exportResults(self._parameterNode)
            slicer.util.infoDisplay("\n".join([_("Wrote {n} file(s) to {folder}").format(
                n=len(report.written), folder=_pathOrNone(self._parameterNode.exportFolder))] + report.notes))

    def updateButtons(self, caller=None, event=None) -> None:
        logic = self.logic
        busy = logic is not None and logic.jobs.busy
        session = logic.session if logic else None
        lesionId, label = self.selectedCell() if session else (None, None)
        cell = lesionId is not None and label is not None
        pointMode = self.ui.pointPromptRadioButton.checked
        self.ui.promptPlaceWidget.enabled = pointMode
        self.ui.promptSegmentSelector.enabled = not pointMode
        self.ui.trackButton.enabled = bool(logic) and not busy and len(logic.timepoints.table) >= 2
        self.ui.cancelButton.enabled = busy
        remote = bool(self._parameterNode) and self._parameterNode.engineMode == "remote"
        self.ui.engineUrlLineEdit.enabled = self.ui.engineTokenPathLineEdit.enabled = remote
        for button in (self.ui.reviewButton, self.ui.removeLesionButton):
            button.enabled = not busy and lesionId is not None
        for button in (self.ui.editSegmentButton, self.ui.applyCorrectionButton, self.ui.retrackButton):
            button.enabled = not busy and cell
        for button in (self.ui.updateMeasurementsButton, self.ui.exportButton):
            button.enabled = not busy and bool(session and session.observations)
        for button in (self.ui.loadStudyCsvButton, self.ui.loadDicomFolderButton, self.ui.refreshTimepointsButton):
            button.enabled = not busy
        self.ui.correctionTargetLabel.text = (
            _("{name} on {label}").format(name=session.lesion(lesionId).name, label=label) if cell
            else _("Select a lesion's timepoint cell in the Results table."))



class LinGuinELogic(ScriptedLoadableModuleLogic):
    """The module's parameter node and its :class:`SceneController` (the scene work, Qt-free).
    ``connectionFactory(mode, url, token)`` makes the engine connection (tests pass their own)."""

    def __init__(self, connectionFactory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from LinGuinESceneLib.controller import SceneController
        from LinGuinESceneLib.timepoints import dicom_values

        self.controller = SceneController(RESOURCES, slicer.app.applicationLogic(), connectionFactory or _engineConnection,
                                          confirm=slicer.util.confirmOkCancelDisplay, inform=slicer.util.warningDisplay,
                                          dicom_values=lambda volume: dicom_values(volume, getattr(slicer, "dicomDatabase", None)))

    def __getattr__(self, name):  # the controller's methods and parts (timepoints, results, jobs, ...)
        if name == "controller":
            raise AttributeError(name)
        return getattr(self.controller, name)

    def getParameterNode(self):
        return LinGuinEParameterNode(super().getParameterNode())

    def exportResults(self, parameterNode):
        """Export, then copy the DICOM-SEG files into Slicer's DICOM database and check they arrived."""
        report = self.controller.exportResults(parameterNode)
        if report.segs:
            from DICOMLib import DICOMUtils

            database = slicer.dicomDatabase
            if not DICOMUtils.importDicom(os.path.dirname(report.segs[0]), database, copyFiles=True):
                report.notes.append(_("The DICOM-SEG files could not be imported into the DICOM database."))
            else:
                import pydicom

                missing = [p for p in report.segs if not database.fileForInstance(
                    str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID))]
                if missing:
                    report.notes.append(_("Not in the DICOM database: {files}").format(files=", ".join(missing)))
        return report


def _engineConnection(mode, url, token):
    from LinGuinELib.frontend.engine import EngineConnection

    return EngineConnection(mode=mode, url=url, token=token, python=_pythonLauncher())



class LinGuinETest(ScriptedLoadableModuleTest):
    """Runs in a real Slicer: tracking, hand edits, re-tracking and measurements through the engine
    service (a local one on Slicer's Python, CPU backends) on synthetic volumes, polled like the GUI."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrackEditMeasure()

    def _wait(self, logic, timeoutSeconds=600.0):
        import time

        deadline = time.monotonic() + timeoutSeconds
        while logic.jobs.tick():
            self.assertLess(time.monotonic(), deadline, "LinGuinE job still running")
            slicer.app.processEvents()
            time.sleep(0.15)
        self.assertTrue(logic.jobs.outcome.ok, logic.jobs.outcome.message)

    def test_TrackEditMeasure(self):
        import numpy as np

        from LinGuinELib.core.measure import dice
        from LinGuinELib.frontend.selftest_data import SPACING, moving_lesion_study

        self.delayDisplay("Building a synthetic three-timepoint study")
        timepoints = moving_lesion_study()
        volumes = [slicer.util.addVolumeFromArray(t["array"], t["ijk_to_ras"], t["name"]) for t in timepoints]
        logic = LinGuinELogic()
        p = logic.getParameterNode()
        p.registration, p.segmentation, p.device, p.engineMode = "sitk", "classic", "cpu", "local"
        logic.ensureMarkupsNodes(p)
        logic.timepoints.refresh()
        self.assertEqual([r.date_text for r in logic.timepoints.table.rows], ["2020-01-15", "2020-02-15", "2020-03-15"])
        try:
            self.delayDisplay("Tracking from a click on the first timepoint (local engine service)")
            self.assertTrue(logic.prepare(p))
            p.promptPoints.AddControlPoint(*timepoints[0]["centre_ras"])
            logic.track(p, volumes[0].GetID(), markups=p.promptPoints)
            self._wait(logic)
            for volume, t in zip(volumes, timepoints):
                mask = logic.results.mask(1, volume.GetName())
                self.assertGreater(dice(mask, t["truth"]), 0.7, f"overlap on {volume.GetName()}")

            self.delayDisplay("Re-tracking from the second timepoint keeps the lesion's identity")
            self.assertTrue(logic.prepare(p, confirm=None))
            logic.jobs.retrack(1, volumes[1].GetName(), logic.settings(p))
            self._wait(logic)
            self.assertEqual(list(logic.session.lesions), [1])
            self.delayDisplay("Measurements table and plot")
            table = logic.updateMeasurements(p)
            self.assertEqual(table.GetNumberOfRows(), 3)
            trueMl = timepoints[0]["truth"].sum() * float(np.prod(SPACING)) / 1000.0
            self.assertAlmostEqual(slicer.util.arrayFromTableColumn(table, "Volume (mL)")[0], trueMl, delta=0.3 * trueMl)
        finally:
            logic.shutdown()
        self.delayDisplay("Test passed")
