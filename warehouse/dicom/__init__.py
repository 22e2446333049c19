"""DICOM: reading a header with ranged reads (`reader`), what is wrong with one (`problems`),
the identifiers that file an image (`identity`), and the header as DICOM JSON (`jsonrep`)."""
