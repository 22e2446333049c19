"""The test oracle for metadata JSON: pydicom's own ``Dataset.to_json_dict`` of a file, with
the product's documented rules applied here, independently of the product's code.

The rules (README, "Metadata JSON"): no file meta, no pixel data (nor what follows it), no
Group Length elements, binary values and the VOI LUT Sequence without a value, values over
``LARGE_VALUE_BYTES`` (other than sequences) without a value.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from warehouse.dicom.reader import LARGE_VALUE_BYTES

BINARY_KEYS = ("InlineBinary", "BulkDataURI")


def pydicom_json(dataset: Dataset) -> dict:
    """pydicom's JSON of a data set; where one element cannot be converted, pydicom's JSON of
    each element alone (as ``suppress_invalid_tags`` does, without its strict validation)."""
    try:
        return dataset.to_json_dict(bulk_data_threshold=0, bulk_data_element_handler=lambda e: "")
    except (ValueError, TypeError, KeyError):
        doc = {}
        for tag in dataset.keys():
            try:
                doc[f"{tag:08X}"] = dataset[tag].to_json_dict(lambda e: "", 0)
            except (ValueError, TypeError, KeyError):
                continue
        return doc


def expected_json(data: bytes) -> dict:
    """What the metadata file of ``data`` must hold, from pydicom's own reading of it."""
    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    lengths = {
        int(tag): raw.length
        for tag, raw in dataset._dict.items()
        if isinstance(raw, RawDataElement)
    }

    def rules(elements: dict, top: bool) -> dict:
        out = {}
        for key, element in elements.items():
            tag = int(key, 16)
            if tag & 0xFFFF == 0 or (top and tag >= 0x7FE00008):
                continue  # Group Length; pixel data and what follows it
            if key == "00283010":
                out[key] = {"vr": "SQ"}
                continue
            element = {k: v for k, v in element.items() if k not in BINARY_KEYS}
            if top and element["vr"] != "SQ" and lengths.get(tag, 0) > LARGE_VALUE_BYTES:
                element = {"vr": element["vr"]}
            if element["vr"] == "SQ" and "Value" in element:
                element["Value"] = [rules(item, False) for item in element["Value"]]
            out[key] = element
        return out

    return rules(pydicom_json(dataset), True)
