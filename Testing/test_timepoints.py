"""The Slicer module's study table (LinGuinELib/frontend/timepoints.py): user order, labels and dates
that survive refreshes, and validation that names every problem."""

from __future__ import annotations

import datetime as dt

import pytest

from LinGuinELib.core.errors import InputError
from LinGuinELib.frontend.timepoints import DICOM, Timepoint, TimepointTable


def test_study_table_keeps_user_order_and_labels_across_refreshes():
    table = TimepointTable()
    table.fill([Timepoint("v1", "CT a", "CT a"), Timepoint("v2", "CT a", "CT a", dt.datetime(2020, 5, 1), DICOM)])
    assert [r.label for r in table.rows] == ["CT a", "CT a (2)"]
    table.set_label(0, "baseline")
    table.set_date(0, "2020-01-01")
    table.move(1, -1)
    added = table.fill([Timepoint("v1", "CT a", "CT a"), Timepoint("v2", "CT a", "x"), Timepoint("v3", "CT b", "CT b")])
    assert [r.key for r in added] == ["v3"]
    assert [(r.key, r.label) for r in table.rows] == [("v2", "CT a (2)"), ("v1", "baseline"), ("v3", "CT b")]
    assert table.rows[1].date == dt.datetime(2020, 1, 1)  # a typed date survives a refresh
    with pytest.raises(InputError, match="from DICOM"):
        table.set_date(0, "2020-02-02")
    with pytest.raises(InputError, match="twice"):
        table.set_label(2, "baseline")
    table.fill([Timepoint("v2", "CT a", "x"), Timepoint("v3", "CT b", "CT b")])  # v1 was deleted
    assert table.keys() == ["v2", "v3"]


def test_study_table_validation_names_every_problem():
    table = TimepointTable([Timepoint("a", "A", "A", dt.datetime(2021, 1, 1)), Timepoint("b", "B", "B", dt.datetime(2020, 1, 1)),
                            Timepoint("c", "C", "C")])
    with pytest.raises(InputError) as err:
        table.validate()
    assert "date (YYYY-MM-DD) of 'C'" in str(err.value) and "'B' (2020-01-01) is placed after 'A'" in str(err.value)
    table.set_date(2, "2019-06-01")
    table.sort_by_date()
    assert table.keys() == ["c", "b", "a"]
    table.validate()
    with pytest.raises(InputError, match="at least 2"):
        TimepointTable([Timepoint("a", "A", "A", dt.datetime(2021, 1, 1))]).validate()
