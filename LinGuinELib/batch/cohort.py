"""Cohort files for ``linguine batch``: one row per lesion prompt, rows grouped into studies.

Columns (paths relative to the cohort csv):

* ``study`` (required): a study.csv, a folder holding one, or a DICOM folder (as ``linguine track``);
* ``source`` (required): the prompt scan (scan id, ``first``/``middle``/``last`` or a date);
* ``mask`` (a label map or DICOM-SEG on the source scan) or ``point`` (``x y z``, LPS mm), one per row;
* ``lesion_id`` (optional: with a mask, the id to track; with a point, the lesion's id), ``name`` (optional).

All rows of one study are tracked together, so they share registrations.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass, field
from pathlib import Path

from LinGuinELib.core.errors import InputError
from LinGuinELib.io.output import safe_filename

REQUIRED = ("study", "source")
KNOWN = ("study", "source", "mask", "point", "lesion_id", "name")


@dataclass(frozen=True)
class PromptRow:
    """One cohort row: ``point`` in LPS mm or ``mask`` (absolute path); ``line`` is its csv line number."""

    line: int
    source: str
    mask: str | None = None
    point: tuple[float, float, float] | None = None
    lesion_id: int | None = None
    name: str = ""


@dataclass
class StudyJob:
    """The rows of one study; ``key`` names its output folder, ``study`` is the study's absolute path."""

    key: str
    study: str
    rows: list[PromptRow] = field(default_factory=list)


def _study_key(path: Path, base: Path) -> str:
    """Output folder name of a study: its path relative to the cohort csv, without a trailing study.csv."""
    if path.suffix.lower() == ".csv":
        path = path.parent
    try:
        parts = path.relative_to(base).parts
    except ValueError:
        parts = path.parts[-2:]
    parts = [p for p in parts if p not in ("..", ".", "/")] or [path.name]
    return safe_filename("_".join(parts))


def read_cohort(csv_path: str | Path) -> list[StudyJob]:
    """Parse a cohort csv into studies in first-appearance order (InputError naming the file and line)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: cohort file not found")
    base = csv_path.resolve().parent
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise InputError(f"{csv_path}: missing column(s) {', '.join(missing)} (columns: {', '.join(columns)})")
        if "mask" not in columns and "point" not in columns:
            raise InputError(f"{csv_path}: needs a 'mask' or a 'point' column")
        unknown = [c for c in columns if c not in KNOWN]
        if unknown:
            raise InputError(f"{csv_path}: unknown column(s) {', '.join(unknown)}; known: {', '.join(KNOWN)}")
        jobs: dict[str, StudyJob] = {}
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            where = f"{csv_path}, line {line}"
            if not row.get("study") or not row.get("source"):
                raise InputError(f"{where}: 'study' and 'source' are required")
            mask, point = row.get("mask", ""), row.get("point", "")
            if bool(mask) == bool(point):
                raise InputError(f"{where}: give either 'mask' or 'point' (x y z, LPS mm), not {'both' if mask else 'neither'}")
            xyz = None
            if point:
                try:
                    xyz = tuple(float(v) for v in point.replace(",", " ").split())
                except ValueError:
                    xyz = ()
                if len(xyz) != 3:
                    raise InputError(f"{where}: point {point!r} is not three numbers 'x y z' (LPS mm)")
            lesion_id = None
            if row.get("lesion_id"):
                try:
                    lesion_id = int(row["lesion_id"])
                except ValueError:
                    raise InputError(f"{where}: lesion_id {row['lesion_id']!r} is not an integer") from None
            study_path = (base / row["study"]).resolve()
            job = jobs.setdefault(str(study_path), StudyJob("", str(study_path)))
            job.rows.append(PromptRow(line, row["source"], str((base / mask).resolve()) if mask else None, xyz,
                                      lesion_id, row.get("name", "")))
    if not jobs:
        raise InputError(f"{csv_path}: the cohort has no rows")
    used: set[str] = set()
    for job in jobs.values():  # unique keys, deterministic from the row order
        key, n = _study_key(Path(job.study), base), 1
        name = key
        while name.lower() in used:
            n += 1
            name = f"{key}_{n}"
        used.add(name.lower())
        job.key = name
    return list(jobs.values())


def build_study_prompts(study, rows: list[PromptRow]) -> list:
    """The LesionPrompts of one study's rows, built as ``linguine track`` builds them (mask rows first,
    then points; a point without lesion_id gets the next free id); duplicate ids are an InputError."""
    from LinGuinELib.commands.track import build_prompts

    prompts, origin = [], {}
    ordered = [r for r in rows if r.mask] + [r for r in rows if not r.mask]
    for row in ordered:
        if row.mask:
            args = argparse.Namespace(source=row.source, mask=row.mask, point=[], point_ras=[], point_ijk=[],
                                      lesion_id=[row.lesion_id] if row.lesion_id is not None else [],
                                      name=[row.name] if row.name else [])
        else:
            lid = row.lesion_id if row.lesion_id is not None else max(origin, default=0) + 1
            args = argparse.Namespace(source=row.source, mask=None, point=[list(row.point)], point_ras=[],
                                      point_ijk=[], lesion_id=[lid], name=[row.name] if row.name else [])
        try:
            new = build_prompts(study, args)
        except InputError as exc:
            raise InputError(f"cohort line {row.line}: {exc}") from None
        for p in new:
            lid = p.lesion.lesion_id
            if lid in origin:
                raise InputError(f"cohort lines {origin[lid]} and {row.line}: both give lesion id {lid} "
                                 f"in study {study.source_path or study.patient_id}")
            origin[lid] = row.line
        prompts += new
    return prompts
