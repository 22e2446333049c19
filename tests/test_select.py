"""``python -m warehouse.select``: counts and downloads exactly the selection, resumes, and
refuses a selection that mixes training and validation."""

from __future__ import annotations

import pytest

from tests import builders
from tests.builders import clinical, image
from tests.test_dataprocess import run_graph as run_dataprocess
from tests.test_warehouseloader import SPLIT
from warehouse import select as select_command
from warehouse.core.keys import parse_image_key

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
    assert _run(monkeypatch, store, "--group", "training", "--query", "Modality == 'DX'") == 0
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
