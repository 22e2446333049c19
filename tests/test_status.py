"""``warehouse status``: the state of a warehouse.

The last runs and their outcome, the lease holder, the latest batch and its age, and the
problems by site, in text and as JSON; it reads only and imports no bonobo.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest

from tests import builders
from tests.builders import clinical, image
from tests.test_dataprocess import run_graph as run_dataprocess
from warehouse import status as status_command

SITE = "Split Trust"
UNCONFIGURED = "Nowhere Trust"


def _demo_like(storage):
    """Build a demo-like warehouse, loaded then processed.

    Two configured prefixes (one with a site not in the config, a file that is not DICOM and
    an image without patient data), a prefix not in the config.
    """
    files = {"config.json": builders.config(["raw-a", "raw-b"], split=[SITE])}
    for patient in ("Covid1", "Covid2", "Covid3"):
        files[f"raw-a/2021-01-01/data/{patient}_data.json"] = clinical(patient, SITE)
        name, data = image(patient, "DX")
        files[f"raw-a/2021-01-01/images/{name}"] = data
    files["raw-a/2021-01-01/images/junk.dcm"] = b"not a dicom file"
    files["raw-a/2021-01-01/images/orphan.dcm"] = image("Covid99", "CT")[1]
    files["raw-b/2021-01-02/data/Covid50_data.json"] = clinical("Covid50", UNCONFIGURED)
    files["raw-c/2021-01-02/data/Covid60_data.json"] = clinical("Covid60", SITE)
    builders.put_tree(storage, files)
    assert builders.run_loader(storage, workers=4)[0] == 0
    assert run_dataprocess(storage, workers=4)[0] == 0


def _status(monkeypatch, capsys, storage, *args):
    monkeypatch.setenv("WAREHOUSE_BUCKET", storage.url)
    capsys.readouterr()  # (what the runs before printed)
    code = status_command.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _newest(storage, prefix):
    return max(i.key for i in storage.list(prefix) if i.key.rsplit("/", 1)[1][:1].isdigit())


def test_status_of_a_loaded_and_processed_warehouse(store, monkeypatch, capsys):
    _demo_like(store)
    code, out, _ = _status(monkeypatch, capsys, store, "--json")
    assert code == 0
    document = json.loads(out)
    loader, process = document["runs"]["warehouseloader"], document["runs"]["dataprocess"]
    assert loader["outcome"] == process["outcome"] == "completed"
    assert loader["report"] == _newest(store, "reports/warehouseloader/")
    assert process["report"] == _newest(store, "reports/dataprocess/")
    assert loader["counts"]["images copied"] == 3
    assert document["lease"] == {"state": "free"}
    latest = store.processed().read("latest.csv").decode()
    folder = latest.splitlines()[1].split(",")[1].split("/")[0]
    assert document["batch"]["state"] == "present"
    assert document["batch"]["folder"] == folder
    assert 0 <= document["batch"]["age_seconds"] < 600
    by_prefix = {p: entry["not_filed"] for p, entry in loader["by_prefix"].items()}
    assert by_prefix["raw-a"] == {"not a DICOM file": 1, "no patient data for PatientID": 1}
    assert by_prefix["raw-b"] == {"site not in config": 1}
    assert by_prefix["raw-c"] == {"raw prefix not in config": 1}
    assert loader["by_prefix"]["raw-a"]["counts"]["images copied"] == 3

    code, text, _ = _status(monkeypatch, capsys, store)
    assert code == 0
    lines = text.splitlines()
    assert any(line.startswith("  warehouseloader: completed (exit 0)") for line in lines)
    assert any(line.startswith("  dataprocess: completed (exit 0)") for line in lines)
    assert "  lease: free" in lines
    assert any(line.startswith(f"  latest batch: {folder} in ") for line in lines)
    assert "    raw-a: 2 not filed, 3 images copied" in lines
    assert "      site not in config: 1" in lines


def test_status_before_any_run(local_store, monkeypatch, capsys):
    local_store.write("config.json", builders.config(["raw-a"], split=[SITE]))
    code, out, _ = _status(monkeypatch, capsys, local_store)
    assert code == 0
    assert "  warehouseloader: no run yet" in out.splitlines()
    assert "  dataprocess: no run yet" in out.splitlines()
    assert "latest batch: none in " in out
    assert "  problems by site: none reported" in out.splitlines()
    code, out, _ = _status(monkeypatch, capsys, local_store, "--json")
    document = json.loads(out)
    assert {run["outcome"] for run in document["runs"].values()} == {"none"}
    assert document["batch"]["state"] == "none"


def _lease(holder, expires_in):
    now = dt.datetime.now(dt.UTC)
    return json.dumps(
        {
            "run_id": "run-7",
            "holder": holder,
            "acquired": (now - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expires": (now + expires_in).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "graph": "dataprocess",
        }
    ).encode()


def test_a_held_lease_names_its_holder_escaped(local_store, monkeypatch, capsys):
    holder = "evil\x1b[2J\nhost\u202e/4711"
    local_store.write("locks/warehouseloader.json", _lease(holder, dt.timedelta(hours=1)))
    code, out, _ = _status(monkeypatch, capsys, local_store)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("  lease:"))
    assert line.startswith("  lease: held by evil\\x1b[2J\\nhost\\u202e/4711 (dataprocess run")
    assert "\x1b" not in out and "\u202e" not in out
    code, out, _ = _status(monkeypatch, capsys, local_store, "--json")
    lease = json.loads(out)["lease"]
    assert (lease["state"], lease["holder"], lease["run_id"]) == ("held", holder, "run-7")


def test_an_expired_lease_is_said_expired(local_store, monkeypatch, capsys):
    local_store.write("locks/warehouseloader.json", _lease("elsewhere/1", -dt.timedelta(minutes=5)))
    code, out, _ = _status(monkeypatch, capsys, local_store)
    assert "lease: expired by elsewhere/1" in out
    assert "(the next run takes it over)" in out


def test_an_unreadable_lease_is_said(local_store, monkeypatch, capsys):
    local_store.write("locks/warehouseloader.json", b"{not json")
    code, out, _ = _status(monkeypatch, capsys, local_store)
    assert code == 0
    assert "  lease: unreadable: locks/warehouseloader.json is not a run lease" in out


@pytest.mark.parametrize(
    ("fields", "outcome", "meaning"),
    [
        ({"completed": False, "stopped": "SIGTERM"}, "stopped", "exit 143"),
        ({"completed": False, "stopped": "SIGINT"}, "stopped", "exit 130"),
        ({"completed": False, "fatal": "listing raw-a failed"}, "failed", "listing raw-a failed"),
        ({"completed": False}, "incomplete", "rerun to finish"),
    ],
)
def test_the_last_run_outcome_comes_from_the_newest_report(
    local_store, monkeypatch, capsys, fields, outcome, meaning
):
    old = {"graph": "warehouseloader", "run_id": "old", "completed": True, "started": "x"}
    new = {
        "graph": "warehouseloader",
        "run_id": "new",
        "started": "2026-01-02T03:04:05+00:00",
        "finished": "2026-01-02T03:05:05+00:00",
        **fields,
    }
    local_store.write("reports/warehouseloader/latest.json", json.dumps(old).encode())
    local_store.write(
        "reports/warehouseloader/2026-01-01T00-00-00.000000Z.json", json.dumps(old).encode()
    )
    local_store.write(
        "reports/warehouseloader/2026-01-02T03-04-05.000000Z.json", json.dumps(new).encode()
    )
    code, out, _ = _status(monkeypatch, capsys, local_store, "--json")
    run = json.loads(out)["runs"]["warehouseloader"]
    assert (run["run_id"], run["outcome"], run["latest_run_id"]) == ("new", outcome, "old")
    assert meaning in run["meaning"]
    assert run["started"] == "2026-01-02T03:04:05Z"


def test_an_unreadable_report_is_said_not_fatal(local_store, monkeypatch, capsys):
    local_store.write("reports/dataprocess/2026-01-01T00-00-00.000000Z.json", b"\xff garbage")
    code, out, _ = _status(monkeypatch, capsys, local_store)
    assert code == 0
    assert "  dataprocess: last report unreadable: reports/dataprocess/" in out


def test_no_bucket_or_a_missing_store_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WAREHOUSE_BUCKET", raising=False)
    monkeypatch.delenv("BUCKET_NAME", raising=False)
    assert status_command.main([]) == 2
    assert "No warehouse bucket" in capsys.readouterr().err
    monkeypatch.setenv("WAREHOUSE_BUCKET", f"file://{tmp_path}/missing")
    assert status_command.main([]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_status_imports_no_bonobo():
    code = "import sys, warehouse.status, warehouse.cli; print('bonobo' in sys.modules)"
    result = subprocess.run(
        [str(builders.BIN / "python"), "-c", code],
        cwd=builders.REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "False\n"


def test_warehouse_status_command_on_the_front_door(tmp_path):
    (tmp_path / "bucket").mkdir()
    result = subprocess.run(
        [str(builders.BIN / "warehouse"), "status", "--bucket", f"file://{tmp_path}/bucket"],
        env=builders.graph_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "  lease: free" in result.stdout.splitlines()
    assert "  latest batch: none: file://" in result.stdout  # no processed store: said
    assert "bucket-processed does not exist" in result.stdout
