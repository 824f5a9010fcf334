"""DICOMweb (PS3.18) front end: thin routes over the archive."""
