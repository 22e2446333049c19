"""DICOM headers: ranged reads, the identifiers that file an image, and DICOM JSON."""

from __future__ import annotations

import io
import json
import re

import boto3
import pydicom
import pydicom.data
import pytest
from moto import mock_aws
from pydicom.dataset import Dataset

from tests.builders import uid
from warehouse.core.keys import UnsafeIdentifier
from warehouse.dicom.identity import ImageIdentity, image_identity
from warehouse.dicom.jsonrep import header_json
from warehouse.dicom.problems import (
    MissingIdentifier,
    MissingPixelData,
    NotDicom,
    TruncatedHeader,
    TruncatedPixelData,
    UnsupportedModality,
)
from warehouse.dicom.reader import FIRST_READ_BYTES, parse_header, read_header
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage
from warehouse.synthetic import build_dicom

MB = 1024 * 1024
STUDY = uid("Covid1", "study")
SERIES = uid("Covid1", "study", "series")
SOP = uid("Covid1", "study", "series", 1)
PIXEL_TAG = b"\xe0\x7f\x10\x00OW"  # (7FE0,0010) in explicit VR little endian


def dicom(modality="DX", **kwargs) -> bytes:
    args = {
        "patient_id": "Covid1",
        "study_uid": STUDY,
        "series_uid": SERIES,
        "sop_uid": SOP,
        "modality": modality,
    }
    args.update(kwargs)
    return build_dicom(**args)


def real(name: str) -> bytes:
    """One of pydicom's own real-world test files."""
    with open(pydicom.data.get_testdata_file(name), "rb") as handle:
        return handle.read()


def _reference(n: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = uid("Covid1", "reference", n)
    item.add_new(0x00204000, "LT", "referenced image with a note")
    return item


def header(modality="DX", **kwargs) -> Dataset:
    """The parsed header of a built image."""
    return parse_header(dicom(modality, **kwargs))


class CountingStorage(LocalStorage):
    """A local store that records every ranged read."""

    def __init__(self, root):
        super().__init__(root)
        self.ranges: list[tuple[int, int]] = []
        self.reads = 0

    def read_range(self, key, start, end):
        self.ranges.append((start, end))
        return super().read_range(key, start, end)

    def read(self, key):
        self.reads += 1
        return super().read(key)


@pytest.fixture
def counting(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    return CountingStorage(root)


def walk(elements: dict):
    """Every ``(tag, element)`` of a DICOM JSON object, at any depth."""
    for tag, element in elements.items():
        yield tag, element
        for item in element.get("Value", ()) if element.get("vr") == "SQ" else ():
            yield from walk(item)


# --------------------------------------------------------------------------------------------
# ranged header reads


def test_large_image_header_in_one_small_request(counting):
    data = dicom(rows=3200, columns=3200)
    assert len(data) > 20 * 1000 * 1000
    counting.write("raw-a/2021-01-01/images/big.dcm", data)
    result = read_header(counting, "raw-a/2021-01-01/images/big.dcm", len(data))
    assert result.requests == 1
    assert counting.ranges == [(0, FIRST_READ_BYTES)]
    assert counting.reads == 0  # never a whole-object read
    assert result.bytes_read < MB // 4
    assert sum(end - start for start, end in counting.ranges) < MB
    assert result.dataset.PatientID == "Covid1"
    assert "PixelData" not in result.dataset


def test_a_large_value_before_the_pixel_data_is_skipped_not_fetched(counting):
    data = dicom(rows=1024, columns=1024, header_padding=300_000)
    pixel_offset = data.index(PIXEL_TAG)
    assert pixel_offset > 300_000
    counting.write("padded.dcm", data)
    result = read_header(counting, "padded.dcm", len(data))
    # the first range, then a new one where the 300 KB private value ends
    assert counting.ranges[0] == (0, 64 * 1024)
    assert len(counting.ranges) == 2
    start, end = counting.ranges[1]
    assert start <= pixel_offset < end and start > 300_000
    assert result.requests == 2
    assert result.bytes_read == 128 * 1024
    identity = image_identity(result.dataset)
    assert (identity.patient_id, identity.study_uid, identity.series_uid) == (
        "Covid1",
        STUDY,
        SERIES,
    )
    assert json.loads(header_json(result.dataset))["00331010"] == {"vr": "OB"}


def test_a_header_of_many_elements_grows_the_range(counting):
    """No value is large, so every byte is needed: the range doubles on from 64 KiB."""
    extra = {"ReferencedImageSequence": [_reference(n) for n in range(1500)]}
    data = dicom(rows=512, columns=512, extra=extra)
    pixel_offset = data.index(PIXEL_TAG)
    assert 200_000 < pixel_offset < 256 * 1024 - 100
    counting.write("many.dcm", data)
    result = read_header(counting, "many.dcm", len(data))
    assert len(result.dataset.ReferencedImageSequence) == 1500
    doc = json.loads(header_json(result.dataset))
    assert len(doc["00081140"]["Value"]) == 1500
    assert result.bytes_read < pixel_offset + 256 * 1024
    assert result.requests <= 4


def test_range_stops_at_the_end_of_a_small_file(counting):
    data = dicom(header_padding=100_000)  # 64x64 pixels: the file is ~110 KB
    counting.write("small.dcm", data)
    result = read_header(counting, "small.dcm", len(data))
    # the 100 KB private value is skipped; the range after it stops at the end of the file
    assert counting.ranges[0] == (0, 64 * 1024)
    assert counting.ranges[1][1] == len(data)
    assert result.bytes_read == 64 * 1024 + len(data) - counting.ranges[1][0]
    assert result.bytes_read < len(data) - 30_000
    assert result.dataset.PatientID == "Covid1"


def test_unknown_size_reads_until_the_end(counting):
    data = dicom(header_padding=100_000)
    counting.write("small.dcm", data)
    result = read_header(counting, "small.dcm", None)  # size unknown
    assert result.dataset.PatientID == "Covid1"
    assert result.requests == 2
    assert counting.ranges[-1][1] - counting.ranges[-1][0] == 64 * 1024


def test_read_header_on_s3_is_one_ranged_get():
    data = dicom(rows=1024, columns=1024)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="warehouse-test")
        store = S3Storage("warehouse-test", client=client)
        store.write("img.dcm", data, content_type="application/dicom")
        calls = []
        client.meta.events.register(
            "before-parameter-build.s3.*",
            lambda event_name, params, **kw: calls.append((event_name.split(".")[-1], params)),
        )
        result = read_header(store, "img.dcm", len(data))
    assert result.requests == 1
    assert [(name, params.get("Range")) for name, params in calls] == [
        ("GetObject", f"bytes=0-{FIRST_READ_BYTES - 1}")
    ]
    assert result.dataset.SOPInstanceUID == SOP


# --------------------------------------------------------------------------------------------
# files that are not DICOM


def test_garbage(counting):
    blob = bytes(range(256)) * 40
    counting.write("g.dcm", blob)
    with pytest.raises(NotDicom, match=r"^not a DICOM file \(no DICM preamble and file meta\)$"):
        read_header(counting, "g.dcm", len(blob))


def test_text_file_named_dcm():
    with pytest.raises(NotDicom, match="not a DICOM file"):
        parse_header(b"Images for this batch were exported from PACS.\n")


def test_empty(counting):
    counting.write("e.dcm", b"")
    with pytest.raises(NotDicom, match="^empty file$"):
        read_header(counting, "e.dcm", 0)


@pytest.mark.parametrize(
    ("cut", "problem", "message"),
    [
        (lambda data: data[:1003], TruncatedHeader, "^the file ends inside its header"),
        (
            lambda data: data[: data.index(b"\x08\x00\x70\x00LO") + 12],  # inside Manufacturer
            TruncatedHeader,
            "^the file ends inside its header",
        ),
        (
            lambda data: data[: data.index(PIXEL_TAG)],  # just before the pixel data
            MissingPixelData,
            "^a Digital X-Ray Image Storage - For Presentation object that ends before any "
            "pixel data",
        ),
    ],
)
def test_truncated(counting, cut, problem, message):
    blob = cut(dicom())
    counting.write("t.dcm", blob)
    with pytest.raises(problem, match=message):
        read_header(counting, "t.dcm", len(blob))


def test_a_cut_inside_the_pixel_data_is_seen_from_the_listed_size(counting):
    data = dicom()
    blob = data[: data.index(PIXEL_TAG) + 100]
    counting.write("cut.dcm", blob)
    with pytest.raises(TruncatedPixelData, match="pixel data of 8,192 bytes"):
        read_header(counting, "cut.dcm", len(blob))
    assert counting.ranges == [(0, len(blob))]  # no extra request for that check
    with pytest.raises(TruncatedPixelData):
        parse_header(data[:-1])
    assert parse_header(data).PatientID == "Covid1"


@pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")
def test_a_refusal_names_what_pydicom_said_about_the_file(counting):
    """A refused file's reason names what pydicom said while reading it.

    The detail is the report's line for the file; the log holds nothing of it.
    """
    data = dicom(extra={"SpecificCharacterSet": "ISO_IR 999"})
    blob = data[: data.index(PIXEL_TAG) - 3]  # inside the element before the pixel data
    counting.write("cut.dcm", blob)
    with pytest.raises(TruncatedHeader) as caught:
        read_header(counting, "cut.dcm", len(blob))
    assert str(caught.value).startswith("the file ends inside its header")
    assert str(caught.value).endswith(
        "(pydicom: Unknown encoding 'ISO_IR 999' - using default encoding instead)"
    )
    counting.write("whole.dcm", data)
    read = read_header(counting, "whole.dcm", len(data))
    assert read.messages == ("Unknown encoding 'ISO_IR 999' - using default encoding instead",)


def test_real_truncated_file():
    with pytest.raises(TruncatedPixelData, match="8,130 of them"):
        parse_header(real("MR_truncated.dcm"))


def test_the_header_stops_before_the_pixel_data():
    dataset = parse_header(dicom())
    assert "PixelData" not in dataset
    assert dataset.Rows == 64


# --------------------------------------------------------------------------------------------
# image identity


@pytest.mark.parametrize(
    ("modality", "folder"), [("DX", "xray"), ("CR", "xray"), ("CT", "ct"), ("MR", "mri")]
)
def test_identity_and_folder(modality, folder):
    identity = image_identity(header(modality))
    assert identity == ImageIdentity("Covid1", STUDY, SERIES, modality, folder)


def test_modality_case_does_not_matter():
    assert image_identity(header("DX", extra={"Modality": "dx"})).folder == "xray"


@pytest.mark.parametrize("modality", ["US", "OT", "MG", "PT"])
def test_unsupported_modality(modality):
    with pytest.raises(UnsupportedModality, match=f"modality '{modality}' is not filed"):
        image_identity(header(modality))


@pytest.mark.parametrize(
    "keyword", ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"]
)
@pytest.mark.parametrize("value", [None, ""])
def test_missing_identifier(keyword, value):
    dataset = header(extra={keyword: value})
    with pytest.raises(MissingIdentifier, match=f"^no {keyword} in the header$"):
        image_identity(dataset)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"PatientID": "../etc"}, "unsafe pseudonym '../etc'"),
        ({"PatientID": "raw-site/Covid1"}, "unsafe pseudonym 'raw-site/Covid1'"),
        ({"PatientID": ".."}, "unsafe pseudonym"),
        ({"PatientID": "Covid\x071"}, "unsafe pseudonym"),
        ({"PatientID": "Covid1\\Covid2"}, "unsafe pseudonym"),  # two values
        ({"StudyInstanceUID": "1.2.826.0.abc.7"}, "StudyInstanceUID is not a DICOM UID"),
        ({"StudyInstanceUID": "1.2." + "9" * 66}, "StudyInstanceUID is not a DICOM UID"),
        ({"StudyInstanceUID": "1.02.3"}, "StudyInstanceUID is not a DICOM UID"),
        ({"SeriesInstanceUID": "1.2.826.0.1\x01.5"}, "SeriesInstanceUID is not a DICOM UID"),
        ({"SeriesInstanceUID": "../1.2"}, "SeriesInstanceUID is not a DICOM UID"),
    ],
)
def test_unsafe_identifier(extra, message):
    with pytest.raises(UnsafeIdentifier, match=re.escape(message)):
        image_identity(header(extra=extra))


def test_uuid_pseudonym_is_fine():
    pseudonym = "Covida9a3751d-f614-4d4a-b3ee-c3f5ca1fb858"
    assert image_identity(header(patient_id=pseudonym)).patient_id == pseudonym


def test_dicom_padding_is_stripped_and_nothing_else():
    """Trailing spaces and NULs, in any mix, are padding; nothing else is.

    pydicom and dcmtk read a PatientID padded with NULs without them; anything else is refused
    with the character named.
    """
    for padded in ("Covid1 ", "Covid1\x00", "Covid1\x00 ", "Covid1 \x00\x00 "):
        data = dicom(extra={"PatientID": padded})
        assert pydicom.dcmread(io.BytesIO(data)).PatientID == "Covid1"  # the readers' view
        assert image_identity(parse_header(data)).patient_id == "Covid1"
    for value, named in (
        (" Covid1", "SPACE at 0"),
        ("Covid12\n", "control character U+000A at 7"),
        ("Covid12\t", "control character U+0009 at 7"),
        ("Covid 12", "SPACE at 5"),
        ("Covid\x0012", "control character U+0000 at 5"),
        ("\x00Covid12", "control character U+0000 at 0"),
    ):
        with pytest.raises(
            UnsafeIdentifier, match=re.escape(f"unsafe pseudonym {value!r}: {named}")
        ):
            image_identity(header(extra={"PatientID": value}))


def test_a_refused_patient_id_names_the_character_and_its_position():
    """A PatientID of a time stamp and a UID is refused, naming ':' and where it is.

    The allow-list has no ':'; the refusal says which character, and where.
    """
    patient = "12.02.15-15:49:23-STD-1.3.12.2.1107.5.3.58.40066"
    with pytest.raises(UnsafeIdentifier) as caught:
        image_identity(header(extra={"PatientID": patient}))
    assert str(caught.value) == (
        f"unsafe pseudonym {patient!r}: ':' (COLON) at 11 (allowed: letters, digits and ._-+=@,)"
    )


def test_a_uid_loses_its_nul_padding_only():
    data = dicom()
    assert data.count(STUDY.encode()) == 1
    padded = STUDY[:-1] + "\x00"  # same length: the file stays valid
    identity = image_identity(parse_header(data.replace(STUDY.encode(), padded.encode())))
    assert identity.study_uid == STUDY[:-1]


# --------------------------------------------------------------------------------------------
# DICOM JSON


@pytest.fixture
def rich_header() -> Dataset:
    """A DX header with a VOI LUT Sequence, an OW element, and binary data inside a sequence."""
    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.add_new(0x7FE00010, "OW", b"\x01\x02" * 4)
    item = Dataset()
    item.ReferencedSOPInstanceUID = SOP
    item.add_new(0x00091010, "OB", b"nested")  # ignored by the group number; only the VR counts
    item.add_new(0x00090010, "LO", "NESTED CREATOR")
    extra = {
        "RedPaletteColorLookupTableData": b"\x00\x01" * 8,
        "IconImageSequence": [icon],
        "ReferencedImageSequence": [item],
    }
    return header("DX", voi_lut=True, extra=extra)


def test_header_json_reads_back_with_pydicom(rich_header):
    text = header_json(rich_header).decode("utf-8")
    back = Dataset.from_json(text)
    assert back.PatientID == "Covid1"
    assert back.StudyInstanceUID == STUDY
    assert back.SeriesInstanceUID == SERIES
    assert back.SOPInstanceUID == SOP
    assert back.Modality == "DX"
    assert back.Rows == 64
    assert back.VOILUTSequence == pydicom.Sequence([])


def test_header_json_is_compact_utf8_one_line(rich_header):
    data = header_json(rich_header)
    assert isinstance(data, bytes)
    assert b"\n" not in data
    assert b", " not in data.split(b'"Value"')[0]


def test_header_json_structure(rich_header):
    doc = json.loads(header_json(rich_header))
    keys = list(doc)
    assert all(re.fullmatch(r"[0-9A-F]{8}", key) for key in keys)
    assert keys == sorted(keys, key=lambda k: int(k, 16))
    assert not [key for key in keys if key.startswith("0002")]
    assert "7FE00010" not in doc
    assert doc["00100020"] == {"vr": "LO", "Value": ["Covid1"]}
    assert doc["0020000D"] == {"vr": "UI", "Value": [STUDY]}
    assert doc["0020000E"] == {"vr": "UI", "Value": [SERIES]}
    assert doc["00080018"] == {"vr": "UI", "Value": [SOP]}
    assert doc["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Covid1"}]}
    assert doc["00280010"] == {"vr": "US", "Value": [64]}


def test_binary_elements_have_no_value(rich_header):
    doc = json.loads(header_json(rich_header))
    assert doc["00291010"] == {"vr": "OB"}  # private vendor block
    assert doc["00290010"]["Value"] == ["SYNTHETIC VENDOR HEADER"]  # private tags kept
    assert doc["00281201"] == {"vr": "OW"}
    (icon,) = doc["00880200"]["Value"]
    assert icon["7FE00010"] == {"vr": "OW"}
    (item,) = doc["00081140"]["Value"]
    assert item["00091010"] == {"vr": "OB"}
    for _tag, element in walk(doc):
        assert "InlineBinary" not in element
        assert "BulkDataURI" not in element


def test_voi_lut_sequence_has_no_value(rich_header):
    assert "VOILUTSequence" in rich_header
    doc = json.loads(header_json(rich_header))
    assert doc["00283010"] == {"vr": "SQ"}


def test_voi_lut_sequence_nested_has_no_value():
    nested = Dataset()
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]
    lut.add_new(0x00283006, "OW", b"\x00\x00\x01\x00\x02\x00\x03\x00")
    nested.VOILUTSequence = [lut]
    dataset = header("DX", extra={"SoftcopyVOILUTSequence": [nested]})
    doc = json.loads(header_json(dataset))
    (item,) = doc["00283110"]["Value"]
    assert item["00283010"] == {"vr": "SQ"}


def test_header_json_of_a_parsed_file_has_no_pixel_data():
    data = dicom("CT", header_padding=2000)
    doc = json.loads(header_json(parse_header(data)))
    assert "7FE00010" not in doc
    assert doc["00331010"] == {"vr": "OB"}  # the padding block
    assert doc["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert Dataset.from_json(doc).PatientID == "Covid1"


def test_header_json_without_voi_lut():
    doc = json.loads(header_json(header("DX", voi_lut=False)))
    assert "00283010" not in doc
