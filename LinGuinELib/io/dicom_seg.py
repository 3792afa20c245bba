"""DICOM-SEG out (one binary SEG per timepoint, written with highdicom) and in (a SEG as a prompt mask).

Export: each timepoint's SEG references that timepoint's source CT series. One segment per lesion
found there; a lesion keeps its label (``Lesion.name``), TrackingID (``Lesion <id>``) and TrackingUID
(generated once per lesion) on every timepoint. DICOM and highdicom require a binary SEG's segment
numbers to run 1..N, so segment numbers follow lesion id order among the lesions present: a lesion
keeps its segment number on every timepoint unless a lesion with a lower id is missing there (the log
says so). Category/type: SNOMED CT "Morphologically abnormal structure" / "Neoplasm". Algorithm type
SEMIAUTOMATIC ("LinGuinE", package version), MANUAL for (lesion, scan) pairs corrected by hand.
ClinicalTrialTimePointID is the 1-based timepoint index, its description the scan id and date.

Import: a SEG is mapped onto the scan whose SeriesInstanceUID (or a SOPInstanceUID) it references and
resampled onto that scan's grid by geometry (nearest neighbour); label maps are int32 ``[k, j, i]`` with
segment numbers as values. Overlapping segments are rejected (a label map cannot hold them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from LinGuinELib import __version__
from LinGuinELib.io.atomic import staged_outputs
from LinGuinELib.io.dicom import log_stderr
from LinGuinELib.core.errors import InputError
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.io.output import safe_filename
from LinGuinELib.core.study import Scan, Study

SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")  # Segmentation, Label Map SEG
CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
PROPERTY_TYPE = codes.SCT.Neoplasm  # the same SNOMED CT type the Slicer module sets on segments
ALGORITHM_NAME = "LinGuinE"
MAX_IDS_IN_NAME = 6


def _dicom_meta(scan: Scan) -> dict:
    meta = scan.meta.get("dicom")
    if not meta or not meta.get("files"):
        raise InputError(f"scan '{scan.scan_id}' ({scan.source_path or 'in memory'}) was not loaded from DICOM: "
                         "DICOM-SEG export needs the study loaded from its DICOM folder")
    return meta


def _source_headers(scan: Scan, meta: dict) -> list:
    headers = []
    for path, uid in zip(meta["files"], meta["SOPInstanceUIDs"]):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise InputError(f"{path}: cannot read source image of scan '{scan.scan_id}' ({exc})") from exc
        if str(ds.SOPInstanceUID) != uid:
            raise InputError(f"{path}: SOPInstanceUID changed since scan '{scan.scan_id}' was loaded")
        headers.append(ds)
    return headers


def _file_name(patient: str, index: int, scan_id: str, lesion_ids: list[int]) -> str:
    ids = "-".join(str(i) for i in lesion_ids) if len(lesion_ids) <= MAX_IDS_IN_NAME else f"{len(lesion_ids)}"
    return f"{safe_filename(patient or 'patient')}_tp{index}_{safe_filename(scan_id)}_lesions-{ids}.seg.dcm"


def _segment(number: int, lesion: Lesion, manual: bool, parameters: dict | None):
    import highdicom as hd

    algorithm = None if manual else hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters=parameters or None)
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=lesion.name[:64], segmented_property_category=CATEGORY,
        segmented_property_type=PROPERTY_TYPE, algorithm_type="MANUAL" if manual else "SEMIAUTOMATIC",
        algorithm_identification=algorithm, tracking_uid=lesion.tracking_uid,
        tracking_id=f"Lesion {lesion.lesion_id}",
        display_color=hd.color.CIELabColor.from_rgb(*(255 * np.asarray(lesion.colour))))


def _lesions_present(where: str, scan: Scan, labels, by_id: dict) -> list[int]:
    """Lesion ids on one timepoint's label map, after checking it fits the scan and the lesion list."""
    labels = np.asarray(labels)
    if labels.shape != scan.shape:
        raise InputError(f"{where}: label map shape {labels.shape} does not match the scan {scan.shape}")
    values = [int(v) for v in np.unique(labels)]
    unknown = [v for v in values if v < 0 or (v > 0 and v not in by_id)]
    if unknown:
        raise InputError(f"{where}: label values {unknown} are not among the lesion ids {sorted(by_id)}")
    return [v for v in values if v > 0]


def export_segs(study: Study, label_maps: dict[str, np.ndarray], lesions: list[Lesion], out_dir,
                manual: set[tuple[int, str]] = frozenset(), log=print, *, content_creator: str = "LinGuinE^",
                algorithm_parameters: dict[str, str] | None = None) -> list[Path]:
    """Write one binary DICOM-SEG per timepoint that has a lesion; returns the paths written.

    ``label_maps``: scan id -> int array ``[k, j, i]`` on that scan's grid, lesion ids as values.
    ``manual``: (lesion_id, scan_id) pairs corrected by hand (segment type MANUAL).
    ``algorithm_parameters``: recorded in the algorithm identification (e.g. the backends used).
    Everything is checked before anything is written; the SEGs appear in ``out_dir`` together.
    """
    import highdicom as hd

    by_id = {lesion.lesion_id: lesion for lesion in lesions}
    metas = {scan.scan_id: _dicom_meta(scan) for scan in study}
    plans = []
    for index, scan in enumerate(study, start=1):
        where = f"scan '{scan.scan_id}' (timepoint {index})"
        if scan.scan_id not in label_maps:
            log(f"{where}: no label map given; no SEG written")
            continue
        present = _lesions_present(where, scan, label_maps[scan.scan_id], by_id)
        for lesion in lesions:
            if lesion.lesion_id not in present:
                log(f"{where}: {lesion.name} (id {lesion.lesion_id}) not found; left out of this timepoint's SEG")
        if present:
            plans.append((index, scan, where, present))
        else:
            log(f"{where}: no lesion found on this timepoint; no SEG written")
    out_dir = Path(out_dir)
    written = []
    with staged_outputs(out_dir) as stage:
        for index, scan, where, present in plans:
            numbers = {lid: n for n, lid in enumerate(present, start=1)}
            for lid, n in numbers.items():
                if n != lid:
                    log(f"{where}: {by_id[lid].name} is segment {n} here (segments must be numbered 1..N); "
                        f"its TrackingUID {by_id[lid].tracking_uid} is unchanged")
            lut = np.zeros(max(present) + 1, dtype=np.uint16)
            lut[list(numbers)] = list(numbers.values())
            meta = metas[scan.scan_id]
            series_numbers = [meta.get("SeriesNumber") or 0] + [s.get("SeriesNumber") or 0
                                                                for s in meta["other_series"]]
            seg = hd.seg.Segmentation(
                source_images=_source_headers(scan, meta),
                pixel_array=lut[np.asarray(label_maps[scan.scan_id]).astype(np.int64)], segmentation_type="BINARY",
                segment_descriptions=[_segment(numbers[lid], by_id[lid], (lid, scan.scan_id) in manual,
                                               algorithm_parameters) for lid in present],
                series_instance_uid=generate_uid(), series_number=max(series_numbers) + 1000,
                sop_instance_uid=generate_uid(), instance_number=1, manufacturer=ALGORITHM_NAME,
                manufacturer_model_name=ALGORITHM_NAME, software_versions=__version__,
                device_serial_number=__version__, content_label="LESIONS",
                content_description=f"LinGuinE lesions, timepoint {index}", content_creator_name=content_creator,
                series_description=f"LinGuinE lesions {scan.scan_id}"[:64],
                pixel_measures=hd.PixelMeasuresSequence(
                    pixel_spacing=[float(scan.spacing[1]), float(scan.spacing[0])],
                    slice_thickness=float(scan.spacing[2]), spacing_between_slices=float(scan.spacing[2])))
            seg.ClinicalTrialTimePointID = str(index)
            seg.ClinicalTrialTimePointDescription = f"{scan.scan_id} ({scan.date:%Y-%m-%d})"
            name = _file_name(meta.get("PatientID") or study.patient_id, index, scan.scan_id, present)
            seg.save_as(stage / name)
            log(f"{where}: writing {out_dir / name} ({', '.join(by_id[lid].name for lid in present)})")
            written.append(out_dir / name)
    return written


def _read_seg(seg_path):
    """(pydicom dataset, highdicom Segmentation) of a SEG file, with clear errors for anything else."""
    import highdicom as hd

    seg_path = Path(seg_path)
    if not seg_path.is_file():
        raise InputError(f"{seg_path}: file not found")
    try:
        ds = pydicom.dcmread(seg_path)
    except InvalidDicomError as exc:
        raise InputError(f"{seg_path}: not a DICOM file") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in SEG_SOP_CLASSES:
        kind = getattr(ds.get("SOPClassUID"), "name", "") or sop_class or "no SOPClassUID"
        raise InputError(f"{seg_path}: not a DICOM Segmentation (it is {kind})")
    try:
        return ds, hd.seg.Segmentation.from_dataset(ds, copy=False)
    except (ValueError, AttributeError, KeyError) as exc:
        raise InputError(f"{seg_path}: malformed DICOM Segmentation ({exc})") from exc


def _reference_image(scan: Scan) -> sitk.Image:
    ref = sitk.Image([int(n) for n in scan.shape[::-1]], sitk.sitkUInt8)
    ref.SetOrigin(tuple(scan.origin))
    ref.SetSpacing(tuple(scan.spacing))
    ref.SetDirection(tuple(scan.direction.ravel()))
    return ref


def _label_map(seg_path, ds, seg, scan: Scan, segment_numbers, log) -> np.ndarray:
    numbers = list(segment_numbers) if segment_numbers else list(seg.segment_numbers)
    missing = [n for n in numbers if n not in seg.segment_numbers]
    if missing:
        have = ", ".join(f"{n} '{seg.get_segment_description(n).SegmentLabel}'" for n in seg.segment_numbers)
        raise InputError(f"{seg_path}: no segment {missing[0]}; its segments are {have}")
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False, rescale_fractional=True)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{seg_path}: frames do not form a regular 3-D volume ({exc})") from exc
    masks = volume.array >= 0.5  # (slices, rows, columns, segments); FRACTIONAL rescaled to [0, 1]
    overlap = masks.sum(axis=-1) > 1
    if overlap.any():
        hit = np.flatnonzero(masks[overlap][0])
        raise InputError(f"{seg_path}: segments {numbers[hit[0]]} and {numbers[hit[1]]} overlap "
                         f"({int(overlap.sum())} voxels); a prompt mask needs non-overlapping segments "
                         "(choose one with --lesion-id)")
    combined = np.zeros(masks.shape[:3], dtype=np.uint16)
    for n, number in enumerate(numbers):
        combined[masks[..., n]] = number
    affine = volume.affine  # maps (slice, row, column) index -> LPS mm
    matrix = affine[:3, :3][:, ::-1]  # columns for (i, j, k) = (column, row, slice)
    spacing = np.linalg.norm(matrix, axis=0)
    image = sitk.GetImageFromArray(combined)
    image.SetOrigin(tuple(affine[:3, 3]))
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple((matrix / spacing).ravel()))
    frame = scan.meta.get("dicom", {}).get("FrameOfReferenceUID")
    if frame and str(ds.get("FrameOfReferenceUID", "")) != frame:
        log(f"{seg_path}: frame of reference differs from scan '{scan.scan_id}'; mapped by LPS coordinates")
    resampled = sitk.Resample(image, _reference_image(scan), sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              sitk.sitkUInt16)
    out = sitk.GetArrayFromImage(resampled).astype(np.int32)
    if combined.any() and not out.any():
        raise InputError(f"{seg_path}: the segmentation lies outside scan '{scan.scan_id}'")
    return out


def seg_to_label_map(seg_path, scan: Scan, segment_numbers=None, log=log_stderr) -> np.ndarray:
    """A SEG resampled onto ``scan``'s grid by geometry: int32 ``[k, j, i]``, segment numbers as values."""
    ds, seg = _read_seg(seg_path)
    return _label_map(seg_path, ds, seg, scan, segment_numbers, log)


def referenced_series(ds) -> list[str]:
    return [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])]


def seg_lesions(seg_path) -> dict[int, Lesion]:
    """{segment number: Lesion} of a SEG: the label as name, and, for SEGs that carry them, the lesion id
    from a TrackingID "Lesion <id>" (else the segment number) and the TrackingUID, so a lesion re-tracked
    from one of our SEGs keeps its identity."""
    _, seg = _read_seg(seg_path)
    lesions = {}
    for number in seg.segment_numbers:
        desc = seg.get_segment_description(number)
        tracking_id = str(getattr(desc, "tracking_id", "") or "")
        lesion_id = int(tracking_id.split()[-1]) if tracking_id.startswith("Lesion ") and \
            tracking_id.split()[-1].isdigit() else int(number)
        uid = getattr(desc, "tracking_uid", None)
        lesions[int(number)] = Lesion(lesion_id, str(desc.SegmentLabel), tracking_uid=str(uid) if uid else generate_uid())
    return lesions


def read_seg_prompt(seg_path, study: Study, lesion_id: int | None = None, log=log_stderr) -> tuple[str, np.ndarray]:
    """(scan id, int32 label map ``[k, j, i]`` on that scan's grid, segment numbers as values) for a SEG
    that references one of ``study``'s series; ``lesion_id`` keeps only that segment number."""
    ds, seg = _read_seg(seg_path)
    series = referenced_series(ds)
    instances = {str(ref.ReferencedSOPInstanceUID) for frame in ds.get("PerFrameFunctionalGroupsSequence", [])
                 for derivation in frame.get("DerivationImageSequence", [])
                 for ref in derivation.get("SourceImageSequence", [])}
    for scan in study:
        meta = scan.meta.get("dicom", {})
        if meta.get("SeriesInstanceUID") in series or instances & set(meta.get("SOPInstanceUIDs", [])):
            numbers = None if lesion_id is None else [int(lesion_id)]
            return scan.scan_id, _label_map(seg_path, ds, seg, scan, numbers, log)
    ours = ", ".join(f"{s.scan_id}: {s.meta.get('dicom', {}).get('SeriesInstanceUID', 'not DICOM')}" for s in study)
    raise InputError(f"{seg_path}: its referenced series {', '.join(series) or '(none given)'} is not in the study "
                     f"(study series: {ours})")
