"""Premise tests: each name of pydicom's that the product uses beyond its documented API (a
private name, a module attribute it replaces, a positional signature, a behaviour it relies on)
exists and behaves as the product assumes. A pydicom upgrade that breaks one fails the test
named after it, not a distant test of the loader.

The product's uses (``warehouse/dicom``, ``warehouse/catalogue/rows.py``):

- ``filereader._read_file_meta_info``, ``read_preamble``, ``read_dataset`` and ``FileDataset``
  rebuild a deflated file's header from an inflating stream (``reader._parse``);
- ``filereader.data_element_generator`` is replaced at import by a counting wrapper, which only
  works while ``read_dataset`` (and so every sequence item) looks it up in its module;
- ``read_partial``'s ``stop_when`` gives the pixel data's offset (``stream.tell()``), its
  ``defer_size`` leaves large values unread (``RawDataElement`` with ``value`` None, ``length``
  and ``value_tell``), and its deflate branch reads the rest with ``read()`` (no size);
- ``Dataset._dict``, ``RawDataElement._replace``, ``Dataset._character_set``,
  ``set_original_encoding``, the file object kept on ``buffer``/``filename``/``fileobj_type``;
- ``hooks.raw_element_vr``, ``values.convert_SQ``, ``charset.decode_bytes``,
  ``values.TEXT_VR_DELIMS``, ``DataElement.to_json_dict(handler, threshold)``, ``UID.name``,
  the class name ``MultiValue``, pydicom's logger ``pydicom`` and ``config.IGNORE``.
"""

from __future__ import annotations

import inspect
import io
import logging
import zlib

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom import filereader
from pydicom.charset import decode_bytes
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.hooks import hooks
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pydicom.values import TEXT_VR_DELIMS, convert_SQ

from tests.builders import image
from warehouse.dicom import reader  # (installs the product's counting generator)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PIXEL_DATA = 0x7FE00010
REFERENCED_IMAGES = 0x00081140  # Referenced Image Sequence: a standard SQ
VENDOR_OB = 0x00291010  # the builders' private OB element of 0.2-3.8 KB
#: Data sets ``read_partial`` reads through the generator before any sequence item: the file
#: meta, the command set it looks for, the data set itself.
HEADER_CALLS = 3


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def file_with_sequence(undefined_length: bool, items: int = 2) -> bytes:
    """A small Part 10 file (explicit VR little endian) with a Referenced Image Sequence of
    ``items`` items, of undefined or defined length.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPInstanceUID = "1.2.3.4"
    sequence = []
    for n in range(items):
        item = Dataset()
        item.ReferencedSOPInstanceUID = f"1.2.3.{n + 10}"
        sequence.append(item)
    dataset.ReferencedImageSequence = Sequence(sequence)
    dataset[REFERENCED_IMAGES].is_undefined_length = undefined_length
    for item in dataset.ReferencedImageSequence:
        item.is_undefined_length_sequence_item = undefined_length
    dataset.PatientID = "Covid1"
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def generator_calls(monkeypatch) -> list:
    """Count the calls of ``filereader.data_element_generator`` (the product's wrapper and
    pydicom's own behind it) made through the module attribute.
    """
    calls = []
    installed = filereader.data_element_generator

    def spy(*args, **kwargs):
        calls.append(args[0])
        return installed(*args, **kwargs)

    monkeypatch.setattr(filereader, "data_element_generator", spy)
    return calls


# --------------------------------------------------------------------------------------------
# the deflated header, rebuilt from its parts (reader._parse)


def deflated_file() -> bytes:
    _, data = image("Covid1", "DX")
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_read_preamble_and_read_file_meta_info_leave_the_stream_at_the_data_set():
    assert parameters(filereader.read_preamble) == ["fp", "force"]
    assert parameters(filereader._read_file_meta_info) == ["fp"]
    data = deflated_file()
    stream = io.BytesIO(data)
    assert filereader.read_preamble(stream, False) == data[:128]
    assert stream.tell() == 132  # past "DICM"
    meta = filereader._read_file_meta_info(stream)
    assert isinstance(meta, FileMetaDataset)
    assert meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    # what follows is the raw deflate stream of the data set
    inflated = zlib.decompress(stream.read(), -zlib.MAX_WBITS)
    assert inflated.startswith(b"\x08\x00\x05\x00CS")  # (0008,0005) Specific Character Set


def test_read_dataset_reads_an_inflated_data_set_as_the_reader_calls_it():
    assert parameters(filereader.read_dataset)[:3] == ["fp", "is_implicit_VR", "is_little_endian"]
    assert {"stop_when", "defer_size"} <= set(parameters(filereader.read_dataset))
    data = deflated_file()
    stream = io.BytesIO(data)
    filereader.read_preamble(stream, False)
    meta = filereader._read_file_meta_info(stream)
    inflated = io.BytesIO(zlib.decompress(stream.read(), -zlib.MAX_WBITS))
    stops = []

    def stop_when(tag, vr, length):
        stops.append(int(tag))
        return int(tag) >= 0x7FE00008

    data_set = filereader.read_dataset(
        inflated, False, True, stop_when=stop_when, defer_size=reader.LARGE_VALUE_BYTES
    )
    assert data_set.PatientID == "Covid1" and PIXEL_DATA not in data_set
    assert stops[-1] == PIXEL_DATA
    assert data_set._character_set == ["latin_1"]  # (ISO_IR 100)
    # FileDataset(filename_or_obj, dataset, preamble, file_meta, is_implicit_VR,
    # is_little_endian), positionally, and set_original_encoding(implicit, little, charset)
    assert parameters(FileDataset.__init__)[1:7] == [
        "filename_or_obj",
        "dataset",
        "preamble",
        "file_meta",
        "is_implicit_VR",
        "is_little_endian",
    ]
    assert parameters(Dataset.set_original_encoding)[1:4] == [
        "is_implicit_vr",
        "is_little_endian",
        "character_encoding",
    ]
    dataset = FileDataset(io.BytesIO(), data_set, data[:128], meta, False, True)
    dataset.set_original_encoding(False, True, data_set._character_set)
    assert dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert dataset.PatientID == "Covid1" and dataset.original_encoding == (False, True)


def test_read_partial_reads_a_deflated_data_set_with_a_read_of_everything():
    """The product's ranged reader refuses ``read()`` of the whole object, and so learns that
    the file is deflated: pydicom must ask that way.
    """
    sizes = []

    class Recording(io.BytesIO):
        def read(self, size=-1):
            sizes.append(size)
            return super().read(size)

    filereader.read_partial(Recording(deflated_file()), stop_when=lambda t, v, n: False)
    assert sizes[-1] in (-1, None)
    assert all(size is not None and size >= 0 for size in sizes[:-1])


# --------------------------------------------------------------------------------------------
# the counting generator (reader._counted_element_generator)


def test_the_product_replaces_data_element_generator_in_its_module():
    assert filereader.data_element_generator is reader._counted_element_generator
    assert reader._pydicom_element_generator.__module__ == "pydicom.filereader"
    assert parameters(reader._pydicom_element_generator)[:3] == [
        "fp",
        "is_implicit_VR",
        "is_little_endian",
    ]


def test_read_dataset_looks_the_generator_up_for_the_header_and_each_item(generator_calls):
    """An undefined-length sequence is parsed while the header is read: a generator call
    through the module attribute for each data set pydicom reads (the file meta, its look at
    the command set, the data set) and one per item.
    """
    data = file_with_sequence(undefined_length=True, items=3)
    dataset = filereader.read_partial(io.BytesIO(data))
    assert len(generator_calls) == HEADER_CALLS + 3
    assert [i.ReferencedSOPInstanceUID for i in dataset.ReferencedImageSequence] == [
        "1.2.3.10",
        "1.2.3.11",
        "1.2.3.12",
    ]


def test_a_defined_length_sequence_is_kept_raw_and_parsed_by_convert_sq(generator_calls):
    """A defined-length sequence stays bytes until it is used (``reader._count_sequence``
    parses it with ``convert_SQ``), and its items go through the generator then.
    """
    data = file_with_sequence(undefined_length=False, items=2)
    dataset = filereader.read_partial(io.BytesIO(data))
    assert len(generator_calls) == HEADER_CALLS
    raw = dataset._dict[Tag(REFERENCED_IMAGES)]
    assert isinstance(raw, RawDataElement) and raw.VR == "SQ"
    assert isinstance(raw.value, bytes) and raw.length == len(raw.value)
    assert parameters(convert_SQ) == [
        "byte_string",
        "is_implicit_VR",
        "is_little_endian",
        "encoding",
        "offset",
    ]
    items = convert_SQ(raw.value, raw.is_implicit_VR, raw.is_little_endian, None, raw.value_tell)
    assert len(generator_calls) == HEADER_CALLS + 2
    assert [item.ReferencedSOPInstanceUID for item in items] == ["1.2.3.10", "1.2.3.11"]
    assert all(isinstance(item, Dataset) for item in items)


def test_raw_element_vr_tells_a_sequence_of_an_implicit_or_un_element():
    """``reader._count_sequence`` asks pydicom's hook whether an element without an explicit
    VR (implicit VR, or UN) is a sequence.
    """
    assert parameters(hooks.raw_element_vr)[:2] == ["raw", "data"]
    assert {"encoding", "ds"} <= set(parameters(hooks.raw_element_vr))
    for vr in (None, "UN"):
        raw = RawDataElement(Tag(REFERENCED_IMAGES), vr, 8, b"", 0, True, True)
        found: dict = {}
        hooks.raw_element_vr(raw, found, encoding=None, ds=Dataset())
        assert found["VR"] == "SQ", vr
    private = RawDataElement(Tag(VENDOR_OB), None, 8, b"", 0, True, True)
    found = {}
    hooks.raw_element_vr(private, found, encoding=None, ds=Dataset())
    assert found["VR"] != "SQ"


# --------------------------------------------------------------------------------------------
# read_partial: the pixel data's offset, large values left unread


def test_stop_when_is_asked_with_the_stream_at_the_value():
    """``reader._read`` takes ``stream.tell()`` in ``stop_when`` as the pixel data's offset."""
    _, data = image("Covid1", "DX", rows=32, columns=32)
    stream = io.BytesIO(data)
    asked = []

    def stop_when(tag, vr, length):
        asked.append((int(tag), vr, length, stream.tell()))
        return int(tag) >= 0x7FE00008

    dataset = filereader.read_partial(stream, stop_when=stop_when)
    tag, vr, length, offset = asked[-1]
    assert (tag, vr, length) == (PIXEL_DATA, "OW", 32 * 32 * 2)
    header = b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little")
    assert data[offset - len(header) : offset] == header
    assert offset + length == len(data)
    assert PIXEL_DATA not in dataset._dict


def test_defer_size_leaves_a_large_value_unread_with_its_offset_and_length():
    """``reader._empty_skipped_values``, ``_fetch_skipped_sequences`` and
    ``_ends_past_the_object`` read ``value`` (None), ``length`` and ``value_tell``.
    """
    _, data = image("Covid1", "DX")
    dataset = filereader.read_partial(io.BytesIO(data), defer_size=64)
    raw = dataset._dict[Tag(VENDOR_OB)]
    assert isinstance(raw, RawDataElement) and raw.value is None and raw.length > 64
    assert data[raw.value_tell - 4 : raw.value_tell] == raw.length.to_bytes(4, "little")
    whole = pydicom.dcmread(io.BytesIO(data))
    assert data[raw.value_tell : raw.value_tell + raw.length] == whole[VENDOR_OB].value


def test_read_partial_keeps_the_file_object_on_buffer_filename_and_fileobj_type():
    """``reader._read`` drops these three so a queued header holds no file object."""
    stream = io.BytesIO(image("Covid1", "DX")[1])
    dataset = filereader.read_partial(stream)
    assert isinstance(dataset, FileDataset)
    assert dataset.buffer is stream and dataset.fileobj_type is type(stream)
    assert dataset.filename is None
    dataset.buffer = dataset.filename = dataset.fileobj_type = None
    assert dataset.PatientID == "Covid1"


# --------------------------------------------------------------------------------------------
# the parsed header's private parts


def test_dict_holds_raw_elements_in_tag_order_and_replace_changes_the_value():
    """``Dataset._dict`` maps each tag to a ``RawDataElement`` (a named tuple: ``_replace``)
    until it is used; the reader and the JSON fast path walk and replace them.
    """
    assert RawDataElement._fields[:7] == (
        "tag",
        "VR",
        "length",
        "value",
        "value_tell",
        "is_implicit_VR",
        "is_little_endian",
    )
    dataset = filereader.read_partial(io.BytesIO(image("Covid1", "DX")[1]))
    tags = list(dataset._dict)
    assert tags == sorted(tags) and len(tags) == len(dataset)
    raw = dataset._dict[Tag(0x00100020)]
    assert isinstance(raw, RawDataElement) and raw.value.rstrip(b" ") == b"Covid1"
    dataset._dict[Tag(0x00100020)] = raw._replace(value=b"Covid2", length=6)
    assert dataset.PatientID == "Covid2"
    assert isinstance(dataset._dict[Tag(0x00100020)], DataElement)  # converted once used


def test_character_set_gives_python_codecs():
    """``elements.element_text`` passes ``_character_set`` to ``decode_bytes`` and the JSON
    fast path takes its only codec. With a Specific Character Set it is a list of codecs;
    without one, pydicom gives the default codec as a plain string, not a list (the product
    then passes ``"iso8859"`` to ``decode_bytes`` as if it were a list: see the report).
    """
    for value, codecs in (("ISO_IR 100", ["latin_1"]), ("ISO_IR 192", ["UTF8"])):
        dataset = Dataset()
        dataset.SpecificCharacterSet = value
        assert dataset._character_set == codecs
    dataset = Dataset()
    dataset.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert len(dataset._character_set) == 2
    assert Dataset()._character_set == "iso8859"


def test_decode_bytes_and_the_text_delimiters():
    assert parameters(decode_bytes) == ["value", "encodings", "delimiters"]
    assert {0x09, 0x0A, 0x0C, 0x0D} <= set(TEXT_VR_DELIMS)
    assert decode_bytes("Café".encode("latin-1"), ["latin_1"], TEXT_VR_DELIMS) == "Café"
    assert decode_bytes("Café".encode(), ["UTF8"], TEXT_VR_DELIMS) == "Café"


def test_to_json_dict_takes_the_bulk_data_handler_and_threshold_positionally():
    """``jsonrep._pydicom_element`` calls ``to_json_dict(handler, 0)`` and drops the
    ``BulkDataURI`` or ``InlineBinary`` a binary value gets.
    """
    assert parameters(DataElement.to_json_dict)[1:3] == [
        "bulk_data_element_handler",
        "bulk_data_threshold",
    ]
    dataset = Dataset()
    dataset.add_new(VENDOR_OB, "OB", b"\x01\x02")
    dataset.PatientID = "Covid1"
    assert dataset[VENDOR_OB].to_json_dict(lambda element: "", 0) == {
        "vr": "OB",
        "BulkDataURI": "",
    }
    assert dataset["PatientID"].to_json_dict(lambda element: "", 0) == {
        "vr": "LO",
        "Value": ["Covid1"],
    }


def test_a_multi_valued_element_is_a_multivalue_by_class_name():
    """``rows._is_multi`` knows a multi-valued element by the class name ``MultiValue``."""
    dataset = Dataset()
    dataset.PixelSpacing = ["0.5", "0.25"]
    assert type(dataset.PixelSpacing).__name__ == "MultiValue"
    dataset.Rows = 64
    assert type(dataset.Rows).__name__ != "MultiValue"


def test_uid_names_tell_image_storage_classes():
    """``reader._no_pixel_data`` tells "image without pixel data" from "not an image" by
    ``"Image Storage"`` in the SOP class's name.
    """
    assert "Image Storage" in UID("1.2.840.10008.5.1.4.1.1.2").name  # CT
    assert "Image Storage" in UID("1.2.840.10008.5.1.4.1.1.1.1").name  # DX
    assert "Image Storage" not in UID("1.2.840.10008.5.1.4.1.1.88.11").name  # Basic Text SR
    assert "Image Storage" not in UID("1.2.840.10008.5.1.4.1.1.481.5").name  # RT Plan
    assert UID("1.2.3.4").name == "1.2.3.4"  # an unknown UID: its own value


# --------------------------------------------------------------------------------------------
# pydicom's messages and validation


def test_pydicom_logs_through_its_logger_named_pydicom():
    """``reader._PydicomMessages`` is the handler of the logger ``pydicom``: pydicom's messages
    about a header must arrive there.
    """
    assert pydicom_config.logger is logging.getLogger("pydicom")
    got = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    keep = Keep()
    pydicom_config.logger.addHandler(keep)
    try:
        dataset = Dataset()
        dataset.SpecificCharacterSet = "NOT A CHARSET"
        assert dataset._character_set
    finally:
        pydicom_config.logger.removeHandler(keep)
    assert any("NOT A CHARSET" in message for message in got), got


def test_reading_validation_can_be_switched_off():
    assert hasattr(pydicom_config.settings, "reading_validation_mode")
    assert pydicom_config.settings.reading_validation_mode == pydicom_config.IGNORE
