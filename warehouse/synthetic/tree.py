"""Synthetic upload tree: a realistic raw side of the bucket, written to a local directory.

The tree is laid out like the raw side of the warehouse bucket (DESIGN section 2)::

    <out>/config.json
    <out>/raw-<uploader>/<YYYY-MM-DD>/data/<Pseudonym>_data.json
    <out>/raw-<uploader>/<YYYY-MM-DD>/data/<Pseudonym>_status.json
    <out>/raw-<uploader>/<YYYY-MM-DD>/images/<SOPInstanceUID>.dcm   (some .DCM)

It never writes the warehouse side. With ``faults=True`` it also writes every kind of faulty
file the loader must report rather than file (see :data:`IMAGE_FAULTS`,
:data:`CLINICAL_FAULTS`), an uploader whose site is in no list of ``config.json``, a raw
prefix that ``config.json`` does not list, and files of other kinds. The summary returned by
:func:`generate_tree` counts each of them, so a test or a demo can state what to expect.

Everything is derived from one ``random.Random(seed)`` and from UIDs hashed from the seed, so
a given seed always gives a byte-identical tree.

Run ``python -m warehouse.synthetic --help`` for the command line (`warehouse.synthetic.command`).
"""

from __future__ import annotations

import json
import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from warehouse.synthetic.choices import CLINICAL_DAYS, CLINICAL_START, uid
from warehouse.synthetic.images import build_dicom, truncate
from warehouse.synthetic.records import clinical_record, correction, json_bytes
from warehouse.synthetic.sites import SITES, UPLOAD_BATCHES, Site

#: Modalities of well-formed images, and their share of studies.
STUDY_MODALITY_WEIGHTS = {"DX": 40, "CR": 35, "CT": 20, "MR": 5}

#: Faulty image kinds (files named ``*.dcm`` the loader must not file), as summary keys.
IMAGE_FAULTS = (
    "not_dicom_garbage",
    "not_dicom_empty",
    "not_dicom_truncated",
    "missing_patient_id",
    "missing_study_uid",
    "missing_series_uid",
    "missing_modality",
    "unsupported_modality",
    "unsafe_patient_id",
    "unsafe_study_uid",
    "unsafe_series_uid",
    "no_clinical_record",
    # the leakage checks: a site re-sends a study under a second pseudonym, and uploads one
    # image (its SOPInstanceUID, in a study and series of its own) for a second patient
    "study_of_another_patient",
    "instance_of_another_patient",
)

#: Faulty clinical file kinds (``*_data.json`` / ``*_status.json``), as summary keys.
CLINICAL_FAULTS = (
    "invalid_json",
    "not_utf8",
    "json_not_object",
    "no_submitting_centre",
    "unconfigured_site",
    "group_conflict",
)

#: What a site that pseudonymised the PatientID but nothing else leaves in the header: a
#: patient name and a full birth date (fictional), which the loader's identifying-data screen
#: flags (`warehouse.dicom.screen`); the images are filed (the default policy, report).
IDENTIFYING_HEADER = {"PatientName": "DOE^JANE", "PatientBirthDate": "19580314"}

#: Files of other kinds, as ``(folder under the date folder, file name)``; "" is the date folder.
OTHER_FILES = (("images", "notes.txt"), ("data", "readme.csv"), ("", "upload.log"))

_SITE_WEIGHTS = {"split": 30, "training": 20, "validation": 20}

#: Uploader written with a trailing "/" in raw_prefixes (the loader must ignore it).
_TRAILING_SLASH_UPLOADER = "raw-cambridge"

#: Pseudonyms with known groups at 50 % (DESIGN section 2), given to the first split site.
_KNOWN_PSEUDONYMS = ("Covid1", "Covid14", "Covid20", "Covid149")


@dataclass
class _Patient:
    pseudonym: str
    site: Site
    positive: bool
    files: list[tuple[str, str]] = field(default_factory=list)  # (upload date, data|status)
    older_status: bool = False
    corrected: bool = False
    #: Header values its images carry beyond the pseudonymised ones (`IDENTIFYING_HEADER`).
    identifying: dict[str, str] | None = None


class _TreeWriter:
    """Write files under one root, counting them; refuses to write one path twice."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = 0
        self.bytes = 0
        self._written: set[str] = set()
        self._dirs: set[Path] = set()

    def write(self, relative: str, data: bytes) -> None:
        if relative in self._written:
            raise RuntimeError(f"synthetic tree would write {relative} twice")
        self._written.add(relative)
        path = self.root / relative
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        with open(path, "wb") as handle:
            handle.write(data)
        self.files += 1
        self.bytes += len(data)


def _pixel_side(image_kb: float | None) -> int:
    """Square image side so that a file is about ``image_kb`` KB (64 when not given)."""
    if image_kb is None:
        return 64
    pixel_bytes = max(image_kb * 1024 - 3500, 128)
    return max(8, round(math.sqrt(pixel_bytes / 2)))


def _split_sizes(total: int, parts: int, rng: random.Random) -> list[int]:
    """Split ``total`` into ``parts`` positive sizes."""
    cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
    bounds = [0, *cuts, total]
    return [bounds[i + 1] - bounds[i] for i in range(parts)]


def _plan_studies(count: int, rng: random.Random, forced: list[str]) -> list[tuple[str, list[int]]]:
    """Split a patient's ``count`` images into studies: ``(modality, [series sizes])``."""
    studies = []
    remaining = count
    modalities = list(STUDY_MODALITY_WEIGHTS)
    weights = list(STUDY_MODALITY_WEIGHTS.values())
    while remaining:
        modality = forced.pop(0) if forced else rng.choices(modalities, weights)[0]
        low, high = {"DX": (1, 3), "CR": (1, 3), "CT": (3, 24), "MR": (2, 12)}[modality]
        size = min(remaining, rng.randint(low, high))
        max_series = 2 if modality in ("DX", "CR") else 4
        series = rng.randint(1, min(max_series, size))
        studies.append((modality, _split_sizes(size, series, rng)))
        remaining -= size
    return studies


def _pseudonyms(rng: random.Random, count: int) -> list[str]:
    """Unique pseudonyms: ``Covid<N>`` (N >= 150, so never one of :data:`_KNOWN_PSEUDONYMS`)
    and, about one in twenty (always the second), ``Covid<uuid4>``."""
    numbers = rng.sample(range(150, 150 + max(20 * count, 1000)), count)
    names = []
    for index, number in enumerate(numbers):
        if rng.random() < 0.05 or index == 1:
            names.append(f"Covid{uuid.UUID(int=rng.getrandbits(128), version=4)}")
        else:
            names.append(f"Covid{number}")
    return names


def _config(faults: bool) -> dict[str, Any]:
    listed = [s for s in SITES if s.kind != "unlisted" and (faults or s.kind != "unconfigured")]
    prefixes = [
        s.uploader + ("/" if s.uploader == _TRAILING_SLASH_UPLOADER else "") for s in listed
    ]
    return {
        "raw_prefixes": prefixes,
        "training_percentage": 50,
        "sites": {
            "split": [s.centre for s in SITES if s.kind in ("split", "unlisted")],
            "training": [s.centre for s in SITES if s.kind == "training"],
            "validation": [s.centre for s in SITES if s.kind == "validation"],
        },
    }


def _empty_summary(out: Path, seed: int, faults: bool) -> dict[str, Any]:
    return {
        "output": str(out),
        "seed": seed,
        "faults_included": faults,
        "files": 0,
        "bytes": 0,
        "patients": 0,
        "patients_positive": 0,
        "patients_negative": 0,
        "patients_uuid_pseudonym": 0,
        "patients_with_images": 0,
        "patients_multi_date": 0,
        "patients_corrected": 0,
        "positives_with_older_status": 0,
        "data_files": 0,
        "status_files": 0,
        "images": 0,
        "images_by_modality": {modality: 0 for modality in STUDY_MODALITY_WEIGHTS},
        "studies": 0,
        "series": 0,
        "images_upper_case_suffix": 0,
        "images_large_header": 0,
        "images_voi_lut": 0,
        "images_identifying": 0,
        "faults": {kind: 0 for kind in (*IMAGE_FAULTS, *CLINICAL_FAULTS)},
        "faulty_images": 0,
        "faulty_clinical": 0,
        "unconfigured_site_images": 0,
        "unlisted_prefix_clinical": 0,
        "unlisted_prefix_images": 0,
        "other_files": 0,
        "clinical_total": 0,
        "images_total": 0,
        "sites": {
            s.centre: {"uploader": s.uploader, "kind": s.kind, "patients": 0, "images": 0}
            for s in SITES
        },
    }


class _TreeBuilder:
    """The state of one :func:`generate_tree` run."""

    def __init__(
        self, out: Path, seed: int, faults: bool, image_kb: float | None, rng: random.Random
    ) -> None:
        self.writer = _TreeWriter(out)
        self.seed = seed
        self.rng = rng
        self.side = _pixel_side(image_kb)
        self.summary = _empty_summary(out, seed, faults)
        self.site_dates = {s.uploader: s.upload_dates() for s in SITES}
        self.study_counter = 0
        #: Each imaged patient's first study: its upload day, modality, date, study UID and
        #: its first series' UID, number and instances' (number, SOPInstanceUID).
        self.first_study: dict[str, tuple] = {}

    # -- clinical ------------------------------------------------------------------------
    def clinical_file(self, site: Site, day: str, pseudonym: str, kind: str, data: bytes) -> None:
        self.writer.write(f"{site.uploader}/{day}/data/{pseudonym}_{kind}.json", data)
        self.summary["clinical_total"] += 1

    def patient_files(self, patient: _Patient) -> None:
        rng, site = self.rng, patient.site
        dates = self.site_dates[site.uploader]
        first = rng.randrange(len(dates) - 3)
        kind = "data" if patient.positive else "status"
        uploads: list[tuple[str, str, dict[str, Any]]] = []
        if patient.older_status:
            status = clinical_record(patient.pseudonym, site.centre, "status", rng)
            uploads.append((dates[first], "status", status))
            first += 1
        record = clinical_record(patient.pseudonym, site.centre, kind, rng)
        uploads.append((dates[first], kind, record))
        if patient.corrected:
            later = dates[rng.randint(first + 1, len(dates) - 1)]
            uploads.append((later, kind, correction(record, rng)))
        for day, file_kind, content in uploads:
            self.clinical_file(site, day, patient.pseudonym, file_kind, json_bytes(content))
        patient.files = [(day, file_kind) for day, file_kind, _ in uploads]

    # -- images --------------------------------------------------------------------------
    def image(self, site: Site, day: str, sop_uid: str, blob: bytes, upper: bool = False) -> None:
        suffix = ".DCM" if upper else ".dcm"
        self.writer.write(f"{site.uploader}/{day}/images/{sop_uid}{suffix}", blob)
        self.summary["images_total"] += 1

    def patient_images(self, patient: _Patient, count: int, forced: list[str]) -> None:
        """Write ``count`` well-formed images of ``patient`` (``forced``: first modalities)."""
        rng, seed = self.rng, self.seed
        for modality, series_sizes in _plan_studies(count, rng, forced):
            self.study_counter += 1
            study_uid = uid(seed, "study", patient.pseudonym, self.study_counter)
            day = rng.choice(patient.files)[0]
            study_date = (CLINICAL_START + timedelta(days=rng.randrange(CLINICAL_DAYS))).strftime(
                "%Y%m%d"
            )
            for series_number, size in enumerate(series_sizes, start=1):
                series_uid = uid(seed, "series", study_uid, series_number)
                instances = [(n, uid(seed, "image", series_uid, n)) for n in range(1, size + 1)]
                self.first_study.setdefault(
                    patient.pseudonym,
                    (day, modality, study_date, study_uid, series_uid, series_number, instances),
                )
                for instance in range(1, size + 1):
                    sop_uid = uid(seed, "image", series_uid, instance)
                    padding = rng.randint(20, 200) * 1024 if rng.random() < 0.03 else 0
                    voi_lut = modality in ("DX", "CR") and rng.random() < 0.3
                    upper = rng.random() < 0.05
                    blob = build_dicom(
                        patient_id=patient.pseudonym,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        sop_uid=sop_uid,
                        modality=modality,
                        rows=self.side,
                        columns=self.side,
                        header_padding=padding,
                        extra=patient.identifying,
                        study_date=study_date,
                        series_number=series_number,
                        instance_number=instance,
                        voi_lut=voi_lut,
                    )
                    self.image(patient.site, day, sop_uid, blob, upper)
                    if patient.site.kind in _SITE_WEIGHTS:
                        self.summary["images"] += 1
                        self.summary["images_by_modality"][modality] += 1
                        self.summary["images_large_header"] += bool(padding)
                        self.summary["images_voi_lut"] += voi_lut
                        self.summary["images_upper_case_suffix"] += upper
                        self.summary["images_identifying"] += patient.identifying is not None
                    self.summary["sites"][patient.site.centre]["images"] += 1
                if patient.site.kind in _SITE_WEIGHTS:
                    self.summary["series"] += 1
            if patient.site.kind in _SITE_WEIGHTS:
                self.summary["studies"] += 1


def _site(kind: str) -> Site:
    return next(s for s in SITES if s.kind == kind)


def generate_tree(
    out: str | Path,
    *,
    patients: int = 60,
    images: int | None = None,
    seed: int = 0,
    faults: bool = True,
    image_kb: float | None = None,
) -> dict[str, Any]:
    """Write a synthetic raw upload tree (and ``config.json``) into a local directory.

    Parameters
    ----------
    out : str or Path
        Directory to write; created if missing, and it must be empty (a stale file from an
        earlier tree would make the summary wrong).
    patients : int, optional
        Patients with a valid clinical record at a configured site (split, all-training or
        all-validation); about a third are positive (``_data.json``), the rest negative
        (``_status.json``). Fault, unconfigured-site and unlisted-prefix patients come on top.
    images : int, optional
        Well-formed images of those patients (CT, MR, DX, CR), spread unevenly (some
        patients have none); about 10 per patient when omitted. Faulty images and the
        images of the unconfigured site and the unlisted prefix come on top.
    seed : int, optional
        Seed of the tree; the same seed and arguments give byte-identical files.
    faults : bool, optional
        Also write every faulty kind (:data:`IMAGE_FAULTS`, :data:`CLINICAL_FAULTS`), the
        unconfigured site's uploads, the unlisted prefix and the :data:`OTHER_FILES`. When
        ``False`` every clinical file and image written is expected to be filed.
    image_kb : float, optional
        Approximate size of each well-formed image in KB (pixel data is sized to match);
        64 x 64 pixels (about 10-14 KB a file) when omitted.

    Returns
    -------
    dict
        What was written, as counts:

        - to be filed by the loader: ``patients`` (with faults, this includes the
          group-conflict patient, whose first record is valid), ``patients_positive``,
          ``patients_negative``, ``data_files``, ``status_files``, ``images``,
          ``images_by_modality``, ``studies``, ``series``;
        - details of those: ``patients_uuid_pseudonym``, ``patients_with_images``,
          ``patients_multi_date``, ``patients_corrected``, ``positives_with_older_status``,
          ``images_upper_case_suffix``, ``images_large_header``, ``images_voi_lut``,
          ``images_identifying`` (with faults: one patient's images carry a patient name and
          a full birth date, `IDENTIFYING_HEADER`: filed, and flagged by the loader's screen);
        - not to be filed: ``faults`` (each of :data:`IMAGE_FAULTS` and
          :data:`CLINICAL_FAULTS`), their totals ``faulty_images`` and ``faulty_clinical``,
          ``unconfigured_site_images``, ``unlisted_prefix_clinical``,
          ``unlisted_prefix_images``, ``other_files``;
        - everything: ``clinical_total`` and ``images_total`` (every clinical-named file and
          every ``.dcm``, anywhere), ``files`` (including ``config.json``) and ``bytes``;
        - ``sites``: per ``SubmittingCentre``, its ``uploader``, ``kind``, ``patients`` and
          ``images``; plus ``output``, ``seed`` and ``faults_included``.

    Raises
    ------
    FileExistsError
        If ``out`` exists and is not an empty directory.
    ValueError
        If a count is negative, or images are asked for without patients.
    """
    if patients < 0 or (images is not None and images < 0):
        raise ValueError("patients and images must not be negative")
    if images and not patients:
        raise ValueError("images need patients: give patients > 0")
    if image_kb is not None and image_kb <= 0:
        raise ValueError("image_kb must be positive")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output directory {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    if images is None:
        images = 10 * patients

    rng = random.Random(seed)
    tree = _TreeBuilder(out, seed, faults, image_kb, rng)
    summary = tree.summary
    tree.writer.write("config.json", json.dumps(_config(faults), indent=2).encode() + b"\n")

    configured = [s for s in SITES if s.kind in _SITE_WEIGHTS]
    names = _pseudonyms(rng, patients + 16)
    known = list(_KNOWN_PSEUDONYMS[: min(len(_KNOWN_PSEUDONYMS), patients // 10)])
    ordinary = (known + names)[:patients]
    spare = names[patients - len(known) :]

    # Well-formed patients at configured sites.
    cohort: list[_Patient] = []
    for index, pseudonym in enumerate(ordinary):
        if pseudonym in _KNOWN_PSEUDONYMS:
            site = configured[0]
        elif index < len(configured):
            site = configured[index]
        else:
            site = rng.choices(configured, [_SITE_WEIGHTS[s.kind] for s in configured])[0]
        positive = rng.random() < 0.35
        patient = _Patient(pseudonym, site, positive)
        patient.older_status = positive and rng.random() < 0.2
        patient.corrected = rng.random() < 0.12
        cohort.append(patient)
    # However small the tree, show each case at least once.
    showcase = [p for p in cohort if p.pseudonym not in _KNOWN_PSEUDONYMS]
    if len(showcase) >= 3:
        showcase[0].positive = showcase[0].older_status = True
        showcase[1].positive = showcase[1].corrected = True
        showcase[2].positive, showcase[2].corrected = False, True
    if faults:
        conflict = _Patient(spare.pop(0), _site("training"), positive=True)
        cohort.append(conflict)
    for patient in cohort:
        tree.patient_files(patient)
        summary["sites"][patient.site.centre]["patients"] += 1
        summary["patients"] += 1
        summary["patients_positive" if patient.positive else "patients_negative"] += 1
        summary["patients_uuid_pseudonym"] += "-" in patient.pseudonym
        summary["patients_multi_date"] += len({day for day, _ in patient.files}) > 1
        summary["patients_corrected"] += patient.corrected
        summary["positives_with_older_status"] += patient.older_status
        for _, kind in patient.files:
            summary[f"{kind}_files"] += 1

    # Images of the ordinary patients: about 85 % have some, unevenly.
    imaged = [p for p in cohort[: len(ordinary)] if rng.random() < 0.85] or cohort[: len(ordinary)]
    per_patient = dict.fromkeys(range(len(imaged)), 0)
    if images and imaged:
        weights = [rng.lognormvariate(0, 0.8) for _ in imaged]
        for index in rng.choices(range(len(imaged)), weights, k=images):
            per_patient[index] += 1
    forced = list(STUDY_MODALITY_WEIGHTS)  # make sure every modality appears
    if faults:  # one patient's images carry a name and a full birth date (no random draw)
        chosen = [p for i, p in enumerate(imaged) if per_patient[i]]
        if len(chosen) > 1:
            chosen[1].identifying = dict(IDENTIFYING_HEADER)
    for index, patient in enumerate(imaged):
        if per_patient[index]:
            tree.patient_images(patient, per_patient[index], forced)
            summary["patients_with_images"] += 1

    if faults:
        _write_faults(tree, cohort, spare)
    summary["faulty_images"] = sum(summary["faults"][kind] for kind in IMAGE_FAULTS)
    summary["faulty_clinical"] = sum(summary["faults"][kind] for kind in CLINICAL_FAULTS)
    summary["files"] = tree.writer.files
    summary["bytes"] = tree.writer.bytes
    return summary


def _write_faults(tree: _TreeBuilder, cohort: list[_Patient], spare: list[str]) -> None:
    """Write every faulty kind once or twice, the unconfigured site and the unlisted prefix."""
    rng, seed, summary = tree.rng, tree.seed, tree.summary
    faults = summary["faults"]
    configured = [s for s in SITES if s.kind in _SITE_WEIGHTS]
    validation = _site("validation")
    conflict = cohort[-1]  # the patient first sent by the all-training site
    owners = cohort[:-1] or cohort  # real patients whose faulty images carry a valid PatientID

    def where(index: int) -> tuple[Site, str]:
        site = configured[index % len(configured)]
        return site, tree.site_dates[site.uploader][index % UPLOAD_BATCHES]

    def faulty_image(index: int, kind: str, blob: bytes) -> None:
        site, day = where(index)
        tree.image(site, day, uid(seed, "fault-file", kind, index), blob)
        faults[kind] += 1

    def faulty_dicom(index: int, kind: str, modality: str = "DX", **changes: Any) -> bytes:
        """A DICOM of a real patient, uploaded by that patient's site, with ``changes``."""
        owner = owners[index % len(owners)]
        blob = build_dicom(
            patient_id=owner.pseudonym,
            study_uid=uid(seed, "fault-study", kind, index),
            series_uid=uid(seed, "fault-series", kind, index),
            sop_uid=uid(seed, "fault-image", kind, index),
            modality=modality,
            extra=changes,
        )
        if kind == "not_dicom_truncated":
            blob = truncate(blob)
        day = owner.files[index % len(owner.files)][0]
        tree.image(owner.site, day, uid(seed, "fault-file", kind, index), blob)
        faults[kind] += 1
        return blob

    faulty_image(0, "not_dicom_garbage", _garbage(rng))
    faulty_image(1, "not_dicom_empty", b"")
    faulty_dicom(2, "not_dicom_truncated", "CT")
    faulty_dicom(3, "missing_patient_id", PatientID=None)
    faulty_dicom(4, "missing_study_uid", StudyInstanceUID=None)
    faulty_dicom(5, "missing_series_uid", SeriesInstanceUID=None)
    faulty_dicom(6, "missing_modality", "CR", Modality=None)
    faulty_dicom(7, "unsupported_modality", "US")
    faulty_dicom(8, "unsupported_modality", "OT")
    pseudonym = owners[0].pseudonym
    faulty_dicom(9, "unsafe_patient_id", PatientID=f"../{pseudonym}")
    faulty_dicom(10, "unsafe_patient_id", PatientID=f"{owners[0].site.uploader}/{pseudonym}")
    faulty_dicom(11, "unsafe_study_uid", StudyInstanceUID="1.2.826.0.abc.7")
    faulty_dicom(12, "unsafe_study_uid", StudyInstanceUID="1.2." + "9" * 66)
    faulty_dicom(13, "unsafe_series_uid", SeriesInstanceUID="1.2.826.0.1\x01.5")
    faulty_dicom(14, "no_clinical_record", PatientID=spare.pop(0))
    _write_leaks(tree, owners)

    # Clinical faults, each for a pseudonym of its own (those patients have no images).
    for index, kind in enumerate(CLINICAL_FAULTS[:4]):
        site, day = where(index)
        pseudonym = spare.pop(0)
        file_kind = "status" if kind == "json_not_object" else "data"
        record = clinical_record(pseudonym, site.centre, file_kind, rng)
        if kind == "invalid_json":
            blob = json_bytes(record)[:-40]
        elif kind == "not_utf8":
            record["Hospital"] = f"{site.hospitals[0]} – main site"
            record["PMH Lung disease"] = "5 – bronchiectasis"
            blob = json.dumps(record, ensure_ascii=False).encode("cp1252")
        elif kind == "json_not_object":
            blob = json_bytes([record])
        else:
            del record["SubmittingCentre"]
            blob = json_bytes(record)
        tree.clinical_file(site, day, pseudonym, file_kind, blob)
        faults[kind] += 1

    # The same patient sent later by the all-validation site: a group conflict.
    first_upload = max(day for day, _ in conflict.files)
    later = next(d for d in tree.site_dates[validation.uploader] if d > first_upload)
    record = clinical_record(conflict.pseudonym, validation.centre, "data", rng)
    tree.clinical_file(validation, later, conflict.pseudonym, "data", json_bytes(record))
    faults["group_conflict"] += 1

    # A site in no list of config.json, uploading under a listed prefix; and a prefix that
    # config.json does not list (its site is configured, so filing its files would show).
    for site in (_site("unconfigured"), _site("unlisted")):
        for positive in (True, False):
            patient = _Patient(spare.pop(0), site, positive)
            tree.patient_files(patient)
            summary["sites"][site.centre]["patients"] += 1
            tree.patient_images(patient, rng.randint(2, 4), [])
            if site.kind == "unconfigured":
                faults["unconfigured_site"] += len(patient.files)
            else:
                summary["unlisted_prefix_clinical"] += len(patient.files)
    summary["unconfigured_site_images"] = summary["sites"][_site("unconfigured").centre]["images"]
    summary["unlisted_prefix_images"] = summary["sites"][_site("unlisted").centre]["images"]

    for index, (folder, name) in enumerate(OTHER_FILES):
        site, day = where(index)
        relative = (
            f"{site.uploader}/{day}/{folder}/{name}" if folder else f"{site.uploader}/{day}/{name}"
        )
        tree.writer.write(relative, _other_file(name))
        summary["other_files"] += 1


def _write_leaks(tree: _TreeBuilder, owners: list[_Patient]) -> None:
    """A site re-sends a patient's filed study under a second pseudonym (another patient of
    the site: "study filed under another patient"), and uploads one of its images again for a
    third patient, in a study and series of its own (same SOPInstanceUID: "instance filed under
    another patient"), both in an upload after the first. Nothing when no patient fits."""
    for first in owners:
        study = tree.first_study.get(first.pseudonym)
        if study is None:
            continue
        day, modality, study_date, study_uid, series_uid, series_number, instances = study
        later = [d for d in tree.site_dates[first.site.uploader] if d > day]
        others = [p for p in owners if p is not first and p.site is first.site]
        if later and len(others) >= 2:
            break
    else:
        return
    second, third = others[:2]
    faults, seed = tree.summary["faults"], tree.seed

    def upload(kind: str, number: int, patient: _Patient, upper: bool = False, **uids: Any) -> None:
        blob = build_dicom(
            patient_id=patient.pseudonym,
            modality=modality,
            rows=tree.side,
            columns=tree.side,
            study_date=study_date,
            series_number=series_number,
            instance_number=number,
            **uids,
        )
        # (under the name it had, a sharded run files it in the shard of the first upload)
        tree.image(first.site, later[-1], uids["sop_uid"], blob, upper)
        faults[kind] += 1

    for number, sop_uid in instances[:3]:
        upload(
            "study_of_another_patient",
            number,
            second,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
        )
    number, sop_uid = instances[0]
    upload(
        "instance_of_another_patient",
        number,
        third,
        upper=True,  # (the study's copy of this image has the name in lower case)
        study_uid=uid(seed, "fault-study", "instance", number),
        series_uid=uid(seed, "fault-series", "instance", number),
        sop_uid=sop_uid,
    )


def _garbage(rng: random.Random) -> bytes:
    """Random bytes that are certainly not DICOM (no ``DICM`` at offset 128)."""
    blob = bytearray(rng.randbytes(rng.randint(2048, 8192)))
    blob[128:132] = b"JUNK"
    return bytes(blob)


def _other_file(name: str) -> bytes:
    if name.endswith(".csv"):
        return b"Pseudonym,SubmittingCentre,Notes\nCovid1,Imperial,see data folder\n"
    if name.endswith(".log"):
        return b"2021-01-04T09:12:44Z upload started\n2021-01-04T09:20:02Z upload finished\n"
    return b"Images for this batch were exported from PACS on the upload date.\n"
