"""``python -m warehouse.select``: counts and downloads exactly the selection, resumes, and
refuses a selection that mixes training and validation; ``--query`` is SQL that can read the
catalogue and nothing else."""

from __future__ import annotations

import os
import uuid

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tests import builders
from tests.builders import clinical, image
from tests.test_dataprocess import replace_segment
from tests.test_dataprocess import run_graph as run_dataprocess
from tests.test_warehouseloader import SPLIT
from warehouse import select as select_command
from warehouse.catalogue.selection import (
    Fetch,
    SelectionError,
    fetch,
    local_path,
    locked_connection,
    query_rows,
    read_catalogue,
    row_problem,
)
from warehouse.core.keys import GROUPS, image_targets, parse_image_key

OTHER = "Other Trust"


def _warehouse(storage):
    """Both groups (Covid1, Covid20 training; Covid14 validation at 50 %), CT and DX, two
    centres, positive and negative patients, uploads on two dates; loaded and catalogued."""
    files = {"config.json": builders.config(["raw-a"], split=[SPLIT], training=[OTHER])}
    patients = {"Covid1": SPLIT, "Covid14": SPLIT, "Covid20": SPLIT, "Covid7": OTHER}
    for number, (patient, centre) in enumerate(patients.items()):
        kind = "data" if number % 2 == 0 else "status"
        files[f"raw-a/2021-01-01/data/{patient}_{kind}.json"] = clinical(patient, centre)
        for n in range(4):
            date = "2021-01-01" if n < 2 else "2021-03-01"
            modality = "CT" if n % 2 else "DX"
            name, data = image(patient, modality, f"s{n // 2}", "r1", n)
            files[f"raw-a/{date}/images/{name}"] = data
    builders.put_tree(storage, files)
    assert builders.run_loader(storage, workers=4)[0] == 0
    assert run_dataprocess(storage, workers=4)[0] == 0


def _filed(storage, **where):
    """The filed images (parsed keys) matching ``where`` (attributes of `ImageKey`)."""
    found = []
    for info in storage.list(""):
        key = parse_image_key(info.key)
        if key is not None and all(getattr(key, k) == v for k, v in where.items()):
            found.append((key, info.size))
    return found


def _run(monkeypatch, storage, *args):
    monkeypatch.setenv("WAREHOUSE_BUCKET", storage.url)
    monkeypatch.setenv("WAREHOUSE_WORKERS", "4")
    return select_command.main(list(args))


def test_counts_exactly_the_selection(store, monkeypatch, capsys):
    _warehouse(store)
    assert _run(monkeypatch, store, "--group", "training", "--modality", "ct") == 0
    out = capsys.readouterr().out
    filed = _filed(store, group="training", folder="ct")
    studies = {(k.patient_id, k.study_uid) for k, _ in filed}
    patients = {k.patient_id for k, _ in filed}
    size = sum(s for _, s in filed)
    assert (
        f"selected: {len(filed)} images, {len(studies)} studies, {len(patients)} patients, " in out
    )
    assert f"({size:,} bytes)" in out
    # centre, positive, upload date
    assert _run(monkeypatch, store, "--group", "training", "--centre", OTHER) == 0
    assert "selected: 4 images, 2 studies, 1 patients" in capsys.readouterr().out
    assert _run(monkeypatch, store, "--group", "training", "--positive") == 0
    assert "selected: 8 images, 4 studies, 2 patients" in capsys.readouterr().out  # Covid1, 20
    args = ("--group", "training", "--negative", "--since", "2021-02-01")
    assert _run(monkeypatch, store, *args) == 0
    assert "selected: 2 images, 1 studies, 1 patients" in capsys.readouterr().out  # Covid7
    assert _run(monkeypatch, store, "--group", "training", "--query", "Modality = 'DX'") == 0
    assert "selected: 6 images" in capsys.readouterr().out


def test_refuses_mixed_groups_unless_asked(store, monkeypatch, capsys):
    _warehouse(store)
    assert _run(monkeypatch, store, "--modality", "ct") == 2
    assert "--both-groups" in capsys.readouterr().err
    assert _run(monkeypatch, store, "--modality", "ct", "--both-groups") == 0
    out = capsys.readouterr().out
    assert "selected: 8 images" in out and "  validation: 2 images" in out
    assert _run(monkeypatch, store, "--query", "Rows >>> 3", "--group", "training") == 2


def test_downloads_exactly_the_selection_and_resumes(store, monkeypatch, capsys, tmp_path):
    _warehouse(store)
    target = tmp_path / "selection"
    args = ("--group", "training", "--modality", "xray", "--download", str(target))
    assert _run(monkeypatch, store, *args, "--no-progress") == 0
    filed = _filed(store, group="training", folder="xray")
    expected = {k.key for k, _ in filed} | {k.metadata_key for k, _ in filed}
    got = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert got == expected
    for key in expected:
        assert (target / key).read_bytes() == store.read(key)
    assert f"{len(expected)} files written, 0 already there" in capsys.readouterr().out
    # resume: a missing image, a truncated image and a missing metadata file are fetched;
    # the rest is skipped
    (first, _), (second, _) = filed[:2]
    (target / first.key).unlink()
    (target / second.key).write_bytes(b"partial")
    (target / second.metadata_key).unlink()
    assert _run(monkeypatch, store, *args, "--no-progress") == 0
    assert f"3 files written, {len(expected) - 3} already there" in capsys.readouterr().out
    for key in expected:
        assert (target / key).read_bytes() == store.read(key)
    assert not list(target.rglob(".tmp-*"))


def test_help_and_missing_catalogue(local_store, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stopped:
        select_command.main(["--help"])
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: warehouse-select ")
    for option in ("--group", "--modality", "--centre", "--since", "--positive", "--download"):
        assert option in shown
    assert _run(monkeypatch, local_store, "--group", "training") == 2
    assert "run dataprocess first" in capsys.readouterr().err


# ------------------------------------------------------------------------------ --query


def _frame():
    """Six catalogue-like rows: numbers, text and nulls in each column a query names."""
    return pd.DataFrame(
        {
            "group": ["training", "validation", "training", "training", None, "validation"],
            "Rows": pd.array([512, 2048, 4096, None, 1024, 1001], dtype="Int64"),
            "Manufacturer": ["ACME", "ACME", "Other", "ACME", None, "Third"],
            "x": [1.5, None, None, 2.0, 3.0, None],
        },
        index=[10, 11, 12, 13, 14, 15],  # a selection's labels are not positions
    )


def test_query_keeps_the_rows_its_sql_expression_holds_for():
    frame = _frame()
    rows, maker, group, x = frame["Rows"], frame["Manufacturer"], frame["group"], frame["x"]
    # oracles: the same conditions in pandas, null comparing as false (SQL's WHERE)
    expected = {
        "Rows > 1000": (rows > 1000).fillna(False),
        "Manufacturer = 'ACME'": maker.eq("ACME").fillna(False),
        "\"group\" IN ('training')": group.eq("training").fillna(False),
        "x IS NULL": x.isna(),
        "x IS NOT NULL AND NOT (Manufacturer = 'ACME')": x.notna()
        & maker.notna()
        & maker.ne("ACME"),
        "Rows < 1000 OR Manufacturer = 'Third' OR Manufacturer IS NULL": (
            (rows < 1000).fillna(False) | maker.eq("Third").fillna(False) | maker.isna()
        ),
        "Manufacturer = ')' OR Manufacturer = ';'": pd.Series(False, index=frame.index),
        # a subquery reads the catalogue (the view images), and only it
        "Rows > (SELECT avg(Rows) FROM images)": (rows > rows.mean()).fillna(False),
    }
    for query, oracle in expected.items():
        kept = query_rows(frame, query)
        assert kept.dtype == bool and len(kept) == len(frame)
        assert list(kept) == list(oracle.astype(bool)), query


def test_query_errors_are_one_line_and_name_the_columns(local_store, monkeypatch, capsys):
    _warehouse(local_store)
    capsys.readouterr()
    with pytest.raises(SelectionError) as refused:
        query_rows(_frame(), "Maker = 'ACME'")
    assert "Maker" in str(refused.value)
    assert "the catalogue's columns: group, Rows, Manufacturer, x" in str(refused.value)
    with pytest.raises(SelectionError) as refused:
        query_rows(_frame(), "group = 'training'")
    assert 'double quotes: "group"' in str(refused.value)
    for query in ("Rows >", "Nope > 1", "Rows > 1\x1b[2J\nsecond line", "Modality = 'DX' ("):
        assert _run(monkeypatch, local_store, "--group", "training", "--query", query) == 2
        err = capsys.readouterr().err
        assert err.startswith("warehouse-select: --query ") and err.count("\n") == 1, err
        assert "\x1b" not in err
        if query.startswith("Nope"):
            assert "warehouse_key" in err and "Manufacturer" in err and "SubmittingCentre" in err


def test_query_runs_no_code_and_reads_no_file(local_store, monkeypatch, capsys, tmp_path):
    _warehouse(local_store)
    secret = f"S3CRET-{uuid.uuid4().hex}"
    private = tmp_path / "private.txt"
    private.write_text(f"{secret}\n")
    frames = tmp_path / "frame.parquet"
    pd.DataFrame({"s": [secret]}).to_parquet(frames)
    sentinel = tmp_path / "sentinel"
    monkeypatch.setenv("SECRET_VALUE", secret)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    attempts = [
        f"@os.system('touch {sentinel}') == 0 or group == 'training'",
        f"@os.system('touch {sentinel}') = 0 OR Rows > 0",
        f"__import__('os').system('touch {sentinel}') = 0",
        "Manufacturer.__class__.__name__ = 'str'",
        f"@Path('{private}').read_text() LIKE 'S3CRET%'",
        "@os.environ.get('SECRET_VALUE') IS NOT NULL",
        "getenv('SECRET_VALUE') IS NOT NULL",
        f"(SELECT count(*) FROM read_csv('{private}')) > 0",
        f"(SELECT content FROM read_text('{private}')) LIKE '%S3CRET%'",
        f"(SELECT s FROM read_parquet('{frames}')) IS NOT NULL",
        f"(SELECT count(*) FROM '{frames}') > 0",
        f"Rows > 0) ; COPY (SELECT 1) TO '{sentinel}'; SELECT (1",
        f"Rows > 0); ATTACH '{sentinel}' AS stolen; SELECT (1",
        "Rows > 0); INSTALL httpfs; LOAD httpfs; SELECT (1",
        "Rows > 0); SET enable_external_access = true; SELECT (1",
        "Rows > 0); DROP VIEW images; SELECT (1",
        "Rows > 0) UNION ALL SELECT 1 FROM (SELECT 1",
        "Rows > 0 -- ) OR (true",
        f"Rows > 0 /* */ OR (SELECT count(*) FROM read_csv('{private}')) > 0",
        "Rows > 0;",
    ]
    for query in attempts:
        code = _run(monkeypatch, local_store, "--group", "training", "--query", query)
        out, err = capsys.readouterr()
        assert code == 2, (query, out, err)
        assert err.count("\n") == 1, err
        assert secret not in out + err
        assert not sentinel.exists(), query
    assert not list(work.iterdir())  # nothing written where it ran either
    # the catalogue is still there, whole: a valid query on it works
    assert _run(monkeypatch, local_store, "--group", "training", "--query", "Rows > 0") == 0
    assert "selected: 12 images" in capsys.readouterr().out


def test_locked_connection_reads_its_tables_and_nothing_else(tmp_path):
    """The connection every user's SQL runs on: whole statements, as a ``--sql`` would send."""
    secret = f"S3CRET-{uuid.uuid4().hex}"
    private = tmp_path / "private.csv"
    private.write_text(f"value\n{secret}\n")
    hidden = pd.DataFrame({"value": [secret]})  # a Python object in the caller's frame
    sentinel = tmp_path / "sentinel"
    connection = locked_connection({"images": _frame()})
    assert connection.execute("SELECT count(*) FROM images WHERE Rows > 1000").fetchall() == [(4,)]
    refused = [
        f"SELECT * FROM read_csv('{private}')",
        f"SELECT * FROM '{private}'",
        f"SELECT * FROM glob('{tmp_path}/*')",
        "SELECT * FROM hidden",
        f"COPY images TO '{sentinel}'",
        f"ATTACH '{sentinel}' AS stolen",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET autoload_known_extensions = true",
        f"SET temp_directory = '{tmp_path}'",
        "SELECT * FROM read_json('https://127.0.0.1:1/x.json')",
    ]
    for sql in refused:
        with pytest.raises(duckdb.Error) as stopped:
            connection.execute(sql).fetchall()
        assert secret not in str(stopped.value), sql
        assert not sentinel.exists(), sql
    assert len(hidden) == 1
    settings = dict(
        connection.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('enable_external_access', 'lock_configuration', 'python_enable_replacements')"
        ).fetchall()
    )
    assert settings == {
        "enable_external_access": "false",
        "lock_configuration": "true",
        "python_enable_replacements": "false",
    }


def test_query_positions_follow_the_frame_not_its_labels():
    frame = _frame().iloc[::-1]
    kept = query_rows(frame, "Manufacturer = 'Third'")
    assert np.flatnonzero(kept).tolist() == [0]


# ----------------------------------------------------------------- --download, trusting no row


def _put(processed, key: str, rows: pd.DataFrame | pa.Table) -> None:
    """Make ``rows`` the catalogue ``key`` (a batch's folder of one segment) holds."""
    if isinstance(rows, pd.DataFrame):
        rows = pa.Table.from_pandas(rows, preserve_index=False)
    replace_segment(processed, key.split("/")[0], rows)


def test_download_refuses_a_row_that_is_not_an_image_of_the_selection(
    local_store, monkeypatch, capsys, tmp_path
):
    _warehouse(local_store)
    processed = local_store.processed()
    key, catalogue = read_catalogue(processed)
    original = pa.Table.from_pandas(catalogue, preserve_index=False)
    xray = catalogue[catalogue["modality_folder"] == "xray"]
    training = xray.index[xray["group"] == "training"]
    row, other = training[0], catalogue.loc[training[1]]
    validation = xray[xray["group"] == "validation"].iloc[0]
    ct = catalogue[(catalogue["group"] == "training") & (catalogue["modality_folder"] == "ct")]
    image = parse_image_key(catalogue.loc[row, "warehouse_key"])

    def keys(patient=image.patient_id, name=image.name):
        made = image_targets("training", "xray", patient, image.study_uid, image.series_uid, name)
        return {"warehouse_key": made[0], "metadata_key": made[1]}

    # what a row says instead, and the part of the refusal that says why
    edits = {
        "config.json as the metadata": (
            {"metadata_key": "config.json"},
            "its metadata_key 'config.json' is not its image's metadata file",
        ),
        "config.json as the image": (
            {"warehouse_key": "config.json", "metadata_key": "config.json"},
            "its warehouse_key is not an image key",
        ),
        "a validation image": (
            {
                "warehouse_key": validation["warehouse_key"],
                "metadata_key": validation["metadata_key"],
            },
            "a validation image, outside the selection",
        ),
        "another image's metadata": (
            {"metadata_key": other["metadata_key"]},
            "is not its image's metadata file",
        ),
        "a CT image in an X-ray row": (
            {
                "warehouse_key": ct["warehouse_key"].iloc[0],
                "metadata_key": ct["metadata_key"].iloc[0],
            },
            "its key is in training/ct, its row says 'training'/'xray'",
        ),
        "a NUL in the name": (keys(name="a\x00b.dcm"), "unsafe file name 'a\\x00b.dcm'"),
        "a name of 300 bytes": (keys(name="n" * 296 + ".dcm"), "unsafe file name 'nnnn"),
        "a name whose metadata file's is too long": (
            keys(name="n" * 251 + ".dcm"),
            "would exceed 255 bytes",
        ),
        "a parent folder": (keys(patient=".."), "unsafe PatientID in its key '..'"),
        "no metadata key": ({"metadata_key": None}, "is not its image's metadata file"),
        "a negative size": ({"object_size": -1}, "its object_size -1 is not a size"),
    }
    target = tmp_path / "selection"
    args = ("--group", "training", "--modality", "xray", "--download", str(target))
    for what, (values, why) in edits.items():
        edited = catalogue.copy()
        for column, value in values.items():
            edited[column] = edited[column].astype(object)
            edited.loc[row, column] = value
        _put(processed, key, edited)
        capsys.readouterr()
        assert _run(monkeypatch, local_store, *args, "--no-progress") == 2, what
        err = capsys.readouterr().err
        assert (
            err.startswith(f"warehouse-select: the catalogue's row {row} (")
            and err.count("\n") == 1
        ), (what, err)
        assert why in err and "\x00" not in err and "nothing downloaded" in err, (what, err)
        assert not target.exists(), what  # nothing at all was fetched
    _put(processed, key, original)
    # the catalogue as dataprocess wrote it downloads exactly the selection
    assert _run(monkeypatch, local_store, *args, "--no-progress") == 0
    filed = _filed(local_store, group="training", folder="xray")
    expected = {k.key for k, _ in filed} | {k.metadata_key for k, _ in filed}
    assert {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} == expected


def test_download_names_a_bad_row_escaped(local_store, monkeypatch, capsys, tmp_path):
    _warehouse(local_store)
    processed = local_store.processed()
    key, catalogue = read_catalogue(processed)
    rows = catalogue.index[catalogue["group"] == "training"]
    image = parse_image_key(catalogue.loc[rows[0], "warehouse_key"])
    bad = image_targets(
        "training", image.folder, "P\x00\x1b[2J", image.study_uid, image.series_uid, image.name
    )
    edited = catalogue.copy()
    edited.loc[rows[0], ["warehouse_key", "metadata_key"]] = list(bad)
    edited.loc[rows[1], "metadata_key"] = "config.json"
    _put(processed, key, edited)
    capsys.readouterr()
    target = tmp_path / "selection"
    assert _run(monkeypatch, local_store, "--group", "training", "--download", str(target)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x00" not in err and "\x1b" not in err
    assert repr(bad[0])[:40] in err  # the key, escaped (and cut: it is long)
    assert f"row {rows[0]} " in err and "unsafe PatientID" in err and "1 more rows refused" in err
    assert not target.exists()


def test_local_path_stays_inside_the_folder(tmp_path):
    folder = tmp_path / "selection"
    folder.mkdir()
    good = "training/xray/P1/1.2/1.3/image.dcm"
    assert local_path(folder, good) == folder.resolve() / good
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "validation").symlink_to(outside, target_is_directory=True)
    for key in (
        "training/../../outside/x.dcm",
        "/etc/passwd",
        "training//xray/x.dcm",
        "training/xray/.hidden",
        "training/xray/a\x00b.dcm",
        "training/xray/" + "n" * 256,
        "validation/xray/P1/1.2/1.3/image.dcm",  # through a link out of the folder
    ):
        with pytest.raises(SelectionError):
            local_path(folder, key)


def test_fetch_writes_the_longest_name_the_loader_files(local_store, tmp_path):
    name = "n" * 250 + ".dcm"  # and n * 250 + ".json", 255 bytes: its temporary name is longer
    key = f"training/xray/P1/1.2/1.3/{name}"
    data = bytes(range(256)) * 40
    local_store.write(key, data)
    assert fetch(local_store, tmp_path, Fetch(key, len(data))) == len(data)
    assert (tmp_path / key).read_bytes() == data
    assert [p.name for p in (tmp_path / key).parent.iterdir()] == [name]


def test_a_row_with_nulls_is_refused_not_a_crash():
    key, metadata = image_targets("training", "xray", "P1", "1.2", "1.3", "a.dcm")
    assert row_problem(key, metadata, "training", "xray", np.int64(10), GROUPS) is None
    for null in (None, pd.NA, np.nan):
        for row in (
            (null, metadata, "training", "xray", 10),
            (key, null, "training", "xray", 10),
            (key, metadata, null, "xray", 10),
            (key, metadata, "training", null, 10),
            (key, metadata, "training", "xray", null),
        ):
            assert isinstance(row_problem(*row, GROUPS), str), row
    assert "outside the selection" in row_problem(
        key, metadata, "training", "xray", 10, ["validation"]
    )


def test_a_catalogue_that_cannot_be_read_is_refused(local_store, monkeypatch, capsys):
    _warehouse(local_store)
    processed = local_store.processed()
    key, catalogue = read_catalogue(processed)
    _put(processed, key, catalogue.drop(columns=["metadata_key"]))
    capsys.readouterr()
    assert _run(monkeypatch, local_store, "--group", "training") == 2
    err = capsys.readouterr().err
    assert "has no column metadata_key" in err and err.count("\n") == 1
    processed.write(key + "000000.parquet", b"PAR1 not a parquet file")
    assert _run(monkeypatch, local_store, "--group", "training") == 2
    err = capsys.readouterr().err
    assert "is not a Parquet file" in err and err.count("\n") == 1


# ------------------------------------------------------------------ rough edges (issue 22)


def test_an_unknown_centre_is_refused_naming_the_known_ones(local_store, monkeypatch, capsys):
    _warehouse(local_store)
    capsys.readouterr()
    assert _run(monkeypatch, local_store, "--group", "training", "--centre", "split trust") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--centre 'split trust': no image of that centre in the catalogue" in err
    assert f"(did you mean {SPLIT!r}?)" in err
    assert f"the catalogue's 2 centres: {OTHER!r}, {SPLIT!r}" in err


def test_the_known_centres_are_bounded_and_escaped(local_store, monkeypatch, capsys):
    _warehouse(local_store)
    processed = local_store.processed()
    key, catalogue = read_catalogue(processed)
    many = pd.concat([catalogue] * 3, ignore_index=True)
    centres = [f"Centre {n:02}" for n in range(len(many))]
    centres[0] = "A Evil\x1b[2J\nTrust\u202e"
    many["SubmittingCentre"] = centres
    _put(processed, key, many)
    capsys.readouterr()
    assert _run(monkeypatch, local_store, "--centre", "Nowhere") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\u202e" not in err
    assert "centres: 'A Evil\\x1b[2J\\nTrust\\u202e', 'Centre 01', " in err
    assert f"the catalogue's {len(many)} centres: " in err
    assert f", and {len(many) - select_command.SHOWN_CENTRES} more" in err
    assert "'Centre 29', and " in err and "Centre 30" not in err  # the first 30, sorted


def test_a_reversed_date_range_is_refused_before_anything_is_read(local_store, monkeypatch, capsys):
    # (no catalogue: were it read, the message would say "run dataprocess first")
    args = ("--group", "training", "--since", "2021-03-01", "--until", "2021-01-01")
    assert _run(monkeypatch, local_store, *args) == 2
    assert capsys.readouterr().err == (
        "warehouse-select: --since 2021-03-01 is after --until 2021-01-01\n"
    )


@pytest.mark.parametrize(
    ("given", "folder"),
    [("CT", "ct"), ("Ct", "ct"), ("MR", "mri"), ("MRI", "mri"), ("DX", "xray"), ("CR", "xray")],
)
def test_modality_and_group_in_any_case(local_store, monkeypatch, capsys, given, folder):
    _warehouse(local_store)
    capsys.readouterr()
    assert _run(monkeypatch, local_store, "--group", "training", "--modality", folder) == 0
    expected = capsys.readouterr().out
    assert _run(monkeypatch, local_store, "--group", "Training", "--modality", given) == 0
    assert capsys.readouterr().out == expected


def test_an_unknown_modality_is_a_usage_error(local_store, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stopped:
        _run(monkeypatch, local_store, "--modality", "PET")
    assert stopped.value.code == 2
    assert "'PET' is not a modality (choose from ct, mri, xray" in capsys.readouterr().err


def test_a_download_of_nothing_creates_its_folder(local_store, monkeypatch, capsys, tmp_path):
    _warehouse(local_store)
    target = tmp_path / "nested" / "none"
    args = ("--group", "training", "--query", "Rows < 0", "--download", str(target))
    assert _run(monkeypatch, local_store, *args, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "selected: 0 images" in out
    assert f"downloaded into {target}: 0 files written, 0 already there" in out
    assert target.is_dir() and not list(target.iterdir())


def test_a_bad_selection_creates_no_folder(local_store, monkeypatch, tmp_path):
    _warehouse(local_store)
    target = tmp_path / "never"
    assert _run(monkeypatch, local_store, "--centre", "x", "--download", str(target)) == 2
    assert not target.exists()


def test_ctrl_c_during_a_download_is_one_line_130_and_resumable(
    local_store, monkeypatch, capsys, tmp_path
):
    _warehouse(local_store)
    target = tmp_path / "selection"
    args = ("--group", "training", "--download", str(target), "--no-progress")
    real_download = select_command.download

    def interrupted(storage, folder, items, submit, on_done, window):
        seen = []

        def done(item, count):
            on_done(item, count)
            seen.append(item)
            if len(seen) == 3:
                raise KeyboardInterrupt  # as Ctrl-C arrives in the main thread

        return real_download(storage, folder, items, submit, done, window)

    monkeypatch.setattr(select_command, "download", interrupted)
    capsys.readouterr()
    assert _run(monkeypatch, local_store, *args) == 130
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("warehouse-select: download stopped by Ctrl-C after 3 of ")
    assert "rerun the same command to resume" in captured.err
    assert "Traceback" not in captured.err
    assert not list(target.rglob(".tmp-*"))
    partial = [p for p in target.rglob("*") if p.is_file()]
    assert len(partial) >= 3
    for path in partial:  # every file there is whole
        assert path.read_bytes() == local_store.read(str(path.relative_to(target)))
    monkeypatch.setattr(select_command, "download", real_download)
    assert _run(monkeypatch, local_store, *args) == 0
    filed = _filed(local_store, group="training")
    expected = {k.key for k, _ in filed} | {k.metadata_key for k, _ in filed}
    out = capsys.readouterr().out
    assert f"{len(expected) - len(partial)} files written, {len(partial)} already there" in out
    got = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert got == expected


def test_a_missing_store_or_a_bad_bucket_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WAREHOUSE_BUCKET", f"file://{tmp_path}/missing")
    assert select_command.main(["--group", "training"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("WAREHOUSE_BUCKET", "/a/path/without/file/scheme")
    assert select_command.main(["--group", "training"]) == 2
    err = capsys.readouterr().err
    assert "is not a bucket name" in err and err.count("\n") == 1


def test_a_read_that_fails_exits_1(local_store, monkeypatch, capsys):
    _warehouse(local_store)
    processed = local_store.processed()
    key = read_catalogue(processed)[0] + "000000.parquet"  # (its one segment)
    (processed.root / key).chmod(0)
    if os.access(processed.root / key, os.R_OK):  # root reads whatever the mode
        (processed.root / key).chmod(0o644)
        (processed.root / key).unlink()
        (processed.root / key).mkdir()  # a directory cannot be read as a file either
    capsys.readouterr()
    assert _run(monkeypatch, local_store, "--group", "training") == 1
    assert capsys.readouterr().err.count("\n") == 1
