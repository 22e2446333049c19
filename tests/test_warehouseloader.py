"""End-to-end tests of the warehouseloader graph on both backends.

One upload tree holds every case the loader must handle; the expected warehouse is worked out
here from the rules (the four known split results at 50 %, the site lists, the layout), key by
key, independently of the loader's code.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import boto3
import pydicom
import pytest

from tests import builders
from tests.builders import clinical, image, uid
from warehouse.dicom.reader import MAX_HEADER_ELEMENTS
from warehouse.storage.base import Storage
from warehouse.storage.local import LocalStorage
from warehouse.storage.wrappers import DelegatingStorage

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

SPLIT, TRAIN, VALID, UNKNOWN = "Split Trust", "Train Trust", "Valid Trust", "Nowhere Trust"


def _image_keys(group, folder, patient, study, series, name):
    tail = f"{patient}/{uid(patient, study)}/{uid(patient, study, series)}"
    stem = name[:-4]
    return f"{group}/{folder}/{tail}/{name}", f"{group}/{folder}-metadata/{tail}/{stem}.json"


def sample_tree():
    """``(files, expected warehouse key -> raw key, expected problems key -> reason)``."""
    files: dict[str, bytes] = {
        "config.json": builders.config(
            ["raw-split/", "raw-train", "raw-valid", "raw-unknown"],
            split=[SPLIT],
            training=[TRAIN],
            validation=[VALID],
        )
    }
    expected: dict[str, str] = {}
    problems: dict[str, str] = {}

    def add_clinical(key, pseudonym, centre, target=None, reason=None, **fields):
        files[key] = clinical(pseudonym, centre, **fields)
        if target:
            expected[target] = key
        if reason:
            problems[key] = reason

    # Known split results at 50 %: Covid1 and Covid20 training, Covid14 and Covid149 validation.
    add_clinical(
        "raw-split/2021-01-01/data/Covid1_data.json",
        "Covid1",
        SPLIT,
        "training/data/Covid1/data_2021-01-01.json",
    )
    add_clinical(
        "raw-split/2021-02-01/data/Covid1_data.json",
        "Covid1",
        SPLIT,
        "training/data/Covid1/data_2021-02-01.json",
    )
    add_clinical(
        "raw-split/2021-01-01/data/Covid14_status.json",
        "Covid14",
        SPLIT,
        "validation/data/Covid14/status_2021-01-01.json",
        SwabStatus=0,
    )
    # Covid149 would be validation by hash too; a training-only site decides Covid20... and a
    # validation-only site Covid149.
    add_clinical(
        "raw-train/2021-01-05/data/Covid20_data.json",
        "Covid20",
        TRAIN,
        "training/data/Covid20/data_2021-01-05.json",
    )
    add_clinical(
        "raw-valid/2021-01-05/data/Covid149_status.json",
        "Covid149",
        VALID,
        "validation/data/Covid149/status_2021-01-05.json",
    )
    # Covid20 later sent by the validation-only site: the pseudonym is bound to the training
    # site of its first record, so this one is reported, never copied.
    add_clinical(
        "raw-valid/2021-03-01/data/Covid20_status.json",
        "Covid20",
        VALID,
        reason="pseudonym claimed by another centre",
    )
    add_clinical(
        "raw-unknown/2021-01-05/data/Covid5_data.json",
        "Covid5",
        UNKNOWN,
        reason="site not in config",
    )
    files["raw-split/2021-01-01/data/Covid6_data.json"] = b'{"Pseudonym": "Covid6", '
    problems["raw-split/2021-01-01/data/Covid6_data.json"] = "invalid JSON"
    files["raw-split/2021-01-01/data/Covid7_data.json"] = '{"SubmittingCentre": "é"}'.encode(
        "latin-1"
    )
    problems["raw-split/2021-01-01/data/Covid7_data.json"] = "invalid JSON"
    files["raw-split/2021-01-01/data/Covid8_status.json"] = b'[{"Pseudonym": "Covid8"}]'
    problems["raw-split/2021-01-01/data/Covid8_status.json"] = "invalid JSON"
    files["raw-split/2021-01-01/data/Covid9_data.json"] = b'{"Pseudonym": "Covid9"}'
    problems["raw-split/2021-01-01/data/Covid9_data.json"] = "no SubmittingCentre"
    files["raw-split/2021-01-01/data/..hidden_data.json"] = clinical("x", SPLIT)
    problems["raw-split/2021-01-01/data/..hidden_data.json"] = "unsafe identifier"

    good_images = [
        ("raw-split/2021-01-02/images", "Covid1", "DX", "s1", "r1", 1, "training", "xray"),
        ("raw-split/2021-01-02/images", "Covid1", "DX", "s1", "r1", 2, "training", "xray"),
        ("raw-split/2021-02-02/images", "Covid1", "CR", "s2", "r1", 1, "training", "xray"),
        ("raw-split/2021-01-02/images", "Covid14", "CT", "s1", "r1", 1, "validation", "ct"),
        ("raw-split/2021-01-02/images", "Covid14", "CT", "s1", "r2", 1, "validation", "ct"),
        ("raw-train/2021-01-06/images", "Covid20", "MR", "s1", "r1", 1, "training", "mri"),
    ]
    for folder, patient, modality, study, series, n, group, mod_folder in good_images:
        name, data = image(patient, modality, study, series, n)
        files[f"{folder}/{name}"] = data
        image_key, metadata_key = _image_keys(group, mod_folder, patient, study, series, name)
        expected[image_key] = f"{folder}/{name}"
        expected[metadata_key] = f"metadata of {folder}/{name}"
    # Upper-case suffix, validation-only site.
    name, data = image("Covid149", "DX", "s1", "r1", 1)
    upper = name[:-4] + ".DCM"
    files[f"raw-valid/2021-01-06/images/{upper}"] = data
    image_key, metadata_key = _image_keys("validation", "xray", "Covid149", "s1", "r1", upper)
    expected[image_key] = f"raw-valid/2021-01-06/images/{upper}"
    expected[metadata_key] = f"metadata of raw-valid/2021-01-06/images/{upper}"

    bad = "raw-split/2021-01-02/images"
    _, valid = image("Covid1", "DX", "s9", "r9", 1)

    def add_bad(name, data, reason):
        files[f"{bad}/{name}"] = data
        problems[f"{bad}/{name}"] = reason

    add_bad("garbage.dcm", b"this is not an image" * 50, "not a DICOM file")
    add_bad("empty.dcm", b"", "not a DICOM file")
    add_bad("truncated.dcm", valid[:700], "truncated DICOM header")
    for n, keyword in enumerate(
        ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"), start=1
    ):
        add_bad(
            f"no-{keyword}.dcm",
            image("Covid1", "DX", "s8", "r8", n, extra={keyword: None})[1],
            "missing DICOM identifier",
        )
    add_bad("us.dcm", image("Covid1", "US", "s7", "r7", 1)[1], "unsupported modality")
    add_bad("parent.dcm", image("../etc", "DX", "s6", "r6", 1)[1], "unsafe identifier")
    add_bad("slash.dcm", image("a/b", "DX", "s6", "r6", 2)[1], "unsafe identifier")
    add_bad(
        "bad-study.dcm",
        image("Covid1", "DX", "s5", "r5", 1, extra={"StudyInstanceUID": "1.2.abc"})[1],
        "unsafe identifier",
    )
    add_bad(
        "long-series.dcm",
        image("Covid1", "DX", "s5", "r5", 2, extra={"SeriesInstanceUID": "1." * 40 + "1"})[1],
        "unsafe identifier",
    )
    add_bad(
        "control.dcm",
        image("Covid1", "DX", "s5", "r5", 3, extra={"SeriesInstanceUID": "1.2.3\x01"})[1],
        "unsafe identifier",
    )
    add_bad(
        "orphan.dcm", image("Covid999", "DX", "s1", "r1", 1)[1], "no patient data for PatientID"
    )
    add_bad(
        "unknown-site.dcm", image("Covid5", "DX", "s1", "r1", 1)[1], "no patient data for PatientID"
    )
    # Other kinds of files, and a prefix config.json does not list.
    files[f"{bad}/notes.txt"] = b"notes"
    problems[f"{bad}/notes.txt"] = "not in the raw layout"
    files["raw-split/2021-01-02/readme.csv"] = b"a,b"
    problems["raw-split/2021-01-02/readme.csv"] = "not in the raw layout"
    files["raw-split/2021-01-02/age-0/data/Covid1_data.json"] = clinical("Covid1", SPLIT)
    problems["raw-split/2021-01-02/age-0/data/Covid1_data.json"] = "not in the raw layout"
    files["raw-unlisted/2021-01-01/data/Covid1_data.json"] = clinical("Covid1", VALID)
    problems["raw-unlisted/"] = "raw prefix not in config"
    return files, expected, problems


def check_warehouse(storage: Storage, files, expected):
    """The warehouse side is exactly ``expected``: copies byte for byte, valid metadata."""
    warehouse = {
        key: data
        for key, data in builders.snapshot(storage).items()
        if key.startswith(("training/", "validation/"))
    }
    assert sorted(warehouse) == sorted(expected)
    for key, source in expected.items():
        if source.startswith("metadata of "):
            raw_key = source[len("metadata of ") :]
            dataset = pydicom.Dataset.from_json(warehouse[key].decode())
            original = pydicom.dcmread(io.BytesIO(files[raw_key]))
            assert dataset.PatientID == original.PatientID
            assert dataset.StudyInstanceUID == original.StudyInstanceUID
            assert dataset.SeriesInstanceUID == original.SeriesInstanceUID
            assert "PixelData" not in dataset
        else:
            assert warehouse[key] == files[source], key


def latest_report(storage: Storage) -> dict:
    keys = sorted(i.key for i in storage.list("reports/warehouseloader/"))
    assert keys, "no run report written"
    return json.loads(storage.read(keys[-1]))


def check_report(report: dict, problems):
    found = {p["key"]: p["reason"] for p in report["problems"]}
    assert found == problems
    assert report["completed"] is True


def test_files_every_input_as_designed(store):
    files, expected, problems = sample_tree()
    builders.put_tree(store, files)
    code, state = builders.run_loader(store, workers=8)
    assert code == 0
    check_warehouse(store, files, expected)
    check_report(latest_report(store), problems)
    assert state.report.counts["images copied"] == 7
    assert state.report.counts["metadata files written"] == 7
    assert state.report.counts["clinical files copied"] == 5


class CountingStorage(DelegatingStorage):
    """Delegates to a store and counts requests by kind."""

    def __init__(self, inner: Storage):
        self.inner, self.url = inner, inner.url
        self.calls: dict[str, list[str]] = {}

    def _note(self, kind, key):
        self.calls.setdefault(kind, []).append(key)

    def list(self, prefix):
        self._note("list", prefix)
        return self.inner.list(prefix)

    def list_folders(self, prefix):
        self._note("list", prefix)
        return self.inner.list_folders(prefix)

    def read(self, key):
        self._note("read", key)
        return self.inner.read(key)

    def read_range(self, key, start, end):
        self._note("read", key)
        return self.inner.read_range(key, start, end)

    def write(self, key, data, content_type="application/json"):
        self._note("write", key)
        return self.inner.write(key, data, content_type)

    def copy(self, source_key, target_key, size=None):
        self._note("copy", target_key)
        return self.inner.copy(source_key, target_key, size)


def test_rerun_writes_nothing_and_reads_only_what_was_not_filed(store):
    files, expected, problems = sample_tree()
    builders.put_tree(store, files)
    assert builders.run_loader(store, workers=8)[0] == 0
    before = builders.snapshot(store)
    counting = CountingStorage(store)
    code, state = builders.run_loader(counting, workers=8)
    assert code == 0
    assert builders.snapshot(store) == before
    assert counting.calls.get("copy", []) == []
    assert [k for k in counting.calls["write"] if not k.startswith("reports/")] == []
    # Filed files are never read again, nor are unchanged inputs the last run could not file
    # while their reason still holds: only the config and the run's own state are read (the
    # last run's report, the folder state, the catalogue's part).
    assert builders.input_reads(counting.calls["read"]) == []
    assert state.report.counts["images already filed"] == 7
    assert state.report.counts["clinical files already filed"] == 5
    check_report(latest_report(store), problems)


def test_rerun_reads_an_unfiled_input_again_when_it_or_its_reason_changes(local_store):
    files, expected, problems = sample_tree()
    builders.put_tree(local_store, files)
    assert builders.run_loader(local_store, workers=4)[0] == 0
    orphan = "raw-split/2021-01-02/images/orphan.dcm"
    garbage = "raw-split/2021-01-02/images/garbage.dcm"
    unknown_site = "raw-unknown/2021-01-05/data/Covid5_data.json"
    # The orphan's patient arrives, the garbage file is replaced, Covid5's site is configured.
    local_store.write("raw-split/2021-04-01/data/Covid999_data.json", clinical("Covid999", SPLIT))
    replaced = b"still not an image, but a different one"
    assert len(replaced) != len(files[garbage])  # changed by its size, whatever its time
    local_store.write(garbage, replaced)
    config = json.loads(files["config.json"])
    config["sites"]["training"].append(UNKNOWN)
    local_store.write("config.json", json.dumps(config).encode())
    counting = CountingStorage(local_store)
    code, state = builders.run_loader(counting, workers=4)
    assert code == 0
    read = set(counting.calls["read"])
    assert {orphan, garbage, unknown_site} <= read
    assert "raw-split/2021-01-02/images/us.dcm" not in read
    keys = {i.key for i in local_store.list("")}
    assert "training/data/Covid5/data_2021-01-05.json" in keys
    assert any(
        k.startswith("validation/xray/Covid999/") or k.startswith("training/xray/Covid999/")
        for k in keys
    )
    found = {p["key"]: p["reason"] for p in state.report.problems}
    assert found[garbage] == "not a DICOM file"
    assert orphan not in found and unknown_site not in found


def test_dry_run_writes_nothing_and_logs_each_write(local_store, capsys, caplog):
    files, expected, problems = sample_tree()
    builders.put_tree(local_store, files)
    before = builders.snapshot(local_store)
    caplog.set_level("INFO")
    code, state = builders.run_loader(local_store, workers=4, dry_run=True)
    assert code == 0
    assert builders.snapshot(local_store) == before
    assert not list(local_store.list("reports/"))
    intended = [r.getMessage() for r in caplog.records if "DRY RUN: would" in r.getMessage()]
    parts = [m for m in intended if "/catalogue/images/" in m]
    assert len(parts) == 1 and parts[0].endswith("bytes)")  # logged, not written
    assert len(intended) == len(expected) + 1
    assert not list(local_store.list("catalogue/"))
    report = json.loads(capsys.readouterr().out.split("warehouseloader run summary")[0])
    assert {p["key"]: p["reason"] for p in report["problems"]} == problems


def test_same_warehouse_with_one_worker_and_with_32(tmp_path):
    files, expected, _ = sample_tree()
    results = []
    for workers in (1, 32):
        (tmp_path / f"bucket-{workers}").mkdir()
        store = LocalStorage(tmp_path / f"bucket-{workers}")
        builders.put_tree(store, files)
        assert builders.run_loader(store, workers=workers)[0] == 0
        results.append(builders.snapshot(store))
    assert results[0] == results[1]


def test_existing_group_wins_over_config(local_store):
    files, _, _ = sample_tree()
    # Covid1 is training by hash, but the warehouse already has it in validation: its images
    # follow the existing group, and its new clinical files, which config would put in
    # training, are conflicts: reported, never copied to the other side.
    files["validation/data/Covid1/data_2020-12-01.json"] = clinical("Covid1", SPLIT)
    builders.put_tree(local_store, files)
    code, state = builders.run_loader(local_store, workers=4)
    assert code == 0
    keys = {i.key for i in local_store.list("")}
    assert not any(k.startswith("training/") and "/Covid1/" in k for k in keys)
    assert len([k for k in keys if k.startswith("validation/xray/Covid1/")]) == 3
    assert len([k for k in keys if k.startswith("validation/xray-metadata/Covid1/")]) == 3
    conflicts = sorted(p["key"] for p in state.report.problems if p["reason"] == "group conflict")
    assert conflicts == [
        "raw-split/2021-01-01/data/Covid1_data.json",
        "raw-split/2021-02-01/data/Covid1_data.json",
    ]
    claimed = [
        p["key"]
        for p in state.report.problems
        if p["reason"] == "pseudonym claimed by another centre"
    ]
    assert claimed == ["raw-valid/2021-03-01/data/Covid20_status.json"]


def test_earliest_upload_decides_a_new_patient(local_store):
    files = {
        "config.json": builders.config(["raw-a", "raw-b"], training=["A"], validation=["B"]),
        # Key order would put raw-a first, but raw-b uploaded earlier: B (validation) decides.
        "raw-a/2021-05-01/data/Covid77_data.json": clinical("Covid77", "A"),
        "raw-b/2021-04-01/data/Covid77_status.json": clinical("Covid77", "B"),
    }
    builders.put_tree(local_store, files)
    code, state = builders.run_loader(local_store, workers=4)
    assert code == 0
    keys = {i.key for i in local_store.list("")}
    assert "validation/data/Covid77/status_2021-04-01.json" in keys
    assert not any(k.startswith("training/") for k in keys)
    claimed = [
        p for p in state.report.problems if p["reason"] == "pseudonym claimed by another centre"
    ]
    assert [p["key"] for p in claimed] == ["raw-a/2021-05-01/data/Covid77_data.json"]
    assert "'B'" in claimed[0]["detail"] and "'A'" in claimed[0]["detail"]


def test_bonobo_run_local_prints_status_lines_and_summary(local_store, tmp_path):
    files, expected, problems = sample_tree()
    builders.put_tree(local_store, files)
    result = builders.bonobo_run("warehouseloader", local_store.root, tmp_path)
    assert result.returncode == 0, result.stderr
    for node in (
        "load_config",
        "extract_raw_files_from_folder",
        "process_patient_data",
        "process_image",
        "process_dicom_data",
        "upload_text_data",
        "data_copy",
    ):
        assert f"- {node} in=" in result.stderr
    assert "- process_image in=" in result.stderr and "[done]" in result.stderr
    assert "warehouseloader run summary" in result.stdout
    assert "images copied: 7" in result.stdout
    assert "\x1b[" not in result.stderr  # plain text for container logs
    check_warehouse(local_store, files, expected)
    check_report(latest_report(local_store), problems)


def test_python_m_on_s3_over_http(s3_store, s3_bucket, tmp_path):
    files, expected, problems = sample_tree()
    builders.put_tree(s3_store, files)
    summary = tmp_path / "summary.txt"
    result = builders.python_m(
        "warehouseloader",
        [],
        builders.graph_env(WAREHOUSE_BUCKET=f"s3://{s3_bucket}", RUN_SUMMARY_FILE=str(summary)),
    )
    assert result.returncode == 0, result.stderr
    check_warehouse(s3_store, files, expected)
    check_report(latest_report(s3_store), problems)
    assert "images copied: 7" in summary.read_text()


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "WAREHOUSE_BUCKET"),
        ({"WAREHOUSE_BUCKET": "file:///nonexistent", "DRY_RUN": "maybe"}, "DRY_RUN"),
        ({"WAREHOUSE_BUCKET": "file:///nonexistent", "WAREHOUSE_WORKERS": "0"}, "WORKERS"),
    ],
)
def test_bad_settings_stop_with_a_clear_message(env, message):
    result = builders.python_m("warehouseloader", [], builders.graph_env(**env))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no config.json"),
        (b"{not json", "not valid JSON"),
        (b'{"raw_prefixes": "raw-a", "training_percentage": 50}', "raw_prefixes"),
        (b'{"raw_prefixes": ["raw-a"], "training_percentage": 150}', "between 0 and 100"),
        (
            b'{"raw_prefixes": ["raw-a"], "training_percentage": 50,'
            b' "sites": {"training": ["A"], "validation": ["A"]}}',
            "in both",
        ),
    ],
)
def test_bad_config_stops_before_any_write(tmp_path, content, message):
    (tmp_path / "bucket").mkdir()
    store = LocalStorage(tmp_path / "bucket")
    files, _, _ = sample_tree()
    del files["config.json"]
    if content is not None:
        files["config.json"] = content
    builders.put_tree(store, files)
    before = builders.snapshot(store)
    result = builders.python_m(
        "warehouseloader", [], builders.graph_env(WAREHOUSE_BUCKET=f"file://{store.root}")
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert builders.snapshot(store) == before
    report = latest_report(store)
    assert report["completed"] is False and message in report["fatal"]


def test_missing_bucket_exits_non_zero(s3_endpoint):
    result = builders.python_m(
        "warehouseloader", [], builders.graph_env(WAREHOUSE_BUCKET="no-such-bucket-here")
    )
    assert result.returncode != 0
    assert "no-such-bucket-here" in result.stderr


def test_help_lists_the_environment():
    result = builders.python_m("warehouseloader", ["--help"], builders.graph_env())
    assert result.returncode == 0
    names = ("WAREHOUSE_BUCKET", "DRY_RUN", "WAREHOUSE_WORKERS", "WAREHOUSE_INVENTORY")
    for name in (*names, "AWS_ENDPOINT_URL"):
        assert name in result.stdout


def test_bonobo_inspect_needs_no_environment(tmp_path):
    result = subprocess.run(
        [str(BIN / "bonobo"), "inspect", "--graph", str(REPO / "warehouse/warehouseloader.py")],
        cwd=tmp_path,
        env=builders.graph_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.lstrip().startswith("digraph")
    for node in ("load_config", "process_image", "data_copy", "upload_text_data"):
        assert node in result.stdout


def test_killed_run_is_finished_by_the_next_one(tmp_path):
    """SIGKILL a run half-way; the rerun finishes the work and no partial object is left."""
    files = {"config.json": builders.config(["raw-a"], split=[SPLIT])}
    for n in range(120):
        name, data = image(f"Covid{n % 12 + 1}", "DX", f"s{n % 3}", "r1", n, rows=128, columns=128)
        files[f"raw-a/2021-01-01/images/{name}"] = data
    for p in range(1, 13):
        files[f"raw-a/2021-01-01/data/Covid{p}_data.json"] = clinical(f"Covid{p}", SPLIT)
    (tmp_path / "killed").mkdir()
    (tmp_path / "clean").mkdir()
    killed = LocalStorage(tmp_path / "killed")
    builders.put_tree(killed, files)
    clean = LocalStorage(tmp_path / "clean")
    builders.put_tree(clean, files)

    def twenty_filed():
        return len([k for k in builders.snapshot(killed) if k.startswith("training/")]) >= 20

    builders.kill_loader_when(killed.root, twenty_filed)
    partial = {k for k in builders.snapshot(killed) if k.startswith(("training/", "validation/"))}

    assert builders.run_loader(killed, workers=4)[0] == 0
    assert builders.run_loader(clean, workers=4)[0] == 0
    finished, reference = builders.snapshot(killed), builders.snapshot(clean)
    assert finished == reference
    assert len(partial) < len([k for k in reference if k.startswith(("training/", "validation/"))])
    leftovers = list((tmp_path / "killed").rglob(".warehouse-partial-*"))
    assert leftovers == []


def test_s3_copies_are_server_side(s3_store, s3_bucket):
    """No image bytes go through the loader for a copy: reads are header ranges only."""
    files = {"config.json": builders.config(["raw-a"], split=[SPLIT])}
    name, data = image("Covid1", "CT", rows=1024, columns=1024)  # a 2 MB image
    files[f"raw-a/2021-01-01/images/{name}"] = data
    files["raw-a/2021-01-01/data/Covid1_data.json"] = clinical("Covid1", SPLIT)
    builders.put_tree(s3_store, files)
    code, state = builders.run_loader(s3_store, workers=4)
    assert code == 0
    assert state.header_bytes < 100 * 1024
    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="training/ct/")["Contents"]
    assert [o["Size"] for o in listed] == [len(data)]


def test_generated_tree_is_filed_as_its_summary_says(tmp_path):
    """The product's generator and the loader agree: every well-formed file is filed, every
    faulty one is reported, and nothing under an unlisted prefix is read."""
    from warehouse.synthetic import generate_tree

    root = tmp_path / "generated"
    summary = generate_tree(root, patients=20, seed=3)
    store = CountingStorage(LocalStorage(root))
    code, state = builders.run_loader(store, workers=8)
    assert code == 0
    counts = state.report.counts
    assert counts["images copied"] == counts["metadata files written"] == summary["images"]
    assert counts["clinical files copied"] == summary["data_files"] + summary["status_files"]
    image_problems = [p for p in state.report.problems if p["key"].lower().endswith(".dcm")]
    expected_faults = summary["faulty_images"] + summary["unconfigured_site_images"]
    assert len(image_problems) == expected_faults
    unlisted = [k for k in store.calls["read"] if not k.startswith(state.config.raw_prefixes)]
    assert builders.input_reads(unlisted) == [] and "config.json" in unlisted


def test_an_internal_error_on_one_image_is_reported_and_the_next_run_completes(
    local_store, monkeypatch
):
    """A bug met on one file (here injected into the header reader) is reported against that
    file; everything else is filed, the run completes, and the next run does not read it."""
    from warehouse.loader import work as filing

    files, expected, problems = sample_tree()
    builders.put_tree(local_store, files)
    victim = next(key for key in expected.values() if key.endswith(".dcm"))
    real_read_header = filing.read_header

    def breaking(storage, key, size, **kwargs):
        if key == victim:
            raise OSError("No tag to read at file position 10000")
        return real_read_header(storage, key, size, **kwargs)

    monkeypatch.setattr(filing, "read_header", breaking)
    code, state = builders.run_loader(local_store, workers=8)
    assert code == 0
    found = {p["key"]: (p["reason"], p["detail"]) for p in state.report.problems}
    assert found[victim] == ("internal error", "OSError: No tag to read at file position 10000")
    assert state.report.counts["images copied"] == 6  # every other image
    monkeypatch.setattr(filing, "read_header", real_read_header)
    counting = CountingStorage(local_store)
    code, state = builders.run_loader(counting, workers=8)
    assert code == 0
    assert victim not in counting.calls["read"]  # the same version of the product: not again
    assert {p["key"]: p["reason"] for p in state.report.problems}[victim] == "internal error"


@pytest.mark.parametrize(
    ("name", "content", "reason", "detail"),
    [
        (
            "Covid31_data.json",
            clinical("Covid32", SPLIT),
            "pseudonym differs from the file name",
            "the record's Pseudonym is 'Covid32'; the file name's is 'Covid31'",
        ),
        (
            "Covid33_data.json",
            clinical("Covid33 ", SPLIT),
            "pseudonym differs from the file name",
            "the record's Pseudonym is 'Covid33 '; the file name's is 'Covid33'",
        ),
        ("Covid34_data.json", b"[" * 100_000 + b"]" * 100_000, "invalid JSON", "nested too deeply"),
        (
            "Covid35_data.json",
            b'{"SubmittingCentre": "Split Trust", "Age": ' + b"9" * 5000 + b"}",
            "invalid JSON",
            "digits",
        ),
        ("Covid 36_data.json", clinical("Covid 36", SPLIT), "unsafe identifier", "SPACE at 5"),
        ("Covid37\t_data.json", clinical("Covid37\t", SPLIT), "unsafe name", "U+0009 at 7"),
    ],
)
def test_clinical_files_that_get_it_wrong_are_reported(local_store, name, content, reason, detail):
    files = {
        "config.json": builders.config(["raw-split"], split=[SPLIT]),
        f"raw-split/2021-01-01/data/{name}": content,
    }
    builders.put_tree(local_store, files)
    code, state = builders.run_loader(local_store, workers=2)
    assert code == 0
    (problem,) = state.report.problems
    assert problem["reason"] == reason
    assert detail in problem["detail"]
    assert not any(local_store.list("training/")) and not any(local_store.list("validation/"))


def test_size_limits_refuse_unread_and_hold_while_the_limit_does(local_store):
    big_record = clinical("Covid41", SPLIT, Notes="x" * 5000)
    name, data = image("Covid1", "DX", "s1", "r1", 1)
    files = {
        "config.json": builders.config(["raw-split"], split=[SPLIT]),
        "raw-split/2021-01-01/data/Covid1_data.json": clinical("Covid1", SPLIT),
        "raw-split/2021-01-01/data/Covid41_data.json": big_record,
        f"raw-split/2021-01-02/images/{name}": data,
    }
    builders.put_tree(local_store, files)
    counting = CountingStorage(local_store)
    code, state = builders.run_loader(
        counting, workers=2, max_clinical_bytes=4096, max_header_bytes=1024
    )
    assert code == 0
    found = {p["key"]: p for p in state.report.problems}
    too_big = found["raw-split/2021-01-01/data/Covid41_data.json"]
    assert too_big["reason"] == "clinical file too large"
    assert too_big["facts"] == {"max_clinical_bytes": 4096}
    assert "raw-split/2021-01-01/data/Covid41_data.json" not in counting.calls["read"]
    header = found[f"raw-split/2021-01-02/images/{name}"]
    assert header["reason"] == "DICOM header too large"
    # the same limits: not read again; raised limits: read and filed
    counting = CountingStorage(local_store)
    builders.run_loader(counting, workers=2, max_clinical_bytes=4096, max_header_bytes=1024)
    assert builders.input_reads(counting.calls["read"]) == []
    code, state = builders.run_loader(local_store, workers=2)
    assert code == 0 and state.report.problems == []
    assert state.report.counts["images copied"] == 1
    assert state.report.counts["clinical files copied"] == 1


def test_a_header_too_complex_is_refused_and_not_read_again(local_store):
    """60,000 tiny private elements before the pixel data: over the bound on a header's
    elements, remembered with the bound, not read again while it is the same."""
    from tests.test_dicom_hostile import _private_elements

    name, data = image("Covid1", "DX", "s1", "r1", 1)
    at = data.index(b"\xe0\x7f\x10\x00OW")
    files = {
        "config.json": builders.config(["raw-split"], split=[SPLIT]),
        "raw-split/2021-01-01/data/Covid1_data.json": clinical("Covid1", SPLIT),
        f"raw-split/2021-01-02/images/{name}": data[:at]
        + _private_elements(MAX_HEADER_ELEMENTS + 10_000)
        + data[at:],
    }
    builders.put_tree(local_store, files)
    code, state = builders.run_loader(local_store, workers=2)
    assert code == 0
    (problem,) = state.report.problems
    assert problem["reason"] == "DICOM header too complex"
    assert problem["facts"] == {"max_header_elements": MAX_HEADER_ELEMENTS}
    counting = CountingStorage(local_store)
    builders.run_loader(counting, workers=2)
    assert builders.input_reads(counting.calls["read"]) == []
