"""LinGuinE 3D Slicer module: track a tumour through a patient's longitudinal CT scans.

A thin front end over the engine package ``LinGuinELib`` (conversions in ``slicer_bridge``, state in
``session``, study table in ``timepoints``, installs in ``install_plan``). Importing this file imports
no heavy package: the engine and its dependencies are loaded on first use, after they are installed.
Tracking runs on one persistent worker thread; its results are applied to the scene on the main thread.
"""

import importlib
import logging
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
VOLUME_ATTRIBUTE = "LinGuinE.VolumeID"  # on each timepoint's segmentation node
REVIEW_LAYOUT_BASE = 74100  # + number of timepoints


#
# LinGuinE
#


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


#
# LinGuinEParameterNode
#


@parameterNodeWrapper
class LinGuinEParameterNode:
    """Choices of the panel, saved with the scene.

    registration, segmentation - backend names (as in the ``linguine`` command line).
    boost - re-prompt at the interior centre of the first mask; chain - propagate scan to scan.
    device - torch device of deep-learning backends; radiusMm - component search radius.
    weightsFolder - local model weights (optional; downloads go to the user's cache folder).
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


#
# LinGuinEWidget
#


class LinGuinEWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingTables = False
        self._downloadDialog = None

    def resourcePath(self, filename):
        return os.path.join(RESOURCES, filename)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LinGuinE.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LinGuinELogic()
        self.logic.progressCallback = self.onProgress
        self.logic.finishedCallback = self.onJobFinished
        self.logic.downloadCallback = self.showDownloadDialog

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.promptPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.positiveClicksPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.negativeClicksPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups

        self.ui.refreshTimepointsButton.connect("clicked(bool)", self.onRefreshTimepoints)
        self.ui.moveUpButton.connect("clicked(bool)", lambda: self.onMoveTimepoint(-1))
        self.ui.moveDownButton.connect("clicked(bool)", lambda: self.onMoveTimepoint(1))
        self.ui.removeTimepointButton.connect("clicked(bool)", self.onRemoveTimepoint)
        self.ui.sortByDateButton.connect("clicked(bool)", self.onSortByDate)
        self.ui.loadStudyCsvButton.connect("clicked(bool)", self.onLoadStudyCsv)
        self.ui.loadDicomFolderButton.connect("clicked(bool)", self.onLoadDicomFolder)
        self.ui.timepointsTable.connect("itemChanged(QTableWidgetItem*)", self.onTimepointEdited)
        self.ui.pointPromptRadioButton.connect("toggled(bool)", self.updateButtons)
        self.ui.trackButton.connect("clicked(bool)", self.onTrack)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.lesionsTable.connect("itemSelectionChanged()", self.updateButtons)
        self.ui.lesionsTable.connect("itemChanged(QTableWidgetItem*)", self.onLesionRenamed)
        self.ui.reviewButton.connect("clicked(bool)", self.onReview)
        self.ui.removeLesionButton.connect("clicked(bool)", self.onRemoveLesion)
        self.ui.editSegmentButton.connect("clicked(bool)", self.onEditSegment)
        self.ui.applyCorrectionButton.connect("clicked(bool)", self.onApplyCorrection)
        self.ui.retrackButton.connect("clicked(bool)", self.onRetrack)
        self.ui.updateMeasurementsButton.connect("clicked(bool)", self.onUpdateMeasurements)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)

        self.initializeParameterNode()
        self.updateTimepointsTable()
        self.updateLesionsTable()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        if self.logic.session is not None and not self.logic.busy:
            with slicer.util.tryWithErrorDisplay(_("Could not read back edited segments."), waitCursor=True):
                if self.logic.syncEditsFromScene():
                    self.updateLesionsTable()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

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
        self.ui.promptPlaceWidget.setCurrentNode(self._parameterNode.promptPoints)
        self.ui.positiveClicksPlaceWidget.setCurrentNode(self._parameterNode.positiveClicks)
        self.ui.negativeClicksPlaceWidget.setCurrentNode(self._parameterNode.negativeClicks)
        self.removeObserver(self._parameterNode.promptPoints, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                            self.onPromptPointPlaced)
        self.addObserver(self._parameterNode.promptPoints, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                         self.onPromptPointPlaced)

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
            self.logic.refreshTimepoints()
        self.updateTimepointsTable()

    def onMoveTimepoint(self, step) -> None:
        row = self.ui.timepointsTable.currentRow()
        if row < 0:
            return
        newRow = self.logic.table.move(row, step)
        self.updateTimepointsTable()
        self.ui.timepointsTable.selectRow(newRow)

    def onRemoveTimepoint(self) -> None:
        row = self.ui.timepointsTable.currentRow()
        if row >= 0:
            self.logic.table.remove(row)
            self.updateTimepointsTable()

    def onSortByDate(self) -> None:
        self.logic.table.sort_by_date()
        self.updateTimepointsTable()

    def onTimepointEdited(self, item) -> None:
        if self._updatingTables:
            return
        with slicer.util.tryWithErrorDisplay(_("Invalid timepoint value."), waitCursor=False):
            try:
                if item.column() == 1:
                    self.logic.table.set_date(item.row(), item.text())
                elif item.column() == 2:
                    self.logic.table.set_label(item.row(), item.text())
            finally:
                self.updateTimepointsTable()

    def onLoadStudyCsv(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Load study.csv"), "",
                                              _("Study table (*.csv)"))
        if path:
            self._loadStudy(path)

    def onLoadDicomFolder(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Load one patient's DICOM folder"))
        if path:
            self._loadStudy(path)

    def _loadStudy(self, path) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the study."), waitCursor=True):
            self.logic.loadStudy(path, onLoaded=self.onStudyLoaded)
        self.updateButtons()

    def onStudyLoaded(self) -> None:
        self.updateTimepointsTable()

    def updateTimepointsTable(self) -> None:
        table = self.ui.timepointsTable
        rows = self.logic.table.rows
        self._updatingTables = True
        try:
            table.setRowCount(len(rows))
            for n, row in enumerate(rows):
                volume = qt.QTableWidgetItem(row.name)
                volume.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                date = qt.QTableWidgetItem(row.date_text)
                date.setToolTip(_("Date from {source}").format(source=row.date_source) if row.date_source
                                else _("Enter the acquisition date (YYYY-MM-DD)"))
                editable = qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled | qt.Qt.ItemIsEditable
                date.setFlags(editable if row.date_editable else qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                label = qt.QTableWidgetItem(row.label)
                label.setFlags(editable)
                for column, item in enumerate((volume, date, label)):
                    table.setItem(n, column, item)
            self.ui.promptTimepointComboBox.clear()
            for row in rows:
                self.ui.promptTimepointComboBox.addItem(row.label, row.key)
        finally:
            self._updatingTables = False
        self.updateButtons()

    # -- prompt ------------------------------------------------------------------------------
    def onPromptPointPlaced(self, caller, event) -> None:
        key = self.logic.timepointOfPlacedPoint(caller)
        if key is not None:
            index = self.ui.promptTimepointComboBox.findData(key)
            if index >= 0:
                self.ui.promptTimepointComboBox.currentIndex = index
        self.updateButtons()

    def _promptTimepointKey(self):
        return self.ui.promptTimepointComboBox.itemData(self.ui.promptTimepointComboBox.currentIndex)

    # -- tracking ----------------------------------------------------------------------------
    def onTrack(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Tracking could not start."), waitCursor=True):
            settings = self.logic.settings(self._parameterNode)
            if not self.logic.prepare(settings, confirm=self._confirmNewSession):
                return
            if self.ui.pointPromptRadioButton.checked:
                self.logic.trackPoint(self._parameterNode.lesionName, self._promptTimepointKey(),
                                      self._parameterNode.promptPoints, settings, onDone=self.onLesionTracked)
            else:
                self.logic.trackSegment(self._parameterNode.lesionName, self._promptTimepointKey(),
                                        self.ui.promptSegmentSelector.currentNode(),
                                        self.ui.promptSegmentSelector.currentSegmentID(), settings,
                                        onDone=self.onLesionTracked)
        self.updateButtons()

    def onLesionTracked(self, lesionId) -> None:
        self._parameterNode.lesionName = ""
        self._parameterNode.promptPoints.RemoveAllControlPoints()
        self.updateLesionsTable(select=(lesionId, None))

    def _confirmNewSession(self) -> bool:
        return slicer.util.confirmOkCancelDisplay(
            _("The study table changed since lesions were tracked. Start a new tracking session with the new "
              "timepoints? The lesions list is cleared; segmentations already in the scene stay."),
            _("LinGuinE - new session"))

    def onCancel(self) -> None:
        self.logic.cancel()
        self.ui.statusLabel.text = _("Cancelling...")

    def onProgress(self, message, done, total) -> None:
        self.ui.progressBar.maximum = max(int(total), 1)
        self.ui.progressBar.value = min(int(done), max(int(total), 1))
        self.ui.statusLabel.text = message
        if self._downloadDialog is not None:
            self._downloadDialog.maximum = max(int(total), 1)
            self._downloadDialog.value = min(int(done), max(int(total), 1))
            self._downloadDialog.labelText = message

    def onJobFinished(self, ok, message) -> None:
        self.showDownloadDialog(False)
        self.ui.statusLabel.text = message
        self.ui.progressBar.value = self.ui.progressBar.maximum if ok else 0
        self.updateButtons()

    def showDownloadDialog(self, show) -> None:
        if self._downloadDialog is not None:
            self._downloadDialog.close()
            self._downloadDialog = None
        if show:
            dialog = slicer.util.createProgressDialog(labelText=_("Downloading model weights..."),
                                                      windowTitle=_("LinGuinE - model weights"), autoClose=False)
            dialog.connect("canceled()", self.logic.cancel)
            self._downloadDialog = dialog

    # -- results -----------------------------------------------------------------------------
    def updateLesionsTable(self, select=None) -> None:
        table = self.ui.lesionsTable
        rows = self.logic.session.status_rows() if self.logic.session else []
        labels = self.logic.session.study.scan_ids if self.logic.session else []
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
                    column = 1 + labels.index(select[1]) if select[1] in labels else 0
                    table.setCurrentCell(r, column)
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
        label = table.horizontalHeaderItem(column).text() if column > 0 else None
        return lesionId, label

    def onLesionRenamed(self, item) -> None:
        if self._updatingTables or item.column() != 0:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not rename the lesion."), waitCursor=True):
            try:
                self.logic.renameLesion(int(item.data(qt.Qt.UserRole)), item.text())
            finally:
                self.updateLesionsTable()

    def onReview(self) -> None:
        lesionId, _label = self.selectedCell()
        with slicer.util.tryWithErrorDisplay(_("Could not show the review layout."), waitCursor=True):
            self.logic.showReview(lesionId)

    def onRemoveLesion(self) -> None:
        lesionId, _label = self.selectedCell()
        if lesionId is None:
            return
        name = self.logic.session.lesion(lesionId).name
        if not slicer.util.confirmOkCancelDisplay(_("Remove {name} and its segments on every timepoint?").format(name=name)):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not remove the lesion."), waitCursor=True):
            self.logic.removeLesion(lesionId)
        self.updateLesionsTable()

    # -- correction --------------------------------------------------------------------------
    def onEditSegment(self) -> None:
        lesionId, label = self.selectedCell()
        with slicer.util.tryWithErrorDisplay(_("Could not open the Segment Editor."), waitCursor=True):
            self.logic.openSegmentEditor(lesionId, label)

    def onApplyCorrection(self) -> None:
        lesionId, label = self.selectedCell()
        with slicer.util.tryWithErrorDisplay(_("Correction could not start."), waitCursor=True):
            settings = self.logic.settings(self._parameterNode)
            if not self.logic.prepare(settings, confirm=None):
                return
            self.logic.correct(lesionId, label, self._parameterNode.positiveClicks,
                               self._parameterNode.negativeClicks, settings,
                               onDone=lambda: self.updateLesionsTable(select=(lesionId, label)))
        self.updateButtons()

    def onRetrack(self) -> None:
        lesionId, label = self.selectedCell()
        with slicer.util.tryWithErrorDisplay(_("Re-tracking could not start."), waitCursor=True):
            settings = self.logic.settings(self._parameterNode)
            if not self.logic.prepare(settings, confirm=None):
                return
            self.logic.retrack(lesionId, label, settings, confirmOverwrite=self._confirmOverwrite,
                               onDone=lambda: self.updateLesionsTable(select=(lesionId, label)))
        self.updateButtons()

    def _confirmOverwrite(self, pairs) -> bool:
        listing = "\n".join(f"- {name} on {label}" for name, label in pairs)
        return slicer.util.confirmYesNoDisplay(
            _("These segments were corrected or edited by you:\n{listing}\n\nOverwrite them with the new "
              "tracking result? (No keeps your edits and updates the other timepoints.)").format(listing=listing),
            _("LinGuinE - keep your edits?"))

    # -- measurements and export ---------------------------------------------------------------
    def onUpdateMeasurements(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not compute the measurements."), waitCursor=True):
            tableNode, _chart = self.logic.updateMeasurements(self._parameterNode)
            self.ui.measurementsTableView.setMRMLTableNode(tableNode)

    def onExport(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Export failed; nothing was written."), waitCursor=True):
            written = self.logic.exportResults(self._parameterNode)
            slicer.util.infoDisplay(_("Wrote {n} file(s) to {folder}").format(
                n=len(written), folder=_pathOrNone(self._parameterNode.exportFolder)))

    # -- state -------------------------------------------------------------------------------
    def updateButtons(self, caller=None, event=None) -> None:
        busy = self.logic is not None and self.logic.busy
        session = self.logic.session if self.logic else None
        lesionId, label = self.selectedCell() if session else (None, None)
        cell = lesionId is not None and label is not None
        pointMode = self.ui.pointPromptRadioButton.checked
        self.ui.promptPlaceWidget.enabled = pointMode
        self.ui.promptSegmentSelector.enabled = not pointMode
        self.ui.trackButton.enabled = not busy and len(self.logic.table) >= 2 if self.logic else False
        self.ui.cancelButton.enabled = busy
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


#
# LinGuinELogic
#


class LinGuinELogic(ScriptedLoadableModuleLogic):
    """Scene side of LinGuinE: builds the study from volumes, runs jobs on the worker thread, and writes
    results, measurements and exports. Usable without the widget (see the self-test)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from LinGuinELib.frontend.timepoints import TimepointTable

        self.table = TimepointTable()
        self.session = None
        self.progressCallback = None  # (message, done, total), on the main thread while a job runs
        self.finishedCallback = None  # (ok, message) when a job ends
        self.downloadCallback = None  # (True) when a weights download starts, (False) when it ends
        self.lastError = None
        self._sessionKey = None
        self._loadedMeta = {}  # volume node ID -> Scan.meta of studies loaded through the engine
        self._volumeIds = {}  # timepoint label -> volume node ID (of the current session)
        self._writtenMTime = {}  # (segmentation node ID, segment ID) -> labelmap MTime after our last write
        self._worker = None
        self._job = None
        self._timer = qt.QTimer()
        self._timer.setInterval(150)
        self._timer.connect("timeout()", self._poll)

    def getParameterNode(self):
        return LinGuinEParameterNode(super().getParameterNode())

    @property
    def busy(self) -> bool:
        return self._job is not None

    def reset(self) -> None:
        """Forget the session (the scene is being closed); a running job's result is dropped."""
        self.cancel()
        self._job = None
        self._timer.stop()
        self.session = None
        self._sessionKey = None
        self._volumeIds.clear()
        self._writtenMTime.clear()
        self._loadedMeta.clear()
        from LinGuinELib.frontend.timepoints import TimepointTable

        self.table = TimepointTable()

    def shutdown(self) -> None:
        self.cancel()
        self._timer.stop()
        if self._worker is not None:
            self._worker.shutdown(wait=False)

    def settings(self, parameterNode):
        from LinGuinELib.frontend.settings import Settings

        return Settings(registration=parameterNode.registration, segmentation=parameterNode.segmentation,
                        boost=parameterNode.boost, chain=parameterNode.chain, radius_mm=float(parameterNode.radiusMm),
                        device=parameterNode.device, weights=_pathOrNone(parameterNode.weightsFolder))

    def ensureMarkupsNodes(self, parameterNode) -> None:
        """Create the prompt and correction point lists once per scene."""
        for attribute, name, colour in (("promptPoints", "LinGuinE prompt", (1.0, 0.8, 0.1)),
                                        ("positiveClicks", "LinGuinE positive", (0.2, 0.9, 0.2)),
                                        ("negativeClicks", "LinGuinE negative", (0.95, 0.2, 0.2))):
            if getattr(parameterNode, attribute) is None:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().SetSelectedColor(*colour)
                node.SetAttribute("LinGuinE.Markups", attribute)
                setattr(parameterNode, attribute, node)

    # -- dependencies and weights ----------------------------------------------------------------
    def ensureDependencies(self, settings, interactive=True) -> bool:
        """Install what the chosen backends need (after showing what and how big), on the main thread.
        Returns False when the user declined or Slicer must restart first."""
        from LinGuinELib.frontend import install_plan as plan

        files = plan.requirement_files(RESOURCES, settings.registration, settings.segmentation)
        requirements = [r for f in files for r in plan.read_requirements(f)]
        missing = plan.missing_requirements(requirements)
        torchMissing = (plan.needs_torch(RESOURCES, settings.registration, settings.segmentation)
                        and bool(plan.missing_requirements(["torch" + plan.TORCH_REQUIREMENT])))
        if not missing and not torchMissing:
            return True
        torchUtils = None
        if torchMissing:
            try:
                import PyTorchUtils

                torchUtils = PyTorchUtils.PyTorchUtilsLogic()
            except ImportError:
                return self._offerPyTorchExtension(interactive)
        text, totalMb = plan.install_summary(missing, torchMissing)
        if interactive and not slicer.util.confirmOkCancelDisplay(
                _("LinGuinE needs these Python packages (about {size} in all, downloaded once):\n\n{items}\n\n"
                  "Install them now? Slicer's own SimpleITK, VTK and numpy are left as they are.").format(
                    size=f"{totalMb / 1000:.1f} GB" if totalMb >= 1000 else f"{totalMb} MB", items=text),
                _("LinGuinE - install Python packages")):
            return False
        if torchUtils is not None:
            if torchUtils.installTorch(askConfirmation=False, torchVersionRequirement=plan.TORCH_REQUIREMENT) is None:
                raise RuntimeError("PyTorch could not be installed; install it from the PyTorch module and try again")
        if missing:
            importlib.import_module("slicer.packaging")  # a plain "import slicer.packaging" here would make
            # "slicer" local to this method and break the slicer.util calls above
            slicer.packaging.pip_ensure([r for f in files for r in slicer.packaging.load_requirements(str(f))],
                                        skip_packages=list(plan.NEVER_INSTALL), prompt_install=False,
                                        prompt_restart=True, requester="LinGuinE", skip_in_testing=False)
        still = plan.missing_requirements(requirements)
        if still:
            slicer.util.warningDisplay(_("Restart Slicer to finish installing: {items}").format(items=", ".join(still)))
            return False
        return True

    def _offerPyTorchExtension(self, interactive) -> bool:
        if not interactive or not slicer.util.confirmOkCancelDisplay(
                _("The chosen backend needs PyTorch, which LinGuinE gets through the PyTorch extension. "
                  "Install the PyTorch extension now? Slicer must restart afterwards."),
                _("LinGuinE - PyTorch extension")):
            return False
        manager = slicer.app.extensionsManagerModel()
        if not manager.installExtensionFromServer("PyTorch", False):
            raise RuntimeError("the PyTorch extension could not be installed; install it from the Extensions Manager")
        if slicer.util.confirmYesNoDisplay(_("The PyTorch extension is installed. Restart Slicer now?")):
            slicer.util.restart()
        return False

    def prepare(self, settings, confirm=None, interactive=True) -> bool:
        """Dependencies, session and (for the current edits) scene read-back before any job."""
        if self.busy:
            raise RuntimeError("LinGuinE is still working; wait for it to finish or press Cancel")
        if not self.ensureDependencies(settings, interactive=interactive):
            return False
        if not self.buildSession(confirm=confirm):
            return False
        self.syncEditsFromScene()
        return True

    def _withWeights(self, settings, then, interactive=True) -> None:
        """Run ``then()`` once the weights of the chosen backends are present (download with license)."""
        from LinGuinELib.backends import models
        from LinGuinELib.frontend.install_plan import models_to_download

        specs = models_to_download(models.default_manager(), settings)
        if not specs:
            then()
            return
        lines = []
        for spec in specs:
            lines.append(f"- {spec.name}: about {spec.approx_bytes / 1e6:.0f} MB, license {spec.license} ({spec.license_url})")
            if spec.show_license and spec.notice:
                lines.append(f"  {spec.notice}")
        if interactive and not slicer.util.confirmOkCancelDisplay(
                _("The chosen backends need model weights, downloaded once to {home}:\n\n{items}\n\n"
                  "Download them and accept these licenses?").format(home=models.linguine_home(), items="\n".join(lines)),
                _("LinGuinE - model weights")):
            raise RuntimeError("model weights are needed; download them or set a local weights folder in Settings")
        if self.downloadCallback:
            self.downloadCallback(True)

        def downloaded(paths):
            if self.downloadCallback:
                self.downloadCallback(False)
            then()

        job = self.session.download_job(specs, settings.weights, models.ModelManager)
        self._start(job, downloaded, "downloading model weights", _("Weights downloaded."))

    # -- study ---------------------------------------------------------------------------------
    def candidateVolumes(self):
        """Scalar volumes a timepoint can be (not label maps, not hidden helper volumes)."""
        return [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if n.GetClassName() == "vtkMRMLScalarVolumeNode" and not n.GetHideFromEditors()
                and n.GetImageData() is not None]

    def refreshTimepoints(self):
        """Fill the study table from the loaded volumes; dates from DICOM, else from the volume name."""
        from LinGuinELib.frontend import slicer_bridge as bridge
        from LinGuinELib.frontend import timepoints as tp

        candidates = []
        for volume in self.candidateVolumes():
            values = self._dicomValues(volume)
            date, source = (bridge.date_from_dicom_values(values), tp.DICOM) if values else (None, "")
            if date is None:
                source = ""
            if volume.GetID() in self._loadedMeta and date is None:
                meta = self._loadedMeta[volume.GetID()]
                date, source = meta.get("_date"), meta.get("_date_source", tp.STUDY_FILE)
            if date is None:
                date = bridge.date_from_name(volume.GetName())
                source = tp.NAME if date else ""
            candidates.append(tp.Timepoint(volume.GetID(), volume.GetName(), volume.GetName(), date, source))
        return self.table.fill(candidates)

    def _dicomFiles(self, volume):
        uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split()
        if not uids or not getattr(slicer, "dicomDatabase", None):
            return [], []
        files = [slicer.dicomDatabase.fileForInstance(uid) for uid in uids]
        if not all(files):
            return [], []
        return files, uids

    def _dicomValues(self, volume) -> dict:
        from LinGuinELib.frontend.slicer_bridge import DICOM_TAGS

        files, _uids = self._dicomFiles(volume)
        if not files:
            return {}
        return {keyword: slicer.dicomDatabase.fileValue(files[0], tag) for keyword, tag in DICOM_TAGS.items()}

    def loadStudy(self, path, onLoaded=None) -> None:
        """Load a study.csv or one patient's DICOM folder through the engine (on the worker thread) and
        add its scans as volumes."""
        from LinGuinELib.io.load import load_study

        self._start(lambda: load_study(path), lambda study: self._addStudy(study, onLoaded),
                    f"loading {path}", _("Study loaded."))

    def _addStudy(self, study, onLoaded) -> None:
        from LinGuinELib.frontend import slicer_bridge as bridge
        from LinGuinELib.frontend import timepoints as tp

        added = []
        try:
            for scan in study:
                volume = slicer.util.addVolumeFromArray(scan.array, bridge.ijk_to_ras_from_scan(scan), scan.scan_id)
                added.append(volume)
                source = tp.DICOM if "dicom" in scan.meta else tp.STUDY_FILE
                self._loadedMeta[volume.GetID()] = {**scan.meta, "_date": scan.date, "_date_source": source}
                if scan.label is not None and scan.label.any():
                    self._addReferenceLabels(volume, scan)
        except Exception:
            for node in added:
                slicer.mrmlScene.RemoveNode(node)
            raise
        self.refreshTimepoints()
        self.table.sort_by_date()
        slicer.util.setSliceViewerLayers(background=added[0], fit=True)
        if onLoaded:
            onLoaded()

    def _addReferenceLabels(self, volume, scan) -> None:
        """A study file's label map as a segmentation (its segments can be picked as prompts)."""
        import numpy as np

        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} reference labels")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        for value in [int(v) for v in np.unique(scan.label) if v > 0]:
            segmentId = seg.GetSegmentation().AddEmptySegment(f"label_{value}", f"label {value}")
            self._setSegmentMask(seg, segmentId, volume, scan.label == value)

    def sessionKey(self):
        """What the current study is built from: the rows and each volume's grid and geometry."""
        key = []
        for row in self.table.rows:
            volume = slicer.mrmlScene.GetNodeByID(row.key)
            if volume is None:
                raise RuntimeError(f"the volume of timepoint '{row.label}' was removed; refresh the study table")
            matrix = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(matrix)
            key.append((row.key, row.label, row.date, tuple(volume.GetImageData().GetDimensions()),
                        tuple(matrix.GetElement(i, j) for i in range(4) for j in range(4)),
                        self._parentToWorld(volume).tobytes() if volume.GetParentTransformNode() else b""))
        return tuple(key)

    def _parentToWorld(self, volume):
        import numpy as np

        transform = volume.GetParentTransformNode()
        if transform is None:
            return np.eye(4)
        if not transform.IsTransformToWorldLinear():
            raise RuntimeError(f"volume '{volume.GetName()}' is under a non-linear transform; harden it first")
        matrix = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def buildSession(self, confirm=None) -> bool:
        """Build (or keep) the session for the study table. Returns False if the user kept the old one."""
        from LinGuinELib.frontend import slicer_bridge as bridge
        from LinGuinELib.frontend.session import TrackingSession
        from LinGuinELib.core.study import Study

        self.table.validate()
        key = self.sessionKey()
        if self.session is not None and key == self._sessionKey:
            return True
        if self.session is not None and self.session.observations and confirm is not None and not confirm():
            return False
        scans = []
        for row in self.table.rows:
            volume = slicer.mrmlScene.GetNodeByID(row.key)
            matrix = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(matrix)
            meta = {k: v for k, v in self._loadedMeta.get(row.key, {}).items() if not k.startswith("_")}
            files, uids = self._dicomFiles(volume)
            if files:
                meta["dicom"] = bridge.dicom_meta(self._dicomValues(volume), files, uids)
            storage = volume.GetStorageNode()
            scans.append(bridge.scan_from_volume(
                row.label, slicer.util.arrayFromVolume(volume), slicer.util.arrayFromVTKMatrix(matrix), row.date,
                parent_to_world=self._parentToWorld(volume), meta=meta,
                source_path=storage.GetFileName() if storage and storage.GetFileName() else ""))
        patient = next((s.meta["dicom"].get("PatientID") for s in scans if "dicom" in s.meta), "") or ""
        self.session = TrackingSession(Study(patient_id=patient, scans=scans))
        self._sessionKey = key
        self._volumeIds = {row.label: row.key for row in self.table.rows}
        self._writtenMTime.clear()
        return True

    def volumeOf(self, label):
        return slicer.mrmlScene.GetNodeByID(self._volumeIds[label])

    def _labelOfKey(self, key):
        for label, volumeId in self._volumeIds.items():
            if volumeId == key:
                return label
        raise RuntimeError("choose the prompt's timepoint in the Prompt section")

    def timepointOfPlacedPoint(self, markupsNode):
        """Volume node ID shown in the slice view where the last point was placed (None if unknown)."""
        from LinGuinELib.frontend.slicer_bridge import slice_view_containing

        n = markupsNode.GetNumberOfControlPoints()
        if n == 0:
            return None
        point = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(n - 1, point)
        layoutManager = slicer.app.layoutManager()
        views, background = {}, {}
        for name in layoutManager.sliceViewNames():
            widget = layoutManager.sliceWidget(name)
            if not widget.isVisible():
                continue
            views[name] = slicer.util.arrayFromVTKMatrix(widget.mrmlSliceNode().GetSliceToRAS())
            background[name] = widget.mrmlSliceCompositeNode().GetBackgroundVolumeID()
        name = slice_view_containing(point, views)
        return background.get(name) if name else None

    # -- jobs ----------------------------------------------------------------------------------
    def _start(self, job, onSuccess, what, doneMessage) -> None:
        if self._job is not None:
            raise RuntimeError("LinGuinE is still working; wait for it to finish or press Cancel")
        if self._worker is None:
            from LinGuinELib.backends.device import TorchWorker

            self._worker = TorchWorker("auto", name="linguine-slicer")
        self._job = (self._worker.submit(job, what=what), onSuccess, doneMessage)
        self._timer.start()
        if self.progressCallback:
            self.progressCallback(what, 0, 1)

    def _poll(self) -> None:
        if self._job is None:
            self._timer.stop()
            return
        if self.session is not None and self.progressCallback:
            self.progressCallback(*self.session.progress())
        future, onSuccess, doneMessage = self._job
        if not future.done():
            return
        self._timer.stop()
        self._job = None
        from LinGuinELib.core.errors import TrackingCancelled

        try:
            value = future.result()
            onSuccess(value)
        except TrackingCancelled:
            self._finished(False, _("Cancelled; the scene was left unchanged."))
        except Exception as exc:
            logging.exception("LinGuinE job failed")
            self._finished(False, _("Failed: {error}").format(error=exc))
            if not slicer.app.testingEnabled():
                slicer.util.errorDisplay(_("LinGuinE could not finish: {error}").format(error=exc),
                                         detailedText=_("Nothing was changed in the scene."))
            self.lastError = exc
        else:
            if self._job is None:  # onSuccess may have chained another job
                self._finished(True, doneMessage)

    def _finished(self, ok, message) -> None:
        if self.finishedCallback:
            self.finishedCallback(ok, message)

    def cancel(self) -> None:
        if self.session is not None:
            self.session.request_cancel()

    def waitForJob(self, timeoutSeconds=600.0) -> None:
        """Process events until the running job (and any job it chains) finished (tests, scripts)."""
        import time

        self.lastError = None
        deadline = time.monotonic() + timeoutSeconds
        while self._job is not None:
            if time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"LinGuinE job still running after {timeoutSeconds} s")
            slicer.app.processEvents()
            time.sleep(0.02)
            if self._job is not None and self._job[0].done():
                self._poll()
        if self.lastError is not None:
            raise self.lastError

    # -- tracking --------------------------------------------------------------------------------
    def trackPoint(self, name, timepointKey, markupsNode, settings, onDone=None) -> None:
        """Track a new lesion from the (single) point of ``markupsNode`` on the given timepoint."""
        if markupsNode is None or markupsNode.GetNumberOfControlPoints() < 1:
            raise RuntimeError("place a point on the lesion first")
        point = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(markupsNode.GetNumberOfControlPoints() - 1, point)
        label = self._labelOfKey(timepointKey)
        lesion = self.session.next_lesion(name)
        self._track([self.session.point_prompt(lesion, label, point)], settings, onDone)

    def trackSegment(self, name, timepointKey, segmentationNode, segmentId, settings, onDone=None) -> None:
        """Track a new lesion from an existing segment. The timepoint is the segmentation's reference
        volume when that is a timepoint, else ``timepointKey``."""
        if segmentationNode is None or not segmentId:
            raise RuntimeError("select a segmentation and a segment as the prompt")
        reference = segmentationNode.GetNodeReferenceID(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        label = self._labelOfKey(reference if reference in self._volumeIds.values() else timepointKey)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, self.volumeOf(label))
        segmentName = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        lesion = self.session.next_lesion(name or segmentName)
        self._track([self.session.mask_prompt(lesion, label, mask)], settings, onDone)

    def _track(self, prompts, settings, onDone) -> None:
        session = self.session

        def apply(result):
            state = session.checkpoint()
            try:
                session.merge(result)
                self.applyToScene()
            except Exception:
                session.rollback(state)
                raise
            if onDone:
                onDone(prompts[0].lesion.lesion_id)

        self._withWeights(settings, lambda: self._start(session.track_job(prompts, settings), apply,
                                                        "tracking", _("Tracking finished.")))

    def retrack(self, lesionId, label, settings, confirmOverwrite=None, onDone=None) -> None:
        """Track ``lesionId`` again from timepoint ``label`` (its current, e.g. corrected, segment)."""
        session = self.session
        protected = session.protected([lesionId], keep_scan=label)
        overwrite = bool(protected) and confirmOverwrite is not None and confirmOverwrite(
            [(session.lesion(lid).name, sid) for lid, sid in protected])
        job = session.retrack_job(lesionId, label, settings)

        def apply(result):
            state = session.checkpoint()
            try:
                session.merge(result, overwrite_edits=overwrite)
                self.applyToScene()
            except Exception:
                session.rollback(state)
                raise
            if onDone:
                onDone()

        self._withWeights(settings, lambda: self._start(job, apply, "re-tracking", _("Re-tracking finished.")))

    def correct(self, lesionId, label, positiveNode, negativeNode, settings, onDone=None) -> None:
        """Re-segment one lesion on one timepoint from positive/negative correction points (world RAS)."""
        positive = slicer.util.arrayFromMarkupsControlPoints(positiveNode, world=True) if positiveNode else []
        negative = slicer.util.arrayFromMarkupsControlPoints(negativeNode, world=True) \
            if negativeNode and negativeNode.GetNumberOfControlPoints() else None
        session = self.session
        job = session.correction_job(lesionId, label, positive, negative, settings)

        def apply(observation):
            state = session.checkpoint()
            try:
                session.apply_correction(observation)
                self.applyToScene([label])
            except Exception:
                session.rollback(state)
                raise
            for node in (positiveNode, negativeNode):
                if node:
                    node.RemoveAllControlPoints()
            if onDone:
                onDone()

        self._withWeights(settings, lambda: self._start(job, apply, "correcting", _("Correction applied.")))

    def renameLesion(self, lesionId, name) -> None:
        from LinGuinELib.frontend.slicer_bridge import segment_id

        self.session.rename_lesion(lesionId, name)
        for label in self._volumeIds:
            seg = self.segmentationNode(self.volumeOf(label), create=False)
            segment = seg.GetSegmentation().GetSegment(segment_id(lesionId)) if seg is not None else None
            if segment is not None:
                segment.SetName(self.session.lesion(lesionId).name)

    def removeLesion(self, lesionId) -> None:
        from LinGuinELib.frontend.slicer_bridge import segment_id

        self.session.remove_lesion(lesionId)
        for label in self._volumeIds:
            seg = self.segmentationNode(self.volumeOf(label), create=False)
            if seg is not None and seg.GetSegmentation().GetSegment(segment_id(lesionId)):
                seg.GetSegmentation().RemoveSegment(segment_id(lesionId))

    # -- scene ---------------------------------------------------------------------------------
    def segmentationNode(self, volume, create=True):
        """The timepoint's LinGuinE segmentation node (named after the volume, referencing its geometry)."""
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
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        parent = shNode.GetItemParent(shNode.GetItemByDataNode(volume))
        if parent:
            shNode.SetItemParent(shNode.GetItemByDataNode(seg), parent)
        return seg

    def _setSegmentMask(self, seg, segmentId, volume, mask) -> None:
        """Write a bool ``[k, j, i]`` mask on ``volume``'s grid into one segment (parent transforms kept:
        the temporary label map sits under the volume's transform, like the segmentation)."""
        import numpy as np

        labelmap = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volume, "__LinGuinE_temp__")
        try:
            labelmap.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
            slicer.util.updateVolumeFromArray(labelmap, np.asarray(mask, dtype=np.uint8))
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segmentId)
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, seg, ids):
                raise RuntimeError(f"could not write segment '{segmentId}' of '{seg.GetName()}'")
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)

    def _segmentMTime(self, seg, segmentId):
        segment = seg.GetSegmentation().GetSegment(segmentId)
        representation = segment.GetRepresentation(
            slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()) if segment else None
        return representation.GetMTime() if representation is not None else None

    def applyToScene(self, labels=None) -> None:
        """Write every tracked lesion's segment on the given timepoints (default all) from the session.
        On failure the segments are restored and nodes created here removed."""
        from LinGuinELib.frontend import slicer_bridge as bridge

        session = self.session
        result = session.result()
        labels = list(labels or session.study.scan_ids)
        created, backups = [], []
        try:
            for label in labels:
                volume = self.volumeOf(label)
                seg = self.segmentationNode(volume, create=False)
                if seg is None:
                    seg = self.segmentationNode(volume)
                    created.append(seg)
                labelMap = result.label_map(label)
                segmentation = seg.GetSegmentation()
                for lesion in result.lesions:
                    obs = session.observations[lesion.lesion_id].get(label)
                    if obs is None:
                        continue
                    segmentId = bridge.segment_id(lesion.lesion_id)
                    segment = segmentation.GetSegment(segmentId)
                    if segment is None:
                        segmentation.AddEmptySegment(segmentId, lesion.name, list(lesion.colour))
                        backups.append((seg, segmentId, None))
                    else:
                        backup = slicer.vtkSegment()
                        backup.DeepCopy(segment)
                        backups.append((seg, segmentId, backup))
                    self._setSegmentMask(seg, segmentId, volume, labelMap == lesion.lesion_id)
                    segment = segmentation.GetSegment(segmentId)
                    segment.SetName(lesion.name)
                    segment.SetColor(*lesion.colour)
                    segment.SetTerminology(bridge.TERMINOLOGY_TUMOUR)
                    edit = session.edits.get((lesion.lesion_id, label), "")
                    for tag, value in bridge.segment_tags(lesion, obs.status, edit, "LinGuinE").items():
                        segment.SetTag(tag, value)
                for lesion in result.lesions:
                    self._writtenMTime[(seg.GetID(), bridge.segment_id(lesion.lesion_id))] = \
                        self._segmentMTime(seg, bridge.segment_id(lesion.lesion_id))
        except Exception:
            for seg, segmentId, backup in reversed(backups):
                if seg in created:
                    continue
                seg.GetSegmentation().RemoveSegment(segmentId)
                if backup is not None:
                    seg.GetSegmentation().AddSegment(backup, segmentId)
            for seg in created:
                slicer.mrmlScene.RemoveNode(seg)
            raise

    def syncEditsFromScene(self) -> list:
        """Read back segments changed in the scene since LinGuinE wrote them (hand edits): they are
        recorded as edited (never overwritten without confirmation) and tagged MANUAL."""
        from LinGuinELib.frontend import slicer_bridge as bridge

        session = self.session
        if session is None:
            return []
        changed = []
        lesions = session.result().lesions
        for label in session.study.scan_ids:
            volume = self.volumeOf(label)
            seg = self.segmentationNode(volume, create=False) if volume else None
            if seg is None:
                continue
            for lesion in lesions:
                segmentId = bridge.segment_id(lesion.lesion_id)
                if seg.GetSegmentation().GetSegment(segmentId) is None or label not in session.observations[lesion.lesion_id]:
                    continue
                mtime = self._segmentMTime(seg, segmentId)
                if mtime == self._writtenMTime.get((seg.GetID(), segmentId)):
                    continue
                mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentId, volume)
                if session.set_edited_mask(lesion.lesion_id, label, mask > 0):
                    changed.append((lesion.lesion_id, label))
                    segment = seg.GetSegmentation().GetSegment(segmentId)
                    obs = session.observations[lesion.lesion_id][label]
                    for tag, value in bridge.segment_tags(lesion, obs.status, bridge.EDIT_MANUAL, "LinGuinE").items():
                        segment.SetTag(tag, value)
                self._writtenMTime[(seg.GetID(), segmentId)] = self._segmentMTime(seg, segmentId)
        return changed

    def openSegmentEditor(self, lesionId, label) -> None:
        """Show the Segment Editor on this lesion's segment of this timepoint."""
        from LinGuinELib.frontend.slicer_bridge import segment_id

        self.session.observation(lesionId, label)
        volume = self.volumeOf(label)
        seg = self.segmentationNode(volume, create=False)
        if seg is None:
            raise RuntimeError(f"no LinGuinE segmentation for '{label}' in the scene")
        slicer.util.setSliceViewerLayers(background=volume)
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(seg)
        editor.setSourceVolumeNode(volume)
        editor.setCurrentSegmentID(segment_id(lesionId))

    def showReview(self, lesionId=None) -> None:
        """All timepoints side by side (linked axial views), each centred on the lesion there."""
        import numpy as np

        from LinGuinELib.core import coords
        from LinGuinELib.frontend import slicer_bridge as bridge

        session = self.session
        labels = session.study.scan_ids
        views = [f"LinGuinE{n + 1}" for n in range(len(labels))]
        layoutId = REVIEW_LAYOUT_BASE + len(labels)
        layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
        xml = bridge.review_layout_xml(views, labels)
        if layoutNode.IsLayoutDescription(layoutId):
            layoutNode.SetLayoutDescription(layoutId, xml)
        else:
            layoutNode.AddLayoutDescription(layoutId, xml)
        slicer.app.layoutManager().setLayout(layoutId)
        slicer.app.processEvents()
        rows = {(r["lesion_id"], r["scan_id"]): r for r in session.measurement_rows()} if lesionId else {}
        standardViews = ["vtkMRMLSliceNodeRed", "vtkMRMLSliceNodeYellow", "vtkMRMLSliceNodeGreen", "vtkMRMLViewNode1"]
        for view, label in zip(views, labels):
            widget = slicer.app.layoutManager().sliceWidget(view)
            composite = widget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(self._volumeIds[label])
            composite.SetForegroundVolumeID(None)
            composite.SetLinkedControl(True)
            sliceNode = widget.mrmlSliceNode()
            seg = self.segmentationNode(self.volumeOf(label), create=False)
            if seg is not None and seg.GetDisplayNode():  # each timepoint's lesions only over its own view
                display = seg.GetDisplayNode()
                display.RemoveAllViewNodeIDs()
                for viewId in standardViews + [sliceNode.GetID()]:
                    display.AddViewNodeID(viewId)
            if lesionId is None:
                widget.sliceLogic().FitSliceToAll()
                continue
            obs = session.observations.get(lesionId, {}).get(label)
            row = rows.get((lesionId, label))
            if row and row["centre_x"] is not None:  # measured: the lesion's centre there
                point = np.array([row["centre_x"], row["centre_y"], row["centre_z"]], float)
            elif obs is not None and obs.point_lps is not None:  # not found: where it was looked for
                point = obs.point_lps
            else:
                continue
            sliceNode.JumpSliceByCentering(*coords.lps_to_ras(point))
            fov = bridge.field_of_view_mm(row["longest_diameter_mm"] if row else None)
            width, height = widget.width or 1, widget.height or 1
            sliceNode.SetFieldOfView(fov, fov * height / width, sliceNode.GetFieldOfView()[2])

    # -- measurements and export ---------------------------------------------------------------
    def updateMeasurements(self, parameterNode=None):
        """Measurement table node and volume-over-time plot chart node, refreshed from the session."""
        from LinGuinELib.frontend.session import measurement_table, volume_series

        self.syncEditsFromScene()
        session = self.session
        rows = session.measurement_rows()
        tableNode = parameterNode.measurementTable if parameterNode else None
        if tableNode is None:
            tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "LinGuinE measurements")
        self._fillTable(tableNode, measurement_table(rows))
        series = volume_series(rows, session.days_from_baseline(), session.result().lesions)
        chart = parameterNode.volumePlot if parameterNode else None
        if chart is None:
            chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "LinGuinE volume over time")
        self._fillPlot(chart, series)
        if parameterNode is not None:
            parameterNode.measurementTable = tableNode
            parameterNode.volumePlot = chart
        if slicer.app.layoutManager() is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)
        return tableNode, chart

    @staticmethod
    def _fillTable(tableNode, columns) -> None:
        table = vtk.vtkTable()
        for title, kind, values in columns:
            array = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkStringArray()
            array.SetName(title)
            for value in values:
                array.InsertNextValue(value)
            table.AddColumn(array)
        tableNode.SetAndObserveTable(table)
        tableNode.SetUseColumnNameAsColumnHeader(True)

    def _fillPlot(self, chart, series) -> None:
        dataName = f"{chart.GetName()} data"
        dataNode = slicer.mrmlScene.GetFirstNodeByName(dataName) or \
            slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", dataName)
        columns = [("Days from baseline", "double", series[0]["x"] if series else [])]
        columns += [(f"{s['name']} volume (mL)", "double", s["y"]) for s in series]
        self._fillTable(dataNode, columns)
        previous = [chart.GetNthPlotSeriesNode(n) for n in range(chart.GetNumberOfPlotSeriesNodes())]
        chart.RemoveAllPlotSeriesNodeIDs()
        for old in previous:
            if old is not None and old.GetAttribute("LinGuinE.Plot") == "1":
                slicer.mrmlScene.RemoveNode(old)
        for s in series:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", s["name"])
            node.SetAttribute("LinGuinE.Plot", "1")
            node.SetAndObserveTableNodeID(dataNode.GetID())
            node.SetXColumnName("Days from baseline")
            node.SetYColumnName(f"{s['name']} volume (mL)")
            node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            node.SetColor(*s["colour"])
            chart.AddAndObservePlotSeriesNodeID(node.GetID())
        chart.SetTitle("Lesion volume over time")
        chart.SetXAxisTitle("Days from baseline")
        chart.SetYAxisTitle("Volume (mL)")

    def exportResults(self, parameterNode) -> list:
        """DICOM-SEG per timepoint (engine exporter; imported into the DICOM database under the study),
        label maps (NRRD or NIfTI) and the measurements CSV, written together or not at all."""
        from LinGuinELib.io.atomic import staged_outputs, write_image_atomic
        from LinGuinELib.core.measure import LESION_COLUMNS
        from LinGuinELib.io.output import safe_filename, write_rows_csv

        folder = _pathOrNone(parameterNode.exportFolder)
        if not folder:
            raise RuntimeError("choose an export folder")
        self.syncEditsFromScene()
        session = self.session
        result = session.result()
        labelMaps = {scan.scan_id: result.label_map(scan.scan_id) for scan in session.study}
        fmt = parameterNode.labelmapFormat
        written = []
        with staged_outputs(folder) as stage:
            if fmt != "none":
                import numpy as np

                for scan in session.study:
                    name = f"{safe_filename(scan.scan_id)}_lesions.{fmt}"
                    write_image_atomic(scan.to_sitk(labelMaps[scan.scan_id].astype(np.uint16)), stage / name)
                    written.append(name)
            if parameterNode.exportCsv:
                write_rows_csv(session.measurement_rows(), LESION_COLUMNS + ("edit",), stage / "lesions.csv")
                written.append("lesions.csv")
            if parameterNode.exportDicomSeg:
                from LinGuinELib.io.dicom_seg import export_segs

                paths = export_segs(session.study, labelMaps, result.lesions, stage / "dicom-seg",
                                    manual=session.manual_pairs(), log=logging.info,
                                    algorithm_parameters={"registration": parameterNode.registration,
                                                          "segmentation": parameterNode.segmentation})
                written += [f"dicom-seg/{p.name}" for p in paths]
        if parameterNode.exportDicomSeg and os.path.isdir(os.path.join(folder, "dicom-seg")):
            from DICOMLib import DICOMUtils

            DICOMUtils.importDicom(os.path.join(folder, "dicom-seg"))
        return [os.path.join(folder, name) for name in written]


#
# LinGuinETest
#


class LinGuinETest(ScriptedLoadableModuleTest):
    """Runs in a real Slicer with the CPU backends on synthetic volumes: tracking, names and ids on every
    timepoint, overlap with the known lesion, hand edits, correction clicks and measurements."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrackCorrectMeasure()

    def _syntheticStudy(self):
        """Three timepoints with one lesion that moves and grows (LinGuinELib.frontend.selftest_data), as volumes."""
        from LinGuinELib.frontend.selftest_data import moving_lesion_study

        timepoints = moving_lesion_study()
        volumes = [slicer.util.addVolumeFromArray(t["array"], t["ijk_to_ras"], t["name"]) for t in timepoints]
        return volumes, [t["truth"] for t in timepoints], [t["centre_ras"] for t in timepoints]

    @staticmethod
    def _tag(segment, name) -> str:
        value = vtk.mutable("")
        segment.GetTag(name, value)
        return str(value)

    def test_TrackCorrectMeasure(self):
        import numpy as np

        from LinGuinELib.frontend.settings import Settings
        from LinGuinELib.core.measure import dice
        from LinGuinELib.frontend.selftest_data import SPACING
        from LinGuinELib.frontend.slicer_bridge import TAG_ALGORITHM_TYPE, TAG_LESION_ID, TAG_TRACKING_UID, segment_id

        self.delayDisplay("Building a synthetic three-timepoint study")
        volumes, truths, centres = self._syntheticStudy()
        logic = LinGuinELogic()
        settings = Settings(registration="sitk", segmentation="classic", device="cpu")
        self.assertTrue(logic.ensureDependencies(settings, interactive=False))
        logic.refreshTimepoints()
        self.assertEqual([r.date_text for r in logic.table.rows], ["2020-01-15", "2020-02-15", "2020-03-15"])
        self.assertTrue(logic.buildSession())

        self.delayDisplay("Tracking from a click on the first timepoint")
        prompt = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "prompt")
        prompt.AddControlPoint(*centres[0])
        logic.trackPoint("Tumour A", volumes[0].GetID(), prompt, settings)
        logic.waitForJob(600)
        uids = set()
        for volume, truth in zip(volumes, truths):
            seg = logic.segmentationNode(volume, create=False)
            self.assertIsNotNone(seg)
            self.assertEqual(seg.GetName(), f"{volume.GetName()} lesions")
            segment = seg.GetSegmentation().GetSegment(segment_id(1))
            self.assertEqual(segment.GetName(), "Tumour A")
            self.assertEqual(self._tag(segment, TAG_LESION_ID), "1")
            uids.add(self._tag(segment, TAG_TRACKING_UID))
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id(1), volume) > 0
            self.assertGreater(dice(mask, truth), 0.7, f"overlap on {volume.GetName()}")
        self.assertEqual(len(uids), 1)

        self.delayDisplay("A second lesion from the same timepoint costs no registration")
        computed = logic.session.registrations_computed()
        prompt.RemoveAllControlPoints()
        prompt.AddControlPoint(*(centres[0] + np.array([-19.5, -39.0, 0.0])))  # on the spine
        logic.trackPoint("Structure B", volumes[0].GetID(), prompt, settings)
        logic.waitForJob(600)
        self.assertEqual(logic.session.registrations_computed(), computed)
        self.assertEqual(len(logic.session.status_rows()), 2)

        self.delayDisplay("A hand edit is kept and tagged MANUAL")
        seg2 = logic.segmentationNode(volumes[2], create=False)
        edited = slicer.util.arrayFromSegmentBinaryLabelmap(seg2, segment_id(1), volumes[2]) > 0
        edited[: edited.shape[0] // 2] = False
        logic._setSegmentMask(seg2, segment_id(1), volumes[2], edited)
        self.assertIn((1, volumes[2].GetName()), logic.syncEditsFromScene())
        self.assertEqual(self._tag(seg2.GetSegmentation().GetSegment(segment_id(1)), TAG_ALGORITHM_TYPE), "MANUAL")
        logic.retrack(1, volumes[0].GetName(), settings, confirmOverwrite=lambda pairs: False)
        logic.waitForJob(600)
        kept = slicer.util.arrayFromSegmentBinaryLabelmap(seg2, segment_id(1), volumes[2]) > 0
        self.assertTrue(np.array_equal(kept, edited))

        self.delayDisplay("Correction clicks re-segment one timepoint only")
        before = slicer.util.arrayFromSegmentBinaryLabelmap(logic.segmentationNode(volumes[0]), segment_id(1), volumes[0])
        positive = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
        positive.AddControlPoint(*centres[1])
        logic.correct(1, volumes[1].GetName(), positive, None, settings)
        logic.waitForJob(600)
        after = slicer.util.arrayFromSegmentBinaryLabelmap(logic.segmentationNode(volumes[0]), segment_id(1), volumes[0])
        self.assertTrue(np.array_equal(before, after))
        self.assertEqual(logic.session.edits[(1, volumes[1].GetName())], "clicks")

        self.delayDisplay("Measurements table and plot")
        tableNode, chart = logic.updateMeasurements()
        self.assertEqual(tableNode.GetNumberOfRows(), 6)
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
        volumeColumn = slicer.util.arrayFromTableColumn(tableNode, "Volume (mL)")
        trueMl = truths[0].sum() * float(np.prod(SPACING)) / 1000.0
        self.assertAlmostEqual(volumeColumn[0], trueMl, delta=0.3 * trueMl)
        self.delayDisplay("Test passed")
