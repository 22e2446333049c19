"""Reading a DICOM header with ranged reads.

Reading is total: whatever bytes a hospital sends, `read_header` returns a header or raises a
`HeaderProblem` whose ``reason`` says what is wrong (not DICOM, no file meta, not an image,
truncated header or pixel data, unreadable, too large, too complex). pydicom parses through a
`RangedReader`, a file-like object that fetches the ranges pydicom asks for, so a header of any
size is read in the fewest requests, large values are skipped without being fetched, and the
pixel data is never read. The elements pydicom parses are counted as it parses them, so a
header of millions of tiny elements is refused after `MAX_HEADER_ELEMENTS` of them; what
pydicom logs about a header is held while it is read and handed on with the header (or named
in the reason it is refused for): the run report holds it against the file's key, and the
log stays quiet.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
import zlib
from dataclasses import dataclass
from typing import BinaryIO, cast

from pydicom import config as pydicom_config
from pydicom import filereader as pydicom_filereader
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_partial, read_preamble
from pydicom.hooks import hooks as pydicom_hooks
from pydicom.uid import UID
from pydicom.values import convert_SQ

from warehouse.core.config import DEFAULT_MAX_HEADER_BYTES
from warehouse.dicom.elements import (
    VOI_LUT_TAG,
    element_text,
    raw_vr,
    skipped_vr,
    too_many_items,
)
from warehouse.dicom.problems import (
    HeaderProblem,
    HeaderTooComplex,
    HeaderTooLarge,
    MissingPixelData,
    NoFileMeta,
    NotAnImage,
    NotDicom,
    TruncatedHeader,
    TruncatedPixelData,
    UnreadableHeader,
)

#: First ranged read. Real chest X-ray and CT headers are mostly 1-10 KiB; 64 KiB covers nearly
#: all of them in one request (a larger range costs no extra round trip). Contiguous reads
#: double from there; a read after a skipped value starts again at this size.
FIRST_READ_BYTES = 64 * 1024
#: Values longer than this (other than sequences) are not fetched: pydicom skips them and the
#: metadata JSON has the element without a value, so a 20 MB private element costs no memory.
LARGE_VALUE_BYTES = 16 * 1024
#: Defined-length sequences up to this size are kept (fetched when pydicom skipped them);
#: larger ones are written without their items (4 MiB holds the per-frame functional groups
#: of an enhanced image of several thousand frames).
MAX_SEQUENCE_BYTES = 4 * 1024 * 1024
#: The most data elements and sequence items pydicom may parse from one header, at any depth
#: (those of the sequences kept as bytes included): past it, "DICOM header too complex".
#: pydicom's real-world test files hold at most 1,484 (a 12-lead ECG); an enhanced multi-frame
#: image's functional groups take about 40 bytes an element, so a sequence up to the 4 MiB
#: that is parsed (`MAX_SEQUENCE_BYTES`) holds about 100,000. Each costs about 0.3 KB parsed.
MAX_HEADER_ELEMENTS = 100_000
#: What pydicom logs about one header: the first few distinct messages, each cut short.
MAX_PYDICOM_MESSAGES = 5
MAX_PYDICOM_MESSAGE_CHARS = 300
#: How much of the end of a file is read to check that encapsulated pixel data is complete.
ENCAPSULATED_TAIL_BYTES = 4096
_CONTIGUOUS_BLOCK_LIMIT = 8 * 1024 * 1024
_KEEP_BEHIND = 4096

PIXEL_DATA = 0x7FE00010
#: Float, Double Float and (plain) Pixel Data: the first of them ends the header.
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})
_FIRST_PIXEL_TAG = 0x7FE00008
#: How many of a bare data set's first elements are judged (`_bare_data_set`).
_BARE_ELEMENTS_JUDGED = 8
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"

logger = logging.getLogger(__name__)

# Identifiers are validated here (keys.py), so pydicom's own warnings about invalid values in
# uploaded headers would only be noise in the run's log (and warnings.catch_warnings is not
# thread-safe, so they are silenced once for the process). pydicom logs the same messages:
# see `_PydicomMessages`.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")


@dataclass(frozen=True, slots=True)
class HeaderRead:
    """A parsed header, what it cost (the number of range requests and bytes read), and what
    pydicom said about it while reading it (`MAX_PYDICOM_MESSAGES` distinct messages at most,
    each cut to `MAX_PYDICOM_MESSAGE_CHARS`; they quote the file's own values)."""

    dataset: Dataset
    requests: int
    bytes_read: int
    messages: tuple[str, ...] = ()


class RangedReader(io.RawIOBase):
    """A read-only file over ``fetch(start, end)`` that fetches only the ranges read.

    Reads inside the current window are served from memory; a read past it extends the window
    (doubling the block while reading on contiguously) or, after a forward seek over a skipped
    value, starts a new window there. Only a few KiB behind the position are kept.

    Parameters
    ----------
    fetch : callable
        ``fetch(start, end) -> bytes`` of the object (fewer bytes at its end).
    size : int or None
        The object's size from the listing; None if unknown.
    first : int
        Size of the first range.
    limit : int
        The most bytes this reader may fetch; past it, `HeaderTooLarge`.
    """

    def __init__(self, fetch, size: int | None, *, first=FIRST_READ_BYTES, limit=None):
        super().__init__()
        self._fetch = fetch
        self.size = size
        self._first = first
        self._block = first
        self._limit = DEFAULT_MAX_HEADER_BYTES if limit is None else limit
        self._start = 0
        self._data = b""
        self._pos = 0
        self.requests = 0
        self.bytes_read = 0
        #: Whether a read asked for bytes past the end of the object and got only part of them.
        self.cut = False
        #: Whether a read asked for bytes past the end of the object and got fewer (none, at
        #: the end of the object, included): the parse reached the end of the file. That is
        #: how a complete data set without pixel data ends too, so it is evidence of a cut only
        #: when the parse fails (or stops short of the structure the file declares).
        self.reached_end = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._pos + offset
        elif self.size is not None:
            position = self.size + offset
        else:
            raise OSError("cannot seek from the end of an object of unknown size")
        self._pos = max(0, position)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        offset = self._pos - self._start
        if size > 0 and offset >= 0 and offset + size <= len(self._data):
            self._pos += size  # the common case: inside the window
            return self._data[offset : offset + size]
        if size is None or size < 0:
            # Only pydicom's deflate branch reads "everything": it is read lazily instead.
            raise _WholeObjectRead
        if size == 0:
            return b""
        end = self._pos + size
        self._load(self._pos, end)
        offset = self._pos - self._start
        chunk = self._data[offset : offset + size]
        self._pos += len(chunk)
        if len(chunk) < size:
            self.reached_end = True
            if chunk:
                self.cut = True
        return chunk

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def read_chunk(self, size: int) -> bytes:
        """Up to ``size`` bytes from the position, fewer at the end of the object (a stream
        read, never counted as a cut, though it may reach the end)."""
        cut = self.cut
        chunk = self.read(size)
        self.cut = cut
        return chunk

    def peek_window(self) -> bytes:
        """The bytes of the current window (what the first range holds, at the start)."""
        return self._data

    def _load(self, start: int, end: int) -> None:
        window_end = self._start + len(self._data)
        if self._start <= start <= window_end and self._data:
            fetch_from, keep_from = window_end, max(self._start, start - _KEEP_BEHIND)
        else:
            fetch_from, keep_from = start, start
            self._block = self._first
        want = max(end, fetch_from + self._block)
        if self.size is not None:
            want = min(want, self.size)
        if want > fetch_from:
            if self.bytes_read + (want - fetch_from) > self._limit:
                raise HeaderTooLarge(
                    f"reading the header would take more than {self._limit:,} bytes"
                )
            chunk = self._fetch(fetch_from, want)
            self.requests += 1
            self.bytes_read += len(chunk)
            if len(chunk) < want - fetch_from:
                self.size = fetch_from + len(chunk)  # the object is shorter than listed
            if fetch_from == window_end and self._data:
                self._data = self._data[keep_from - self._start :] + chunk
            else:
                self._data = chunk
            self._start = keep_from if fetch_from == window_end else fetch_from
            self._block = min(self._block * 2, _CONTIGUOUS_BLOCK_LIMIT)
        elif not (self._start <= start <= window_end):
            self._start, self._data = start, b""


class _WholeObjectRead(Exception):
    """pydicom asked a `RangedReader` for the rest of the object (a deflated data set)."""


class _Inflating(io.RawIOBase):
    """The inflated data set of a Deflated Explicit VR Little Endian file, inflated lazily."""

    def __init__(self, source: RangedReader, block: int = FIRST_READ_BYTES):
        super().__init__()
        self._source = source
        self._block = block
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._data = bytearray()
        self._pos = 0
        self.cut = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            raise OSError("cannot seek from the end of a deflated data set")
        self._pos = max(0, offset if whence == io.SEEK_SET else self._pos + offset)
        return self._pos

    def _fill(self, end: int) -> None:
        while len(self._data) < end and not self._inflater.eof:
            compressed = self._source.read_chunk(self._block)
            if not compressed:
                break
            try:
                self._data += self._inflater.decompress(compressed)
            except zlib.error as exc:
                raise UnreadableHeader(f"the deflated data set cannot be inflated: {exc}") from None

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise OSError("a deflated data set is read element by element")
        self._fill(self._pos + size)
        chunk = bytes(self._data[self._pos : self._pos + size])
        self._pos += len(chunk)
        if 0 < len(chunk) < size or (not chunk and size and not self._inflater.eof):
            self.cut = True
        return chunk

    def inflate_rest(self) -> bool:
        """Inflate what is left (discarding it); whether the deflate stream ends properly."""
        self._data = bytearray()
        self._pos = 0
        while not self._inflater.eof:
            compressed = self._source.read_chunk(self._block)
            if not compressed:
                return False
            try:
                self._inflater.decompress(compressed, 1)
                while self._inflater.unconsumed_tail and not self._inflater.eof:
                    self._inflater.decompress(self._inflater.unconsumed_tail, 1 << 20)
            except zlib.error:
                return False
        return True


class _Reading(threading.local):
    """What the thread reading a header holds: ``[how many more elements and items pydicom
    may parse]`` (None: no header is being read), pydicom's messages about the header, and
    whether a value ended short, at the end of its data (pydicom goes on with what it read,
    so a file cut there would parse "complete")."""

    budget: list[int] | None = None
    messages: list[str] | None = None
    value_cut = False


_READING = _Reading()
_pydicom_element_generator = pydicom_filereader.data_element_generator


def _counted_element_generator(*args, **kwargs):
    """pydicom's ``data_element_generator``, counted while a header is read.

    pydicom reads every data set (the header, each sequence item at any depth, a sequence
    parsed when it is first used) through this one generator, which ``read_dataset`` looks up
    in its module each time: so it is replaced there, once, and the count stops a parse as
    soon as it passes the cap, before pydicom has built the elements beyond it.
    """
    elements = _pydicom_element_generator(*args, **kwargs)
    budget = _READING.budget
    return elements if budget is None else _counting(elements, budget)


def _counting(elements, budget: list[int]):
    budget[0] -= 1  # the data set or item itself
    if budget[0] < 0:
        raise _too_complex()
    try:
        for element in elements:
            budget[0] -= 1
            if budget[0] < 0:
                raise _too_complex()
            if type(element) is RawDataElement and _short(element):
                _READING.value_cut = True
            yield element
    except EOFError:  # a value of undefined length without its delimiter
        _READING.value_cut = True
        raise


def _short(raw: RawDataElement) -> bool:
    """Whether a value read holds fewer bytes than its element's length says."""
    value = raw.value
    return isinstance(value, bytes) and raw.length != 0xFFFFFFFF and len(value) < raw.length


def _too_complex() -> HeaderTooComplex:
    return HeaderTooComplex(f"more than {MAX_HEADER_ELEMENTS:,} data elements and sequence items")


pydicom_filereader.data_element_generator = _counted_element_generator


class _PydicomMessages(logging.Handler):
    """The one handler of pydicom's logger (which no longer passes its records on): while a
    thread reads a header, pydicom's messages about it are held (`read_header` returns them,
    or names them in the reason it raises: they belong to the file, in the run report against
    its key, not in the log); any other is logged at DEBUG (converting a header already read
    repeats what its reading said)."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()[:MAX_PYDICOM_MESSAGE_CHARS]
        held = _READING.messages
        if held is None:
            logger.debug("pydicom: %s", text)
        elif len(held) < MAX_PYDICOM_MESSAGES and text not in held:
            held.append(text)


_pydicom_logger = logging.getLogger("pydicom")
_pydicom_logger.addHandler(_PydicomMessages())
_pydicom_logger.propagate = False


@contextlib.contextmanager
def _reading():
    """Count the elements pydicom parses (`MAX_HEADER_ELEMENTS`) and hold its messages while
    one header is read: yields the list they are held in. A `HeaderProblem` raised meanwhile
    names them (`with_pydicom_messages`)."""
    messages: list[str] = []
    _READING.budget, _READING.messages = [MAX_HEADER_ELEMENTS], messages
    _READING.value_cut = False
    try:
        yield messages
    except HeaderProblem as exc:
        raise with_pydicom_messages(exc, messages) from None
    finally:
        _READING.budget, _READING.messages = None, None


def with_pydicom_messages(exc: Exception, messages) -> Exception:
    """``exc`` with pydicom's messages about the file (`HeaderRead.messages`) added to its
    message, which is the report's detail: ``... (pydicom: first; second)``."""
    if messages:
        exc.args = (f"{exc} (pydicom: {'; '.join(messages)})",)
    return exc


def read_header(
    storage, key: str, size: int | None, *, max_header_bytes: int | None = None
) -> HeaderRead:
    """Read an image's header with ranged reads: the first range, then only what pydicom asks
    for (values over `LARGE_VALUE_BYTES` skipped); the pixel data itself is never fetched.

    Parameters
    ----------
    storage : Storage
        Where the image is.
    key : str
        The image's key.
    size : int or None
        The object's size from the listing (no HEAD request is made); None if unknown.
    max_header_bytes : int, optional
        The most bytes the header may cost (default `DEFAULT_MAX_HEADER_BYTES`).

    Returns
    -------
    HeaderRead
        The header, what reading it cost, and pydicom's messages about it.

    Raises
    ------
    HeaderProblem
        A subclass whose ``reason`` says why the file cannot be filed (its message naming
        pydicom's messages about the file, if any).
    StorageError
        When a read fails.
    """
    reader = RangedReader(
        lambda start, end: storage.read_range(key, start, end), size, limit=max_header_bytes
    )
    with _reading() as messages:
        dataset = _read(reader)
    return HeaderRead(dataset, reader.requests, reader.bytes_read, tuple(messages))


def parse_header(data: bytes, *, max_header_bytes: int | None = None) -> Dataset:
    """Parse the header of a whole file held in memory (as `read_header` does from storage).

    Raises
    ------
    HeaderProblem
        As `read_header`.
    """
    reader = RangedReader(lambda start, end: data[start:end], len(data), limit=max_header_bytes)
    with _reading() as messages:
        dataset = _read(reader)
    for message in messages:
        logger.debug("header in memory: pydicom: %s", message)
    return dataset


def _read(reader: RangedReader) -> Dataset:
    head = reader.read(132)
    if not head:
        raise NotDicom("empty file")
    if 128 < len(head) < 132 and b"DICM".startswith(head[128:]):
        raise TruncatedHeader("the file ends inside its DICM prefix")
    if head[128:132] != b"DICM":
        first = reader.peek_window()
        if _bare_data_set(first, reader.size):
            raise NoFileMeta(
                "a bare data set without the 128-byte preamble, DICM prefix and file meta "
                "(readable only with pydicom's force=True)"
            )
        raise NotDicom("not a DICOM file (no DICM preamble and file meta)")
    reader.seek(0)
    pixel: dict = {}
    stream = reader

    def at_pixel_data(tag, vr, length) -> bool:
        if tag >> 16 < 0x7FE0:
            return False  # (BaseTag's own comparisons are slow: this runs for every element)
        if tag >= _FIRST_PIXEL_TAG:
            pixel.update(tag=int(tag), length=length, offset=stream.tell())
            return True
        return False

    try:
        dataset, stream = _parse(reader, at_pixel_data)
        _fetch_skipped_sequences(dataset, stream)
    except HeaderProblem:
        raise
    except RecursionError:
        raise UnreadableHeader("sequences nested too deeply to read") from None
    except Exception as exc:  # noqa: BLE001 - pydicom's failures on hostile bytes have no common base
        # pydicom failed where the file ended: it wanted more than the file holds
        if reader.reached_end or getattr(stream, "cut", False):
            raise TruncatedHeader(f"the file ends inside its header ({_describe(exc)})") from None
        raise UnreadableHeader(_describe(exc)) from None
    ended = _where_the_header_ends_early(dataset, reader, stream)
    if ended:
        raise TruncatedHeader(f"the file ends inside its header ({ended})")
    if pixel.get("tag") not in PIXEL_DATA_TAGS:
        _no_pixel_data(dataset)
    _check_pixel_data(reader, stream, pixel)
    _empty_skipped_values(dataset)
    _count_kept_sequences(dataset)
    # pydicom keeps the file-like object on the dataset: drop it, so a queued header costs its
    # elements only and nothing can read from storage later.
    dataset.buffer = None
    dataset.filename = None
    dataset.fileobj_type = None
    return dataset


def _parse(reader: RangedReader, stop_when):
    """The data set up to the pixel data, and the stream its offsets refer to."""
    # pydicom's hints ask for a BinaryIO; it reads any object with read, seek and tell.
    stream = cast(BinaryIO, reader)
    try:
        return read_partial(stream, stop_when=stop_when, defer_size=LARGE_VALUE_BYTES), reader
    except _WholeObjectRead:
        pass
    # Deflated Explicit VR Little Endian: pydicom would inflate the whole file at once; inflate
    # only as far as the header goes.
    reader.seek(0)
    preamble = read_preamble(stream, False)
    file_meta = _read_file_meta_info(stream)
    inflated = _Inflating(reader)
    data_set = read_dataset(
        cast(BinaryIO, inflated), False, True, stop_when=stop_when, defer_size=LARGE_VALUE_BYTES
    )
    dataset = FileDataset(io.BytesIO(), data_set, preamble, file_meta, False, True)
    dataset.set_original_encoding(False, True, data_set._character_set)
    return dataset, inflated


def _fetch_skipped_sequences(dataset: Dataset, stream) -> None:
    """Fetch the sequences pydicom skipped for their size (up to `MAX_SEQUENCE_BYTES`)."""
    for tag, raw in list(dataset._dict.items()):
        if not isinstance(raw, RawDataElement) or raw.value is not None or not raw.length:
            continue
        if raw_vr(raw, dataset) != "SQ" or raw.length > MAX_SEQUENCE_BYTES:
            continue
        stream.seek(raw.value_tell)
        value = stream.read(raw.length)
        if len(value) == raw.length:
            dataset._dict[tag] = raw._replace(value=value)


def _empty_skipped_values(dataset: Dataset) -> None:
    """Make the values pydicom skipped for their size empty elements of the VR pydicom would
    give them (`skipped_vr`), so nothing ever tries to read them later; the tags are kept in
    ``dataset.skipped_for_size`` (the metadata JSON has those elements without a value)."""
    skipped = set()
    for tag, raw in list(dataset._dict.items()):
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            dataset._dict[tag] = raw._replace(VR=skipped_vr(raw, dataset), value=b"", length=0)
            skipped.add(int(tag))
    dataset.skipped_for_size = frozenset(skipped)


def _count_kept_sequences(dataset: Dataset) -> None:
    """Parse, and drop, the sequences the header keeps as bytes, as its conversion to DICOM JSON
    will (pydicom parses a defined-length sequence when it is first used), so that their
    elements count against `MAX_HEADER_ELEMENTS` now, while the image can still be refused.

    A sequence the JSON writes without its items (the VOI LUT Sequence, one of too many items)
    is not parsed; one pydicom cannot parse is left to the conversion, which leaves it out.
    """
    for tag, raw in list(dataset._dict.items()):
        if tag == VOI_LUT_TAG or isinstance(raw, RawDataElement) and too_many_items(raw, dataset):
            continue
        try:
            _count_sequence(dataset, raw)
        except HeaderProblem:
            raise
        except RecursionError:
            continue  # nested too deeply to convert: left out of the JSON
        except Exception:  # noqa: BLE001 - a sequence pydicom cannot parse is left out of the JSON
            continue


_MAYBE_SEQUENCE_VRS = frozenset({None, "UN", "SQ"})


def _count_sequence(parent: Dataset, element) -> None:
    """Parse ``element`` and the sequences in its items if it is a sequence (pydicom's own VR
    rule decides, as when it converts the element)."""
    if isinstance(element, RawDataElement):
        if not element.value or element.VR not in _MAYBE_SEQUENCE_VRS:
            return  # (an explicit VR other than UN is kept as it is)
        if element.VR != "SQ":
            found: dict = {}
            pydicom_hooks.raw_element_vr(element, found, encoding=None, ds=parent)
            if found.get("VR") != "SQ":
                return
        items = convert_SQ(
            element.value,
            element.is_implicit_VR,
            element.is_little_endian,
            None,
            element.value_tell,
        )
    elif getattr(element, "VR", None) == "SQ":
        items = element.value  # an undefined-length sequence: parsed (and counted) already
    else:
        return
    for item in items:
        for child in list(item._dict.values()):
            _count_sequence(item, child)


def _where_the_header_ends_early(dataset: Dataset, reader: RangedReader, stream) -> str:
    """Where a header pydicom parsed without a failure ends before its structure does, or "".

    pydicom takes the end of a file for the end of whatever it was reading, so a cut file
    parses "complete" unless one of these says otherwise: a read that got part of what it
    asked for (the file ends inside an element's tag, VR or length), a value read shorter
    than its length or of undefined length without its delimiter (at any depth), a value
    skipped unread that ends past the object, a file meta shorter than its group length
    says, or no data set at all after the file meta.
    """
    if reader.cut or getattr(stream, "cut", False):
        return "inside an element"
    if _READING.value_cut:
        return "inside a value"
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and reader.size is not None:
        past = _value_past(meta._dict.values(), reader.size)
        if past:
            return past
        length = meta.get("FileMetaInformationGroupLength")
        # (the group length's own element ends 12 bytes after the DICM prefix, at 144)
        if isinstance(length, int) and 144 + length > reader.size:
            return f"the file meta, of {length:,} bytes after its group length"
    size = getattr(stream, "size", None)
    past = _value_past(dataset._dict.values(), size) if size is not None else ""
    if past:
        return past
    if not dataset._dict:
        return "no data set after the file meta"
    return ""


def _value_past(elements, size: int) -> str:
    """The first raw element of ``elements`` whose value ends past ``size``, described."""
    for raw in elements:
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF:
            if raw.value_tell + raw.length > size:
                return f"a value of {raw.length:,} bytes at offset {raw.value_tell:,}"
    return ""


def _no_pixel_data(dataset: Dataset) -> None:
    """Raise the reason of a complete header without pixel data."""
    sop_class = element_text(dataset, 0x00080016) or _file_meta_sop_class(dataset)
    name = UID(sop_class).name if sop_class else ""
    if "Image Storage" in name:
        raise MissingPixelData(
            f"a {name} object that ends before any pixel data (cut off at an element "
            "boundary, or sent without its pixels)"
        )
    what = f"{name} ({sop_class})" if name and name != sop_class else (sop_class or "no SOP class")
    raise NotAnImage(f"no pixel data: not an image ({what})")


def _file_meta_sop_class(dataset: Dataset) -> str:
    """The SOP class the file meta names (Media Storage SOP Class UID), for a data set that
    names none itself (one cut at an element boundary before its own)."""
    meta = getattr(dataset, "file_meta", None)
    return element_text(meta, 0x00020002) if meta is not None else ""


def _check_pixel_data(reader: RangedReader, stream, pixel: dict) -> None:
    """Raise `TruncatedPixelData` when the file ends before the pixel data does."""
    length, offset = pixel["length"], pixel["offset"]
    if isinstance(stream, _Inflating):
        limit = reader._limit - reader.bytes_read
        if reader.size is not None and reader.size - reader.tell() <= limit:
            if not stream.inflate_rest():
                raise TruncatedPixelData("the deflated data ends before its pixel data does")
        return
    size = reader.size
    if size is None:
        return
    if length != 0xFFFFFFFF:
        if offset + length > size:
            raise TruncatedPixelData(
                f"pixel data of {length:,} bytes at offset {offset:,}; "
                f"the file holds {max(0, size - offset):,} of them"
            )
        return
    # Encapsulated: the fragments end with a sequence delimiter, found in the last bytes (one
    # small ranged read unless the window already holds the end of the file).
    start = max(offset, size - ENCAPSULATED_TAIL_BYTES)
    reader.seek(start)
    tail = reader.read(size - start)
    if _SEQUENCE_DELIMITER not in tail:
        raise TruncatedPixelData(
            "encapsulated pixel data without its sequence delimiter at the end of the file"
        )


def _bare_data_set(data: bytes, size: int | None) -> bool:
    """Whether ``data`` (a first range without ``DICM``) starts like a DICOM data set: its
    first whole elements parse (as pydicom would with force=True) into ascending standard tags.

    The range may end inside an element (a data set larger than the first range): that end is
    no evidence against it. The elements judged are those whose value ends within the object
    (of ``size`` bytes, None if unknown), in the range or after it.
    """
    window = RangedReader(lambda start, end: data[start:end], len(data))
    seen: list[tuple[int, int, int]] = []

    def first_elements(tag, vr, length) -> bool:
        seen.append((int(tag), window.tell(), length))
        return len(seen) > _BARE_ELEMENTS_JUDGED

    try:
        read_partial(
            cast(BinaryIO, window),
            stop_when=first_elements,
            force=True,
            defer_size=LARGE_VALUE_BYTES,
        )
    except HeaderTooComplex:
        raise
    except Exception:  # noqa: BLE001 - a failure inside the range: not a data set
        if not window.reached_end:
            return False
    end = size if size is not None else float("inf")
    tags = [
        tag
        for tag, value_at, length in seen[:_BARE_ELEMENTS_JUDGED]
        if length == 0xFFFFFFFF or value_at + length <= end
    ]
    if len(tags) < 2 or tags != sorted(tags) or len(set(tags)) != len(tags):
        return False
    known = 0
    for tag in tags:
        try:
            dictionary_VR(tag)
            known += 1
        except KeyError:
            continue
    return tags[0] >> 16 <= 0x0008 and known >= len(tags) - 1


def _describe(exc: Exception) -> str:
    message = str(exc).strip() or "no message"
    return f"{type(exc).__name__}: {message}"[:500]
