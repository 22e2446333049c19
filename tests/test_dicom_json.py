"""The loader's DICOM JSON equals pydicom's own ``Dataset.to_json_dict``, after the product's
documented rules, for synthetic headers that reach every VR of the fast path and for every
real-world file pydicom ships.

The oracle here is pydicom's JSON with the rules applied by this file (no code of the product):
no file meta, no pixel data, no Group Length elements, binary values and the VOI LUT Sequence
without a value, values over ``LARGE_VALUE_BYTES`` without a value.
"""

from __future__ import annotations

import io
import json
import os

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.builders import image
from tests.dicom_oracle import expected_json
from warehouse.dicom.jsonrep import header_json, header_json_dict
from warehouse.dicom.problems import HeaderProblem
from warehouse.dicom.reader import parse_header

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, reading odd files


def part10(dataset: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = syntax
    dataset.file_meta = meta
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    dataset.BitsAllocated = 16
    dataset.PixelData = b"\0" * 32
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


def every_vr(charset="ISO_IR 100", name="Müller^Jürgen") -> Dataset:
    """A header with an element of every VR the fast path converts, and a few it hands on."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.add_new(0x00080000, "UL", 42)  # a Group Length: left out
    ds.add_new(0x00080008, "CS", ["ORIGINAL", "PRIMARY", ""])
    ds.add_new(0x00080020, "DA", "20200401")
    ds.add_new(0x00080030, "TM", "101500.123")
    ds.add_new(0x0008002A, "DT", "20200401101500.123456+0100")
    ds.add_new(0x00080054, "AE", ["PACS1", "ARCHIVE"])
    ds.add_new(0x00081030, "LO", "Thorax  ")
    ds.add_new(0x00081010, "SH", "STATION 1")
    ds.add_new(0x00100010, "PN", name)
    ds.add_new(0x00100020, "LO", "Covid1")
    ds.add_new(0x00101010, "AS", "045Y")
    ds.add_new(0x00181030, "UC", "a long protocol name with\\backslash")
    ds.add_new(0x00204000, "LT", "Comment with\\backslash  ")
    ds.add_new(0x00324000, "LT", "")
    ds.add_new(0x00081080, "LO", "")
    ds.add_new(0x0040A160, "UT", "free text " * 20)
    ds.add_new(0x00400280, "ST", "short text")
    ds.add_new(0x00200032, "DS", ["-175.0", "-175", "2.5e1"])
    ds.add_new(0x00181318, "DS", "")
    ds.add_new(0x00200013, "IS", "12")
    ds.add_new(0x00280010, "US", 4)
    ds.add_new(0x00181310, "US", [0, 64, 64, 0])
    ds.add_new(0x00189219, "SS", -3)
    ds.add_new(0x00189220, "SL", [-70000, 5])
    ds.add_new(0x00209165, "AT", [0x00100020, 0x0020000D])
    ds.add_new(0x00186024, "FD", [0.5, 1.25])
    ds.add_new(0x00186026, "FL", 2.5)
    ds.add_new(0x00091010, "LO", "VENDOR")
    ds.add_new(0x00090010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00091011, "OB", b"\x01\x02")
    ds.add_new(0x00091012, "OW", b"\x01\x02\x03\x04")
    ds.add_new(0x00091013, "OF", b"\x00\x00\x80\x3f")
    ds.add_new(0x00091014, "OD", b"\x00" * 8)
    ds.add_new(0x00091015, "OL", b"\x00" * 4)
    ds.add_new(0x00091016, "OV", b"\x00" * 8)
    ds.add_new(0x00091017, "UL", [1, 2, 4_000_000_000])
    ds.add_new(0x00091018, "SV", [-(2**40), 7])
    ds.add_new(0x00091019, "UV", [2**40])
    ds.add_new(0x00091020, "UN", b"\x01\x02")
    item = Dataset()
    item.CodeValue = "T-D3000"
    item.CodeMeaning = "Chest"
    item.add_new(0x00080000, "UL", 8)
    ds.AnatomicRegionSequence = Sequence([item])
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 12]
    lut.LUTData = b"\0\1" * 4
    ds.VOILUTSequence = Sequence([lut])
    return ds


def iso2022() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.PatientID = "Covid1"
    return ds


def names() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "A^B=C^D="  # an empty trailing group: left out
    ds.ReferringPhysicianName = "Doe^John=="
    ds.PerformingPhysicianName = ["One", "Two=Zwei"]
    ds.PatientID = "Covid1"
    return ds


SYNTHETIC = {
    "every-vr-latin1": part10(every_vr()),
    "every-vr-utf8": part10(every_vr("ISO_IR 192", "Müller^Jürgen=ミュラー^ユルゲン=みゅらー")),
    "iso2022": part10(iso2022()),  # code extensions: pydicom decodes
    "implicit": part10(every_vr(), ImplicitVRLittleEndian),  # no VRs in the file
    "person-names": part10(names()),
    "dx": image("Covid1", "DX", voi_lut=True)[1],
    "ct": image("Covid2", "CT")[1],
    "mr-padded": image("Covid3", "MR", header_padding=2000)[1],
    "cr-odd-values": image("Covid4", "CR", extra={"PatientName": "A=B", "StudyDescription": ""})[1],
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_metadata_equals_pydicom(name):
    data = SYNTHETIC[name]
    assert header_json_dict(parse_header(data)) == expected_json(data)


def test_every_fast_path_vr_is_in_the_synthetic_header():
    vrs = {elem.VR for elem in pydicom.dcmread(io.BytesIO(SYNTHETIC["every-vr-latin1"]))}
    fast = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH"}
    fast |= {"SL", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "US", "UT", "UV"}
    binary = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
    assert fast | binary | {"SQ"} <= vrs


def test_documented_rules_hold():
    doc = header_json_dict(parse_header(SYNTHETIC["every-vr-latin1"]))
    assert "00080000" not in doc  # Group Length
    assert "00080000" not in doc["00082218"]["Value"][0]
    assert doc["00283010"] == {"vr": "SQ"}  # VOI LUT Sequence
    for key in ("00091011", "00091012", "00091013", "00091014", "00091015", "00091016"):
        assert set(doc[key]) == {"vr"}
    assert doc["00090010"] == {"vr": "LO", "Value": ["PRIVATE CREATOR"]}
    named = header_json_dict(parse_header(SYNTHETIC["person-names"]))
    assert named["00100010"]["Value"] == [{"Alphabetic": "A^B", "Ideographic": "C^D"}]
    assert named["00080090"]["Value"] == [{"Alphabetic": "Doe^John"}]


def test_header_json_reads_back_with_pydicom():
    text = header_json(parse_header(SYNTHETIC["every-vr-utf8"])).decode()
    back = pydicom.Dataset.from_json(text)
    assert back.PatientID == "Covid1"
    assert back.ImagePositionPatient == [-175.0, -175.0, 25.0]
    assert back.AnatomicRegionSequence[0].CodeMeaning == "Chest"
    assert "VOILUTSequence" in back and len(back.VOILUTSequence) == 0


def test_values_that_cannot_be_numbers_are_left_out():
    data = image("Covid5", "CT", extra={"SliceThickness": "9.87654321"})[1]
    assert data.count(b"9.87654321") == 1
    data = data.replace(b"9.87654321", b"not-a-numb")  # pydicom would not write it
    left_out: list[str] = []
    doc = json.loads(header_json(parse_header(data), left_out))
    assert "00180050" not in doc
    assert left_out == ["00180050"]
    assert doc == expected_json(data)


def test_readable_text_that_breaks_its_vr_rules_is_kept_as_it_is():
    """pydicom's strict mode would leave out a UI value with letters; the export keeps what
    the file says, as pydicom's default reading does."""
    data = image("Covid6", "DX", extra={"StudyInstanceUID": "1.2.abc"})[1]
    doc = header_json_dict(parse_header(data))
    assert doc["0020000D"] == {"vr": "UI", "Value": ["1.2.abc"]}
    assert doc == expected_json(data)


def test_un_elements_get_their_dictionary_vr_and_value():
    """A file re-written by a tool that lost its VRs: explicit VR UN for known tags."""
    data = bytearray(image("Covid7", "CT")[1])
    for tag in (b"\x08\x00\x16\x00UI", b"\x08\x00\x20\x00DA", b"\x08\x00\x08\x00CS"):
        at = data.index(tag)
        length = int.from_bytes(data[at + 6 : at + 8], "little")
        data[at : at + 8 + length] = (
            tag[:4]
            + b"UN\0\0"
            + length.to_bytes(4, "little")
            + bytes(data[at + 8 : at + 8 + length])
        )
    data = bytes(data)
    doc = header_json_dict(parse_header(data))
    assert doc["00080016"] == {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}
    assert doc["00080020"]["vr"] == "DA" and doc["00080020"]["Value"]
    assert doc["00080008"]["vr"] == "CS" and doc["00080008"]["Value"]
    assert doc == expected_json(data)


# --------------------------------------------------------------------------------------------
# vendor private blocks: the private dictionary, by the block's private creator

KIB = 1024


def vendor_header(un: bool = False) -> Dataset:
    """An MR header with the private blocks of three vendors as their exports write them:
    Siemens CSA headers (80 KiB and 20 KiB, over the 16 KiB fetched), GE's identification and
    parameter blocks (a 20 KiB histogram), a Philips stack sequence of 300 items (24 KiB), and
    a block of a creator no dictionary knows. The GE parameter block sits at block 0x12 of
    group 0043 and the unknown creator at 0x10: the block's creator decides, not the group.
    With ``un``, the values of the private elements are written as VR UN (a file re-written by
    a tool that lost their VRs)."""

    def private(tag: int, vr: str, value, raw: bytes | None = None) -> None:
        if un and raw is not None:
            ds.add_new(tag, "UN", raw)
        else:
            ds.add_new(tag, vr, value)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID = "Covid1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.Modality = "MR"
    ds.add_new(0x00090010, "LO", "GEMS_IDEN_01")
    private(0x00091001, "LO", "GE_GENESIS_FF", b"GE_GENESIS_FF ")
    ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
    private(0x0019100B, "DS", "3130", b"3130")
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00290011, "LO", "SIEMENS MEDCOM HEADER2")
    private(0x00291008, "CS", "IMAGE NUM 4", b"IMAGE NUM 4 ")
    private(0x00291009, "LO", "20100114", b"20100114")
    csa_image, csa_series = b"SV10\4\3\2" + bytes(20 * KIB), b"SV10\4\3\2" + bytes(80 * KIB)
    private(0x00291010, "OB", csa_image, csa_image)
    private(0x00291018, "CS", "MR", b"MR")
    private(0x00291020, "OB", csa_series, csa_series)
    private(0x00291160, "LO", "com", b"com ")
    ds.add_new(0x00430010, "LO", "ACME 1.0")
    ds.add_new(0x00430012, "LO", "GEMS_PARM_01")
    private(0x00431029, "OB", bytes(20 * KIB), bytes(20 * KIB))  # ACME's: unknown
    private(0x00431201, "SS", -3, (-3).to_bytes(2, "little", signed=True))
    private(0x00431229, "OB", bytes(20 * KIB), bytes(20 * KIB))  # GE's histogram tables
    private(0x0043122A, "OB", bytes(100), bytes(100))
    ds.add_new(0x20010010, "LO", "Philips Imaging DD 001")
    ds.add_new(0x20050010, "LO", "Philips MR Imaging DD 001")  # (odd: padded with a space)
    private(0x20011003, "FL", 1000.0, b"\x00\x00\x7a\x44")
    stack = []
    for n in range(300):
        item = Dataset()
        item.add_new(0x20010010, "LO", "Philips Imaging DD 001")
        item.add_new(0x20011003, "FL", float(n))
        item.ImageComments = f"stack {n} " + "x" * 50
        stack.append(item)
    if not un:  # (a UN sequence's value is implicit VR: left to pydicom's own tests)
        ds.add_new(0x2001105F, "SQ", Sequence(stack))
    return ds


VENDOR = {
    "implicit": (False, ImplicitVRLittleEndian),
    "explicit": (False, ExplicitVRLittleEndian),
    "explicit-un": (True, ExplicitVRLittleEndian),
}


@pytest.mark.parametrize("name", sorted(VENDOR))
def test_vendor_private_elements_get_their_private_dictionary_vr(name):
    """pydicom (and dcmtk) give a private element the VR its private creator's dictionary
    entry names: a CSA header skipped unread is OB, not UN, in implicit VR files too."""
    un, syntax = VENDOR[name]
    data = part10(vendor_header(un), syntax)
    doc = header_json_dict(parse_header(data))
    for key in ("00291010", "00291020", "00431229"):  # over 16 KiB: no value
        assert doc[key] == {"vr": "OB"}, key
    # ACME 1.0 is in no dictionary: its element has the VR the file gives, or UN
    assert doc["00431029"] == {"vr": "OB" if name == "explicit" else "UN"}
    assert doc["00290010"] == {"vr": "LO", "Value": ["SIEMENS CSA HEADER"]}
    assert doc["00291008"] == {"vr": "CS", "Value": ["IMAGE NUM 4"]}
    assert doc["00431201"] == {"vr": "SS", "Value": [-3]}
    assert doc["20011003"] == {"vr": "FL", "Value": [1000.0]}
    if not un:  # a private sequence over 16 KiB: fetched and kept, items and all
        assert len(data) > 100 * KIB and doc["2001105F"]["vr"] == "SQ"
        assert len(doc["2001105F"]["Value"]) == 300
    assert doc == expected_json(data)


def test_skipped_values_of_ambiguous_or_long_un_vrs_get_pydicom_s_vr():
    """Overlay Data (OB or OW) of an implicit VR file is OW, as pydicom resolves it; a public
    element sent as UN gets its dictionary VR below 64 KiB and stays UN from there."""
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        ds = vendor_header()
        ds.add_new(0x60000010, "US", 512)
        ds.add_new(0x60000011, "US", 512)
        ds.add_new(0x60003000, "OW", bytes(32 * KIB))
        if syntax == ExplicitVRLittleEndian:
            ds.add_new(0x00204000, "UN", b"y" * 20_000)
            ds.add_new(0x00081030, "UN", b"x" * 70_000)
        data = part10(ds, syntax)
        doc = header_json_dict(parse_header(data))
        assert doc["60003000"] == {"vr": "OW"}
        if syntax == ExplicitVRLittleEndian:
            assert doc["00204000"] == {"vr": "LT"}
            assert doc["00081030"] == {"vr": "UN"}
        assert doc == expected_json(data)


# --------------------------------------------------------------------------------------------
# every real-world file pydicom ships


def real_files() -> list[str]:
    return sorted(f for f in pydicom.data.get_testdata_files() if os.path.isfile(f))


def parsed_real_files():
    for path in real_files():
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            yield path, data, parse_header(data)
        except HeaderProblem:
            continue


def test_metadata_of_every_real_file_equals_pydicom():
    checked = 0
    for path, data, dataset in parsed_real_files():
        mine = header_json_dict(dataset)
        assert mine == expected_json(data), os.path.basename(path)
        pydicom.Dataset.from_json(json.dumps(mine))
        checked += 1
    assert checked >= 90  # every readable image among pydicom's files


def test_private_creators_are_kept_with_their_values():
    path = pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm")
    with open(path, "rb") as handle:
        doc = header_json_dict(parse_header(handle.read()))
    assert doc["00090010"] == {"vr": "LO", "Value": ["HMC"]}
    assert doc["00190010"]["vr"] == "LO" and doc["00190010"]["Value"]
    assert doc["00090011"]["vr"] == "LO" and doc["00090011"]["Value"]


def test_a_header_without_a_character_set_is_read_quietly_on_the_fast_path(caplog, monkeypatch):
    """No (0008,0005): the default repertoire. pydicom resolves it to a bare string; the reader
    and the JSON conversion take it as one codec (no "Unknown encoding 'i'" warnings, the
    fast path kept: pydicom converts what it converts when the header names the default
    repertoire, ISO_IR 6), and the metadata still equals pydicom's."""
    from warehouse.dicom import jsonrep
    from warehouse.dicom.identity import image_identity

    handed_on: list[int] = []
    real = jsonrep._pydicom_element

    def recording(header, tag):
        handed_on.append(int(tag))
        return real(header, tag)

    monkeypatch.setattr(jsonrep, "_pydicom_element", recording)
    seen = {}
    for charset in ("ISO_IR 6", None):
        dataset = every_vr()
        if charset is None:
            del dataset.SpecificCharacterSet
        else:
            dataset.SpecificCharacterSet = charset
        dataset.PatientName = "Smith^John"
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = "1.2.3", "1.2.3.4"
        dataset.Modality = "CT"
        data = part10(dataset)
        handed_on.clear()
        caplog.clear()
        with caplog.at_level("WARNING"):
            header = parse_header(data)
            assert image_identity(header).patient_id == "Covid1"
            assert header_json_dict(header) == expected_json(data)
        assert [r.getMessage() for r in caplog.records if "ncoding" in r.getMessage()] == []
        seen[charset] = set(handed_on)
    # (the Specific Character Set element itself aside)
    assert seen[None] == seen["ISO_IR 6"] - {0x00080005} and len(seen[None]) <= 4
