"""Reading and writing: DICOM studies, DICOM-SEG, tracking outputs, atomic writes."""
