r"""The screen for identifying data: a parsed header checked against a profile of attributes.

The profile lists the attributes a pseudonymised upload must not carry with a value.

The profile is data, ``identifying_profile.json`` beside this module (one entry per
attribute: keyword, tag, rule, and its PS3.15 Annex E reference), checked when it is loaded
(`load_profile`: a malformed profile is a `ProfileError`, a configuration problem). The
screen (`screen_header`) returns the keywords of the attributes whose value breaks their rule,
never a value. It looks only at the top level of the header the loader has parsed already
(the pixel data is never read, and values over `warehouse.dicom.reader.LARGE_VALUE_BYTES`
are not fetched: such a value is not shown clean, so it breaks its rule), and works on the
bytes as the file holds them, so a value of any VR, encoding or size neither fails nor is
decoded.

The rules (`RULES`):

- ``empty``: absent, or only padding (spaces, NULs, and the ``\\``, ``^`` and ``=``
  separators of empty values and name components); a sequence without items;
- ``empty-or-pseudonym``: ``empty``, or the image's own PatientID (the pseudonym), exactly,
  once padding and trailing ``^`` and ``=`` are gone;
- ``year-only``: a date reduced to a year: empty, ``YYYY``, or ``YYYY0101`` (a DA value has
  eight digits, so the first of January is how de-identification tools keep a year; a patient
  truly born on the first of January passes too: the screen cannot tell);
- ``not-YES``: anything but ``YES`` (any case), for Burned In Annotation.

A value the screen cannot read (skipped for its size, a value it cannot convert) breaks its
rule: what cannot be seen cannot be shown clean.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jsonschema
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from warehouse.core.config import ConfigError
from warehouse.core.text import quote

if TYPE_CHECKING:
    from warehouse.core.report import RunReport

#: The profile shipped with the package.
PROFILE_PATH = Path(__file__).with_name("identifying_profile.json")

_TAG = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)")
_YEAR = re.compile(rb"[0-9]{4}(?:0101)?")
#: Padding and the separators of empty values and name components.
_EMPTY_BYTES = b" \x00\\^="
#: A value that could not be read (skipped for size, not convertible).
_UNREADABLE = object()


class ProfileError(ConfigError):
    """The profile of the identifying-data screen is missing or malformed.

    The run cannot start: exit code 2.
    """


def _passes_empty(value) -> bool:
    """``empty``: no value but padding; a sequence without items."""
    return isinstance(value, bytes) and not value.strip(_EMPTY_BYTES)


def _passes_empty_or_pseudonym(value, pseudonym: bytes) -> bool:
    """``empty-or-pseudonym``: empty, or exactly the pseudonym.

    Padding and trailing name separators (``^``, ``=``) aside.
    """
    if _passes_empty(value):
        return True
    return isinstance(value, bytes) and value.strip(b" \x00").rstrip(b"^=") == pseudonym


def _passes_year_only(value) -> bool:
    """``year-only``: every value empty, ``YYYY`` or ``YYYY0101``."""
    if not isinstance(value, bytes):
        return False
    for item in value.split(b"\\"):
        item = item.strip(b" \x00")
        if item and not _YEAR.fullmatch(item):
            return False
    return True


def _passes_not_yes(value) -> bool:
    """``not-YES``: no value is ``YES`` (in any case)."""
    if not isinstance(value, bytes):
        return False
    return all(item.strip(b" \x00").upper() != b"YES" for item in value.split(b"\\"))


#: Each rule: the function that says whether a value passes (given the value and the
#: pseudonym as ASCII bytes), and the VRs it can judge (None: any).
RULES: dict[str, tuple[Callable[[object, bytes], bool], frozenset[str] | None]] = {
    "empty": (lambda value, _: _passes_empty(value), None),
    "empty-or-pseudonym": (_passes_empty_or_pseudonym, frozenset({"PN"})),
    "year-only": (lambda value, _: _passes_year_only(value), frozenset({"DA"})),
    "not-YES": (lambda value, _: _passes_not_yes(value), frozenset({"CS"})),
}


@dataclass(frozen=True, slots=True)
class ScreenedAttribute:
    """One attribute of the profile: its keyword, tag, rule and PS3.15 Annex E reference."""

    keyword: str
    tag: int
    rule: str
    reference: str


@dataclass(frozen=True, slots=True)
class Profile:
    """The screen's profile: its attributes, in the file's order, and a digest of them.

    The digest is what a refusal remembered by the next run depends on.
    """

    attributes: tuple[ScreenedAttribute, ...]
    digest: str

    @property
    def keywords(self) -> tuple[str, ...]:
        """The keywords of its attributes."""
        return tuple(attribute.keyword for attribute in self.attributes)


_PROFILE_SCHEMA = {
    "type": "object",
    "required": ["name", "version", "attributes"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "integer"},
        "description": {"type": "string"},
        "attributes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["keyword", "tag", "rule", "annex_e"],
                "additionalProperties": False,
                "properties": {
                    "keyword": {"type": "string"},
                    "tag": {"type": "string", "pattern": _TAG.pattern},
                    "rule": {"enum": list(RULES)},
                    "annex_e": {"type": "string", "minLength": 1},
                },
            },
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(_PROFILE_SCHEMA)


def load_profile(path: str | Path | None = None) -> Profile:
    """Read and check the screen's profile (the shipped one, `PROFILE_PATH`, by default).

    Besides its shape, each keyword must be a keyword of the DICOM dictionary, its tag that
    keyword's, listed once, and its rule one that can judge the attribute's VR.

    Raises
    ------
    ProfileError
        Naming the file and every problem found.
    """
    where = Path(path) if path is not None else PROFILE_PATH
    try:
        data = where.read_bytes()
    except OSError as exc:
        raise ProfileError(f"the identifying-data profile {where} cannot be read: {exc}") from None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProfileError(f"the identifying-data profile {where} is not JSON: {exc}") from None
    problems = [
        f"{_path(error.absolute_path)}: {_schema_message(error)}"
        for error in sorted(_VALIDATOR.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]
    if not problems:
        problems = _attribute_problems(doc["attributes"])
    if problems:
        raise ProfileError(
            f"the identifying-data profile {where} is malformed: " + "; ".join(problems[:10])
        )
    attributes = tuple(
        ScreenedAttribute(item["keyword"], _tag(item["tag"]), item["rule"], item["annex_e"])
        for item in doc["attributes"]
    )
    canonical = json.dumps([[a.keyword, a.tag, a.rule] for a in attributes]).encode("utf-8")
    return Profile(attributes, hashlib.sha256(canonical).hexdigest()[:16])


def load_screen_profile(report: RunReport, path: str | Path | None = None) -> Profile:
    """Load the profile for a run (`load_profile`).

    A problem is recorded on ``report`` as a configuration problem (the run exits 2) and
    raised.

    Raises
    ------
    ProfileError
    """
    try:
        return load_profile(path)
    except ProfileError as exc:
        report.fail(str(exc))
        report.config_problem = True
        raise


def profile_digest() -> str:
    """Return the digest of the profile in force (`PROFILE_PATH`), read once a process.

    A remembered refusal holds while its profile's digest is this one.
    """
    return _profile_at(str(PROFILE_PATH)).digest


@functools.lru_cache(maxsize=4)
def _profile_at(path: str) -> Profile:
    return load_profile(path)


def _tag(text: str) -> int:
    match = _TAG.fullmatch(text)
    assert match is not None  # (the schema's pattern)
    return int(match[1] + match[2], 16)


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text or "the document"


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "enum":
        return f"must be one of {', '.join(RULES)}, got {quote(error.instance)}"
    if error.validator == "pattern":
        return f"must be a tag written (GGGG,EEEE) in upper-case hex, got {quote(error.instance)}"
    return error.message[:200]


def _attribute_problems(items: list[dict]) -> list[str]:
    problems = []
    seen: set[str] = set()
    for number, item in enumerate(items):
        where, keyword = f"attributes[{number}]", item["keyword"]
        tag = tag_for_keyword(keyword)
        if tag is None:
            problems.append(f"{where}.keyword: {quote(keyword)} is not a DICOM keyword")
            continue
        if keyword in seen:
            problems.append(f"{where}.keyword: {keyword} is listed twice")
        seen.add(keyword)
        if _tag(item["tag"]) != tag:
            problems.append(
                f"{where}.tag: {item['tag']} is not the tag of {keyword} "
                f"(({tag >> 16:04X},{tag & 0xFFFF:04X}))"
            )
        vrs = RULES[item["rule"]][1]
        vr = dictionary_VR(tag)
        if vrs is not None and vr not in vrs:
            problems.append(
                f"{where}.rule: {item['rule']} cannot judge {keyword}, of VR {vr} "
                f"(it judges {', '.join(sorted(vrs))})"
            )
    return problems


# --------------------------------------------------------------------------------------------
# the screen


def screen_header(dataset: Dataset, profile: Profile, pseudonym: str) -> list[str]:
    """Return the keywords of the profile's attributes whose value breaks their rule.

    Parameters
    ----------
    dataset : pydicom.dataset.Dataset
        A parsed header (as `warehouse.dicom.reader.read_header` gives it, or built).
    profile : Profile
        The attributes and their rules.
    pseudonym : str
        The image's PatientID, as the loader files it (ASCII: `warehouse.core.keys`).

    Returns
    -------
    list of str
        Keywords, in the profile's order; empty when the header passes. Never a value.
    """
    own = pseudonym.encode("ascii", "replace")
    skipped: frozenset[int] = getattr(dataset, "skipped_for_size", frozenset())
    broken = []
    for attribute in profile.attributes:
        value = _UNREADABLE if attribute.tag in skipped else _value(dataset, attribute.tag)
        passes = RULES[attribute.rule][0]
        if not passes(value, own):
            broken.append(attribute.keyword)
    return broken


def _value(dataset: Dataset, tag: int):
    """Return the top-level value of ``tag`` as the file holds it, or `_UNREADABLE`.

    Bytes: ``b""`` when absent or empty; a sequence with items is a non-empty marker.
    """
    element = dataset._dict.get(tag)  # type: ignore[call-overload]  # (no conversion)
    if element is None:
        return b""
    value = element.value
    if value is None:
        return b"" if isinstance(element, RawDataElement) and not element.length else _UNREADABLE
    if isinstance(value, bytes):
        return value
    if isinstance(value, Sequence):
        return b"<items>" if len(value) else b""
    try:
        items = value if type(value).__name__ == "MultiValue" else [value]
        return "\\".join(str(item) for item in items).encode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a hostile value pydicom converted into something odd
        return _UNREADABLE
