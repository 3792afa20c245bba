"""The study table of a front end: which volumes are the timepoints, their labels, dates and order.

A :class:`Timepoint` names a loaded volume by an opaque ``key`` (a Slicer node ID). Dates read from
DICOM are fixed; others (from the volume name, a study file or typed by the user) stay editable.
Table order is the time order: :meth:`TimepointTable.validate` rejects an order that contradicts the
dates, and :meth:`TimepointTable.sort_by_date` fixes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from LinGuinELib.core.errors import InputError
from LinGuinELib.core.study import parse_date

DICOM, NAME, STUDY_FILE, USER = "DICOM", "volume name", "study file", "user"


@dataclass
class Timepoint:
    """One row: a volume (``key``, ``name``), its engine scan id (``label``) and date."""

    key: str
    name: str
    label: str
    date: dt.datetime | None = None
    date_source: str = ""

    @property
    def date_editable(self) -> bool:
        return self.date_source != DICOM

    @property
    def date_text(self) -> str:
        if self.date is None:
            return ""
        return self.date.strftime("%Y-%m-%d" if self.date.time() == dt.time(0) else "%Y-%m-%d %H:%M")


class TimepointTable:
    """Ordered, editable timepoint rows with the checks a study needs."""

    def __init__(self, rows=()):
        self.rows: list[Timepoint] = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self) -> list[str]:
        return [r.key for r in self.rows]

    def fill(self, candidates: list[Timepoint]) -> list[Timepoint]:
        """Merge freshly listed volumes: rows whose volume is gone are dropped, kept rows keep the
        user's order, label and date, new volumes are appended (labels made unique). Returns the new rows."""
        present = {c.key: c for c in candidates}
        self.rows = [r for r in self.rows if r.key in present]
        known = set(self.keys())
        added = []
        for c in candidates:
            if c.key in known:
                row = self.rows[self.keys().index(c.key)]
                row.name = c.name
                if c.date_source == DICOM:  # DICOM dates always win over typed ones
                    row.date, row.date_source = c.date, DICOM
                continue
            row = Timepoint(c.key, c.name, self.unique_label(c.label or c.name), c.date, c.date_source)
            self.rows.append(row)
            added.append(row)
        return added

    def unique_label(self, wanted: str, ignore: int | None = None) -> str:
        base = (wanted or "timepoint").strip() or "timepoint"
        taken = {r.label for n, r in enumerate(self.rows) if n != ignore}
        label, n = base, 2
        while label in taken:
            label, n = f"{base} ({n})", n + 1
        return label

    def move(self, index: int, step: int) -> int:
        """Move a row up (step -1) or down (+1); returns its new index."""
        new = min(max(index + step, 0), len(self.rows) - 1)
        self.rows.insert(new, self.rows.pop(index))
        return new

    def remove(self, index: int) -> None:
        del self.rows[index]

    def sort_by_date(self) -> None:
        """Order rows by date (stable; undated rows last)."""
        self.rows.sort(key=lambda r: (r.date is None, r.date or dt.datetime.min))

    def set_date(self, index: int, text: str) -> None:
        row = self.rows[index]
        if not row.date_editable:
            raise InputError(f"timepoint '{row.label}': its date comes from DICOM and cannot be edited")
        text = (text or "").strip()
        row.date = parse_date(text, f"timepoint '{row.label}'") if text else None
        row.date_source = USER if text else ""

    def set_label(self, index: int, text: str) -> None:
        text = (text or "").strip()
        if not text:
            raise InputError(f"timepoint {index + 1} ('{self.rows[index].name}'): the label cannot be empty")
        if text in {r.label for n, r in enumerate(self.rows) if n != index}:
            raise InputError(f"timepoint label '{text}' is used twice; labels must be unique")
        self.rows[index].label = text

    def validate(self) -> None:
        """Raise InputError naming every problem that keeps these rows from being a study."""
        problems = []
        if len(self.rows) < 2:
            problems.append(f"a longitudinal study needs at least 2 timepoints, the table has {len(self.rows)}")
        undated = [r.label for r in self.rows if r.date is None]
        if undated:
            problems.append("enter the date (YYYY-MM-DD) of " + ", ".join(f"'{x}'" for x in undated))
        labels = [r.label for r in self.rows]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            problems.append("labels used twice: " + ", ".join(dupes))
        dated = [r for r in self.rows if r.date is not None]
        for a, b in zip(dated, dated[1:]):
            if b.date < a.date:
                problems.append(f"'{b.label}' ({b.date_text}) is placed after '{a.label}' ({a.date_text}); "
                                "reorder the rows or use 'Sort by date'")
                break
        if problems:
            raise InputError("study table: " + "; ".join(problems))
