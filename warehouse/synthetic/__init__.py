"""The synthetic upload tree: a realistic raw side of the bucket, written to a local directory
(`tree`), from DICOM images (`images`) and clinical records (`records`) whose every value is a
deterministic choice (`choices`); ``python -m warehouse.synthetic`` (`command`)."""

from warehouse.synthetic.images import SOP_CLASS_BY_MODALITY, build_dicom
from warehouse.synthetic.records import clinical_record
from warehouse.synthetic.tree import (
    CLINICAL_FAULTS,
    IMAGE_FAULTS,
    OTHER_FILES,
    SITES,
    Site,
    generate_tree,
)

__all__ = [
    "CLINICAL_FAULTS",
    "IMAGE_FAULTS",
    "OTHER_FILES",
    "SITES",
    "SOP_CLASS_BY_MODALITY",
    "Site",
    "build_dicom",
    "clinical_record",
    "generate_tree",
]
