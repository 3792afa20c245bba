"""LinGuinE's scene layer: small Qt-free classes that read and write Slicer's MRML scene.

They import ``slicer`` (MRML, ``slicer.util``) and ``vtk`` but never Qt or CTK, so they run -- and are
tested -- on PyPI ``slicer-core`` as well as inside Slicer. World coordinates here are RAS mm (Slicer);
everything handed to the engine is LPS mm (``LinGuinELib``), converted in ``LinGuinELib.frontend``.
"""
