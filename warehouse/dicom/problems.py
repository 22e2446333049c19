"""What can be wrong with an uploaded DICOM file: one exception per report reason."""

from __future__ import annotations

from warehouse.core.reasons import Reason


class HeaderProblem(ValueError):
    """A file that cannot be filed as an image; ``reason`` is the report's reason."""

    reason: Reason = Reason.UNREADABLE_HEADER


class NotDicom(HeaderProblem):
    """The file is not DICOM at all (garbage, text, empty)."""

    reason = Reason.NOT_DICOM


class NoFileMeta(HeaderProblem):
    """A bare data set: no 128-byte preamble, no ``DICM`` prefix, no file meta."""

    reason = Reason.NO_FILE_META


class NotAnImage(HeaderProblem):
    """A complete DICOM object without pixel data (a report, an RT plan, a waveform)."""

    reason = Reason.NOT_AN_IMAGE


class MissingPixelData(HeaderProblem):
    """An image object (its SOP class stores an image) that ends, complete, before any pixel
    data: cut exactly at an element boundary, or sent without its pixels."""

    reason = Reason.MISSING_PIXEL_DATA


class TruncatedHeader(HeaderProblem):
    """The file ends inside its header (the upload broke off)."""

    reason = Reason.TRUNCATED_HEADER


class TruncatedPixelData(HeaderProblem):
    """The pixel data element is cut: the file ends before its declared end."""

    reason = Reason.TRUNCATED_PIXEL_DATA


class UnreadableHeader(HeaderProblem):
    """pydicom cannot parse a header that is not truncated."""

    reason = Reason.UNREADABLE_HEADER


class HeaderTooLarge(HeaderProblem):
    """Reading the header would cost more bytes than the cap allows."""

    reason = Reason.HEADER_TOO_LARGE


class HeaderTooComplex(HeaderProblem):
    """The header holds more data elements and sequence items than `MAX_HEADER_ELEMENTS`."""

    reason = Reason.HEADER_TOO_COMPLEX


class MissingIdentifier(HeaderProblem):
    """The header lacks an element that decides where the image is filed."""

    reason = Reason.MISSING_IDENTIFIER


class UnsupportedModality(HeaderProblem):
    """The image's modality has no warehouse folder."""

    reason = Reason.UNSUPPORTED_MODALITY
