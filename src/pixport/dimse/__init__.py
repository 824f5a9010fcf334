"""DICOM networking (PS3.7/PS3.8) with pynetdicom: thin handlers over the archive."""
