"""Small upload trees for tests: DICOM files made with pydicom, clinical JSON, config."""

from __future__ import annotations

import hashlib
import json

from warehouse.components.config import Settings
from warehouse.components.storage import DryRunStorage, Storage
from warehouse.components.synthetic import build_dicom


def uid(*parts) -> str:
    """A stable DICOM UID derived from ``parts``."""
    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:30], 16)
    return f"1.2.826.0.1.3680043.10.1.{digest}"


def image(patient_id, modality="DX", study="s1", series="r1", instance=1, **kwargs):
    """``(file name, DICOM bytes)`` of one image; identifiers derive from the short names."""
    sop = uid(patient_id, study, series, instance)
    data = build_dicom(
        patient_id=patient_id,
        study_uid=uid(patient_id, study),
        series_uid=uid(patient_id, study, series),
        sop_uid=sop,
        modality=modality,
        **kwargs,
    )
    return f"{sop}.dcm", data


def clinical(pseudonym, centre, **fields) -> bytes:
    """A clinical JSON file's bytes."""
    record = {"Pseudonym": pseudonym, "SubmittingCentre": centre, **fields}
    return json.dumps(record).encode()


def config(prefixes, split=(), training=(), validation=(), percentage=50) -> bytes:
    """A ``config.json``."""
    doc = {
        "raw_prefixes": list(prefixes),
        "training_percentage": percentage,
        "sites": {"split": list(split), "training": list(training), "validation": list(validation)},
    }
    return json.dumps(doc).encode()


def put_tree(storage: Storage, files: dict[str, bytes]) -> None:
    """Write every ``key: bytes`` of ``files`` into ``storage``."""
    for key, data in files.items():
        storage.write(key, data)


def snapshot(storage: Storage, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix`` (run reports excluded), key -> content."""
    return {
        info.key: storage.read(info.key)
        for info in storage.list(prefix)
        if not info.key.startswith("reports/")
    }


def run_loader(storage: Storage, **settings):
    """Run the loader graph in this process on ``storage``; return ``(exit code, state)``."""
    from warehouse import warehouseloader

    if settings.get("dry_run"):
        storage = DryRunStorage(storage)
    services = warehouseloader.get_services(
        settings=Settings(bucket=storage.url, **settings), storage=storage
    )
    code = warehouseloader.run(services)
    return code, services["state"]
