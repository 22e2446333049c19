"""The placeholder warehouse of the scale benchmark (`benchmarks.scale`).

It says which patients, studies, images and upload folders a warehouse of a given size holds
besides its real part, their keys in the bucket's public layout, and what each object holds.

A **real** part comes first: images the product's synthetic generator built with pydicom, filed
by a real loader run. The **placeholders** are patients added around it, each in one closed
upload folder of a configured raw prefix, with one clinical file and one to four studies (CT,
X-ray, MRI: about 190 images a patient, as the national warehouse's CT-heavy studies). Every
placeholder image is on both sides (its raw upload and its filed copy), has its metadata file
and a row in a catalogue part, so that a reconcile finds nothing to file. What they hold:

- images (raw and filed): the bytes of a real filed image of the same modality (on a local
  store, hard links to it: no bytes copied);
- metadata files: the first of each study (the one a reader of studies reads) is the real
  image's DICOM JSON with the placeholder's identifiers; the others are the real file;
- clinical files: a synthetic record of the patient's site with its own pseudonym (the filed
  copy a hard link to the raw upload).

The same `Layout` serves both forms: `build_local` writes it into a local directory, and
`benchmarks.scale_storage.GeneratedStorage` serves it as a listing generated on demand (ten
million objects without holding their keys). Identifiers have a fixed width, so names sort
by index and each kind of object has one size.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

#: Where the catalogue's parts are (the bucket's public layout).
PARTS_PREFIX = "catalogue/images/"
#: The raw side's folder state (the bucket's public layout, `warehouse.listing.folders`).
STATE_KEY = "state/raw-folders.json"
GROUPS = ("training", "validation")
#: Modality of a placeholder study -> its warehouse folder.
FOLDERS = {"CT": "ct", "DX": "xray", "MR": "mri"}
#: A study's modality by share, and its series and images per series (ranges, inclusive).
STUDY_KINDS = (
    ("CT", 0.55, (1, 2), (40, 120)),
    ("DX", 0.30, (1, 1), (1, 3)),
    ("MR", 1.0, (1, 2), (20, 60)),
)
#: Rows of one placeholder catalogue part (a daily run writes one every 1,000 images).
PART_ROWS = 1000
#: Patients of one placeholder upload folder (about a thousand images: a site's upload).
PATIENTS_PER_FOLDER = 6
#: Days between two upload folders of a site, and the newest one's age (all are closed).
FOLDER_SPACING_DAYS = 3
NEWEST_FOLDER_AGE_DAYS = 30
UID_ROOT = "1.2.826.0.1.3680043.10.1154"
#: What a clinical template holds where the patient's pseudonym goes (as long as one).
PSEUDONYM_MARK = "ScaleXXXXXXX"


def pseudonym(index: int) -> str:
    """Return a placeholder patient's pseudonym (fixed width: names sort by index)."""
    return f"Scale{index:07d}"


def study_uid(patient: int, study: int) -> str:
    """Return a placeholder study's UID (fixed width; no component starts with 0)."""
    return f"{UID_ROOT}.1{patient:07d}.1{study:02d}"


def series_uid(patient: int, study: int, series: int) -> str:
    """Return a placeholder series' UID."""
    return f"{study_uid(patient, study)}.1{series:02d}"


def sop_uid(patient: int, study: int, series: int, instance: int) -> str:
    """Return a placeholder image's SOPInstanceUID (its file name is ``<uid>.dcm``)."""
    return f"{series_uid(patient, study, series)}.1{instance:04d}"


class Study(NamedTuple):
    """One placeholder study: its modality, series and images in each series."""

    modality: str
    series: int
    images: int


class Patient(NamedTuple):
    """One placeholder patient: where it was uploaded and filed, and its studies."""

    index: int
    site: str
    date: str
    group: str
    kind: str
    studies: tuple[Study, ...]

    @property
    def name(self) -> str:
        """The patient's pseudonym."""
        return pseudonym(self.index)

    @property
    def images(self) -> int:
        """Images of the patient."""
        return sum(s.series * s.images for s in self.studies)

    @property
    def warehouse_objects(self) -> int:
        """Objects the patient has on the warehouse side.

        Its clinical file, and an image and a metadata file per image.
        """
        return 1 + 2 * self.images


@dataclass(frozen=True)
class Site:
    """A configured raw prefix: its ``SubmittingCentre`` and which group its patients go to.

    Its ``kind`` is ``training``, ``validation`` or ``split``.
    """

    prefix: str
    centre: str
    kind: str


def configured_sites(config: dict) -> list[Site]:
    """Return the configured raw prefixes of a ``config.json`` whose centre is in one of its lists.

    Each comes as a `Site` with that centre (the synthetic generator's sites).
    """
    from warehouse.synthetic.sites import SITES

    centres = {s.uploader: s.centre for s in SITES}
    kinds = {centre: kind for kind, names in config["sites"].items() for centre in names}
    sites = []
    for raw in config["raw_prefixes"]:
        prefix = raw.strip().strip("/")
        centre = centres.get(prefix)
        if centre in kinds:
            sites.append(Site(prefix, centre, kinds[centre]))
    return sites


def _draw(rng: random.Random, low_high: tuple[int, int]) -> int:
    return rng.randint(*low_high)


def make_patient(index: int, seed: int, sites: list[Site], dates: list[str] | None) -> Patient:
    """Return placeholder patient ``index`` (the same for the same seed).

    The patient has its site by turn, its upload folder (`PATIENTS_PER_FOLDER` patients a folder
    of ``dates``; none without dates), group, kind and studies.
    """
    rng = random.Random(seed * 1_000_003 + index)
    site = sites[index % len(sites)]
    date = dates[(index // len(sites)) // PATIENTS_PER_FOLDER] if dates else ""
    if site.kind == "split":
        group = GROUPS[0] if rng.random() < 0.5 else GROUPS[1]
    else:
        group = site.kind
    kind = "data" if rng.random() < 0.35 else "status"
    studies = []
    for _ in range(rng.randint(1, 4)):
        draw = rng.random()
        modality, _, series, images = next(k for k in STUDY_KINDS if draw < k[1])
        studies.append(Study(modality, _draw(rng, series), _draw(rng, images)))
    return Patient(index, site.prefix, date, group, kind, tuple(studies))


def folder_dates(count: int, newest: dt.date) -> list[str]:
    """Return ``count`` upload folder dates, oldest first, ending at ``newest``.

    The dates are `FOLDER_SPACING_DAYS` apart.
    """
    return [
        (newest - dt.timedelta(days=FOLDER_SPACING_DAYS * (count - 1 - n))).isoformat()
        for n in range(count)
    ]


class Layout:
    """The placeholder patients of a warehouse and the keys of their objects.

    Parameters
    ----------
    patients : int
        How many placeholder patients.
    seed : int
        Their seed.
    sites : list of Site
        The configured sites they are uploaded by, in turn.
    newest : datetime.date
        The newest placeholder upload folder's date.
    """

    def __init__(self, patients: int, seed: int, sites: list[Site], newest: dt.date):
        self.seed, self.sites, self.newest = seed, list(sites), newest
        per_site = -(-patients // len(sites)) if patients else 0
        self.dates = folder_dates(max(1, -(-per_site // PATIENTS_PER_FOLDER)), newest)
        self.patients = [make_patient(i, seed, self.sites, self.dates) for i in range(patients)]
        self._by_name = {p.name: p for p in self.patients}
        self.groups: dict[str, list[Patient]] = {g: [] for g in GROUPS}
        self.folders: dict[tuple[str, str], list[Patient]] = {}
        self.with_modality: dict[tuple[str, str], list[Patient]] = {}
        for patient in self.patients:
            self.groups[patient.group].append(patient)
            self.folders.setdefault((patient.site, patient.date), []).append(patient)
            for modality in sorted({s.modality for s in patient.studies}):
                self.with_modality.setdefault((patient.group, FOLDERS[modality]), []).append(
                    patient
                )

    @classmethod
    def for_objects(cls, objects: int, seed: int, sites: list[Site], newest: dt.date) -> Layout:
        """Return the smallest layout with ``objects`` warehouse-side objects or more.

        It has the fewest placeholder patients that make that many (none for 0 or fewer).
        """
        count, total = 0, 0
        while total < objects:
            total += make_patient(count, seed, sites, None).warehouse_objects
            count += 1
        return cls(count, seed, sites, newest)

    def patient(self, name: str) -> Patient | None:
        """Return the placeholder patient of a pseudonym, or None."""
        return self._by_name.get(name)

    @property
    def warehouse_objects(self) -> int:
        """Objects of the placeholders on the warehouse side."""
        return sum(p.warehouse_objects for p in self.patients)

    @property
    def images(self) -> int:
        """Placeholder images."""
        return sum(p.images for p in self.patients)

    def site_folders(self) -> dict[str, list[str]]:
        """Each site's placeholder upload folders (dates), sorted."""
        found: dict[str, set[str]] = {}
        for site, date in self.folders:
            found.setdefault(site, set()).add(date)
        return {site: sorted(dates) for site, dates in found.items()}


# --------------------------------------------------------------------------------------------
# keys


def clinical_keys(patient: Patient) -> tuple[str, str]:
    """Return the raw upload and the filed copy of a placeholder patient's clinical file."""
    raw = f"{patient.site}/{patient.date}/data/{patient.name}_{patient.kind}.json"
    return raw, f"{patient.group}/data/{patient.name}/{patient.kind}_{patient.date}.json"


class Image(NamedTuple):
    """One placeholder image: its modality, identifiers and keys."""

    modality: str
    study: str
    series: str
    sop: str
    raw_key: str
    image_key: str
    metadata_key: str
    first_of_study: bool


def image_at(patient: Patient, study: int, series: int, instance: int) -> Image | None:
    """Return the placeholder image of ``patient`` with these numbers (each from 1), or None."""
    if not 1 <= study <= len(patient.studies):
        return None
    found = patient.studies[study - 1]
    if not (1 <= series <= found.series and 1 <= instance <= found.images):
        return None
    folder = FOLDERS[found.modality]
    study_id, series_id = study_uid(patient.index, study), series_uid(patient.index, study, series)
    sop = sop_uid(patient.index, study, series, instance)
    tail = f"{patient.name}/{study_id}/{series_id}"
    return Image(
        found.modality,
        study_id,
        series_id,
        sop,
        f"{patient.site}/{patient.date}/images/{sop}.dcm",
        f"{patient.group}/{folder}/{tail}/{sop}.dcm",
        f"{patient.group}/{folder}-metadata/{tail}/{sop}.json",
        series == 1 and instance == 1,
    )


def images_of(patient: Patient) -> Iterator[Image]:
    """Yield the placeholder images of a patient, study by study, in key order within a series."""
    for s, study in enumerate(patient.studies, start=1):
        for r in range(1, study.series + 1):
            for k in range(1, study.images + 1):
                image = image_at(patient, s, r, k)
                if image is not None:
                    yield image


# --------------------------------------------------------------------------------------------
# what the objects hold


@dataclass
class Template:
    """A real filed image of one modality: its keys, its size and its catalogue row.

    The keys are the image's in the real warehouse.
    """

    raw_key: str
    image_key: str
    metadata_key: str
    size: int
    row: dict


class Contents:
    """What placeholder objects hold, from the real warehouse's files.

    Parameters
    ----------
    templates : dict
        Modality -> `Template`.
    metadata : dict
        Modality -> the template's metadata file (DICOM JSON, parsed).
    clinical : dict
        ``(site, kind)`` -> a clinical record's bytes with `PSEUDONYM_MARK` for the pseudonym.
    """

    def __init__(self, templates: dict, metadata: dict, clinical: dict):
        self.templates, self.metadata, self.clinical = templates, metadata, clinical

    @classmethod
    def from_warehouse(cls, root: Path, sites: list[Site], seed: int) -> Contents:
        """Read the templates from a real local warehouse.

        Its catalogue parts name a filed image of each modality; CR stands in for DX when need
        be.
        """
        templates: dict[str, Template] = {}
        for path in sorted((root / PARTS_PREFIX).glob("*.parquet")):
            for row in pq.read_table(path).to_pylist():
                modality = "DX" if row["Modality"] == "CR" else row["Modality"]
                if modality in FOLDERS and modality not in templates and row["raw_key"]:
                    templates[modality] = Template(
                        row["raw_key"],
                        row["warehouse_key"],
                        row["metadata_key"],
                        int(row["object_size"]),
                        row,
                    )
            if len(templates) == len(FOLDERS):
                break
        missing = sorted(set(FOLDERS) - set(templates))
        if missing:
            raise ValueError(f"the real warehouse has no filed image of {', '.join(missing)}")
        return cls.from_templates(root, templates, sites, seed)

    @classmethod
    def from_templates(
        cls, root: Path, templates: dict[str, Template], sites: list[Site], seed: int
    ) -> Contents:
        """Return the contents of templates found already.

        Their metadata files are read from ``root``.
        """
        metadata = {
            m: json.loads((root / t.metadata_key).read_bytes()) for m, t in templates.items()
        }
        return cls(templates, metadata, clinical_templates(sites, seed))

    def clinical_bytes(self, patient: Patient) -> bytes:
        """Return a placeholder patient's clinical record."""
        template = self.clinical[(patient.site, patient.kind)]
        return template.replace(PSEUDONYM_MARK.encode(), patient.name.encode())

    def study_metadata(self, patient: Patient, image: Image) -> bytes:
        """Return the metadata file of the first image of a study.

        It is the template's, with the placeholder's identifiers.
        """
        document = json.loads(json.dumps(self.metadata[image.modality]))
        for tag, value in (
            ("00100010", {"Alphabetic": patient.name}),
            ("00100020", patient.name),
            ("0020000D", image.study),
            ("0020000E", image.series),
            ("00080018", image.sop),
        ):
            if tag in document:
                document[tag]["Value"] = [value]
        return json.dumps(document).encode("utf-8")


def clinical_templates(sites: list[Site], seed: int) -> dict[tuple[str, str], bytes]:
    """Make a synthetic clinical record for each site and kind, `PSEUDONYM_MARK` as pseudonym."""
    from warehouse.synthetic.records import clinical_record, json_bytes

    found = {}
    for site in sites:
        for kind in ("data", "status"):
            rng = random.Random(f"{seed}-{site.prefix}-{kind}")
            found[(site.prefix, kind)] = json_bytes(
                clinical_record(PSEUDONYM_MARK, site.centre, kind, rng)
            )
    return found


def catalogue_rows(patient: Patient, contents: Contents) -> Iterator[dict]:
    """Yield the catalogue rows of a placeholder patient's images.

    Each has the template's header fields, the placeholder's keys, identifiers and content.
    """
    upload = dt.date.fromisoformat(patient.date)
    for image in images_of(patient):
        template = contents.templates[image.modality]
        yield {
            **template.row,
            "warehouse_key": image.image_key,
            "metadata_key": image.metadata_key,
            "raw_key": image.raw_key,
            "group": patient.group,
            "modality_folder": FOLDERS[image.modality],
            "upload_date": upload,
            "object_size": template.size,
            "PatientID": patient.name,
            "StudyInstanceUID": image.study,
            "SeriesInstanceUID": image.series,
            "SOPInstanceUID": image.sop,
            # (one content per image, as a warehouse of real uploads holds: an S3 ETag's shape)
            "content_id": f"etag:{image.sop}:{template.size}",
        }


def write_parts(
    root: Path, layout: Layout, contents: Contents, schema: pa.Schema, first: dt.datetime
) -> int:
    """Write the placeholders' catalogue parts into local directory ``root``.

    Each part has `PART_ROWS` rows, sorted by warehouse key as the loader's are; the parts are
    named an hour apart from ``first`` on (older than the real run's).

    Returns
    -------
    int
        How many parts.
    """
    folder = root / PARTS_PREFIX
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    parts = 0

    def flush() -> None:
        nonlocal rows, parts
        if rows:
            rows.sort(key=lambda row: row["warehouse_key"])
            stamp = (first + dt.timedelta(hours=parts)).strftime("%Y-%m-%dT%H-%M-%S.%fZ")
            table = pa.Table.from_pylist(rows, schema=schema)
            pq.write_table(table, folder / f"{stamp}.parquet", compression="zstd")
            rows, parts = [], parts + 1

    for patient in layout.patients:
        for row in catalogue_rows(patient, contents):
            rows.append(row)
            if len(rows) >= PART_ROWS:
                flush()
    flush()
    return parts


# --------------------------------------------------------------------------------------------
# the local form


class _Folders:
    """Makes folders under a root once each."""

    def __init__(self, root: Path):
        self.root = root
        self._made: set[str] = set()

    def path(self, key: str) -> str:
        folder, _, _ = key.rpartition("/")
        if folder not in self._made:
            os.makedirs(self.root / folder, exist_ok=True)
            self._made.add(folder)
        return os.path.join(self.root, key)


class _Linker:
    """Hard links to template files.

    A template at the file system's most links (65,000 on ext4) is copied, beside the bucket,
    and the copy linked to from then on.
    """

    def __init__(self, spare: Path):
        self.spare = spare
        self._current: dict[str, str] = {}
        self._copies = 0

    def link(self, source: str, target: str) -> None:
        current = self._current.get(source, source)
        try:
            os.link(current, target)
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            self.spare.mkdir(parents=True, exist_ok=True)
            self._copies += 1
            fresh = str(self.spare / f"{self._copies}-{os.path.basename(source)}")
            shutil.copy2(source, fresh)
            self._current[source] = fresh
            os.link(fresh, target)


def build_local(root: Path, layout: Layout, contents: Contents) -> dict:
    """Write the placeholders into the local warehouse ``root``.

    ``root`` holds the real part the templates come from. Images and most metadata files are
    hard links to the templates (to copies of them beside the bucket, ``<root>-templates/``,
    past the file system's most links); clinical files and each study's first metadata file are
    written; the filed clinical copy is a hard link to its upload. The catalogue parts are
    `write_parts`'.

    Returns
    -------
    dict
        ``patients``, ``images``, ``warehouse_objects`` and ``raw_objects`` written.
    """
    folders = _Folders(root)
    linker = _Linker(root.with_name(root.name + "-templates"))
    sources = {
        m: (str(root / t.raw_key), str(root / t.image_key), str(root / t.metadata_key))
        for m, t in contents.templates.items()
    }
    raw_objects = 0
    for patient in layout.patients:
        raw, filed = clinical_keys(patient)
        raw_path = folders.path(raw)
        with open(raw_path, "wb") as handle:
            handle.write(contents.clinical_bytes(patient))
        os.link(raw_path, folders.path(filed))
        raw_objects += 1
        for image in images_of(patient):
            raw_source, image_source, metadata_source = sources[image.modality]
            linker.link(raw_source, folders.path(image.raw_key))
            linker.link(image_source, folders.path(image.image_key))
            if image.first_of_study:
                with open(folders.path(image.metadata_key), "wb") as handle:
                    handle.write(contents.study_metadata(patient, image))
            else:
                linker.link(metadata_source, folders.path(image.metadata_key))
            raw_objects += 1
    return {
        "patients": len(layout.patients),
        "images": layout.images,
        "warehouse_objects": layout.warehouse_objects,
        "raw_objects": raw_objects,
    }


def closed_state(folders: dict[str, list[str]], now: dt.datetime) -> bytes:
    """Return a raw-side folder state in which every one of ``folders`` is closed.

    The state is ``state/raw-folders.json`` (the bucket's public layout) and ``folders`` maps
    prefix -> dates: what the reconcile runs of a warehouse that has run for years leave.
    """
    document = {
        "version": 1,
        "run_id": "scale-benchmark",
        "written": now.isoformat(),
        "prefixes": {
            prefix: {"closed": sorted(set(dates)), "listed": {}}
            for prefix, dates in sorted(folders.items())
        },
        "settled": [],
    }
    return json.dumps(document, indent=1).encode("utf-8")


def upload_folders(root: Path, prefixes: list[str]) -> dict[str, list[str]]:
    """Return the upload folders (first-level folders) of each raw prefix of a local bucket."""
    found = {}
    for prefix in prefixes:
        base = root / prefix
        found[prefix] = (
            sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        )
    return found
