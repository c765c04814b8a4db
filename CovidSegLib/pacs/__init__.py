"""The round trip with a PACS: fetch a CT series from a DICOMweb server, segment it as a local DICOM folder, and
store the DICOM SEG and SR back (STOW-RS). Above measure (it writes the SR) and below the command line."""
