"""The series table (``series.parquet``) and its flags, against hand-built series.

Series of DICOM files made with pydicom whose geometry each test states: a regular volume, a
gap, a duplicate position, a tilted slice, mixed orientation, a single image, a multi-frame
image, a sheared (gantry-tilted) and an oblique volume, spacing off by more and by less than
the tolerance. The expected values are the construction's, not the product's; the tolerances
are the README's (0.2 mm along the slice normal, 0.01 on a direction cosine).
"""

from __future__ import annotations

import datetime as dt
import io
import math
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests import builders
from tests.builders import image, rows_table
from tests.test_dataprocess import read_batch
from tests.test_dataprocess import run_graph as run_dataprocess
from warehouse.catalogue.rows import image_row, part_bytes
from warehouse.catalogue.series import write_series
from warehouse.core.keys import parse_image_key
from warehouse.dicom.reader import parse_header

SITE = "Series Test Trust"
PATIENT = "Covid1"
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
FLAGS = (
    "complete_volume",
    "gaps",
    "irregular_spacing",
    "mixed_orientation",
    "duplicate_positions",
    "single_image",
    "multi_frame",
)


def tilted(degrees: float) -> list[float]:
    """Axial orientation with its column direction turned ``degrees`` about the x axis."""
    angle = math.radians(degrees)
    return [1.0, 0.0, 0.0, 0.0, math.cos(angle), math.sin(angle)]


def along(orientation: list[float], distance: float) -> list[float]:
    """The point ``distance`` mm from the origin along the normal of ``orientation``."""
    r, c = orientation[:3], orientation[3:]
    normal = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
    return [distance * n for n in normal]


def stack(zs, numbers=None, orientations=None, positions=None) -> list[dict]:
    """Slices of an axial stack at heights ``zs`` (numbered 1.. unless ``numbers`` says)."""
    numbers = numbers or list(range(1, len(zs) + 1))
    slices = []
    for n, (number, z) in enumerate(zip(numbers, zs, strict=True)):
        orientation = orientations[n] if orientations else AXIAL
        position = positions[n] if positions else [-175.0, -175.0, z]
        slices.append(
            {
                "InstanceNumber": number,
                "ImageOrientationPatient": orientation,
                "ImagePositionPatient": position,
            }
        )
    return slices


def _flags(**true) -> dict:
    return {flag: bool(true.get(flag, False)) for flag in FLAGS}


#: Each series: its slices (the header values set) and what its row must say.
SERIES = {
    "regular": (
        stack([0.0, -2.5, -5.0, -7.5, -10.0]),
        {
            **_flags(complete_volume=True),
            "instances": 5,
            "missing_instances": 0,
            "slice_spacing": 2.5,
            "spacing_min": 2.5,
            "spacing_max": 2.5,
            "duplicate_count": 0,
        },
    ),
    "gap": (  # number 3 (and its slice) missing
        stack([0.0, -2.5, -7.5, -10.0], numbers=[1, 2, 4, 5]),
        {
            **_flags(gaps=True, irregular_spacing=True),
            "instances": 4,
            "missing_instances": 1,
            "spacing_min": 2.5,
            "spacing_max": 5.0,
        },
    ),
    "duplicate": (  # two images at -5 mm
        stack([0.0, -2.5, -5.0, -5.0, -7.5, -10.0]),
        {
            **_flags(duplicate_positions=True),
            "instances": 6,
            "duplicate_count": 1,
            "slice_spacing": 2.5,
            "spacing_min": 2.5,
            "spacing_max": 2.5,
        },
    ),
    "tilted slice": (  # the third slice turned 3 degrees: a cosine off by sin(3°) = 0.052
        stack([0.0, -2.5, -5.0, -7.5, -10.0], orientations=[AXIAL, AXIAL, tilted(3), AXIAL, AXIAL]),
        # (positions are then measured along one of its orientations: the other flags say
        # little, and are not asserted)
        {"mixed_orientation": True, "complete_volume": False, "instances": 5},
    ),
    "slightly tilted slice": (  # 0.3 degrees: off by 0.0052, within 0.01
        stack(
            [0.0, -2.5, -5.0, -7.5, -10.0], orientations=[AXIAL, AXIAL, tilted(0.3), AXIAL, AXIAL]
        ),
        {**_flags(complete_volume=True), "instances": 5},
    ),
    "mixed orientation": (  # a localizer's axial and sagittal images in one series
        stack(
            [0.0, -2.5, -5.0, 0.0, 0.0],
            orientations=[AXIAL, AXIAL, AXIAL, SAGITTAL, SAGITTAL],
            positions=[[0, 0, 0.0], [0, 0, -2.5], [0, 0, -5.0], [10, 0, 0], [20, 0, 0]],
        ),
        {"mixed_orientation": True, "complete_volume": False, "instances": 5},
    ),
    "single": (
        stack([0.0]),
        {**_flags(single_image=True), "instances": 1, "frames": 1, "positioned": 1},
    ),
    "sheared": (  # gantry tilt: positions drift in y, spacing along the normal is 2.5
        stack([0.0] * 5, positions=[[0.0, 1.0 * k, -2.5 * k] for k in range(5)]),
        {**_flags(complete_volume=True), "slice_spacing": 2.5},
    ),
    "oblique": (  # turned 30 degrees, 3 mm apart along its own normal
        stack(
            [0.0] * 4,
            orientations=[tilted(30)] * 4,
            positions=[along(tilted(30), 3.0 * k) for k in range(4)],
        ),
        {**_flags(complete_volume=True), "slice_spacing": 3.0, "spacing_max": 3.0},
    ),
    "irregular": (  # steps 2.5, 2.5, 2.9, 2.5: 0.4 mm apart
        stack([0.0, -2.5, -5.0, -7.9, -10.4]),
        {**_flags(irregular_spacing=True), "spacing_min": 2.5, "spacing_max": 2.9},
    ),
    "within tolerance": (  # steps 2.5, 2.6, 2.5, 2.5: 0.1 mm apart
        stack([0.0, -2.5, -5.1, -7.6, -10.1]),
        {**_flags(complete_volume=True), "spacing_min": 2.5, "spacing_max": 2.6},
    ),
    "unpositioned": (  # one image without a position: no flag, not complete
        [*stack([0.0, -2.5, -5.0]), {"InstanceNumber": 4, "ImagePositionPatient": None}],
        {**_flags(), "instances": 4, "positioned": 3},
    ),
    "unnumbered": (  # no InstanceNumber at all: nothing known missing
        [{**s, "InstanceNumber": None} for s in stack([0.0, -2.5, -5.0])],
        {**_flags(complete_volume=True), "missing_instances": None},
    ),
    "two images": (
        stack([0.0, -2.5]),
        {**_flags(), "instances": 2, "slice_spacing": 2.5},
    ),
}


def series_files() -> dict[str, list[tuple[str, bytes]]]:
    """Return each series' images: ``(file name, DICOM bytes)``.

    Plus a multi-frame image (4 frames of 8 x 8 pixels: its pixel data the size its header
    says).
    """
    files = {}
    for number, (name, (slices, _)) in enumerate(SERIES.items()):
        series = f"r{number}"
        files[name] = [
            image(
                PATIENT,
                "CT",
                "s1",
                series,
                n + 1,
                extra=values,
                instance_number=values.get("InstanceNumber") or 1,
            )
            for n, values in enumerate(slices)
        ]
    files["multi-frame"] = [
        image(
            PATIENT,
            "CT",
            "s1",
            "mf",
            1,
            rows=32,
            columns=8,
            extra={"Rows": 8, "NumberOfFrames": "4"},
        )
    ]
    return files


MULTI_FRAME = {**_flags(multi_frame=True, single_image=True), "instances": 1, "frames": 4}


def expected_rows() -> dict[str, dict]:
    return {**{name: want for name, (_, want) in SERIES.items()}, "multi-frame": MULTI_FRAME}


def check_rows(rows: dict[str, dict], series_uid: dict[str, str]) -> None:
    """Each series' row says what its construction says (numbers to 1e-6 mm)."""
    for name, want in expected_rows().items():
        row = rows[series_uid[name]]
        for column, value in want.items():
            if isinstance(value, float):
                assert row[column] == pytest.approx(value, abs=1e-6), (name, column)
            else:
                assert row[column] == value, (name, column, row[column])


def uid_of(data: bytes) -> str:
    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SeriesInstanceUID)


def test_flags_of_hand_built_series(tmp_path):
    """The table of a catalogue whose rows are these files' headers."""
    rows, series_uid = [], {}
    for name, images in series_files().items():
        series_uid[name] = uid_of(images[0][1])
        for file_name, data in images:
            dataset = parse_header(data)
            key = (
                f"training/ct/{PATIENT}/{dataset.StudyInstanceUID}/"
                f"{dataset.SeriesInstanceUID}/{file_name}"
            )
            rows.append(
                image_row(dataset, parse_image_key(key), size=len(data), raw_key=None, upload=None)
            )
    source = tmp_path / "catalogue.parquet"
    source.write_bytes(part_bytes(rows_table(rows)))
    count = write_series(str(source), str(tmp_path / "series.parquet"), str(tmp_path))
    table = pq.read_table(tmp_path / "series.parquet")
    assert count == table.num_rows == len(expected_rows())
    by_uid = {row["SeriesInstanceUID"]: row for row in table.to_pylist()}
    check_rows(by_uid, series_uid)
    assert {row["PatientID"] for row in by_uid.values()} == {PATIENT}
    assert {row["modality_folder"] for row in by_uid.values()} == {"ct"}


def test_an_image_without_a_series_uid_is_in_no_series(tmp_path):
    name, data = image(PATIENT, "CT", "s1", "r1", 1)
    dataset = parse_header(data)
    key = f"training/ct/{PATIENT}/{dataset.StudyInstanceUID}/{dataset.SeriesInstanceUID}/{name}"
    row = dict(
        zip(
            rows_table([]).schema.names,
            image_row(dataset, parse_image_key(key), size=1, raw_key=None, upload=None),
            strict=True,
        )
    )
    row["SeriesInstanceUID"] = None
    source = tmp_path / "catalogue.parquet"
    source.write_bytes(part_bytes(rows_table([tuple(row.values())])))
    assert write_series(str(source), str(tmp_path / "series.parquet"), str(tmp_path)) == 0


def raw_tree() -> tuple[dict[str, bytes], dict[str, str]]:
    """An upload of every series (and an X-ray of another patient), and each series' UID."""
    files = {
        "config.json": builders.config(["raw-a"], training=[SITE]),
        f"raw-a/2021-03-01/data/{PATIENT}_data.json": builders.clinical(PATIENT, SITE),
        "raw-a/2021-03-01/data/Covid2_data.json": builders.clinical("Covid2", SITE),
    }
    series_uid = {}
    for name, images in series_files().items():
        series_uid[name] = uid_of(images[0][1])
        for file_name, data in images:
            files[f"raw-a/2021-03-01/images/{file_name}"] = data
    xray_name, xray = image("Covid2", "DX", "s9", "x1", 1)
    files[f"raw-a/2021-03-01/images/{xray_name}"] = xray
    series_uid["xray"] = uid_of(xray)
    return files, series_uid


def test_the_batch_has_the_series_table_the_dashboard_shows_it_and_select_keeps_volumes(
    local_store, tmp_path
):
    files, series_uid = raw_tree()
    builders.put_tree(local_store, files)
    code, _ = builders.run_loader(local_store, workers=4)
    assert code == 0
    code, _ = run_dataprocess(local_store)
    assert code == 0
    processed = local_store.processed()
    batch, out = read_batch(processed)
    latest = pd.read_csv(io.BytesIO(processed.read("latest.csv")))
    assert dict(zip(latest["archive"], latest["path"], strict=True))["series"] == (
        f"{batch}/series.parquet"
    )
    series = pq.read_table(io.BytesIO(out["series.parquet"]))
    by_uid = {row["SeriesInstanceUID"]: row for row in series.to_pylist()}
    check_rows(by_uid, series_uid)
    xray = by_uid[series_uid["xray"]]
    assert xray["modality_folder"] == "xray" and xray["single_image"] is True
    assert xray["positioned"] == 0 and xray["complete_volume"] is False

    # the internal dashboard: per site and modality, series and each flag
    page = out["dashboard.html"].decode()
    complete = [n for n, want in expected_rows().items() if want["complete_volume"]]
    ct_row = page.split(f'data-site="{SITE}" data-modality="ct"')[1].split("</tr>")[0]
    assert f'data-flag="series" data-value="{len(expected_rows())}"' in ct_row
    assert f'data-flag="complete_volume" data-value="{len(complete)}"' in ct_row
    assert 'data-flag="gaps" data-value="1"' in ct_row
    assert 'data-flag="mixed_orientation" data-value="2"' in ct_row
    assert 'data-flag="multi_frame" data-value="1"' in ct_row
    xray_row = page.split(f'data-site="{SITE}" data-modality="xray"')[1].split("</tr>")[0]
    assert 'data-flag="single_image" data-value="1"' in xray_row

    # select --complete-volumes: the images of complete volumes, and nothing else
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "warehouse.select",
            "--group",
            "training",
            "--complete-volumes",
            "--download",
            str(tmp_path / "got"),
            "--no-progress",
        ],
        env=builders.graph_env(WAREHOUSE_BUCKET=local_store.url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    wanted = sum(len(SERIES[name][0]) for name in complete)
    assert f"selected: {wanted} images" in result.stdout
    got = sorted(p.parent.name for p in (tmp_path / "got").rglob("*.dcm"))
    assert got == sorted(series_uid[n] for n in complete for _ in SERIES[n][0])


def test_select_complete_volumes_without_a_series_table_is_refused(local_store):
    files, _ = raw_tree()
    builders.put_tree(local_store, files)
    assert builders.run_loader(local_store, workers=4)[0] == 0
    assert run_dataprocess(local_store)[0] == 0
    processed = local_store.processed()
    latest = processed.read("latest.csv").decode()
    processed.write(
        "latest.csv",
        "".join(
            line + "\r\n" for line in latest.splitlines() if not line.startswith("series,")
        ).encode(),
    )
    result = subprocess.run(
        [sys.executable, "-m", "warehouse.select", "--complete-volumes"],
        env=builders.graph_env(WAREHOUSE_BUCKET=local_store.url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "no series table" in result.stderr


@pytest.mark.parametrize("case", ["last-table", "older-table", "unsettled-parts"])
def test_a_day_s_new_images_bring_the_series_table_up_to_date(local_store, monkeypatch, case):
    """A day's images bring the last batch's series table up to date, series by series.

    A batch that adds a day's parts to the last batch's catalogue computes only the series
    those rows change (`series.update_series`), and its table is what the construction says
    of every series: the "regular" series sent in two uploads (its middle slice a day late:
    a gap, then a whole volume), the X-ray a day late, the others unchanged. A last table of
    another version (a column missing) is not brought up to date: the table is computed in
    full, the same. Parts not settled when the last batch was built are merged again (as
    the day after a loader run and a dataprocess run minutes apart): their series, counted by
    the last table, are not computed again.
    """
    from warehouse.catalogue import index
    from warehouse.dashboard import batch as batch_module

    older_table = case == "older-table"
    if case != "unsettled-parts":
        # (parts settle at once: a batch's catalogue then covers them, as a day later it would)
        monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0))
    files, series_uid = raw_tree()
    late = {series_files()["regular"][1][0], image("Covid2", "DX", "s9", "x1", 1)[0]}
    late_keys = {k for k in files if k.endswith(".dcm") and k.split("/")[-1] in late}
    assert len(late_keys) == 2
    day_one = {k: v for k, v in files.items() if k not in late_keys}
    builders.put_tree(local_store, day_one)
    assert builders.run_loader(local_store, workers=4)[0] == 0
    updated = []
    real_update = batch_module.update_series

    def recording_update(*args, **kwargs):
        updated.append(pq.read_table(args[1]).column("SeriesInstanceUID").unique().to_pylist())
        return real_update(*args, **kwargs)

    monkeypatch.setattr(batch_module, "update_series", recording_update)
    assert run_dataprocess(local_store)[0] == 0
    assert updated == []  # (the first batch: every series computed)
    _, first = read_batch(local_store.processed())
    before = {
        row["SeriesInstanceUID"]: row
        for row in pq.read_table(io.BytesIO(first["series.parquet"])).to_pylist()
    }
    assert before[series_uid["regular"]]["gaps"] is True
    assert series_uid["xray"] not in before

    if older_table:
        batch, _ = read_batch(local_store.processed())
        key = f"{batch}/series.parquet"
        table = pq.read_table(io.BytesIO(local_store.processed().read(key)))
        buffer = io.BytesIO()
        pq.write_table(table.drop_columns(["multi_frame"]), buffer)
        local_store.processed().write(key, buffer.getvalue(), "application/vnd.apache.parquet")
    builders.put_tree(
        local_store, {k.replace("2021-03-01", "2021-03-02"): files[k] for k in late_keys}
    )
    assert builders.run_loader(local_store, workers=4)[0] == 0
    assert run_dataprocess(local_store)[0] == 0
    assert [sorted(uids) for uids in updated] == (
        [] if older_table else [sorted([series_uid["regular"], series_uid["xray"]])]
    )
    _, second = read_batch(local_store.processed())
    table = pq.read_table(io.BytesIO(second["series.parquet"]))
    after = {row["SeriesInstanceUID"]: row for row in table.to_pylist()}
    assert len(after) == table.num_rows == len(expected_rows()) + 1
    check_rows(after, series_uid)
    assert after[series_uid["xray"]]["single_image"] is True
    for name, uid in series_uid.items():
        if name not in ("regular", "xray"):
            assert after[uid] == before[uid], name
    keys = [
        tuple(row[c] for c in ("group", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"))
        for row in table.to_pylist()
    ]
    assert keys == sorted(keys)
