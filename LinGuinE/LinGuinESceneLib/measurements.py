"""The measurement table node and the volume-over-time plot chart node, refreshed from the session."""

from __future__ import annotations

import slicer
import vtk

from LinGuinELib.frontend.session import measurement_table, volume_series

PLOT_ATTRIBUTE = "LinGuinE.Plot"
X_COLUMN = "Days from baseline"


def fill_table(table_node, columns) -> None:
    """Replace a table node's contents with ``columns`` = [(title, "double"|"string", values)]."""
    table = vtk.vtkTable()
    for title, kind, values in columns:
        array = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkStringArray()
        array.SetName(title)
        for value in values:
            array.InsertNextValue(value)
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)
    table_node.SetUseColumnNameAsColumnHeader(True)


class MeasurementNodes:
    def __init__(self, timepoints):
        self.timepoints = timepoints

    def update(self, table_node=None, chart=None):
        """(table node, plot chart node): one table row per lesion and timepoint, one scatter series of
        volume (mL) over days from baseline per lesion. Nodes are created when None is given."""
        session = self.timepoints.session
        rows = session.measurement_rows()
        table_node = table_node or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "LinGuinE measurements")
        fill_table(table_node, measurement_table(rows))
        chart = chart or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "LinGuinE volume over time")
        self._fill_plot(chart, volume_series(rows, session.days_from_baseline(), session.result().lesions))
        return table_node, chart

    @staticmethod
    def _fill_plot(chart, series) -> None:
        data_name = f"{chart.GetName()} data"
        data = slicer.mrmlScene.GetFirstNodeByName(data_name) or \
            slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", data_name)
        columns = [(X_COLUMN, "double", series[0]["x"] if series else [])]
        columns += [(f"{s['name']} volume (mL)", "double", s["y"]) for s in series]
        fill_table(data, columns)
        previous = [chart.GetNthPlotSeriesNode(n) for n in range(chart.GetNumberOfPlotSeriesNodes())]
        chart.RemoveAllPlotSeriesNodeIDs()
        for old in previous:
            if old is not None and old.GetAttribute(PLOT_ATTRIBUTE) == "1":
                slicer.mrmlScene.RemoveNode(old)
        for s in series:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", s["name"])
            node.SetAttribute(PLOT_ATTRIBUTE, "1")
            node.SetAndObserveTableNodeID(data.GetID())
            node.SetXColumnName(X_COLUMN)
            node.SetYColumnName(f"{s['name']} volume (mL)")
            node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            node.SetColor(*s["colour"])
            chart.AddAndObservePlotSeriesNodeID(node.GetID())
        chart.SetTitle("Lesion volume over time")
        chart.SetXAxisTitle(X_COLUMN)
        chart.SetYAxisTitle("Volume (mL)")
