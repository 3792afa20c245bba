"""LinGuinE engine: longitudinal lesion tracking on CT, free of Slicer/Qt/VTK.

Conventions used throughout the package:

* Physical points are LPS millimetres (DICOM/ITK patient coordinates), arrays of
  shape (N, 3) ordered (x, y, z).
* Voxel arrays (``Scan.array``, masks, label maps) are NumPy arrays indexed
  ``[k, j, i]`` (slice, row, column), as returned by ``SimpleITK.GetArrayFromImage``.
* "Voxel points" handed to segmenters are array indices in that same ``(k, j, i)``
  order. ITK/Slicer style indices ``(i, j, k)`` appear only at the CLI/Slicer edge
  (``--point-ijk``) and are converted by :mod:`LinGuinELib.core.coords`.
* RAS appears only at the Slicer/CLI edge (``--point-ras``); see :mod:`LinGuinELib.core.coords`.
"""

__version__ = "0.1.0"
