"""Engine core: scans and studies, coordinates, lesions, tracking, measurements, errors."""
