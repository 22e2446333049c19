"""``select --sql`` and ``--output``, and ``warehouse.catalogue.open``.

One read-only query over the newest batch's views (``images``, ``patients``, ``series`` when the
batch has it) on the locked connection; a selection (with its labels) or a query's result
written to Parquet or CSV, CSV cells escaped against formulas; the same views from Python.
"""

from __future__ import annotations

import csv
import io
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import warehouse.catalogue
from tests import builders
from tests.builders import clinical, image
from tests.test_dataprocess import run_graph as run_dataprocess
from tests.test_dataprocess import stored_catalogue
from tests.test_warehouseloader import SPLIT
from warehouse import select as select_command
from warehouse.catalogue.batches import latest_paths
from warehouse.catalogue.selection import SelectionError

#: A training site whose name a spreadsheet would run as a formula.
FORMULA_SITE = '=HYPERLINK("http://127.0.0.1/","x")'


def _warehouse(storage):
    files = {
        "config.json": builders.config(["raw-a"], split=[SPLIT], training=[FORMULA_SITE]),
    }
    patients = {
        "Covid1": (SPLIT, {"Death": 1}),
        "Covid20": (SPLIT, {"Death": 0}),
        "Covid7": (FORMULA_SITE, {"Intubation": 1}),
    }
    for number, (patient, (centre, fields)) in enumerate(patients.items()):
        kind = "data" if number % 2 == 0 else "status"
        files[f"raw-a/2021-01-01/data/{patient}_{kind}.json"] = clinical(patient, centre, **fields)
        for n in range(4):
            name, data = image(patient, "CT" if n % 2 else "DX", f"s{n // 2}", "r1", n)
            files[f"raw-a/2021-01-01/images/{name}"] = data
    builders.put_tree(storage, files)
    assert builders.run_loader(storage, workers=4)[0] == 0
    assert run_dataprocess(storage, workers=4)[0] == 0


def _batch_table(storage, name) -> pd.DataFrame:
    """Read a file of the newest batch with pyarrow: the oracle, not the product's views.

    For ``images``, its catalogue's segments.
    """
    processed = storage.processed()
    folder = latest_paths(processed)["images"].split("/")[0]
    if name == "images":
        return stored_catalogue(processed, folder).to_pandas()
    return pq.read_table(io.BytesIO(processed.read(f"{folder}/{name}"))).to_pandas()


def _run(monkeypatch, storage, *args):
    monkeypatch.setenv("WAREHOUSE_BUCKET", storage.url)
    monkeypatch.setenv("WAREHOUSE_WORKERS", "4")
    return select_command.main([*args, "--no-progress"])


def test_sql_runs_one_query_over_the_views(store, monkeypatch, capsys):
    _warehouse(store)
    images = _batch_table(store, "images")
    sql = "SELECT Modality, count(*) AS n FROM images GROUP BY Modality ORDER BY Modality"
    assert _run(monkeypatch, store, "--sql", sql) == 0
    out = capsys.readouterr().out
    assert "views of " in out and ": images, patients" in out
    for modality, count in images.groupby("Modality").size().items():
        assert any(line.split() == [modality, str(count)] for line in out.splitlines()), out
    assert "2 rows" in out.splitlines()[-1]
    # a join of the views: images of the patients who died
    patients = _batch_table(store, "patient_clean.parquet")
    died = set(patients.loc[patients["death"].eq(True).fillna(False), "Pseudonym"])
    sql = (
        "SELECT count(*) AS n FROM images i JOIN patients p ON i.PatientID = p.Pseudonym "
        "WHERE p.death"
    )
    assert _run(monkeypatch, store, "--sql", sql) == 0
    expected = int(images["PatientID"].isin(died).sum())
    assert expected > 0
    assert str(expected) in capsys.readouterr().out.splitlines()[-2]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_sql_output_writes_every_row(store, monkeypatch, capsys, tmp_path, suffix):
    _warehouse(store)
    images = _batch_table(store, "images")
    target = tmp_path / "out" / f"result{suffix}"
    target.parent.mkdir()
    sql = "SELECT warehouse_key, Rows, SubmittingCentre FROM images WHERE Modality = 'CT'"
    assert _run(monkeypatch, store, "--sql", sql, "--output", str(target)) == 0
    oracle = images.loc[images["Modality"] == "CT", ["warehouse_key", "Rows", "SubmittingCentre"]]
    assert f"written {target}: {len(oracle)} rows, 3 columns" in capsys.readouterr().out
    if suffix == ".parquet":
        got = pq.read_table(target).to_pandas()
        assert sorted(got["warehouse_key"]) == sorted(oracle["warehouse_key"])
        assert got.set_index("warehouse_key")["Rows"].to_dict() == (
            oracle.set_index("warehouse_key")["Rows"].to_dict()
        )
    else:
        rows = list(csv.DictReader(io.StringIO(target.read_text(), newline="")))
        assert sorted(r["warehouse_key"] for r in rows) == sorted(oracle["warehouse_key"])
        centres = {r["SubmittingCentre"] for r in rows}
        assert "'" + FORMULA_SITE in centres  # a formula is never a formula in the file
        assert FORMULA_SITE not in centres
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left


def test_selection_output_has_its_labels(local_store, monkeypatch, capsys, tmp_path):
    _warehouse(local_store)
    images = _batch_table(local_store, "images")
    target = tmp_path / "selection.parquet"
    assert _run(monkeypatch, local_store, "--group", "training", "--output", str(target)) == 0
    got = pq.read_table(target)
    oracle = images[images["group"] == "training"]
    assert sorted(got.column("warehouse_key").to_pylist()) == sorted(oracle["warehouse_key"])
    for column in ("group", "covid_positive", "age", "sex", "death", "intubation", "swab_date"):
        assert column in got.column_names
    assert got.schema.field("death").type == pa.bool_()
    assert got.schema.field("upload_date").type == pa.date32()  # the catalogue's types
    patient_ids, death = got.column("PatientID").to_pylist(), got.column("death").to_pylist()
    deaths = dict(zip(patient_ids, death, strict=True))
    assert deaths.get("Covid1") is True and deaths.get("Covid20", False) is False
    if "Covid7" in deaths:
        assert deaths["Covid7"] is None
    csv_target = tmp_path / "selection.csv"
    assert _run(monkeypatch, local_store, "--group", "training", "--output", str(csv_target)) == 0
    rows = list(csv.DictReader(io.StringIO(csv_target.read_text(), newline="")))
    assert len(rows) == got.num_rows
    assert all(not r["SubmittingCentre"].startswith("=") for r in rows)


def test_sql_cannot_read_files_nor_write(local_store, monkeypatch, capsys, tmp_path):
    _warehouse(local_store)
    secret = f"S3CRET-{uuid.uuid4().hex}"
    private = tmp_path / "private.csv"
    private.write_text(f"value\n{secret}\n")
    sentinel = tmp_path / "sentinel"
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    refused = [
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_csv('{private}')",
        f"SELECT * FROM read_text('{private}')",
        f"SELECT * FROM '{private}'",
        f"SELECT * FROM glob('{tmp_path}/*')",
        f"COPY images TO '{sentinel}'",
        f"COPY (SELECT 1) TO '{sentinel}' (FORMAT csv)",
        f"ATTACH '{sentinel}' AS stolen",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "CREATE TABLE t AS SELECT * FROM images",
        "DROP VIEW images",
        "SELECT 1; SELECT 2",
        f"SELECT 1; COPY images TO '{sentinel}'",
        "SELECT getenv('HOME')",
    ]
    for sql in refused:
        code = _run(monkeypatch, local_store, "--sql", sql)
        out, err = capsys.readouterr()
        assert code == 2, (sql, out, err)
        assert err.startswith("warehouse-select: --sql ") and err.count("\n") == 1, err
        assert secret not in out + err and "root:" not in out + err
        assert not sentinel.exists(), sql
    assert not list(work.iterdir())
    assert _run(monkeypatch, local_store, "--sql", "SELECT count(*) AS n FROM images") == 0


def test_the_series_view_is_there_when_the_batch_has_its_file(local_store, monkeypatch, capsys):
    _warehouse(local_store)
    sql = "SELECT sum(instances) AS total FROM series"
    images = _batch_table(local_store, "images")
    assert _run(monkeypatch, local_store, "--sql", sql) == 0
    out = capsys.readouterr().out
    assert ": images, patients, series" in out
    assert out.splitlines()[-2].split() == [str(int(images["SeriesInstanceUID"].notna().sum()))]
    # a batch of an older version, without series.parquet: no series view
    processed = local_store.processed()
    latest = processed.read("latest.csv").decode()
    older = "".join(line for line in latest.splitlines(True) if not line.startswith("series,"))
    assert older != latest
    processed.write("latest.csv", older.encode())
    folder = latest_paths(processed)["images"].split("/")[0]
    (
        local_store.root.parent / f"{local_store.root.name}-processed" / folder / "series.parquet"
    ).unlink()
    assert _run(monkeypatch, local_store, "--sql", sql) == 2
    assert "series" in capsys.readouterr().err


def test_sql_and_output_are_checked_before_anything_is_read(local_store, monkeypatch, capsys):
    bad = [
        ("--sql", "SELECT 1", "--group", "training"),
        ("--sql", "SELECT 1", "--release", "r1"),
        ("--sql", "SELECT 1", "--exclude-identifying"),
        ("--sql", "SELECT 1", "--complete-volumes"),
        ("--releases", "--complete-volumes"),
        ("--releases", "--group", "training"),
    ]
    for args in bad:
        assert _run(monkeypatch, local_store, *args) == 2
        assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit) as stopped:
        _run(monkeypatch, local_store, "--group", "training", "--output", "out.xlsx")
    assert stopped.value.code == 2
    assert "is not a .parquet or .csv file" in capsys.readouterr().err


def test_the_python_api(store, tmp_path):
    _warehouse(store)
    images = _batch_table(store, "images")
    opened = warehouse.catalogue.open(store.url)
    with opened as catalogue:
        assert catalogue.views == ("images", "patients", "series")
        assert catalogue.series is not None
        series = catalogue.series.df()
        assert len(series) == images["SeriesInstanceUID"].nunique()
        frame = catalogue.images.df()
        assert sorted(frame["warehouse_key"]) == sorted(images["warehouse_key"])
        ct = catalogue.images.filter("Modality = 'CT'").df()
        assert len(ct) == int((images["Modality"] == "CT").sum())
        joined = catalogue.df(
            "SELECT p.death, count(*) AS n FROM images i "
            "JOIN patients p ON i.PatientID = p.Pseudonym GROUP BY ALL"
        )
        assert int(joined["n"].sum()) == len(images)
        assert len(catalogue.df("patients")) == 3
        with pytest.raises(SelectionError):
            catalogue.sql("SELECT * FROM read_csv('/etc/passwd')")
        with pytest.raises(SelectionError):
            catalogue.sql("DROP VIEW images")
        work = opened._work.name
    assert not (tmp_path / work).exists()
    if store.url.startswith("file://"):  # a local warehouse by its path too
        with warehouse.catalogue.open(store.root) as catalogue:
            assert len(catalogue.images.df()) == len(images)
