"""Run settings from the environment, and the pipeline's ``config.json``.

Both are validated up front: a problem stops the run before anything is read or written, with one
message that names it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from warehouse.components.errors import ExpectedError
from warehouse.components.keys import normalise_prefix
from warehouse.components.storage import ObjectNotFound, StorageError

CONFIG_KEY = "config.json"
DEFAULT_WORKERS = 32
SITE_GROUPS = ("split", "training", "validation")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class ConfigError(ExpectedError):
    """The run cannot start: a setting or ``config.json`` is missing or invalid."""


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
        ``WAREHOUSE_WORKERS``: size of each node's storage worker pool.
    """

    bucket: str
    dry_run: bool = False
    workers: int = DEFAULT_WORKERS
    progress_seconds: float = 10.0


def settings_from_env(environ: dict | None = None) -> Settings:
    """Read and validate the run settings from the environment.

    Raises
    ------
    ConfigError
        When no bucket is named or a value is invalid.
    """
    env = os.environ if environ is None else environ
    bucket = (env.get("WAREHOUSE_BUCKET") or env.get("BUCKET_NAME") or "").strip()
    if not bucket:
        raise ConfigError(
            "No warehouse bucket: set WAREHOUSE_BUCKET to a bucket name, s3://name, or "
            "file:///path/to/directory (BUCKET_NAME is accepted too)"
        )
    dry_run = parse_bool(env.get("DRY_RUN", "false"), "DRY_RUN")
    workers_text = env.get("WAREHOUSE_WORKERS", str(DEFAULT_WORKERS)).strip()
    try:
        workers = int(workers_text)
    except ValueError:
        workers = 0
    if not 1 <= workers <= 512:
        raise ConfigError(f"WAREHOUSE_WORKERS={workers_text!r} must be an integer from 1 to 512")
    progress_text = env.get("WAREHOUSE_PROGRESS_SECONDS", "10").strip()
    try:
        progress = float(progress_text)
    except ValueError:
        progress = -1.0
    if progress <= 0:
        raise ConfigError(f"WAREHOUSE_PROGRESS_SECONDS={progress_text!r} must be a positive number")
    return Settings(bucket=bucket, dry_run=dry_run, workers=workers, progress_seconds=progress)


@dataclass(frozen=True)
class PipelineConfig:
    """The validated content of ``config.json``.

    Attributes
    ----------
    raw_prefixes : tuple of str
        Raw prefixes the loader reads, normalised without a trailing slash.
    training_percentage : int
        Share (0..100) of a split site's patients that go to training.
    site_rules : dict
        ``SubmittingCentre`` -> ``"split"``, ``"training"`` or ``"validation"``.
    """

    raw_prefixes: tuple[str, ...]
    training_percentage: int
    site_rules: dict[str, str] = field(default_factory=dict)


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
        Naming the first problem found.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{CONFIG_KEY} is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{CONFIG_KEY} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{CONFIG_KEY} must be a JSON object, got {type(doc).__name__}")

    prefixes = doc.get("raw_prefixes")
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise ConfigError(f"{CONFIG_KEY}: raw_prefixes must be a list of strings")
    normalised = []
    for prefix in prefixes:
        clean = normalise_prefix(prefix)
        if not clean.startswith("raw-") or "/" in clean or ".." in clean:
            raise ConfigError(
                f"{CONFIG_KEY}: raw prefix {prefix!r} must be one folder named raw-<uploader>"
            )
        if clean not in normalised:
            normalised.append(clean)

    percentage = doc.get("training_percentage", 0)
    if isinstance(percentage, bool) or not isinstance(percentage, int):
        raise ConfigError(
            f"{CONFIG_KEY}: training_percentage must be an integer 0..100, got {percentage!r}"
        )
    if not 0 <= percentage <= 100:
        raise ConfigError(
            f"{CONFIG_KEY}: training_percentage must be between 0 and 100, got {percentage}"
        )

    sites = doc.get("sites", {})
    if not isinstance(sites, dict):
        raise ConfigError(f"{CONFIG_KEY}: sites must be an object with split/training/validation")
    unknown = sorted(set(sites) - set(SITE_GROUPS))
    if unknown:
        raise ConfigError(
            f"{CONFIG_KEY}: unknown key(s) in sites: {', '.join(unknown)} "
            f"(expected {', '.join(SITE_GROUPS)})"
        )
    rules: dict[str, str] = {}
    for group in SITE_GROUPS:
        names = sites.get(group, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{CONFIG_KEY}: sites.{group} must be a list of strings")
        for name in names:
            if name in rules and rules[name] != group:
                raise ConfigError(
                    f"{CONFIG_KEY}: site {name!r} is in both sites.{rules[name]} and sites.{group}"
                )
            rules[name] = group
    return PipelineConfig(tuple(normalised), percentage, rules)


def load_pipeline_config(storage, report) -> PipelineConfig:
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
