"""The warehouse's key layout: parsing raw keys, building warehouse keys, and identifier safety.

Every identifier that ends up in a key (a pseudonym from a file name, DICOM PatientID and UIDs,
an image file name) comes from a hospital's upload and is checked here before it is used as a
key part, so nothing can write outside the warehouse layout.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass, field

from warehouse.core.reasons import Reason
from warehouse.core.text import quote

GROUPS = ("training", "validation")

#: DICOM Modality (0008,0060) to warehouse folder. Others are reported, not filed.
MODALITY_FOLDERS = {"DX": "xray", "CR": "xray", "CT": "ct", "MR": "mri"}
#: The image folders of a group, in the dashboard tables' order.
IMAGE_FOLDERS = ("ct", "xray", "mri")
#: What follows an image folder's name in the name of its metadata folder.
METADATA_SUFFIX = "-metadata"

CLINICAL_SUFFIXES = {"_data.json": "data", "_status.json": "status"}

MAX_PSEUDONYM_LENGTH = 128
MAX_FILE_NAME_LENGTH = 255
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: The characters a key part may hold besides ASCII letters and digits (a file name may also
#: hold inner spaces); it starts with a letter or a digit and holds no ``..``.
SAFE_PUNCTUATION = "._-+=@,"
_ALPHANUMERIC = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_PSEUDONYM_CHARACTERS = _ALPHANUMERIC | frozenset(SAFE_PUNCTUATION)
_SAFE_PART = re.compile(
    rf"^[A-Za-z0-9]([A-Za-z0-9{re.escape(SAFE_PUNCTUATION)} ]*"
    rf"[A-Za-z0-9{re.escape(SAFE_PUNCTUATION)}])?$"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class UnsafeIdentifier(ValueError):
    """An identifier from a file that cannot be used as a key part."""

    reason = Reason.UNSAFE_IDENTIFIER


def is_dicom_uid(value: str) -> bool:
    """Return whether ``value`` is a DICOM UID (PS3.5 9.1): digits and dots, at most 64 chars.

    Parameters
    ----------
    value : str
        Candidate UID.

    Returns
    -------
    bool
        True for a syntactically valid UID.
    """
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.fullmatch(value))


def is_safe_name(value: str, max_length: int = MAX_FILE_NAME_LENGTH) -> bool:
    """Return whether ``value`` is safe as one key part.

    Safe means: a non-empty string of ASCII letters, digits, inner spaces and
    `SAFE_PUNCTUATION` (``._-+=@,``) that starts with a letter or digit (so no ``..``, no
    hidden names, no separators, no control characters), and no longer than ``max_length``.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_length
        and bool(_SAFE_PART.fullmatch(value))
        and ".." not in value
    )


def dicom_identifier(text: str) -> str:
    """An identifier element's text without its DICOM padding, and nothing else removed.

    Padding is what pydicom and dcmtk strip when they read a text value: trailing spaces
    (PS3.5 6.2) and trailing NULs, in any mix (exports pad ``7DkT2Tp`` with a NUL).
    Any other white space or control character stays, so that `check_pseudonym` refuses it.

    Parameters
    ----------
    text : str
        The decoded value as the file holds it.
    """
    return text.rstrip("\x00 ")


def _character(char: str) -> str:
    """A character as a refusal names it: ``':' (COLON)``; its name alone when it does not
    print (``SPACE``, ``NULL``)."""
    fallback = f"U+{ord(char):04X}"
    if not char.isprintable() or char.isspace():
        return unicodedata.name(char, f"control character {fallback}")
    return f"{char!r} ({unicodedata.name(char, fallback)})"


def identifier_problem(value: object, what: str = "pseudonym") -> str | None:
    """Why ``value`` cannot be a pseudonym (or PatientID) key part, or None if it can.

    This is the one identity rule for every pseudonym: from a clinical file name, a clinical
    record's ``Pseudonym`` and a DICOM PatientID. Nothing is stripped here. A pseudonym holds
    ASCII letters, digits and `SAFE_PUNCTUATION` (``._-+=@,``) only, starts with a letter or
    a digit, holds no ``..`` and is at most `MAX_PSEUDONYM_LENGTH` characters long; a refusal
    names the first character that breaks the rule and its position (from 0), the value quoted
    (`text.quote`: escaped, cut short).
    """
    if not isinstance(value, str) or not value:
        return f"unsafe {what} {quote(value)}: empty or not text"
    for position, char in enumerate(value):
        if char.isspace() or unicodedata.category(char)[0] == "C":
            return f"unsafe {what} {quote(value)}: {_character(char)} at {position}"
    if len(value) > MAX_PSEUDONYM_LENGTH:
        return (
            f"unsafe {what} {quote(value)}: {len(value):,} characters "
            f"(at most {MAX_PSEUDONYM_LENGTH})"
        )
    if value[0] not in _ALPHANUMERIC:
        return (
            f"unsafe {what} {quote(value)}: {_character(value[0])} at 0 "
            "(the first character must be a letter or a digit)"
        )
    for position, char in enumerate(value):
        if char not in _PSEUDONYM_CHARACTERS:
            return (
                f"unsafe {what} {quote(value)}: {_character(char)} at {position} "
                f"(allowed: letters, digits and {SAFE_PUNCTUATION})"
            )
    if ".." in value:
        return f"unsafe {what} {quote(value)}: '..' at {value.index('..')}"
    return None


def image_name_problem(name: str) -> str | None:
    """Why a raw image's file name cannot file it, or None: it must be a safe key part, and
    both names it gives (``<name>``, ``<stem>.json``) must fit a file system's 255 bytes."""
    if not is_safe_name(name):
        return f"unsafe file name {quote(name)}"
    for target in (name, f"{image_stem(name)}.json"):
        if len(target.encode("utf-8")) > MAX_FILE_NAME_LENGTH:
            return f"file name {name[:40]!r}... too long: {target!r} would exceed 255 bytes"
    return None


def check_pseudonym(value: str, what: str = "pseudonym") -> str:
    """Return ``value`` if it is safe as a pseudonym key part (`identifier_problem`), else raise
    `UnsafeIdentifier` saying why."""
    problem = identifier_problem(value, what)
    if problem:
        raise UnsafeIdentifier(problem)
    return value


def check_uid(value: str, what: str) -> str:
    """Return ``value`` if it is a DICOM UID, else raise `UnsafeIdentifier` naming ``what``."""
    if not is_dicom_uid(value):
        raise UnsafeIdentifier(f"{what} is not a DICOM UID: {quote(value)}")
    return value


def parse_upload_date(value: str) -> str | None:
    """Return ``value`` if it is an upload folder date ``YYYY-MM-DD`` (a real date), else None."""
    if not _DATE.match(value):
        return None
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return None
    return value


def upload_date_problem(
    upload_date: str, modified: dt.datetime, max_delay_days: int | None
) -> str | None:
    """Why an upload folder's date is implausible for its object, or None when it is plausible.

    A folder is implausible when it is dated after the object's last-modified date (one day
    is allowed for time zones: a site may name the folder by its own date), or more than
    ``max_delay_days`` days before it.

    Parameters
    ----------
    upload_date : str
        The upload folder, ``YYYY-MM-DD``.
    modified : datetime.datetime
        When the object was last modified; a naive value is taken as UTC.
    max_delay_days : int or None
        How many days the folder's date may be before ``modified`` (``max_upload_delay_days``);
        None for no limit.

    Returns
    -------
    str or None
        A human-readable detail (e.g. ``folder 2031-01-01 is after the object's last-modified
        2021-01-05``), or None.
    """
    if parse_upload_date(upload_date) is None:
        return f"folder {upload_date!r} is not a YYYY-MM-DD date"
    folder = dt.date.fromisoformat(upload_date)
    if modified.tzinfo is not None:
        modified = modified.astimezone(dt.UTC)
    last = modified.date()
    if (folder - last).days > 1:
        return f"folder {upload_date} is after the object's last-modified {last.isoformat()}"
    delay = (last - folder).days
    if max_delay_days is not None and delay > max_delay_days:
        return (
            f"folder {upload_date} is {delay} days before the object's last-modified "
            f"{last.isoformat()} (at most {max_delay_days} allowed)"
        )
    return None


#: How the name of every raw prefix starts (``raw-<site>``).
RAW_PREFIX_MARK = "raw-"

#: The most levels (folders and the name: ``a/b/c`` has 3) a key may have; a local listing
#: descends no deeper (the raw layout has 4 levels, the warehouse's 6).
MAX_KEY_DEPTH = 16
#: The longest key, in UTF-8 bytes (S3's own limit; a local directory allows longer).
MAX_KEY_BYTES = 1024
#: The earliest plausible last-modified time of a raw object: before it, a clock or a copy
#: that kept a bogus time (a file's time of 0, 1970) is at work.
EARLIEST_MODIFIED = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
#: How far past the listing's own time a last-modified time may be (clocks disagree a little).
MODIFIED_SLACK = dt.timedelta(days=1)


def raw_name_problem(key: str) -> str | None:
    """Why a listed raw key cannot be taken as an input whatever its place in the layout, or
    None when its name can be.

    A key is unsafe with a control, format or unassigned character (a newline, a bidi
    override, a byte that is not UTF-8 on a local disk) anywhere, with a ``.`` or ``..``
    level, with more than `MAX_KEY_DEPTH` levels or more than `MAX_KEY_BYTES` bytes. A level
    the detail shows is escaped (ASCII) and cut short.
    """
    parts = key.split("/")
    for part in parts if not key.isprintable() else ():  # printable: no C category at all
        for position, char in enumerate(part):
            if unicodedata.category(char)[0] == "C":
                shown = ascii(part[:80]) + ("..." if len(part) > 80 else "")
                return f"{shown} holds U+{ord(char):04X} at {position}"
    if any(part in (".", "..") for part in parts):
        return "a '.' or '..' level"
    if len(parts) > MAX_KEY_DEPTH:
        return f"{len(parts)} levels (at most {MAX_KEY_DEPTH})"
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        return f"{size:,} bytes long (at most {MAX_KEY_BYTES:,})"
    return None


def modification_time_problem(modified: dt.datetime, now: dt.datetime) -> str | None:
    """Why an object's last-modified time is implausible, or None when it is plausible.

    Implausible is before `EARLIEST_MODIFIED` or more than `MODIFIED_SLACK` after ``now``
    (the listing's time): a junk file's time, which would otherwise pass for the newest
    upload and be compared with filed copies forever.

    Parameters
    ----------
    modified : datetime.datetime
        The listed last-modified time; a naive value is taken as UTC.
    now : datetime.datetime
        When the listing was made (timezone-aware).
    """
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=dt.UTC)
    if modified < EARLIEST_MODIFIED:
        return f"last modified {modified.isoformat()}, before {EARLIEST_MODIFIED.date()}"
    if modified - now > MODIFIED_SLACK:
        return f"last modified {modified.isoformat()}, after the listing ({now.isoformat()})"
    return None


def top_folder(key: str) -> str:
    """The first part of a key: the raw prefix (``raw-cambridge``) of a raw input."""
    return key.split("/", 1)[0]


def raw_prefix_of(key: str) -> str | None:
    """The raw prefix a key lies under (``raw-...``), or None for any other key."""
    first = top_folder(key)
    return first if first.startswith(RAW_PREFIX_MARK) else None


def normalise_prefix(prefix: str) -> str:
    """Return a raw prefix without leading or trailing slashes (``raw-x/`` -> ``raw-x``)."""
    return prefix.strip().strip("/")


@dataclass(frozen=True, slots=True)
class RawKey:
    """What a raw key is, by its position in the layout.

    ``kind`` is ``"clinical"``, ``"image"`` or ``"other"``; ``reason`` says why an ``other`` key
    is not processed.
    """

    key: str
    kind: str
    prefix: str = ""
    upload_date: str = ""
    name: str = ""
    clinical_kind: str = ""
    pseudonym: str = ""
    reason: str = ""
    #: When the listing saw the object last modified (ISO 8601), if it was listed.
    modified: str = ""
    #: The identity of the object's bytes the listing gave (`listing.raw.content_id`), if any.
    content_id: str = ""


def parse_raw_key(key: str, prefix: str) -> RawKey:
    """Classify a key listed under the configured raw ``prefix``.

    Clinical files are exactly ``<prefix>/<date>/data/<Pseudonym>_(data|status).json``; images sit
    directly in ``<prefix>/<date>/images/`` with a ``.dcm`` suffix in any case. Anything else is
    ``other`` with a reason.

    Parameters
    ----------
    key : str
        The full object key.
    prefix : str
        The configured raw prefix it was listed under (normalised, no trailing slash).

    Returns
    -------
    RawKey
    """
    rest = key[len(prefix) + 1 :] if key.startswith(prefix + "/") else None
    if rest is None:
        return RawKey(key, "other", prefix, reason="outside prefix")
    parts = rest.split("/")
    if len(parts) != 3:
        return RawKey(key, "other", prefix, reason="not in the raw layout")
    date, folder, name = parts
    if parse_upload_date(date) is None:
        return RawKey(key, "other", prefix, reason="not in a YYYY-MM-DD upload folder")
    if folder == "data":
        for suffix, clinical_kind in CLINICAL_SUFFIXES.items():
            if name.endswith(suffix):
                pseudonym = name[: -len(suffix)]
                return RawKey(
                    key, "clinical", prefix, date, name, clinical_kind, pseudonym=pseudonym
                )
        return RawKey(key, "other", prefix, date, name, reason="not a clinical file name")
    if folder == "images":
        if name.lower().endswith(".dcm") and len(name) > 4:
            return RawKey(key, "image", prefix, date, name)
        return RawKey(key, "other", prefix, date, name, reason="not a .dcm file")
    return RawKey(key, "other", prefix, date, name, reason="not in data/ or images/")


def clinical_name(clinical_kind: str, upload_date: str) -> str:
    """The file name of a filed clinical file: ``<kind>_<date>.json``."""
    return f"{clinical_kind}_{upload_date}.json"


_CLINICAL_NAME = re.compile(r"(data|status)_([0-9]{4}-[0-9]{2}-[0-9]{2})\.json")


def parse_clinical_name(name: str) -> tuple[str, dt.date] | None:
    """The kind (``data`` or ``status``) and upload date of a filed clinical file name
    (`clinical_name`), or None for a name of another shape or an impossible date."""
    match = _CLINICAL_NAME.fullmatch(name)
    if not match:
        return None
    try:
        return match.group(1), dt.date.fromisoformat(match.group(2))
    except ValueError:
        return None


def clinical_target(group: str, pseudonym: str, clinical_kind: str, upload_date: str) -> str:
    """Warehouse key of a clinical file: ``<group>/data/<P>/<kind>_<date>.json``."""
    return patient_folder(group, pseudonym) + clinical_name(clinical_kind, upload_date)


def image_stem(name: str) -> str:
    """File name without its ``.dcm`` suffix (any case)."""
    return name[:-4] if name.lower().endswith(".dcm") else name


def image_targets(
    group: str, folder: str, patient_id: str, study_uid: str, series_uid: str, name: str
) -> tuple[str, str]:
    """Warehouse keys of an image and of its metadata JSON.

    Returns
    -------
    tuple of str
        ``(<group>/<mod>/<P>/<study>/<series>/<name>,
        <group>/<mod>-metadata/<P>/<study>/<series>/<stem>.json)``
    """
    tail = f"{patient_id}/{study_uid}/{series_uid}"
    return (
        f"{group}/{folder}/{tail}/{name}",
        f"{group}/{folder}{METADATA_SUFFIX}/{tail}/{image_stem(name)}.json",
    )


@dataclass(frozen=True, slots=True)
class WarehouseKey:
    """What a warehouse-side key is: a clinical file, an image, or image metadata.

    ``folder`` (the image folder: ``ct``, ``xray``, ``mri``), ``study`` and ``series`` are
    those of an image or metadata key (empty for a clinical file); two keys are equal when
    their group, kind, pseudonym and name are.
    """

    group: str
    kind: str  # "clinical", "image", "metadata"
    pseudonym: str
    name: str
    folder: str = field(default="", compare=False)
    study: str = field(default="", compare=False)
    series: str = field(default="", compare=False)


#: Where a filed image's or metadata file's key names its patient and its study folder
#: (``<group>/<folder>/<P>/<study>/<series>/<name>``).
KEY_PATIENT, KEY_STUDY = 2, 3


def parse_warehouse_key(key: str) -> WarehouseKey | None:
    """Classify a key of the warehouse side, or return None if it is not in the layout."""
    parts = key.split("/")
    if len(parts) < 2 or parts[0] not in GROUPS:
        return None
    group, folder = parts[0], parts[1]
    if folder == "data" and len(parts) == 4:
        return WarehouseKey(group, "clinical", parts[2], parts[3])
    if len(parts) == 6:
        pseudonym, study, series, name = parts[KEY_PATIENT], parts[KEY_STUDY], *parts[4:]
        if folder in _IMAGE_FOLDERS:
            return WarehouseKey(group, "image", pseudonym, name, folder, study, series)
        if folder in _METADATA_FOLDERS:
            image_folder = folder[: -len(METADATA_SUFFIX)]
            return WarehouseKey(group, "metadata", pseudonym, name, image_folder, study, series)
    return None


_IMAGE_FOLDERS = frozenset(IMAGE_FOLDERS)
_METADATA_FOLDERS = frozenset(f"{f}{METADATA_SUFFIX}" for f in _IMAGE_FOLDERS)


@dataclass(frozen=True, slots=True)
class ImageKey:
    """A filed image's key, by its parts: ``<group>/<folder>/<P>/<study>/<series>/<name>``."""

    key: str
    group: str
    folder: str
    patient_id: str
    study_uid: str
    series_uid: str
    name: str

    @property
    def metadata_key(self) -> str:
        """The key of the image's metadata JSON (`image_targets`)."""
        return image_targets(
            self.group, self.folder, self.patient_id, self.study_uid, self.series_uid, self.name
        )[1]


def parse_image_key(key: str) -> ImageKey | None:
    """The parts of a filed image's key, or None when ``key`` is not an image of the layout."""
    parsed = parse_warehouse_key(key)
    if parsed is None or parsed.kind != "image":
        return None
    return ImageKey(
        key, parsed.group, parsed.folder, parsed.pseudonym, parsed.study, parsed.series, parsed.name
    )


def patient_folder(group: str, pseudonym: str) -> str:
    """A filed patient's clinical folder: ``<group>/data/<pseudonym>/``."""
    return f"{group}/data/{pseudonym}/"
