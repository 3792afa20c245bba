"""Export: label maps and the measurements CSV for every timepoint, DICOM-SEG for those from DICOM.

All files are written together or not at all (staged, then moved). A timepoint that did not come from
DICOM gets its label map and CSV rows but no DICOM-SEG, and the returned notes say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from LinGuinELib.core.errors import InputError

LABELMAP_FORMATS = ("nrrd", "nii.gz", "none")


@dataclass
class ExportReport:
    written: list[str]  # paths, absolute
    notes: list[str] = field(default_factory=list)
    segs: list[str] = field(default_factory=list)  # DICOM-SEG paths, absolute


class SceneExport:
    def __init__(self, timepoints, results):
        self.timepoints, self.results = timepoints, results

    def export(self, folder: str, labelmap_format: str = "nrrd", csv: bool = True, dicom_seg: bool = True,
               algorithm_parameters: dict | None = None) -> ExportReport:
        from pathlib import Path

        from LinGuinELib.frontend.session import SESSION_COLUMNS
        from LinGuinELib.io.atomic import staged_outputs, write_image_atomic
        from LinGuinELib.io.output import label_map_names, write_rows_csv

        if not folder:
            raise InputError("choose an export folder")
        if labelmap_format not in LABELMAP_FORMATS:
            raise InputError(f"label-map format '{labelmap_format}': choose one of {', '.join(LABELMAP_FORMATS)}")
        self.results.sync_edits()
        session = self.timepoints.session
        result = session.result()
        label_maps = {scan.scan_id: result.label_map(scan.scan_id) for scan in session.study}
        dicom_scans = [s.scan_id for s in session.study if "dicom" in s.meta]
        notes, written, segs = [], [], []
        names = label_map_names(session.study.scan_ids, suffix=f"_lesions.{labelmap_format}")
        with staged_outputs(folder) as stage:
            if labelmap_format != "none":
                for scan in session.study:
                    write_image_atomic(scan.to_sitk(label_maps[scan.scan_id].astype(np.uint16)),
                                       stage / names[scan.scan_id])
                    written.append(names[scan.scan_id])
            if csv:
                write_rows_csv(session.measurement_rows(), SESSION_COLUMNS, stage / "lesions.csv")
                written.append("lesions.csv")
            if dicom_seg:
                others = [s for s in session.study.scan_ids if s not in dicom_scans]
                if others:
                    notes.append("no DICOM-SEG for " + ", ".join(f"'{s}'" for s in others)
                                 + " (not loaded from DICOM); label map and CSV written instead")
                if dicom_scans:
                    from LinGuinELib.core.study import Study
                    from LinGuinELib.io.dicom_seg import export_segs

                    study = Study(patient_id=session.study.patient_id,
                                  scans=[session.study.scan(s) for s in dicom_scans])
                    paths = export_segs(study, {s: label_maps[s] for s in dicom_scans}, result.lesions,
                                        stage / "dicom-seg", manual=session.manual_pairs(), log=logging.info,
                                        algorithm_parameters=algorithm_parameters or {})
                    written += [f"dicom-seg/{p.name}" for p in paths]
                    segs = [str(Path(folder) / "dicom-seg" / p.name) for p in paths]
        return ExportReport([str(Path(folder) / name) for name in written], notes, segs)

