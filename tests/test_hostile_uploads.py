"""Uploads and operators that get it wrong: no site moves another site's patient, two runs never
collide, every refusal is named (issue 9)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time

import pandas as pd
import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage

A, B, SPLIT = "A Valid Trust", "B Train Trust", "Split Trust"


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    (tmp_path / "bucket-processed").mkdir()
    return LocalStorage(root)


def put_at(store: LocalStorage, key: str, data: bytes, when: str) -> None:
    """Write ``key`` and give it the last-modified time ``when`` (ISO date or time, UTC)."""
    store.write(key, data)
    moment = dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC).timestamp()
    os.utime(store.root / key, (moment, moment))


def config(**extra) -> bytes:
    doc = json.loads(
        builders.config(["raw-a", "raw-b", "raw-a2"], split=[SPLIT], training=[B], validation=[A])
    )
    doc.update(extra)
    return json.dumps(doc).encode()


def problems(state) -> dict[str, tuple[str, str]]:
    return {p["key"]: (p["reason"], p["detail"]) for p in state.report.problems}


def warehouse_keys(store) -> list[str]:
    return sorted(i.key for i in store.list("") if i.key.startswith(("training/", "validation/")))


# --------------------------------------------------------------------------------------------
# 1. one site cannot move another site's patient


def test_a_filed_patient_is_bound_to_the_centre_of_its_first_record(store):
    store.write("config.json", config())
    put_at(store, "raw-a/2021-02-01/data/Covid1_data.json", clinical("Covid1", A), "2021-02-01")
    assert builders.run_loader(store)[0] == 0
    assert warehouse_keys(store) == ["validation/data/Covid1/data_2021-02-01.json"]
    # B forges A's patient: an earlier folder, B's own training-only centre, images too
    name, data = image("Covid1", "DX")
    put_at(store, "raw-b/2021-01-01/data/Covid1_data.json", clinical("Covid1", B), "2021-01-01")
    put_at(store, f"raw-b/2021-01-01/images/{name}", data, "2021-01-01")
    # and a same-date record that would replace A's file
    put_at(store, "raw-b/2021-02-01/data/Covid1_data.json", clinical("Covid1", B), "2021-02-01")
    code, state = builders.run_loader(store)
    assert code == 0
    found = problems(state)
    reason, detail = found["raw-b/2021-01-01/data/Covid1_data.json"]
    assert reason == "pseudonym claimed by another centre"
    assert A in detail and B in detail
    assert found[f"raw-b/2021-01-01/images/{name}"][0] == "pseudonym claimed by another centre"
    assert found["raw-b/2021-02-01/data/Covid1_data.json"][0] in (
        "pseudonym claimed by another centre",
        "another raw file has the same target",
    )
    assert warehouse_keys(store) == ["validation/data/Covid1/data_2021-02-01.json"]
    assert store.read("validation/data/Covid1/data_2021-02-01.json") == clinical("Covid1", A)
    # the next run does not read the forgeries again, and still refuses the images
    code, state = builders.run_loader(store)
    assert problems(state)[f"raw-b/2021-01-01/images/{name}"][0] == (
        "pseudonym claimed by another centre"
    )


def test_in_one_run_the_first_accepted_record_binds(store):
    store.write("config.json", config())
    store.write("raw-a/2021-02-01/data/Covid1_data.json", clinical("Covid1", A))
    store.write("raw-b/2021-03-01/data/Covid1_status.json", clinical("Covid1", B))
    code, state = builders.run_loader(store)
    assert code == 0
    assert problems(state)["raw-b/2021-03-01/data/Covid1_status.json"][0] == (
        "pseudonym claimed by another centre"
    )
    assert warehouse_keys(store) == ["validation/data/Covid1/data_2021-02-01.json"]


def test_an_upload_folder_dated_long_before_its_upload_is_not_trusted(store):
    store.write("config.json", config(max_upload_delay_days=30))
    put_at(store, "raw-a/2021-02-01/data/Covid1_data.json", clinical("Covid1", A), "2021-02-01")
    # B's folder says 1 January, but B wrote it on 5 February, after A's upload
    put_at(store, "raw-b/2021-01-01/data/Covid1_data.json", clinical("Covid1", B), "2021-02-05")
    put_at(store, "raw-b/2031-01-01/data/Covid2_data.json", clinical("Covid2", B), "2021-02-05")
    code, state = builders.run_loader(store)
    assert code == 0
    found = problems(state)
    assert found["raw-b/2021-01-01/data/Covid1_data.json"] == (
        "implausible upload date",
        "folder 2021-01-01 is 35 days before the object's last-modified 2021-02-05 "
        "(at most 30 allowed)",
    )
    assert found["raw-b/2031-01-01/data/Covid2_data.json"][0] == "implausible upload date"
    assert warehouse_keys(store) == ["validation/data/Covid1/data_2021-02-01.json"]


def test_prefix_sites_limit_what_each_prefix_sends_and_several_accounts_work(store):
    sites = {"raw-a": [A], "raw-a2": [A], "raw-b": [B]}
    store.write("config.json", config(prefix_sites=sites))
    store.write("raw-a/2021-01-01/data/Covid1_data.json", clinical("Covid1", A))
    store.write("raw-b/2021-01-01/data/Covid2_data.json", clinical("Covid2", A))  # not B's
    name, data = image("Covid1", "CT")
    store.write(f"raw-a2/2021-01-02/images/{name}", data)  # A's second account
    other, other_data = image("Covid1", "CT", instance=2)
    store.write(f"raw-b/2021-01-02/images/{other}", other_data)  # B sends A's patient
    code, state = builders.run_loader(store)
    assert code == 0
    found = problems(state)
    assert found["raw-b/2021-01-01/data/Covid2_data.json"] == (
        "centre not allowed for this prefix",
        f"raw-b may send ['{B}']; this record names '{A}'",
    )
    assert found[f"raw-b/2021-01-02/images/{other}"][0] == "centre not allowed for this prefix"
    assert any(key.endswith(name) for key in warehouse_keys(store))
    assert not any(key.endswith(other) for key in warehouse_keys(store))


# --------------------------------------------------------------------------------------------
# 2. two runs at once


_GATE_HOOK = """
import os
import time

import warehouse.loader.inputs as runs

_run_inputs = runs.run_inputs


def run_inputs(*args, **kwargs):
    # Hold the run (and its lease) before it lists anything, until the test opens the gate.
    while not os.path.exists(os.environ["WAREHOUSE_TEST_GATE"]):
        time.sleep(0.01)
    return _run_inputs(*args, **kwargs)


runs.run_inputs = run_inputs
"""


def _two_loaders(env, tmp_path, lease_taken) -> list[subprocess.CompletedProcess]:
    """Two loaders on one warehouse, the second started while the first holds the lease.

    The first is held (a ``sitecustomize`` hook) after it took the lease and before it lists,
    until the second has ended: the order does not depend on how fast either starts.
    """
    hook, gate = tmp_path / "gate-hook", tmp_path / "gate"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_GATE_HOOK)
    command = [str(builders.BIN / "python"), "-m", "warehouse.warehouseloader"]
    path = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    held = dict(env, PYTHONPATH=path, WAREHOUSE_TEST_GATE=str(gate))
    first = subprocess.Popen(
        command,
        cwd=builders.REPO,
        env=held,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60  # a guard against a hang, not a speed target
        while not lease_taken() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease_taken(), "the first loader never took the lease"
        second = subprocess.run(
            command, cwd=builders.REPO, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        gate.touch()
    out, err = first.communicate(timeout=120)
    assert "Error in sitecustomize" not in err, err  # the gate held the first run
    return [subprocess.CompletedProcess(first.args, first.returncode, out, err), second]


def _upload_tree() -> dict[str, bytes]:
    files = {"config.json": builders.config(["raw-a"], split=[SPLIT])}
    for n in range(40):
        patient = f"Covid{n}"
        files[f"raw-a/2021-01-01/data/{patient}_data.json"] = clinical(patient, SPLIT)
        for instance in range(3):
            name, data = image(patient, "DX", instance=instance)
            files[f"raw-a/2021-01-02/images/{name}"] = data
    return files


def test_two_loaders_on_a_local_directory_one_exits_3(tmp_path):
    for copy in ("bucket", "reference"):
        (tmp_path / copy).mkdir()
        builders.put_tree(LocalStorage(tmp_path / copy), _upload_tree())
    lock = tmp_path / "bucket" / "locks" / "warehouseloader.json"
    first, second = _two_loaders(
        builders.graph_env(WAREHOUSE_BUCKET=f"file://{tmp_path}/bucket"), tmp_path, lock.exists
    )
    assert (first.returncode, second.returncode) == (0, 3), (first.stderr, second.stderr)
    assert "another run holds the warehouse since" in second.stderr
    reference = builders.python_m(
        "warehouseloader", env=builders.graph_env(WAREHOUSE_BUCKET=f"file://{tmp_path}/reference")
    )
    assert reference.returncode == 0
    got = builders.snapshot(LocalStorage(tmp_path / "bucket"))
    want = builders.snapshot(LocalStorage(tmp_path / "reference"))
    assert got == want
    assert not (tmp_path / "bucket" / "locks" / "warehouseloader.json").exists()


def test_two_loaders_on_s3_one_exits_3(s3_bucket, s3_endpoint, tmp_path):
    store = S3Storage(s3_bucket)
    builders.put_tree(store, _upload_tree())
    env = builders.graph_env(WAREHOUSE_BUCKET=s3_bucket)

    def lease_taken() -> bool:
        return "locks/warehouseloader.json" in {i.key for i in store.list("locks/")}

    first, second = _two_loaders(env, tmp_path, lease_taken)
    assert (first.returncode, second.returncode) == (0, 3), (first.stderr, second.stderr)
    assert "another run holds the warehouse since" in second.stderr
    (tmp_path / "reference").mkdir()
    reference = LocalStorage(tmp_path / "reference")
    builders.put_tree(reference, _upload_tree())
    assert builders.run_loader(reference)[0] == 0
    assert builders.snapshot(store) == builders.snapshot(reference)
    assert "locks/warehouseloader.json" not in {i.key for i in store.list("locks/")}


# --------------------------------------------------------------------------------------------
# 3. two clinical files for one target


def test_a_second_raw_file_for_a_filed_target_is_reported_every_run(store):
    store.write("config.json", config())
    put_at(store, "raw-a/2021-01-01/data/Covid1_data.json", clinical("Covid1", A), "2021-01-01")
    put_at(
        store, "raw-a2/2021-01-01/data/Covid1_data.json", clinical("Covid1", A, x=1), "2021-01-01"
    )
    code, state = builders.run_loader(store)
    assert code == 0
    assert problems(state)["raw-a2/2021-01-01/data/Covid1_data.json"] == (
        "another raw file has the same target",
        "validation/data/Covid1/data_2021-01-01.json is claimed by "
        "raw-a/2021-01-01/data/Covid1_data.json",
    )
    assert store.read("validation/data/Covid1/data_2021-01-01.json") == clinical("Covid1", A)
    code, state = builders.run_loader(store)
    assert problems(state)["raw-a2/2021-01-01/data/Covid1_data.json"] == (
        "another raw file has the same target",
        "validation/data/Covid1/data_2021-01-01.json is filed from "
        "raw-a/2021-01-01/data/Covid1_data.json",
    )
    assert state.report.counts["clinical files already filed"] == 1


# --------------------------------------------------------------------------------------------
# 6., 7., 8. long names, changed raw files, case variants


def test_a_name_whose_metadata_file_would_be_too_long_is_refused(store):
    store.write("config.json", config())
    store.write("raw-a/2021-01-01/data/Covid1_data.json", clinical("Covid1", A))
    _, data = image("Covid1", "DX")
    name = "x" * 251 + ".dcm"  # 255 bytes: the file fits, its 256-byte <stem>.json does not
    store.write(f"raw-a/2021-01-02/images/{name}", data)
    code, state = builders.run_loader(store)
    assert code == 0
    reason, detail = problems(state)[f"raw-a/2021-01-02/images/{name}"]
    assert reason == "unsafe identifier" and "255 bytes" in detail


def test_a_raw_file_changed_after_filing_is_reported_every_run_and_never_overwritten(store):
    store.write("config.json", config())
    store.write("raw-a/2021-01-01/data/Covid1_data.json", clinical("Covid1", A))
    name, data = image("Covid1", "DX")
    half = data[: len(data) // 2]
    key = f"raw-a/2021-01-02/images/{name}"
    store.write(key, data)
    assert builders.run_loader(store)[0] == 0
    (filed,) = [k for k in warehouse_keys(store) if k.endswith(".dcm")]
    builders.age_objects(store, 2)  # the copy made two seconds ago: the re-upload comes later
    store.write(key, data[:-2] + b"\0\1")  # a corrected re-upload under the same key
    store.write("raw-a/2021-01-01/data/Covid1_data.json", clinical("Covid1", A, note="fixed"))
    for _ in range(2):
        code, state = builders.run_loader(store)
        assert code == 0
        found = problems(state)
        assert found[key][0] == "raw file changed after filing"
        assert found["raw-a/2021-01-01/data/Covid1_data.json"][0] == (
            "raw file changed after filing"
        )
        assert store.read(filed) == data
    assert half  # the upload's first half was never what was filed


def test_case_variants_of_one_pseudonym_are_one_patient(store):
    store.write("config.json", config())
    store.write("raw-b/2021-01-01/data/Covid77_data.json", clinical("Covid77", B))
    store.write("raw-a/2021-01-02/data/COVID77_data.json", clinical("COVID77", A))
    name, data = image("COVID77", "DX")
    store.write(f"raw-a/2021-01-03/images/{name}", data)
    code, state = builders.run_loader(store)
    assert code == 0
    found = problems(state)
    assert found["raw-a/2021-01-02/data/COVID77_data.json"] == (
        "pseudonym differs only in case",
        "'COVID77' differs only in case from the patient 'Covid77'",
    )
    assert found[f"raw-a/2021-01-03/images/{name}"][0] == "pseudonym differs only in case"
    assert warehouse_keys(store) == ["training/data/Covid77/data_2021-01-01.json"]
    code, state = builders.run_loader(store)  # the next run: still one patient
    assert problems(state)["raw-a/2021-01-02/data/COVID77_data.json"][0] == (
        "pseudonym differs only in case"
    )


# --------------------------------------------------------------------------------------------
# 5. stores that do not exist; 9. poisoned files for dataprocess and submittingcentres


@pytest.mark.parametrize("url", ["file:///nonexistent/warehouse", "file:///"])
def test_a_missing_or_root_store_is_a_settings_error_and_nothing_is_written(url):
    result = builders.python_m("warehouseloader", env=builders.graph_env(WAREHOUSE_BUCKET=url))
    assert result.returncode == 2, result.stderr
    assert not os.path.exists("/nonexistent")
    assert not os.path.exists("/reports")


def test_dataprocess_and_submittingcentres_report_poisoned_files_and_go_on(store, tmp_path):
    store.write("config.json", config())
    store.write("raw-a/2021-01-01/data/Covid1_data.json", clinical("Covid1", A))
    store.write("raw-a/2021-01-01/data/Covid2_data.json", clinical("Covid2", A))
    name, data = image("Covid1", "DX")
    store.write(f"raw-a/2021-01-02/images/{name}", data)
    assert builders.run_loader(store)[0] == 0
    deep = b"[" * 100_000 + b"]" * 100_000
    store.write("validation/data/Covid2/data_2021-01-01.json", deep)
    (metadata,) = [k for k in warehouse_keys(store) if k.endswith(".json") and "metadata" in k]
    store.write(metadata, b'{"00100020": {"vr": "LO", "Value": [' + b"9" * 5000 + b"]}}")
    store.write("raw-a/2021-01-01/data/Covid3_data.json", deep)
    env = builders.graph_env(WAREHOUSE_BUCKET=f"file://{store.root}")
    result = builders.python_m("dataprocess", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(store.read("reports/dataprocess/latest.json"))
    reasons = {p["key"]: p["reason"] for p in report["problems"]}
    assert reasons["validation/data/Covid2/data_2021-01-01.json"] == "invalid JSON"
    assert reasons[metadata] == "invalid JSON"
    assert (tmp_path / "bucket-processed" / "latest.csv").exists()
    result = builders.python_m("submittingcentres", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [A]
    assert "invalid JSON: raw-a/2021-01-01/data/Covid3_data.json" in result.stderr
    shutil.rmtree(tmp_path / "bucket-processed")


# --------------------------------------------------------------------------------------------
# The raw side is read-only, whatever its names, depths and times


def loader_tree(store, when: str = "2021-01-02") -> tuple[str, str]:
    """A config, one clinical file and one image of site A; returns their keys."""
    store.write("config.json", config())
    name, data = image("Covid1", "DX")
    clinical_key = "raw-a/2021-01-01/data/Covid1_data.json"
    image_key = f"raw-a/{when}/images/{name}"
    store.write(clinical_key, clinical("Covid1", A))
    store.write(image_key, data)
    return clinical_key, image_key


def graph(name: str, store) -> subprocess.CompletedProcess:
    url = f"file://{store.root}" if isinstance(store, LocalStorage) else store.url
    return builders.python_m(name, env=builders.graph_env(WAREHOUSE_BUCKET=url))


def filed_both(store) -> bool:
    """The clinical file and the image of `loader_tree` are filed (validation: site A)."""
    keys = warehouse_keys(store)
    return "validation/data/Covid1/data_2021-01-01.json" in keys and any(
        k.startswith("validation/xray/Covid1/") for k in keys
    )


def test_an_upload_named_like_a_temporary_file_is_never_deleted(store):
    """The old local store took ``.tmp-<pid>-...`` for its own leftovers, in raw prefixes too,
    and deleted it when no such process ran."""
    loader_tree(store)
    name, data = image("Covid2", "DX")
    upload = f"raw-a/2021-01-02/images/.tmp-{builders.exited_pid()}-x.dcm"
    store.write(upload, data)
    for _ in range(2):
        code, state = builders.run_loader(store)
        assert code == 0 and state.report.completed
        reason, detail = problems(state)[upload]
        assert reason == "unsafe identifier" and "unsafe file name" in detail
        assert (store.root / upload).read_bytes() == data
    assert filed_both(store)
    assert graph("submittingcentres", store).returncode == 0
    assert (store.root / upload).read_bytes() == data


@pytest.mark.parametrize("name", [".tmp-99999999999999999999999-x.dcm", ".tmp-²-x.dcm"])
def test_names_that_broke_the_old_sweep_do_not_stop_any_graph(store, name):
    """A pid past a C long, or a digit ``int()`` refuses: the run used to end "could not
    complete" and file nothing, on every run."""
    loader_tree(store)
    upload = f"raw-a/2021-01-02/images/{name}"
    store.write(upload, b"junk")
    code, state = builders.run_loader(store)
    assert code == 0 and state.report.completed
    assert problems(state)[upload][0] == "unsafe identifier"
    assert filed_both(store)
    centres = graph("submittingcentres", store)
    assert centres.returncode == 0, centres.stderr
    assert centres.stdout.splitlines() == [A]
    assert graph("dataprocess", store).returncode == 0
    assert (store.root / upload).read_bytes() == b"junk"


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_500_nested_folders_under_a_prefix_are_reported_not_an_error(request, backend):
    store = request.getfixturevalue("store" if backend == "local" else "s3_store")
    loader_tree(store)
    store.write("raw-a/" + "d/" * 500 + "x.dcm", b"deep")  # 1,011 bytes: S3 takes it
    code, state = builders.run_loader(store)
    assert code == 0 and state.report.completed
    deep = {k: v for k, v in problems(state).items() if k.startswith("raw-a/d/")}
    # a local listing stops at the folder 16 levels deep; S3 lists the key itself
    expected_key = "raw-a/" + "d/" * 15 if backend == "local" else "raw-a/" + "d/" * 500 + "x.dcm"
    assert list(deep) == [expected_key]
    assert deep[expected_key][0] == "unsafe name"
    assert filed_both(store)
    centres = graph("submittingcentres", store)
    assert centres.returncode == 0, centres.stderr
    assert centres.stdout.splitlines() == [A]
    assert f"unsafe name: {expected_key}" in centres.stderr


def test_a_raw_file_from_the_year_2300_is_reported_and_dataprocess_publishes(store, tmp_path):
    loader_tree(store)
    junk = "raw-a/2021-01-02/images/junk.dcm"
    put_at(store, junk, b"junk", "2300-01-01")
    put_at(store, "raw-a/2021-01-03/data/Covid9_data.json", clinical("Covid9", A), "2300-01-01")
    for _ in range(2):  # and again on the next run
        code, state = builders.run_loader(store)
        assert code == 0 and state.report.completed
        found = {p["key"]: p for p in state.report.problems}
        assert set(found) == {junk, "raw-a/2021-01-03/data/Covid9_data.json"}
        assert found[junk]["reason"] == "implausible modification time"
        assert (found[junk]["size"], found[junk]["modified"]) == (4, "2300-01-01T00:00:00+00:00")
    assert filed_both(store)
    assert "validation/data/Covid9/data_2021-01-03.json" not in warehouse_keys(store)
    result = graph("dataprocess", store)
    assert result.returncode == 0, result.stderr
    batch = pd.read_csv(tmp_path / "bucket-processed" / "latest.csv")["path"].iloc[0]
    assert (tmp_path / "bucket-processed" / batch).is_file()
    centres = graph("submittingcentres", store)
    assert centres.returncode == 0, centres.stderr
    assert centres.stdout.splitlines() == [A]
    assert "implausible modification time: raw-a/2021-01-03/data/Covid9_data.json" in (
        centres.stderr
    )
