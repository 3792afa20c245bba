"""Front-end helpers (Slicer module, service clients): sessions, timepoints, install plans, settings."""
