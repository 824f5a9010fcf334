"""Storage seams: an index of DICOM attributes and a content-addressed blob store."""
