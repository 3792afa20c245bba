"""The one home of the DICOM attributes LinGuinE reads, and of the timepoint date rule (no pydicom import).

Used by the DICOM folder reader (``io/dicom.py``, values read with pydicom) and by the Slicer module
(values read from Slicer's DICOM database by tag), so both give a timepoint the same date and metadata.
"""

from __future__ import annotations

import datetime as dt
import re

from LinGuinELib.core.errors import InputError

PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
              "ReferringPhysicianName")
SERIES_KEYS = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
               "FrameOfReferenceUID", "Modality", "Manufacturer")

# keyword -> "gggg,eeee" (for ``slicer.dicomDatabase.fileValue(file, tag)``)
DICOM_TAGS = {
    "PatientID": "0010,0020", "PatientName": "0010,0010", "PatientBirthDate": "0010,0030", "PatientSex": "0010,0040",
    "StudyInstanceUID": "0020,000D", "StudyID": "0020,0010", "StudyDate": "0008,0020", "StudyTime": "0008,0030",
    "AccessionNumber": "0008,0050", "StudyDescription": "0008,1030", "ReferringPhysicianName": "0008,0090",
    "SeriesInstanceUID": "0020,000E", "SeriesNumber": "0020,0011", "SeriesDescription": "0008,103E",
    "SeriesDate": "0008,0021", "SeriesTime": "0008,0031", "FrameOfReferenceUID": "0020,0052",
    "Modality": "0008,0060", "Manufacturer": "0008,0070", "SOPClassUID": "0008,0016",
    "AcquisitionDate": "0008,0022", "AcquisitionTime": "0008,0032", "ContentDate": "0008,0023",
    "ContentTime": "0008,0033",
}
# A timepoint is a DICOM study, so its date is the Study date first; then series, acquisition, content.
DATE_PREFIXES = ("Study", "Series", "Acquisition", "Content")


def date_from_values(values: dict) -> dt.datetime | None:
    """Timepoint date from attribute values (keyword -> text), in :data:`DATE_PREFIXES` order, with its
    time when present; None if none is a valid date."""
    for prefix in DATE_PREFIXES:
        day = (values.get(prefix + "Date") or "").strip()
        if not re.fullmatch(r"\d{8}", day):
            continue
        time = re.sub(r"[^0-9]", "", (values.get(prefix + "Time") or "").split(".")[0])[:6]
        for text, fmt in ((day + time.ljust(6, "0"), "%Y%m%d%H%M%S"), (day, "%Y%m%d")):
            try:
                return dt.datetime.strptime(text, fmt)
            except ValueError:
                continue
    return None


def scan_meta(values: dict, files: list[str], sop_instance_uids: list[str], selection: str,
              other_series: list | None = None) -> dict:
    """``scan.meta["dicom"]`` (what :func:`LinGuinELib.io.dicom_seg.export_segs` reads): the patient, study
    and series attributes of the series' first file, its files and SOPInstanceUIDs ordered like array
    index k, and why this series was chosen."""
    if len(files) != len(sop_instance_uids) or not files:
        raise InputError(f"DICOM volume: {len(files)} files for {len(sop_instance_uids)} instance UIDs")
    meta = {k: str(values.get(k) or "").strip() for k in PATIENT_KEYS + STUDY_KEYS + SERIES_KEYS + ("SOPClassUID",)}
    number = meta.pop("SeriesNumber")
    meta.update(SeriesNumber=int(number) if re.fullmatch(r"[+-]?\d+", number) else None, files=[str(f) for f in files],
                SOPInstanceUIDs=list(sop_instance_uids), selection=selection, other_series=list(other_series or []))
    return meta
