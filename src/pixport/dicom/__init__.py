"""DICOM knowledge: parsing, character sets, names, JSON.  pydicom only; no I/O policy."""
