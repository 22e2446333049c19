"""Run settings from the environment, and the pipeline's ``config.json``.

Both are validated up front: a problem stops the run before anything is read or written, with one
message that names it (a `ConfigError`, exit code 2), never a traceback.

The shape of ``config.json`` is written once, in `CONFIG_SCHEMA` (JSON Schema 2020-12, checked
with ``jsonschema``); `config_help` describes it from there. What a schema cannot say (a raw
prefix is one ``raw-<uploader>`` folder, a site is in one list only, ``prefix_sites`` names
configured prefixes) is checked in `parse_config`, after the schema.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import textwrap
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

import jsonschema

from warehouse.core.errors import ExpectedError, ObjectNotFound, StorageError
from warehouse.core.keys import RAW_PREFIX_MARK, normalise_prefix
from warehouse.core.text import quote

if TYPE_CHECKING:
    from warehouse.core.report import RunReport
    from warehouse.storage.base import Storage

CONFIG_KEY = "config.json"
DEFAULT_WORKERS = 32
SITE_GROUPS = ("split", "training", "validation")
#: No limit on how long before its object's last-modified time a folder may be dated, unless
#: config.json sets one: a bucket copied or restored gives every raw object a new
#: last-modified time, and a default limit would then refuse every new file.
DEFAULT_MAX_UPLOAD_DELAY_DAYS = None
#: What the loader does with an image whose header breaks the identifying-data profile
#: (`warehouse.dicom.screen`), per raw prefix: file it and report it (the default, so that
#: nothing is blocked by surprise), or refuse it.
SCREEN_POLICIES = ("report", "refuse")
DEFAULT_SCREEN_POLICY = "report"
#: A bound that keeps date arithmetic far from overflow (about a century).
MAX_UPLOAD_DELAY_DAYS = 36_500

MIB = 1024 * 1024
#: A clinical record is a few kilobytes; a megabyte leaves a wide margin and keeps a run's
#: reads of such files small in memory.
DEFAULT_MAX_CLINICAL_BYTES = 1 * MIB
DEFAULT_MAX_HEADER_BYTES = 64 * MIB
MAX_BYTES_SETTING = 1 << 40
LOG_FORMATS = ("text", "json")
#: The phases of a loader run: the whole run in one process, or one part of a sharded run
#: (`warehouse.loader.shards`).
CLINICAL_PHASE, IMAGE_PHASE = "clinical", "images"
PHASES = ("all", CLINICAL_PHASE, IMAGE_PHASE)
MAX_PROCESSES = 256
#: The largest AWS Batch array job has 10,000 children.
MAX_SHARDS = 10_000

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
# ASCII digits only: int() also takes "1_000", "+5" and other scripts' digits.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")
_SHARD = re.compile(r"([0-9]{1,19})/([0-9]{1,19})")
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")

_STRING_LIST = {"type": "array", "items": {"type": "string"}}

#: The one description of ``config.json``: keys, types, meanings and defaults.
CONFIG_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": CONFIG_KEY,
    "description": "The loader's configuration, at the root of the warehouse bucket.",
    "type": "object",
    "required": ["raw_prefixes", "training_percentage"],
    "additionalProperties": False,
    "properties": {
        "raw_prefixes": {
            **_STRING_LIST,
            "description": (
                "the raw-<uploader> folders the loader reads, one folder each "
                "(a trailing / is ignored; a prefix listed twice counts once)"
            ),
        },
        "training_percentage": {
            "type": "integer",
            "minimum": 0,
            "maximum": 100,
            "description": "share of a split site's patients that go to training",
        },
        "sites": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": (
                "where each SubmittingCentre's patients go; a centre is matched after Unicode "
                "NFC normalisation, otherwise exactly (case and spaces count), and may be in "
                "one list only"
            ),
            "properties": {
                "split": {
                    **_STRING_LIST,
                    "default": [],
                    "description": "centres whose patients are split by hash",
                },
                "training": {
                    **_STRING_LIST,
                    "default": [],
                    "description": "centres whose patients all go to training",
                },
                "validation": {
                    **_STRING_LIST,
                    "default": [],
                    "description": "centres whose patients all go to validation",
                },
            },
        },
        "prefix_sites": {
            "type": "object",
            "default": {},
            "description": (
                "the SubmittingCentre names each raw prefix may send; a prefix not listed "
                "may send any centre, and several prefixes may name the same centre"
            ),
            "additionalProperties": {
                **_STRING_LIST,
                "title": "<raw prefix>",
                "minItems": 1,
                "description": (
                    "a prefix of raw_prefixes (written the same way), and the centres it "
                    "may send (NFC-normalised like sites)"
                ),
            },
        },
        "identifying_data": {
            "type": "object",
            "default": {},
            "description": (
                "what the loader does with an image whose header breaks the identifying-data "
                "profile (a patient name, a full birth date, ...), per raw prefix: report "
                "(file it, and report the attributes by name) or refuse (do not file it); a "
                "prefix not listed: report"
            ),
            "additionalProperties": {
                "type": "string",
                "enum": list(SCREEN_POLICIES),
                "title": "<raw prefix>",
                "description": "a prefix of raw_prefixes (written the same way): report or refuse",
            },
        },
        "max_upload_delay_days": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_UPLOAD_DELAY_DAYS,
            "x-when-absent": "no limit",
            "description": (
                "an upload folder dated more than this many days before its object's "
                "last-modified time is implausible (30 suits sites that upload on the day the "
                "folder names); one dated after it, past one day for time zones, always is"
            ),
        },
    },
}


def _strict_integer(checker: object, instance: object) -> bool:
    # JSON Schema counts 50.0 as an integer; config.json must say 50.
    return isinstance(instance, int) and not isinstance(instance, bool)


_ConfigValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)
_VALIDATOR = _ConfigValidator(CONFIG_SCHEMA)


class ConfigError(ExpectedError):
    """The run cannot start: a setting or ``config.json`` is missing or invalid."""


def nfc(text: str) -> str:
    """Return ``text`` in Unicode normalisation form C, the form site names are compared in."""
    return unicodedata.normalize("NFC", text)


# --------------------------------------------------------------------------------------------
# Settings from the environment


def parse_bool(value: str, name: str) -> bool:
    """Parse a boolean setting: true/false, 1/0, yes/no, on/off in any case.

    Raises
    ------
    ConfigError
        For any other value.
    """
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean: use true/false, 1/0, yes/no or on/off")


def _whole_number(text: str) -> int | None:
    """The value of a string of ASCII digits (at most 19), else None."""
    return int(text) if _WHOLE_NUMBER.fullmatch(text) else None


@dataclass(frozen=True)
class Settings:
    """What the environment says about a run.

    Attributes
    ----------
    bucket : str
        ``WAREHOUSE_BUCKET`` (or ``BUCKET_NAME``): ``name``, ``s3://name`` or ``file://path``.
    dry_run : bool
        ``DRY_RUN``: run everything, write nothing.
    workers : int
        ``WAREHOUSE_WORKERS``: size of the shared storage worker pool.
    progress_seconds : float
        ``WAREHOUSE_PROGRESS_SECONDS``: period of the status lines when output is not a terminal.
    max_clinical_bytes : int
        ``WAREHOUSE_MAX_CLINICAL_BYTES``: clinical files larger than this are reported unread.
    max_header_bytes : int
        ``WAREHOUSE_MAX_HEADER_BYTES``: a DICOM header larger than this is refused.
    log_format : str
        ``WAREHOUSE_LOG_FORMAT``: ``"text"`` or ``"json"``.
    shard : tuple of int, or None
        ``(i, N)``: run shard ``i`` of ``N`` of the image work (``WAREHOUSE_SHARD=i/N``, or
        ``WAREHOUSE_SHARDS=N`` with ``AWS_BATCH_JOB_ARRAY_INDEX=i``; ``WAREHOUSE_PHASE=images``
        alone is ``(0, 1)``); None runs all of it.
    processes : int
        ``WAREHOUSE_PROCESSES``: processes for the image work (``auto`` resolved to a number).
    phase : str
        ``WAREHOUSE_PHASE``: ``"all"``, ``"clinical"`` or ``"images"`` (a shard is always
        ``"images"``; see `warehouse.loader.shards`).
    run_id : str or None
        ``WAREHOUSE_RUN_ID``: the identifier a sharded run's processes share.
    reconcile : bool
        ``WAREHOUSE_RECONCILE``: look at everything (both sides listed in full, the catalogue
        checked against the warehouse), not only at what can be new (a weekly run).
    inventory : str or None
        ``WAREHOUSE_INVENTORY``: where the warehouse bucket's S3 Inventory reports are
        delivered (``s3://bucket/prefix``, or ``file://path`` for a local copy), the source
        any full run (a reconcile, a warehouse's first run, a run whose catalogue cannot be
        read) reads instead of listing the bucket (`warehouse.listing.inventory`); None when
        not set: a full run lists.
    """

    bucket: str
    dry_run: bool = False
    workers: int = DEFAULT_WORKERS
    progress_seconds: float = 10.0
    max_clinical_bytes: int = DEFAULT_MAX_CLINICAL_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    log_format: str = "text"
    shard: tuple[int, int] | None = None
    processes: int = 1
    phase: str = "all"
    run_id: str | None = None
    reconcile: bool = False
    inventory: str | None = None


def _byte_limit(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, str(default)).strip()
    value = _whole_number(text)
    if value is None or not 1 <= value <= MAX_BYTES_SETTING:
        raise ConfigError(
            f"{name}={quote(text)} must be a whole number of bytes from 1 to "
            f"{MAX_BYTES_SETTING} (default {default})"
        )
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    text = env.get(name, choices[0])
    value = text.strip().lower()
    if value not in choices:
        raise ConfigError(
            f"{name}={quote(text)} must be {', '.join(choices[:-1])} or {choices[-1]} "
            f"(default {choices[0]})"
        )
    return value


def _shard(env: Mapping[str, str]) -> tuple[tuple[int, int] | None, str | None]:
    """The shard the environment names, and the variable that named it."""
    shard, source = None, None
    index: int | None
    count: int | None
    if "WAREHOUSE_SHARD" in env:
        text = env["WAREHOUSE_SHARD"].strip()
        match = _SHARD.fullmatch(text)
        index, count = (int(match[1]), int(match[2])) if match else (-1, 0)
        if not (1 <= count <= MAX_SHARDS and 0 <= index < count):
            raise ConfigError(
                f"WAREHOUSE_SHARD={quote(text)} must be i/N, shard i of N shards, with N from "
                f"1 to {MAX_SHARDS} and 0 <= i < N (e.g. 0/4)"
            )
        shard, source = (index, count), f"WAREHOUSE_SHARD={text}"
    if "WAREHOUSE_SHARDS" not in env:
        return shard, source
    text = env["WAREHOUSE_SHARDS"].strip()
    count = _whole_number(text)
    if count is None or not 1 <= count <= MAX_SHARDS:
        raise ConfigError(
            f"WAREHOUSE_SHARDS={quote(text)} must be the number of shards, an integer from 1 "
            f"to {MAX_SHARDS}"
        )
    if "AWS_BATCH_JOB_ARRAY_INDEX" not in env:
        raise ConfigError(
            f"WAREHOUSE_SHARDS={count} needs AWS_BATCH_JOB_ARRAY_INDEX (set by AWS Batch in "
            "each child of an array job) to say which shard to run; or set WAREHOUSE_SHARD=i/N"
        )
    index_text = env["AWS_BATCH_JOB_ARRAY_INDEX"].strip()
    index = _whole_number(index_text)
    if index is None or index >= count:
        raise ConfigError(
            f"AWS_BATCH_JOB_ARRAY_INDEX={quote(index_text)} must be a shard index from 0 to "
            f"{count - 1} (WAREHOUSE_SHARDS={count})"
        )
    if shard is not None and shard != (index, count):
        raise ConfigError(
            f"{source} disagrees with WAREHOUSE_SHARDS={count} and "
            f"AWS_BATCH_JOB_ARRAY_INDEX={index} (shard {index}/{count}): set one or the other"
        )
    return (index, count), source or f"WAREHOUSE_SHARDS={count}"


def _inventory(env: Mapping[str, str]) -> str | None:
    """Where the inventory reports are (``WAREHOUSE_INVENTORY``): a location URL, or None.

    Only its scheme is checked here; `warehouse.storage.url.location_from_url` opens it.
    """
    text = str(env.get("WAREHOUSE_INVENTORY", "")).strip()
    if not text:
        return None
    if not text.startswith(("s3://", "file://")) or _has_control_character(text):
        raise ConfigError(
            f"WAREHOUSE_INVENTORY={quote(text)} must be s3://bucket/prefix (where the S3 "
            "Inventory reports of the warehouse bucket are delivered) or file:///path"
        )
    return text


def usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _processes(env: Mapping[str, str], shard_source: str | None) -> int:
    text = env.get("WAREHOUSE_PROCESSES", "1").strip()
    processes: int | None
    if text.lower() == "auto":
        processes = min(usable_cpus(), MAX_PROCESSES)
    else:
        processes = _whole_number(text)
        if processes is None or not 1 <= processes <= MAX_PROCESSES:
            raise ConfigError(
                f"WAREHOUSE_PROCESSES={quote(text)} must be an integer from 1 to "
                f"{MAX_PROCESSES}, or auto (the CPUs this process may use)"
            )
    # "auto" too: whether it means one process must not depend on the machine.
    if shard_source is not None and (processes > 1 or text.lower() == "auto"):
        raise ConfigError(
            f"WAREHOUSE_PROCESSES={text} cannot be combined with {shard_source}: a shard runs "
            "in one process (run more shards instead)"
        )
    return processes


def _run_id(env: Mapping[str, str]) -> str | None:
    if "WAREHOUSE_RUN_ID" not in env:
        return None
    text = env["WAREHOUSE_RUN_ID"].strip()
    if not _RUN_ID.fullmatch(text):
        raise ConfigError(
            f"WAREHOUSE_RUN_ID={quote(text)} must be 1 to 64 ASCII letters, digits, - or _"
        )
    return text


def _run_part(
    phase: str,
    shard: tuple[int, int] | None,
    shard_source: str | None,
    processes: int,
    run_id: str | None,
    dry_run: bool,
) -> tuple[str, tuple[int, int] | None]:
    """The phase and shard of a run, checked together: a shard runs the image phase (and the
    image phase alone is shard 0/1), needs its run's id, and is no dry run."""
    if phase == "clinical" and shard_source is not None:
        raise ConfigError(
            f"WAREHOUSE_PHASE=clinical cannot be combined with {shard_source}: the clinical "
            "phase runs once, before the shards (it has no shard)"
        )
    if phase == "images" and shard is None:
        shard, shard_source = (0, 1), "WAREHOUSE_PHASE=images"
    if phase != "all" and processes > 1:
        raise ConfigError(
            f"WAREHOUSE_PROCESSES={processes} cannot be combined with WAREHOUSE_PHASE={phase}: "
            "with several processes one run makes the clinical phase and the shards itself"
        )
    if shard is not None:
        phase = "images"
        if run_id is None:
            raise ConfigError(
                f"{shard_source} needs WAREHOUSE_RUN_ID, the id of the run whose clinical phase "
                "ran first (WAREHOUSE_PHASE=clinical with the same WAREHOUSE_RUN_ID)"
            )
    if dry_run and phase != "all":
        source = shard_source or f"WAREHOUSE_PHASE={phase}"
        raise ConfigError(
            f"DRY_RUN=true cannot be combined with {source}: a dry run writes nothing, so the "
            "shards of a sharded run could not see its clinical phase"
        )
    return phase, shard


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the run settings from the environment.

    Parameters
    ----------
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    Settings

    Raises
    ------
    ConfigError
        When no bucket is named or a value is invalid, naming the variable.
    """
    env = os.environ if environ is None else environ
    bucket = (env.get("WAREHOUSE_BUCKET") or env.get("BUCKET_NAME") or "").strip()
    if not bucket:
        raise ConfigError(
            "No warehouse bucket: set WAREHOUSE_BUCKET to a bucket name, s3://name, or "
            "file:///path/to/directory (BUCKET_NAME is accepted too)"
        )
    dry_run = parse_bool(env.get("DRY_RUN", "false"), "DRY_RUN")
    reconcile = parse_bool(env.get("WAREHOUSE_RECONCILE", "false"), "WAREHOUSE_RECONCILE")
    workers_text = env.get("WAREHOUSE_WORKERS", str(DEFAULT_WORKERS)).strip()
    workers = _whole_number(workers_text)
    if workers is None or not 1 <= workers <= 512:
        raise ConfigError(
            f"WAREHOUSE_WORKERS={quote(workers_text)} must be an integer from 1 to 512"
        )
    progress_text = env.get("WAREHOUSE_PROGRESS_SECONDS", "10").strip()
    try:
        progress = float(progress_text)
    except ValueError:
        progress = -1.0
    # float() also takes "inf" and "nan", which are no period.
    if not 0 < progress < float("inf"):
        raise ConfigError(
            f"WAREHOUSE_PROGRESS_SECONDS={quote(progress_text)} must be a positive number"
        )
    shard, shard_source = _shard(env)
    phase = _choice(env, "WAREHOUSE_PHASE", PHASES)
    processes = _processes(env, shard_source)
    run_id = _run_id(env)
    phase, shard = _run_part(phase, shard, shard_source, processes, run_id, dry_run)
    return Settings(
        bucket=bucket,
        dry_run=dry_run,
        workers=workers,
        progress_seconds=progress,
        max_clinical_bytes=_byte_limit(
            env, "WAREHOUSE_MAX_CLINICAL_BYTES", DEFAULT_MAX_CLINICAL_BYTES
        ),
        max_header_bytes=_byte_limit(env, "WAREHOUSE_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES),
        log_format=_choice(env, "WAREHOUSE_LOG_FORMAT", LOG_FORMATS),
        shard=shard,
        processes=processes,
        phase=phase,
        run_id=run_id,
        reconcile=reconcile,
        inventory=_inventory(env),
    )


# --------------------------------------------------------------------------------------------
# config.json


@dataclass(frozen=True)
class PipelineConfig:
    """The validated content of ``config.json``.

    Site names are kept in Unicode NFC (normalised here however the instance is built), and are
    looked up only through `site_rule` and `centre_allowed`.

    Attributes
    ----------
    raw_prefixes : tuple of str
        Raw prefixes the loader reads, normalised without a trailing slash.
    training_percentage : int
        Share (0..100) of a split site's patients that go to training.
    site_rules : dict
        ``SubmittingCentre`` (NFC) -> ``"split"``, ``"training"`` or ``"validation"``.
    prefix_sites : dict
        Raw prefix -> the centres (NFC) it may send; a prefix not in it may send any centre.
    max_upload_delay_days : int or None
        How many days an upload folder's date may be before its object's last-modified time
        (None: no limit).
    screen_policies : dict
        Raw prefix -> ``"report"`` or ``"refuse"`` (``identifying_data``): read only through
        `screen_policy`.
    """

    raw_prefixes: tuple[str, ...]
    training_percentage: int
    site_rules: dict[str, str] = field(default_factory=dict)
    prefix_sites: dict[str, frozenset[str]] = field(default_factory=dict)
    max_upload_delay_days: int | None = DEFAULT_MAX_UPLOAD_DELAY_DAYS
    screen_policies: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "site_rules", {nfc(name): group for name, group in self.site_rules.items()}
        )
        object.__setattr__(
            self,
            "prefix_sites",
            {
                normalise_prefix(prefix): frozenset(nfc(name) for name in names)
                for prefix, names in self.prefix_sites.items()
            },
        )
        object.__setattr__(
            self,
            "screen_policies",
            {normalise_prefix(prefix): policy for prefix, policy in self.screen_policies.items()},
        )

    def screen_policy(self, prefix: str) -> str:
        """What the loader does with an image of raw ``prefix`` whose header breaks the
        identifying-data profile: ``"report"`` (file it and report it; a prefix
        ``identifying_data`` does not list) or ``"refuse"``."""
        return self.screen_policies.get(normalise_prefix(prefix), DEFAULT_SCREEN_POLICY)

    def site_rule(self, centre: object) -> str | None:
        """The rule for a record's ``SubmittingCentre``: THE way a centre is matched.

        The centre is compared after Unicode NFC normalisation (so a decomposed "é" matches a
        composed one), otherwise exactly: case and spaces count.

        Returns
        -------
        str or None
            ``"split"``, ``"training"`` or ``"validation"``; None when the centre is in no
            list (or is not a string).
        """
        if not isinstance(centre, str):
            return None
        return self.site_rules.get(nfc(centre))

    def centre_allowed(self, prefix: str, centre: object) -> bool:
        """Whether raw ``prefix`` may send records of ``centre`` (by ``prefix_sites``).

        A prefix that ``prefix_sites`` does not list may send any centre; centres are matched
        as in `site_rule`.
        """
        allowed = self.prefix_sites.get(normalise_prefix(prefix))
        if allowed is None:
            return True
        return isinstance(centre, str) and nfc(centre) in allowed


def _key_text(key: object) -> str:
    """A key as a message shows it: plain when it is plain, else quoted."""
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else quote(key)


def _path_text(path: Iterable[object]) -> str:
    """``sites.split``, ``raw_prefixes[1]``: where a value is in the document."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + _key_text(part)
    return text


def _expected(schema: dict) -> str:
    """The value ``schema`` expects, in words (``a list of strings``, ``an integer 0..100``)."""
    kind = str(schema.get("type", ""))
    if kind == "array":
        items = _expected(schema.get("items", {})).removeprefix("a ").removeprefix("an ")
        return ("a non-empty list of " if schema.get("minItems") else "a list of ") + items + "s"
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and high is not None:
            return f"an integer {low}..{high}"
        return "an integer" if low is None else f"an integer >= {low}"
    if kind == "object":
        if "properties" in schema:
            return "an object with " + "/".join(schema["properties"])
        values = schema.get("additionalProperties", {})
        return f"an object mapping {values.get('title', '<key>')} to {_expected(values)}"
    if "enum" in schema:
        return "one of " + ", ".join(str(value) for value in schema["enum"])
    return {"string": "a string"}.get(kind, "a JSON value")


def _schema_at(schema_path: Iterable[str | int]) -> dict:
    node = CONFIG_SCHEMA
    for part in schema_path:
        node = node[part]
    return node


def _schema_problem(error: jsonschema.ValidationError) -> list[str]:
    """The messages for one schema error, naming where it is and what is expected."""
    path = list(error.absolute_path)
    where = _path_text(path) or "the document"
    keyword = error.validator
    if keyword == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        unknown = sorted(key for key in error.instance if key not in known)
        message = (
            f"unknown key(s) {'in ' + where if path else 'at the top level'}: "
            f"{', '.join(_key_text(key) for key in unknown)} (expected {', '.join(known)})"
        )
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                message += (
                    f"; {_path_text([*path, key])}: did you mean {_path_text([*path, close[0]])}?"
                )
        return [message]
    if keyword == "required":
        properties = error.schema.get("properties", {})
        return [
            f"missing key {_path_text([*path, name])} (it has no default): "
            f"{_path_text([*path, name])} must be {_expected(properties.get(name, {}))}"
            for name in error.validator_value
            if name not in error.instance
        ]
    schema_path = list(error.absolute_schema_path)[:-1]
    if schema_path and schema_path[-1] == "items":
        # An item of a list: name the list, as the config's author wrote it.
        return [
            f"{_path_text(path[:-1])} must be {_expected(_schema_at(schema_path[:-1]))}, "
            f"got {quote(error.instance)} at {where}"
        ]
    got = quote(error.instance)
    if keyword in ("minimum", "maximum"):
        low, high = error.schema.get("minimum"), error.schema.get("maximum")
        if low is None or high is None:
            bound = f"at least {low}" if high is None else f"at most {high}"
            return [f"{where} must be {bound}, got {got}"]
        return [f"{where} must be between {low} and {high}, got {got}"]
    if keyword in ("type", "minItems", "enum"):
        return [f"{where} must be {_expected(error.schema)}, got {got}"]
    # A keyword the schema does not use today: jsonschema's own message would show the value
    # in full.
    return [f"{where} must meet {keyword}={error.validator_value!r}, got {got}"]


def _load_json(data: bytes) -> tuple[object, dict[int, tuple[dict, list[str]]]]:
    """Decode ``data`` as strict JSON (no NaN or Infinity), noting keys met twice in an object.

    Returns
    -------
    tuple
        ``(document, {id(object): (object, [repeated keys])})``.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{CONFIG_KEY} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    repeated: dict[int, tuple[dict, list[str]]] = {}

    def build_object(pairs: list[tuple[str, object]]) -> dict:
        obj: dict = {}
        for key, value in pairs:
            if key in obj:
                # The object itself is kept, so that its id stays its own until the walk.
                repeated.setdefault(id(obj), (obj, []))[1].append(key)
            obj[key] = value
        return obj

    def refuse_constant(name: str) -> NoReturn:
        raise ConfigError(f"{CONFIG_KEY} is not valid JSON: {name} is not a JSON number")

    try:
        doc = json.loads(text, object_pairs_hook=build_object, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{CONFIG_KEY} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{CONFIG_KEY} is not usable: its JSON is nested too deeply") from None
    except ValueError:
        # The only other ValueError json raises: Python's limit on int-string conversion.
        raise ConfigError(
            f"{CONFIG_KEY} is not usable: it holds an integer of more than "
            f"{sys.get_int_max_str_digits()} digits"
        ) from None
    return doc, repeated


def _text_problems(doc: object, repeated: dict) -> list[str]:
    """Keys repeated in an object, and strings that are not text (lone surrogates), by path.

    Walks the document without recursion: its depth is bounded only by ``json``'s.
    """
    problems = []
    found = set()
    stack: list[tuple[tuple, object]] = [((), doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            if id(value) in repeated:
                found.add(id(value))
                for key in dict.fromkeys(repeated[id(value)][1]):
                    problems.append(
                        f"duplicate key {_path_text([*path, key])}: a key may appear once "
                        "in an object"
                    )
            for key, item in value.items():
                if _has_surrogate(key):
                    problems.append(f"key {quote(key)} in {_path_text(path)} is not text")
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, i), item) for i, item in enumerate(value))
        elif isinstance(value, str) and _has_surrogate(value):
            problems.append(f"{_path_text(path)} is not text (a lone surrogate {quote(value)})")
    for ident, (_, keys) in repeated.items():
        if ident not in found:
            # In an object that a later duplicate replaced: no path left to show.
            problems.extend(f"duplicate key {_key_text(key)}" for key in dict.fromkeys(keys))
    return problems


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in text)


def _has_control_character(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


def _raise_problems(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(f"{CONFIG_KEY}: {problems[0]}")
    if problems:
        raise ConfigError(
            f"{CONFIG_KEY} has {len(problems)} problems:\n"
            + "\n".join(f"    - {p}" for p in problems)
        )


def parse_config(data: bytes) -> PipelineConfig:
    """Parse and validate ``config.json``.

    Parameters
    ----------
    data : bytes
        The file's content.

    Returns
    -------
    PipelineConfig

    Raises
    ------
    ConfigError
        For every problem (and nothing else): one message, naming each problem and where it is.
    """
    doc, repeated = _load_json(data)
    if not isinstance(doc, dict):
        raise ConfigError(f"{CONFIG_KEY} must be a JSON object, got {type(doc).__name__}")
    _raise_problems(_text_problems(doc, repeated))
    # Unknown keys first: a misspelt key also makes a required one look missing.
    errors = sorted(
        _VALIDATOR.iter_errors(doc), key=lambda error: error.validator != "additionalProperties"
    )
    _raise_problems(list(dict.fromkeys(m for error in errors for m in _schema_problem(error))))

    problems = []
    prefixes: list[str] = []
    for prefix in doc["raw_prefixes"]:
        clean = normalise_prefix(prefix)
        if _has_control_character(prefix):
            problems.append(f"raw prefix {quote(prefix)} contains a control character")
        elif not clean.startswith(RAW_PREFIX_MARK) or "/" in clean or ".." in clean:
            problems.append(f"raw prefix {quote(prefix)} must be one folder named raw-<uploader>")
        elif clean not in prefixes:
            prefixes.append(clean)

    rules: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for group in SITE_GROUPS:
        for name in doc.get("sites", {}).get(group, []):
            key = nfc(name)
            if key in rules and rules[key] != group:
                same = "" if spelling[key] == name else " (the same name once NFC-normalised)"
                problems.append(
                    f"site {quote(name)} is in both sites.{rules[key]} and sites.{group}{same}"
                )
                continue
            rules[key] = group
            spelling.setdefault(key, name)

    prefix_sites = {
        prefix: frozenset(nfc(name) for name in names)
        for prefix, names in _by_raw_prefix(doc, "prefix_sites", prefixes, problems).items()
    }
    policies = _by_raw_prefix(doc, "identifying_data", prefixes, problems)
    _raise_problems(problems)

    return PipelineConfig(
        raw_prefixes=tuple(prefixes),
        training_percentage=doc["training_percentage"],
        site_rules=rules,
        prefix_sites=prefix_sites,
        max_upload_delay_days=doc.get("max_upload_delay_days", DEFAULT_MAX_UPLOAD_DELAY_DAYS),
        screen_policies=policies,
    )


def _by_raw_prefix(doc: dict, name: str, prefixes: list[str], problems: list[str]) -> dict:
    """The values of the object ``doc[name]`` by raw prefix (written as ``raw_prefixes``).

    A key that is not one of ``prefixes`` (with the closest one as a hint) or that names a
    prefix twice is added to ``problems`` and left out.
    """
    values: dict = {}
    for key, value in doc.get(name, {}).items():
        clean = normalise_prefix(key)
        where = _path_text([name, key])
        if clean not in prefixes:
            close = difflib.get_close_matches(clean, prefixes, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{where}: {quote(key)} is not one of raw_prefixes{hint}")
        elif clean in values:
            problems.append(f"{where}: raw prefix {clean} is named twice in {name}")
        else:
            values[clean] = value
    return values


def config_help() -> str:
    """A short description of every key of ``config.json``, generated from `CONFIG_SCHEMA`.

    Returns
    -------
    str
        One line per key: its path, whether it is required or its default, the type it must
        have and what it means; then how unknown keys are treated.
    """
    lines = [f"{CONFIG_KEY} (at the root of the bucket; every key not listed here is an error):"]

    def add(depth: int, text: str) -> None:
        indent = "  " * depth
        lines.extend(
            textwrap.wrap(text, 80, initial_indent=indent, subsequent_indent=indent + "    ")
        )

    def describe(path: str, schema: dict, required: bool, depth: int) -> None:
        if required:
            status = "required"
        elif "x-when-absent" in schema:
            status = f"optional, when absent: {schema['x-when-absent']}"
        else:
            status = f"optional, default {json.dumps(schema['default'])}"
        add(depth, f"{path} ({_expected(schema)}; {status}): {schema['description']}")
        for name, child in schema.get("properties", {}).items():
            describe(f"{path}.{name}", child, name in schema.get("required", ()), depth + 1)
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            add(
                depth + 1,
                f"{path}.{values['title']} ({_expected(values)}): {values['description']}",
            )

    for name, schema in CONFIG_SCHEMA["properties"].items():
        describe(name, schema, name in CONFIG_SCHEMA["required"], 1)
    return "\n".join(lines)


def load_pipeline_config(storage: Storage, report: RunReport) -> PipelineConfig:
    """Read and validate ``config.json`` from the root of ``storage``.

    A problem is recorded on ``report`` as a configuration problem (the run exits 2) and
    raised as `ConfigError`, or `StorageError` when the store cannot be read.
    """
    try:
        return parse_config(storage.read(CONFIG_KEY))
    except ObjectNotFound:
        problem: ExpectedError = ConfigError(f"no {CONFIG_KEY} at the root of {storage.url}")
    except ConfigError as exc:
        problem = exc
    except StorageError as exc:
        report.fail(str(exc))
        raise
    report.fail(str(problem))
    report.config_problem = True
    raise problem
