"""What a dataprocess batch is built from besides its rows, and whether the last batch stands.

The pages show the warehouse's ``config.json`` and the loader's newest run report
(`read_page_sources`). A digest of everything a batch is built from but the time
(`inputs_digest`) is saved with each batch (`INPUT_DIGEST`): a run that finds the same digest,
and no catalogue part since the last batch, writes no new batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from warehouse import __version__
from warehouse.catalogue.holdout import HOLDOUT_FORMAT
from warehouse.core.config import CONFIG_KEY, ConfigError, PipelineConfig, parse_config
from warehouse.core.errors import ObjectNotFound
from warehouse.core.report import latest_report_key
from warehouse.dashboard.figures import loader_report_problem
from warehouse.listing.warehouse import WarehouseIndex
from warehouse.storage.base import Storage

#: The loader's newest run report, shown on the dashboard.
LOADER_REPORT_KEY = latest_report_key("warehouseloader")
#: Where a batch keeps the digest of what it was built from (not named by ``latest.csv``).
INPUT_DIGEST = "rows/inputs.json"


@dataclass(frozen=True)
class PageSources:
    """What the pages show besides the tables, as read from the warehouse.

    Attributes
    ----------
    config : PipelineConfig or None
        The warehouse's ``config.json`` (None when it could not be used: see ``config_note``).
    config_note : str
        Why there is no config.
    loader_report : dict or None
        The loader's newest run report (``reports/warehouseloader/latest.json``).
    loader_note : str
        Why there is no loader report.
    """

    config: PipelineConfig | None = None
    config_note: str = ""
    loader_report: dict | None = None
    loader_note: str = ""


def read_page_sources(storage: Storage, config: PipelineConfig | None = None) -> PageSources:
    """Read what the pages need from the warehouse.

    That is ``config.json`` (unless the run has read it already: ``config``) and the loader's
    newest run report. Either may be missing or unusable (the report is checked field by
    field, `figures.loader_report_problem`): the page then says why, and the run goes on.

    Raises
    ------
    StorageError
        When a read fails for another reason than a missing object (the run fails: rerun).
    """
    config_note = ""
    if config is None:
        try:
            config = parse_config(storage.read(CONFIG_KEY))
        except ObjectNotFound:
            config_note = f"No {CONFIG_KEY} in the warehouse."
        except ConfigError as exc:
            config_note = f"{CONFIG_KEY} cannot be used: {exc}"
    report, report_note = None, ""
    try:
        report = json.loads(storage.read(LOADER_REPORT_KEY).decode("utf-8"))
    except ObjectNotFound:
        report_note = f"No loader run report yet ({LOADER_REPORT_KEY})."
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        report_note = f"{LOADER_REPORT_KEY} is not valid JSON: {exc}"
    if report is not None and not isinstance(report, dict):
        report, report_note = None, f"{LOADER_REPORT_KEY} is not a JSON object."
    problem = loader_report_problem(report) if report is not None else ""
    if problem:
        report, report_note = None, f"{LOADER_REPORT_KEY} cannot be used: {problem}"
    return PageSources(config, config_note, report, report_note)


def inputs_digest(
    clinical: WarehouseIndex, storage_sizes: Mapping[str, int], sources: PageSources
) -> str:
    """Digest everything a batch is built from, but the time.

    That is: the product's version and the hold-out certificate's format, every clinical file as
    listed (patient, group, name, date and stamp: a changed file changes it), the links and
    implausible times of the clinical folders, the storage sizes, and the page sources, as JSON.
    The catalogue and the study rows are not in it: a batch is the same as the last only when
    the catalogue also stands as the last batch's (`catalogue.merge.CatalogueScan.reused`),
    which says no study changed.

    Parameters
    ----------
    clinical : WarehouseIndex
        The clinical folders, listed.
    storage_sizes : mapping
        Storage prefix -> bytes (the storage table).
    sources : PageSources
        What the pages show besides the tables.

    Returns
    -------
    str
        A SHA-256, in hex.
    """
    digest = hashlib.sha256()

    def add(value) -> None:
        digest.update(json.dumps(value, sort_keys=True, default=_plain).encode("utf-8"))
        digest.update(b"\n")

    add(["version", __version__])
    add(["holdout", HOLDOUT_FORMAT])  # (a batch without this certificate is built again)
    add(
        [
            [pseudonym, entry.group, entry.name, str(entry.last_modified), entry.stamp]
            for pseudonym in sorted(clinical.clinical_files)
            for entry in clinical.clinical_files[pseudonym]
        ]
    )
    add(["links", clinical.links, clinical.implausible_times])
    add(["storage", dict(storage_sizes)])
    add(["pages", dataclasses.asdict(sources)])
    return digest.hexdigest()


def _plain(value):
    """Return a JSON stand-in for what `json` cannot write (sets in a stable order)."""
    if isinstance(value, set | frozenset):
        return sorted(map(str, value))
    return str(value)


def digest_file(digest: str) -> bytes:
    """Return the content of the batch's `INPUT_DIGEST` file."""
    return json.dumps({"digest": digest}).encode("utf-8")


def saved_digest(data: bytes) -> str | None:
    """Return the digest an `INPUT_DIGEST` file holds (None when it holds none)."""
    try:
        digest = json.loads(data.decode("utf-8")).get("digest")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return digest if isinstance(digest, str) else None
