"""Timepoints from volume nodes: the study table filled from the scene, and the engine study built from it."""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from LinGuinELib.core.errors import InputError
from LinGuinELib.frontend import slicer_bridge as bridge
from LinGuinELib.frontend import timepoints as tp


class SceneTimepoints:
    """The study table over the scene's scalar volumes and the :class:`TrackingSession` built from it.

    ``dicom_values(volume) -> (values, files, uids)`` reads a volume's DICOM attributes (keyword -> text),
    files and SOPInstanceUIDs from Slicer's DICOM database; the default reads none (no database).
    """

    def __init__(self, dicom_values=None):
        self.table = tp.TimepointTable()
        self.session = None
        self.loaded_meta: dict[str, dict] = {}  # volume node ID -> Scan.meta of studies loaded through the engine
        self._dicom_values = dicom_values or (lambda volume: ({}, [], []))
        self._key = None
        self._volume_ids: dict[str, str] = {}  # timepoint label -> volume node ID (of the current session)

    # -- table ----------------------------------------------------------------------------------
    @staticmethod
    def candidate_volumes() -> list:
        """Scalar volumes with image data, label maps and LinGuinE's own temporary volumes excluded."""
        return [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if not n.IsA("vtkMRMLLabelMapVolumeNode") and n.GetImageData() is not None
                and not n.GetName().startswith("__LinGuinE")]

    def refresh(self) -> list:
        """Fill the table from the loaded volumes; dates from DICOM (study date first), then a study
        file the volume came from, then the volume name. Returns the rows added."""
        candidates = []
        for volume in self.candidate_volumes():
            values, _files, _uids = self._dicom_values(volume)
            date = bridge.date_from_dicom_values(values) if values else None
            source = tp.DICOM if date else ""
            meta = self.loaded_meta.get(volume.GetID())
            if date is None and meta is not None:
                date, source = meta.get("_date"), meta.get("_date_source", tp.STUDY_FILE)
            if date is None:
                date = bridge.date_from_name(volume.GetName())
                source = tp.NAME if date else ""
            candidates.append(tp.Timepoint(volume.GetID(), volume.GetName(), volume.GetName(), date, source))
        return self.table.fill(candidates)

    # -- study and session ----------------------------------------------------------------------
    @staticmethod
    def parent_to_world(volume) -> np.ndarray:
        """4x4 local RAS -> world RAS of a volume's parent transforms (identity without one)."""
        transform = volume.GetParentTransformNode()
        if transform is None:
            return np.eye(4)
        if not transform.IsTransformToWorldLinear():
            raise InputError(f"volume '{volume.GetName()}' is under a non-linear transform; harden it first")
        matrix = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def _volume(self, row):
        volume = slicer.mrmlScene.GetNodeByID(row.key)
        if volume is None or volume.GetImageData() is None:
            raise InputError(f"the volume of timepoint '{row.label}' was removed; refresh the study table")
        return volume

    def study_key(self) -> tuple:
        """What the study is built from: rows, each volume's grid, geometry and parent transform."""
        key = []
        for row in self.table.rows:
            volume = self._volume(row)
            matrix = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(matrix)
            key.append((row.key, row.label, row.date, tuple(volume.GetImageData().GetDimensions()),
                        tuple(slicer.util.arrayFromVTKMatrix(matrix).ravel()),
                        tuple(self.parent_to_world(volume).ravel())))
        return tuple(key)

    def build_study(self):
        """The engine :class:`Study` of the table (world geometry: parent transforms applied)."""
        from LinGuinELib.core.study import Study

        self.table.validate()
        scans = []
        for row in self.table.rows:
            volume = self._volume(row)
            matrix = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(matrix)
            meta = {k: v for k, v in self.loaded_meta.get(row.key, {}).items() if not k.startswith("_")}
            values, files, uids = self._dicom_values(volume)
            if files:
                meta["dicom"] = bridge.dicom_meta(values, files, uids)
            storage = volume.GetStorageNode()
            scans.append(bridge.scan_from_volume(
                row.label, slicer.util.arrayFromVolume(volume), slicer.util.arrayFromVTKMatrix(matrix), row.date,
                parent_to_world=self.parent_to_world(volume), meta=meta,
                source_path=storage.GetFileName() if storage and storage.GetFileName() else ""))
        patient = next((s.meta["dicom"].get("PatientID") for s in scans if "dicom" in s.meta), "") or ""
        return Study(patient_id=patient, scans=scans)

    def ensure_session(self, confirm=None):
        """The session for the current table, built if needed.

        A session with tracked lesions is replaced only when ``confirm()`` says yes; with
        ``confirm=None`` (correction, re-track: their lesion ids belong to the old session) a changed
        table raises InputError instead of silently dropping every lesion. Returns None if declined.
        """
        from LinGuinELib.frontend.session import TrackingSession

        self.table.validate()
        key = self.study_key()
        if self.session is not None and key == self._key:
            return self.session
        if self.session is not None and self.session.observations:
            if confirm is None:
                raise InputError("the study table or a timepoint's volume changed since the lesions were tracked; "
                                 "undo that change, or track the lesions again (Track starts a new session)")
            if not confirm():
                return None
        self.session = TrackingSession(self.build_study())
        self._key = key
        self._volume_ids = {row.label: row.key for row in self.table.rows}
        return self.session

    def reset(self) -> None:
        self.table = tp.TimepointTable()
        self.session, self._key = None, None
        self._volume_ids.clear()
        self.loaded_meta.clear()

    def volume_of(self, label: str):
        """The volume node of timepoint ``label`` of the current session."""
        if label not in self._volume_ids:
            raise InputError(f"unknown timepoint '{label}'")
        volume = slicer.mrmlScene.GetNodeByID(self._volume_ids[label])
        if volume is None:
            raise InputError(f"the volume of timepoint '{label}' was removed from the scene")
        return volume

    def label_of(self, volume_id: str) -> str:
        """The timepoint label of a volume node ID in the current session."""
        for label, key in self._volume_ids.items():
            if key == volume_id:
                return label
        raise InputError("that volume is not a timepoint of the tracking session; choose the prompt's timepoint")


def dicom_values(volume, database) -> tuple[dict, list, list]:
    """(attribute values, files, SOPInstanceUIDs) of a volume loaded from Slicer's DICOM database
    (``slicer.dicomDatabase``); empty when it was not, or its files are no longer in the database."""
    from LinGuinELib.io.dicom_attributes import DICOM_TAGS

    uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split()
    files = [database.fileForInstance(uid) for uid in uids] if uids and database is not None else []
    if not files or not all(files):
        return {}, [], []
    return {k: database.fileValue(files[0], tag) for k, tag in DICOM_TAGS.items()}, files, uids
