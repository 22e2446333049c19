"""The shared core: the key layout, settings and config, storage, the run lease and report,
DICOM headers, clinical records, patients and the listings. Nothing here imports bonobo."""
