"""Header reading is total: real-world files, every cut of a real header, and hostile shapes
(deflated, huge sequences, deep nesting, large values) each give a header or a true reason,
never an unexpected exception."""

from __future__ import annotations

import io
import json
import os
import struct
import tracemalloc

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_partial
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from tests.builders import uid
from tests.test_dicom import PIXEL_TAG, CountingStorage, dicom, real
from tests.test_real_world import CONFLICTING, EXPECTED, FILED, upload_name
from warehouse.core.keys import UnsafeIdentifier
from warehouse.core.reasons import Reason
from warehouse.dicom.elements import MAX_SEQUENCE_ITEMS
from warehouse.dicom.identity import image_identity
from warehouse.dicom.jsonrep import header_json, header_json_dict
from warehouse.dicom.problems import (
    HeaderProblem,
    HeaderTooComplex,
    HeaderTooLarge,
    NoFileMeta,
    NotAnImage,
    NotDicom,
    TruncatedHeader,
    TruncatedPixelData,
    UnreadableHeader,
)
from warehouse.dicom.reader import FIRST_READ_BYTES, MAX_HEADER_ELEMENTS, parse_header, read_header

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def counting(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    return CountingStorage(root)


def real_files() -> list[str]:
    return sorted(f for f in pydicom.data.get_testdata_files() if os.path.isfile(f))


# --------------------------------------------------------------------------------------------
# real files with a true reason


def test_a_sequence_across_the_first_range_is_read(counting):
    """waveform_ecg.dcm: a 290 KB waveform whose sequence crosses the first 64 KiB."""
    data = real("waveform_ecg.dcm")
    assert len(data) > 4 * FIRST_READ_BYTES
    counting.write("ecg.dcm", data)
    with pytest.raises(NotAnImage, match=r"12-lead ECG Waveform Storage"):
        read_header(counting, "ecg.dcm", len(data))
    assert counting.reads == 0


@pytest.mark.parametrize(
    ("name", "sop_class"),
    [
        ("test-SR.dcm", "Comprehensive SR Storage"),
        ("reportsi.dcm", "Basic Text SR Storage"),
        ("rtplan.dcm", "RT Plan Storage"),
    ],
)
def test_objects_without_pixel_data_are_not_images(name, sop_class):
    with pytest.raises(NotAnImage, match=f"^no pixel data: not an image \\({sop_class}"):
        parse_header(real(name))


@pytest.mark.parametrize(
    "name", ["ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm", "rtstruct.dcm"]
)
def test_bare_data_sets_are_named_for_what_they_miss(name):
    with pytest.raises(
        NoFileMeta, match="without the 128-byte preamble, DICM prefix and file meta"
    ):
        parse_header(real(name))


def bare_rt_plan(beams: int) -> bytes:
    """An RT Plan as a bare implicit VR data set (no preamble, no file meta), its Beam
    Sequence of undefined length: 69 KB for 120 beams, so the first 64 KiB range ends inside
    the sequence."""
    plan = Dataset()
    plan.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
    plan.SOPInstanceUID = uid("plan", beams)
    plan.PatientID = "Covid1"
    plan.StudyInstanceUID, plan.SeriesInstanceUID = uid("plan"), uid("plan", "series")
    plan.Modality = "RTPLAN"
    plan.RTPlanLabel = "Thorax"
    items = []
    for number in range(beams):
        beam = Dataset()
        beam.BeamNumber = number
        beam.BeamName = f"beam {number}"
        beam.BeamDescription = "arc " * 130
        items.append(beam)
    plan.BeamSequence = Sequence(items)
    plan["BeamSequence"].is_undefined_length = True
    out = io.BytesIO()
    plan.save_as(out, implicit_vr=True, little_endian=True)
    return out.getvalue()


def test_a_bare_data_set_larger_than_the_first_range_has_no_file_meta(counting):
    """Its first range ends inside an element: no evidence against the elements before it."""
    data = bare_rt_plan(120)
    assert FIRST_READ_BYTES < len(data) < 2 * FIRST_READ_BYTES
    assert data[128:132] != b"DICM"
    read = pydicom.dcmread(io.BytesIO(data), force=True)  # pydicom reads it with force=True
    assert len(read.BeamSequence) == 120
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(io.BytesIO(data))  # and only with it
    counting.write("plan.dcm", data)
    with pytest.raises(NoFileMeta, match="without the 128-byte preamble, DICM prefix"):
        read_header(counting, "plan.dcm", len(data))
    assert counting.ranges == [(0, FIRST_READ_BYTES)]
    for cut in (FIRST_READ_BYTES + 10, len(data) - 1):  # a bare data set, cut: still bare
        with pytest.raises(NoFileMeta):
            parse_header(data[:cut])


def test_a_range_of_noise_after_a_first_element_is_not_a_bare_data_set():
    """Only whole elements count: one element, then noise whose first "element" would end
    far past the end of the file, is not a data set (pydicom's force=True reads one element
    of anything)."""
    data = bare_rt_plan(1)
    first = 8 + int.from_bytes(data[4:8], "little")  # (0008,0016), implicit VR
    assert pydicom.dcmread(io.BytesIO(data[:first]), force=True).SOPClassUID.endswith(".481.5")
    noise = bytes(range(256)) * (FIRST_READ_BYTES // 256)
    with pytest.raises(NotDicom):
        parse_header(data[:first] + noise)


@pytest.mark.parametrize("name", ["README.txt", "crayons.icc", "zipMR.gz", "test1.json"])
def test_other_files_are_not_dicom(name):
    with pytest.raises(NotDicom, match=r"^not a DICOM file"):
        parse_header(real(name))


def test_every_real_file_gives_its_own_header_or_reason():
    """Each of pydicom's files, read alone: its identity, or exactly the reason the loader
    reports for it (`test_real_world.EXPECTED`; a file the loader finds a duplicate of
    another is read fine here)."""
    outcomes, expected = {}, {}
    for path in real_files():
        name = upload_name(path)
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            image_identity(parse_header(data))
            outcomes[name] = FILED
        except (HeaderProblem, UnsafeIdentifier) as exc:
            outcomes[name] = exc.reason.value
        expected[name] = FILED if EXPECTED[name] == CONFLICTING else EXPECTED[name]
    assert outcomes == expected


# --------------------------------------------------------------------------------------------
# every cut of every real header


def cut_points(data: bytes) -> list[int]:
    """Every top-level element boundary of a file (file meta included), a point inside each
    element, and points inside the pixel data."""
    try:
        dataset = read_partial(io.BytesIO(data), force=True)
    except Exception:  # noqa: BLE001 - a file pydicom cannot parse has only byte cuts
        return sorted({1, 10, 131, 132, 133, len(data) // 2, len(data) - 1})
    points = {1, 10, 131, 132, 133, 140}
    for elements in (dataset.file_meta._dict.values(), dataset._dict.values()):
        for raw in elements:
            if not isinstance(raw, RawDataElement) or raw.value_tell is None:
                continue
            points.update({raw.value_tell - 2, raw.value_tell})
            if raw.length != 0xFFFFFFFF:
                points.update({raw.value_tell + raw.length // 2, raw.value_tell + raw.length})
    return sorted(p for p in points if 0 < p < len(data))


def test_every_other_cut_of_a_real_file_gives_a_reason_never_an_exception():
    """A cut file is never filed: each cut gives a HeaderProblem, or (a cut after the last
    element a reader needs, such as trailing padding) the same header as the whole file.

    The cuts of a Part 10 header have their exact reasons below; here are the others: cuts
    of files that are not Part 10 or are deflated, and cuts after the header (inside the
    pixel data and past it)."""
    cuts = 0
    for path in real_files():
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            whole = parse_header(data)
        except HeaderProblem:
            whole = None
        layout = header_layout(data)
        for point in cut_points(data):
            if layout is not None and point <= layout[1]:
                continue  # inside the header: below
            cuts += 1
            try:
                cut = parse_header(data[:point])
            except HeaderProblem as exc:
                assert isinstance(exc.reason, Reason)
                continue
            # accepted: only a cut past the pixel data, giving the same header
            assert whole is not None, (path, point)
            assert header_json_dict(cut) == header_json_dict(whole), (path, point)
    assert cuts > 500


#: Explicit VRs whose element header is 12 bytes (a 4-byte length after 2 reserved bytes).
LONG_HEADER_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
#: How many of a data set's first elements every byte cut covers (after the file meta).
FIRST_ELEMENTS = 3


def header_layout(data: bytes) -> tuple[list[int], int] | None:
    """Where a Part 10 file's top-level data set elements start, by pydicom's own reading of
    it, and where its header ends (the start of its pixel data element, or the end of the
    file); None for a file that is not Part 10, is deflated, or pydicom cannot read."""
    if data[128:132] != b"DICM":
        return None
    stream = io.BytesIO(data)
    try:
        dataset = read_partial(stream, stop_when=lambda tag, vr, length: tag >= 0x7FE00008)
    except Exception:  # noqa: BLE001 - pydicom cannot read it: no layout to cut along
        return None
    if dataset.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return None
    header_end = stream.tell()  # (pydicom rewinds to the start of the element it stopped at)
    starts = []
    for element in dataset._dict.values():
        raw = isinstance(element, RawDataElement)
        value_at = element.value_tell if raw else element.file_tell
        implicit = element.is_implicit_VR if raw else dataset.is_implicit_VR
        long_header = not implicit and element.VR in LONG_HEADER_VRS
        starts.append(value_at - (12 if long_header else 8))
    return starts, header_end


def cut_reason(data: bytes, point: int) -> str:
    try:
        parse_header(data[:point])
    except HeaderProblem as exc:
        return exc.reason.value
    return "read"


def expected_cut_reason(starts: list[int], header_end: int, point: int) -> set[str]:
    """What a cut at ``point`` inside the header is: at an element boundary of the data set,
    an object that ends complete before any pixel data (as the file cannot say otherwise);
    anywhere else, including the end of the file meta, a truncated header."""
    if point in starts[1:] or point == header_end:
        return {Reason.MISSING_PIXEL_DATA.value, Reason.NOT_AN_IMAGE.value}
    return {Reason.TRUNCATED_HEADER.value}


def _real_layouts():
    """Yield each real file whose header pydicom reads: its path, bytes and `header_layout`."""
    for path in real_files():
        with open(path, "rb") as handle:
            data = handle.read()
        layout = header_layout(data)
        if layout is not None:
            yield path, data, layout


def test_every_byte_cut_of_the_file_meta_and_first_elements_is_a_truncated_header():
    """Every real Part 10 file cut at every byte from inside its DICM prefix to the end of
    its first data set elements: "truncated DICOM header", or at an element boundary "image
    without pixel data" / "not an image". pydicom's own reading says where elements start."""
    files = cuts = 0
    for path, data, (starts, header_end) in _real_layouts():
        files += 1
        end = starts[FIRST_ELEMENTS] if len(starts) > FIRST_ELEMENTS else header_end
        for point in range(129, min(end + 1, len(data))):
            cuts += 1
            expected = expected_cut_reason(starts, header_end, point)
            assert cut_reason(data, point) in expected, (upload_name(path), point)
    assert files > 140 and cuts > 40_000


def test_cuts_through_the_rest_of_every_header_are_truncated_headers():
    """Cuts at 60 points spread over the rest of each real header (inside sequences at any
    depth, where pydicom meets the end of the file reading an item), and on each side of
    every top-level element boundary (the last byte of a value, the first of a tag): each
    has its true reason."""
    cuts = 0
    for path, data, (starts, header_end) in _real_layouts():
        begin = starts[FIRST_ELEMENTS] if len(starts) > FIRST_ELEMENTS else header_end
        points = set(np.linspace(begin, header_end, 60, dtype=int).tolist())
        points |= {p + d for p in starts[FIRST_ELEMENTS:] + [header_end] for d in (-1, 1)}
        for point in sorted(p for p in points if begin <= p <= header_end and p < len(data)):
            cuts += 1
            expected = expected_cut_reason(starts, header_end, point)
            assert cut_reason(data, point) in expected, (upload_name(path), point)
    assert cuts > 10_000


def test_cut_encapsulated_pixel_data_is_truncated(counting):
    data = real("examples_jpeg2k.dcm")  # 154 KB of JPEG 2000 fragments
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID.is_compressed
    assert len(data) > 2 * FIRST_READ_BYTES
    counting.write("whole.dcm", data)
    result = read_header(counting, "whole.dcm", len(data))
    # the first range, then the last 4 KiB to see the sequence delimiter
    assert counting.ranges == [(0, FIRST_READ_BYTES), (len(data) - 4096, len(data))]
    assert result.requests == 2
    counting.write("cut.dcm", data[:-5000])
    with pytest.raises(TruncatedPixelData, match="without its sequence delimiter"):
        read_header(counting, "cut.dcm", len(data) - 5000)


# --------------------------------------------------------------------------------------------
# hostile and unusual shapes


def _part10(dataset: Dataset, syntax=ExplicitVRLittleEndian, sop_class=None) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class or dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    dataset.file_meta = meta
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _image(modality="CT", rows=256, columns=256, noise=False) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = uid("hostile", modality, rows)
    ds.PatientID = "Covid1"
    ds.StudyInstanceUID = uid("Covid1", "study")
    ds.SeriesInstanceUID = uid("Covid1", "study", "series")
    ds.Modality = modality
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, rows * columns, dtype=np.uint16) if noise else None
    ds.PixelData = pixels.tobytes() if noise else b"\0\1" * rows * columns
    return ds


def test_a_deflated_image_larger_than_the_first_range(counting):
    data = _part10(_image(rows=384, columns=384, noise=True), DeflatedExplicitVRLittleEndian)
    assert len(data) > 2 * FIRST_READ_BYTES  # noise does not deflate much
    counting.write("deflated.dcm", data)
    result = read_header(counting, "deflated.dcm", len(data))
    assert image_identity(result.dataset).patient_id == "Covid1"
    assert json.loads(header_json(result.dataset))["00100020"]["Value"] == ["Covid1"]
    counting.write("deflated-cut.dcm", data[:-1000])
    with pytest.raises(TruncatedPixelData, match="deflated"):
        read_header(counting, "deflated-cut.dcm", len(data) - 1000)


def test_an_enhanced_multiframe_header_larger_than_the_first_range(counting):
    ds = _image(rows=64, columns=64)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    frames = 1200
    ds.NumberOfFrames = frames
    ds.PixelData = b"\0\1" * 64 * 64 * frames
    groups = []
    for n in range(frames):
        position, plane = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(n)]
        plane.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([position])
        frame.PlaneOrientationSequence = Sequence([plane])
        groups.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    data = _part10(ds)
    assert data.index(PIXEL_TAG) > FIRST_READ_BYTES
    counting.write("enhanced.dcm", data)
    result = read_header(counting, "enhanced.dcm", len(data))
    doc = json.loads(header_json(result.dataset))
    assert len(doc["52009230"]["Value"]) == frames
    assert doc["52009230"]["Value"][-1]["00209113"]["Value"][0]["00200032"]["Value"] == [
        0.0,
        0.0,
        float(frames - 1),
    ]
    assert result.bytes_read < data.index(PIXEL_TAG) + 2 * FIRST_READ_BYTES


def test_a_large_private_text_value_is_never_fetched(counting):
    data = dicom(extra={})
    at = data.index(PIXEL_TAG)
    text = b"x" * (20 * 1024 * 1024)
    private = (
        struct.pack("<HH2sH", 0x7FDF, 0x0010, b"LO", 4)
        + b"BIG "
        + struct.pack("<HH2sHI", 0x7FDF, 0x1000, b"UT", 0, len(text))
        + text
    )
    data = data[:at] + private + data[at:]
    counting.write("big.dcm", data)
    result = read_header(counting, "big.dcm", len(data))
    assert result.bytes_read < 4 * FIRST_READ_BYTES
    doc = json.loads(header_json(result.dataset))
    assert doc["7FDF1000"] == {"vr": "UT"}
    assert doc["7FDF0010"] == {"vr": "LO", "Value": ["BIG"]}


def test_a_header_over_the_cap_is_refused(counting):
    data = dicom(extra={"ReferencedImageSequence": [_item(n) for n in range(3000)]})
    counting.write("capped.dcm", data)
    with pytest.raises(HeaderTooLarge, match="more than 100,000 bytes"):
        read_header(counting, "capped.dcm", len(data), max_header_bytes=100_000)
    assert read_header(counting, "capped.dcm", len(data)).dataset.PatientID == "Covid1"


def _item(n: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPInstanceUID = uid("item", n)
    return item


def test_a_garbage_file_is_refused_from_its_first_range(counting):
    blob = os.urandom(1024) * 4096  # 4 MiB of noise
    counting.write("noise.dcm", blob)
    with pytest.raises(NotDicom):
        read_header(counting, "noise.dcm", len(blob))
    assert counting.ranges == [(0, FIRST_READ_BYTES)]


def test_a_garbage_file_behind_a_valid_preamble_costs_little(counting):
    blob = b"\0" * 128 + b"DICM" + os.urandom(1024) * 2048
    counting.write("dicm-noise.dcm", blob)
    with pytest.raises(HeaderProblem):
        read_header(counting, "dicm-noise.dcm", len(blob))
    assert sum(end - start for start, end in counting.ranges) < 8 * FIRST_READ_BYTES


def _nested(depth: int) -> bytes:
    """A private sequence nested ``depth`` deep, undefined lengths, explicit VR little endian."""
    opening = struct.pack("<HH2sHI", 0x7FDF, 0x1000, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    leaf = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 2) + b"X "
    body = leaf
    for _ in range(depth):
        body = opening + item + body + item_end + sequence_end
    return struct.pack("<HH2sH", 0x7FDF, 0x0010, b"LO", 4) + b"DEEP" + body[len(b"") :]


def test_sequences_nested_thousands_deep_are_refused_with_a_reason():
    data = dicom()
    at = data.index(PIXEL_TAG)
    with pytest.raises(UnreadableHeader, match="nested too deeply"):
        parse_header(data[:at] + _nested(5000) + data[at:])
    shallow = parse_header(data[:at] + _nested(20) + data[at:])
    doc = json.loads(header_json(shallow))
    depth, element = 0, doc["7FDF1000"]
    while "7FDF1000" in element["Value"][0]:
        depth, element = depth + 1, element["Value"][0]["7FDF1000"]
    assert depth == 19


def _wide(items: int) -> bytes:
    """(0008,1140) as a defined-length sequence of ``items`` small items (built as bytes: 100,000
    pydicom datasets take seconds to write)."""
    value = struct.pack("<HH2sH", 0x0008, 0x1155, b"UI", 8) + b"1.2.3.4\x00"
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(value)) + value
    body = item * items
    return struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, len(body)) + body


def _with_element(element: bytes, tag: int) -> bytes:
    """A built image (explicit VR little endian) with ``element`` inserted in tag order."""
    data = dicom()
    dataset = read_partial(io.BytesIO(data))
    after = next(raw for t, raw in dataset._dict.items() if t > tag)
    at = after.value_tell - (12 if after.VR in ("OB", "OW", "SQ", "UN", "UT", "UC") else 8)
    return data[:at] + element + data[at:]


def test_a_sequence_of_a_hundred_thousand_items_is_written_without_them():
    # (0008,1150) ReferencedSOPClassUID exists in the synthetic header? insert before a later tag
    data = _with_element(_wide(100_000), 0x00081140)
    left_out: list[str] = []
    doc = json.loads(header_json(parse_header(data), left_out))
    assert doc["00081140"] == {"vr": "SQ"}  # over MAX_SEQUENCE_BYTES: never fetched
    assert left_out == ["00081140"]
    # fewer bytes than a sequence may keep, but more items than are worth converting
    data = _with_element(_wide(MAX_SEQUENCE_ITEMS + 1000), 0x00081140)
    left_out = []
    doc = json.loads(header_json(parse_header(data), left_out))
    assert doc["00081140"] == {"vr": "SQ"} and left_out == ["00081140"]
    small = parse_header(_with_element(_wide(50), 0x00081140))
    assert len(json.loads(header_json(small))["00081140"]["Value"]) == 50


def test_a_cut_inside_a_nested_sequence_is_a_truncated_header():
    data = dicom(extra={"ReferencedImageSequence": [_item(n) for n in range(20)]})
    at = data.index(b"\x08\x00\x40\x11SQ")  # (0008,1140)
    with pytest.raises(TruncatedHeader):
        parse_header(data[: at + 300])


# --------------------------------------------------------------------------------------------
# headers of too many elements


def _private_elements(count: int, group: int = 0x7001) -> bytes:
    """``count`` private UL elements of 12 bytes (explicit VR little endian), tags ascending
    from (7001,1000) over as many odd groups as they need: written as one array, since
    millions of pydicom elements would take minutes to build."""
    index = np.arange(count, dtype=np.uint32)
    per_group = 0x10000 - 0x1000
    layout = [
        ("group", "<u2"),
        ("element", "<u2"),
        ("vr", "S2"),
        ("length", "<u2"),
        ("value", "<u4"),
    ]
    elements = np.zeros(count, dtype=layout)
    elements["group"] = group + 2 * (index // per_group)
    elements["element"] = 0x1000 + index % per_group
    elements["vr"], elements["length"], elements["value"] = b"UL", 4, index
    return elements.tobytes()


def _private_sequence(group: int, items: list[bytes], defined: bool) -> bytes:
    """A private sequence (gggg,1000) with its creator, of ``items`` (each an item's elements),
    of defined or undefined lengths."""
    creator = struct.pack("<HH2sH", group, 0x0010, b"LO", 4) + b"MANY"
    if defined:
        body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item for item in items)
        return creator + struct.pack("<HH2sHI", group, 0x1000, b"SQ", 0, len(body)) + body
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + i + item_end for i in items)
    opening = struct.pack("<HH2sHI", group, 0x1000, b"SQ", 0, 0xFFFFFFFF)
    return creator + opening + body + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _before_the_pixel_data(extra: bytes) -> bytes:
    data = dicom()
    at = data.index(PIXEL_TAG)
    return data[:at] + extra + data[at:]


def test_a_header_of_four_million_tiny_elements_is_refused_early_in_flat_memory(counting):
    """48 MB of four-byte private elements, under the 64 MiB header cap: refused after
    MAX_HEADER_ELEMENTS elements, from the first megabyte or so, without building the rest."""
    data = dicom()
    at = data.index(PIXEL_TAG)
    path = counting.root / "many.dcm"
    with open(path, "wb") as handle:
        handle.write(data[:at])
        handle.write(_private_elements(4_000_000))
        handle.write(data[at:])
    size = path.stat().st_size
    assert size > 48_000_000
    tracemalloc.start()
    try:
        expected = f"more than {MAX_HEADER_ELEMENTS:,} data elements"
        with pytest.raises(HeaderTooComplex, match=expected) as refused:
            read_header(counting, "many.dcm", size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.reason is Reason.HEADER_TOO_COMPLEX
    assert Reason.HEADER_TOO_COMPLEX.value == "DICOM header too complex"
    assert peak < 64 * 1024 * 1024  # all of them would take gigabytes
    assert sum(end - start for start, end in counting.ranges) < 4 * 1024 * 1024


def test_the_elements_of_an_undefined_length_sequence_count_while_it_is_parsed():
    """pydicom parses such a sequence as it reads the header: a million elements in one item
    are refused as soon as the count passes the cap."""
    many = _before_the_pixel_data(_private_sequence(0x7003, [_private_elements(10**6)], False))
    tracemalloc.start()
    try:
        with pytest.raises(HeaderTooComplex):
            parse_header(many)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024  # parsed, a million elements take over 300 MB
    under = MAX_HEADER_ELEMENTS * 4 // 5
    fits = _private_sequence(0x7003, [_private_elements(under)], defined=False)
    assert len(parse_header(_before_the_pixel_data(fits))[0x70031000].value[0]) == under


def test_the_elements_of_sequences_kept_as_bytes_count_too():
    """Three defined-length sequences of two fifths of the cap each: each under every sequence
    bound, more than the cap together, which the metadata JSON would convert."""
    each = MAX_HEADER_ELEMENTS * 2 // 5
    sequences = [_private_sequence(g, [_private_elements(each)], True) for g in (0x7003, 0x7005)]
    fits = parse_header(_before_the_pixel_data(b"".join(sequences)))
    doc = json.loads(header_json(fits))
    assert [len(doc[key]["Value"][0]) for key in ("70031000", "70051000")] == [each, each]
    sequences.append(_private_sequence(0x7007, [_private_elements(each)], True))
    with pytest.raises(HeaderTooComplex):
        parse_header(_before_the_pixel_data(b"".join(sequences)))


def test_sequence_items_count_as_elements():
    """More empty items than the cap in an undefined-length sequence: no element in them, but
    as many data sets for pydicom to build."""
    over, under = MAX_HEADER_ELEMENTS * 6 // 5, MAX_HEADER_ELEMENTS * 4 // 5
    empty = [b""] * over
    with pytest.raises(HeaderTooComplex):
        parse_header(_before_the_pixel_data(_private_sequence(0x7003, empty, defined=False)))
    fits = parse_header(_before_the_pixel_data(_private_sequence(0x7003, [b""] * under, False)))
    assert len(fits[0x70031000].value) == under


def test_the_metadata_json_of_a_header_of_escaped_text_is_bounded():
    """3,000 text values of 16 KiB of control characters (47 MiB, each character six in JSON):
    the values stop at 32 MiB of JSON, the later elements written without theirs."""
    value = b"\x01" * (16 * 1024 - 2)  # just under the size of values that are not fetched
    elements = [struct.pack("<HH2sH", 0x7001, 0x0010, b"LO", 4) + b"TEXT"]
    for n in range(3000):
        elements.append(struct.pack("<HH2sHI", 0x7001, 0x1000 + n, b"UT", 0, len(value)) + value)
    dataset = parse_header(_before_the_pixel_data(b"".join(elements)))
    left_out: list[str] = []
    tracemalloc.start()
    try:
        data = header_json(dataset, left_out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    doc = json.loads(data)
    stubs = len(",".join(f'"{key}":{{"vr":"UT"}}' for key in left_out))
    assert 32 * 1024 * 1024 - 100_000 < len(data) - stubs <= 32 * 1024 * 1024
    assert peak < 100 * 1024 * 1024  # the whole document would be 280 MiB
    texts = [f"7001{0x1000 + n:04X}" for n in range(3000)]
    kept = [key for key in texts if "Value" in doc[key]]
    assert kept == texts[: len(kept)] and 300 < len(kept) < 400
    assert doc[kept[0]]["Value"] == ["\x01" * len(value)]
    assert left_out == texts[len(kept) :]
    assert all(doc[key] == {"vr": "UT"} for key in left_out)
    assert doc["00100020"]["Value"] == ["Covid1"]  # the identifiers come first, in tag order
    Dataset.from_json(data.decode("ascii"))
