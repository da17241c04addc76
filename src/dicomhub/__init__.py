"""dicomhub: a multi-subscriber DICOM archive and medical image service."""

__version__ = "0.1.0"
