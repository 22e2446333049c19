"""The loader's fast DICOM JSON conversion gives exactly what pydicom gives."""

from __future__ import annotations

import io
import json

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.builders import image
from warehouse.components.dicom import (
    _no_bulk_data,
    _strip_bulk,
    header_json,
    header_json_dict,
    parse_header,
)


def _reference(dataset) -> dict:
    """pydicom's own DICOM JSON, with binary values and the VOI LUT Sequence emptied."""
    return _strip_bulk(
        dataset.to_json_dict(
            bulk_data_threshold=0,
            bulk_data_element_handler=_no_bulk_data,
            suppress_invalid_tags=True,
        )
    )


def _file(dataset: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = syntax
    dataset.file_meta = meta
    dataset.BitsAllocated = 16
    dataset.PixelData = b"\0" * 32
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


def _parse_twice(data: bytes):
    """Two independent parses: pydicom converts values in place, so each side gets its own."""
    return parse_header(data, True), parse_header(data, True)


def _iso2022() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.PatientID = "Covid1"
    return ds


def _rich(charset="ISO_IR 100", name="Müller^Jürgen=ミュラー^ユルゲン=みゅらー") -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PatientName = name if charset != "ISO_IR 100" else "Müller^Jürgen"
    ds.PatientID = "Covid1"
    ds.StudyDescription = "Thorax  "
    ds.ImagePositionPatient = ["-175.0", "-175", "2.5e1"]
    ds.PixelSpacing = ["0.683594", "0.683594"]
    ds.InstanceNumber = "12"
    ds.Rows = 4
    ds.add_new(0x00181310, "US", [0, 64, 64, 0])
    ds.add_new(0x00209165, "AT", [0x00100020, 0x0020000D])
    ds.add_new(0x00181318, "DS", "")
    ds.add_new(0x00280030, "DS", ["1.5", "2.5"])
    ds.add_new(0x00186024, "FD", [0.5, 1.25])
    ds.add_new(0x00186026, "FL", 2.5)
    ds.add_new(0x00091010, "LO", "VENDOR")
    ds.add_new(0x00091011, "OB", b"\x01\x02")
    ds.add_new(0x00204000, "LT", "Comment with\\backslash  ")
    ds.add_new(0x00081030, "LO", "")
    item = Dataset()
    item.CodeValue = "T-D3000"
    item.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = Sequence([item])
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 12]
    lut.LUTData = b"\0\1" * 4
    ds.VOILUTSequence = Sequence([lut])
    return ds


@pytest.mark.parametrize(
    "data",
    [
        _file(_rich()),
        _file(_rich("ISO_IR 192")),
        _file(_iso2022()),  # code extensions: pydicom decodes
        _file(_rich(), ImplicitVRLittleEndian),  # no VRs in the file: pydicom decides
        image("Covid1", "DX", voi_lut=True)[1],
        image("Covid2", "CT")[1],
        image("Covid3", "MR", header_padding=2000)[1],
        image("Covid4", "CR", extra={"PatientName": "A=B", "StudyDescription": ""})[1],
    ],
    ids=["latin1", "utf8", "iso2022", "implicit", "dx", "ct", "mr", "odd-values"],
)
def test_fast_conversion_equals_pydicom(data):
    fast, reference = _parse_twice(data)
    assert header_json_dict(fast) == _reference(reference)


def test_header_json_reads_back_with_pydicom():
    fast, _ = _parse_twice(_file(_rich("ISO_IR 192")))
    back = pydicom.Dataset.from_json(header_json(fast).decode())
    assert back.PatientID == "Covid1"
    assert back.ImagePositionPatient == [-175.0, -175.0, 25.0]
    assert back.AnatomicRegionSequence[0].CodeMeaning == "Chest"
    assert "VOILUTSequence" in back and len(back.VOILUTSequence) == 0


def test_values_that_cannot_be_numbers_are_left_out():
    data = image("Covid5", "CT", extra={"SliceThickness": "9.87654321"})[1]
    assert data.count(b"9.87654321") == 1
    data = data.replace(b"9.87654321", b"not-a-numb")  # pydicom would not write it
    fast, reference = _parse_twice(data)
    result = header_json_dict(fast)
    assert "00180050" not in result
    assert result == _reference(reference)
    json.dumps(result)


def test_readable_text_that_breaks_its_vr_rules_is_kept_as_it_is():
    """pydicom leaves out a UI value with letters; the export keeps what the file says."""
    data = image("Covid6", "DX", extra={"StudyInstanceUID": "1.2.abc"})[1]
    fast, reference = _parse_twice(data)
    result = header_json_dict(fast)
    assert result["0020000D"] == {"vr": "UI", "Value": ["1.2.abc"]}
    assert "0020000D" not in _reference(reference)
    assert {k: v for k, v in result.items() if k != "0020000D"} == _reference(reference)
