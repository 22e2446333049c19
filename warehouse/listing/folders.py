"""The raw side's upload folders: which can still change, so that a daily run lists only those.

Uploads arrive in dated folders, ``raw-<site>/<YYYY-MM-DD>/``. A folder is **closed** once a
complete run lists it both

- at least `SETTLE_DAYS` after a complete run first listed it (an upload still being written
  when a run first sees its folder is seen whole by a later one), and
- more than its window after its date (the window is ``max_upload_delay_days`` of
  ``config.json`` when it is set: a clinical file that appears later in the folder is an
  "implausible upload date" anyway; else `DEFAULT_WINDOW_DAYS`; a folder whose name is not a
  date has none).

A daily run lists each prefix's folders with a delimiter (one LIST a thousand folders) and the
contents of the folders that are not closed; a file added later to a closed folder is found by
the next reconcile run, which lists every folder.

The state is one small JSON object in the warehouse, `STATE_KEY`, written (atomically) only at
the end of a run that listed its inputs and completed, so a run that crashes changes nothing::

    {"version": 1, "run_id": ..., "written": ...,
     "prefixes": {"raw-a": {"closed": ["2021-01-04", ...],
                             "listed": {"2021-06-01": "2021-06-02T09:00:00+00:00"}}},
     "settled": [["raw-a/2021-06-01/images/x.dcm", 1234, "2021-06-01T10:00:00+00:00"]]}

``listed`` holds the open folders and when a complete run first listed them; ``settled`` the
raw images of open folders found filed already under another raw file (read once, then known).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import jsonschema

from warehouse.core.errors import ObjectNotFound
from warehouse.core.keys import parse_upload_date
from warehouse.core.text import quote
from warehouse.storage.base import Storage

STATE_KEY = "state/raw-folders.json"
#: A folder's window when ``config.json`` sets no ``max_upload_delay_days``.
DEFAULT_WINDOW_DAYS = 7
#: Days a folder stays open after a complete run first listed it.
SETTLE_DAYS = 2

_STATE_SCHEMA = {
    "type": "object",
    "required": ["version", "prefixes"],
    "properties": {
        "version": {"const": 1},
        "prefixes": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["closed", "listed"],
                "properties": {
                    "closed": {"type": "array", "items": {"type": "string"}},
                    "listed": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
        "settled": {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [
                    {"type": "string"},
                    {"type": "integer", "minimum": 0},
                    {"type": "string"},
                ],
                "minItems": 3,
                "maxItems": 3,
            },
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(_STATE_SCHEMA)


class InvalidFolderState(ValueError):
    """The state file cannot be read or is not a folder state: the run lists every folder."""


def closes(folder: str, first: dt.datetime, now: dt.datetime, window_days: int) -> bool:
    """Tell whether a folder is closed.

    The folder is one a complete run lists ``now``, first listed by one at ``first``; it is
    closed at least `SETTLE_DAYS` after ``first`` and more than its window after its date
    (a folder whose name is not a date has no window).
    """
    if now - first < dt.timedelta(days=SETTLE_DAYS):
        return False
    date = parse_upload_date(folder)
    if date is None:
        return True
    day = now.astimezone(dt.UTC).date() if now.tzinfo is not None else now.date()
    return day > dt.date.fromisoformat(date) + dt.timedelta(days=window_days)


def window_days(max_upload_delay_days: int | None) -> int:
    """Return a folder's window: ``max_upload_delay_days`` when ``config.json`` sets it."""
    return DEFAULT_WINDOW_DAYS if max_upload_delay_days is None else max_upload_delay_days


@dataclass
class FolderState:
    """The raw side's upload folders, as complete runs left them.

    Which are closed, when the open ones were first listed, and the raw images of open folders
    known filed under another raw file.
    """

    closed: dict[str, set[str]] = field(default_factory=dict)
    listed: dict[str, dict[str, str]] = field(default_factory=dict)
    settled: dict[str, tuple[int, str]] = field(default_factory=dict)

    def is_open(self, prefix: str, folder: str) -> bool:
        """Whether a daily run lists ``folder`` of ``prefix`` (every folder not closed)."""
        return folder not in self.closed.get(prefix, ())

    def after(
        self,
        listed: dict[str, list[str]],
        now: dt.datetime,
        days: int,
        settled: dict[str, tuple[int, str]],
    ) -> FolderState:
        """Return the state after a complete run.

        The run listed ``listed`` (prefix -> folders) at ``now``: those folders recorded,
        those past their window closed, and the raw images found settled kept while their
        folders are open.
        """
        closed = {prefix: set(names) for prefix, names in self.closed.items()}
        open_folders: dict[str, dict[str, str]] = {
            prefix: dict(names) for prefix, names in self.listed.items()
        }
        for prefix, names in listed.items():
            known = open_folders.setdefault(prefix, {})
            for name in names:
                first = _time(known.get(name)) or now
                if closes(name, first, now, days):
                    closed.setdefault(prefix, set()).add(name)
                    known.pop(name, None)
                else:
                    known[name] = first.isoformat()
        kept = {
            key: stamp
            for key, stamp in {**self.settled, **settled}.items()
            if _folder_of(key)[1] not in closed.get(_folder_of(key)[0], ())
        }
        return FolderState(closed, open_folders, kept)

    def as_dict(self, run_id: str, now: dt.datetime) -> dict:
        """Return the state as the JSON the next run reads."""
        prefixes = sorted(set(self.closed) | set(self.listed))
        return {
            "version": 1,
            "run_id": run_id,
            "written": now.isoformat(),
            "prefixes": {
                prefix: {
                    "closed": sorted(self.closed.get(prefix, ())),
                    "listed": dict(sorted(self.listed.get(prefix, {}).items())),
                }
                for prefix in prefixes
            },
            "settled": [[key, size, when] for key, (size, when) in sorted(self.settled.items())],
        }


def _time(text: str | None) -> dt.datetime | None:
    """Read a first listing's time (None for none, or for one that is not a time with a zone)."""
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _folder_of(key: str) -> tuple[str, str]:
    prefix, _, rest = key.partition("/")
    return prefix, rest.partition("/")[0]


def parse_state(data: bytes) -> FolderState:
    """Read a state file back.

    Raises
    ------
    InvalidFolderState
        Saying what is wrong.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidFolderState(f"not JSON: {exc}") from None
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        raise InvalidFolderState(f"at {where}: {quote(error.message)}")
    return FolderState(
        closed={p: set(v["closed"]) for p, v in document["prefixes"].items()},
        listed={p: dict(v["listed"]) for p, v in document["prefixes"].items()},
        settled={key: (size, when) for key, size, when in document.get("settled", [])},
    )


def load_state(storage: Storage) -> FolderState | None:
    """Read the folder state.

    None when no complete run wrote one yet (then every folder is listed).

    Raises
    ------
    InvalidFolderState
        When it cannot be used.
    StorageError
        When it cannot be read.
    """
    try:
        return parse_state(storage.read(STATE_KEY))
    except ObjectNotFound:
        return None


def save_state(storage: Storage, state: FolderState, run_id: str, now: dt.datetime) -> None:
    """Write the folder state (atomically: readers see the old one or the new one).

    Raises
    ------
    StorageError
        When it cannot be written.
    """
    data = json.dumps(state.as_dict(run_id, now), indent=1).encode("utf-8")
    storage.write(STATE_KEY, data)
