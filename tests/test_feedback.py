"""Feedback to the sites: per raw prefix, only what changed, and nothing of other sites."""

from __future__ import annotations

import json

import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.core.reasons import Reason
from warehouse.loader.feedback import by_prefix, publish_feedback, site_view
from warehouse.storage.local import LocalStorage

A, B = "A Trust", "B Trust"


@pytest.fixture
def store(tmp_path):
    (tmp_path / "bucket").mkdir()
    return LocalStorage(tmp_path / "bucket")


def feedback(store, prefix):
    return json.loads(store.read(f"feedback/{prefix}/latest.json"))


def test_each_prefix_reads_its_own_refusals_and_nothing_of_the_others(store):
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a", "raw-b"], training=[A], validation=[B]),
            "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", A),
            "raw-a/2021-01-02/images/garbage.dcm": b"garbage" * 100,
            "raw-b/2021-01-03/data/Covid1_status.json": clinical("Covid1", B),
            "raw-b/2021-01-03/data/Covid2_data.json": b"{",
            "raw-c/2021-01-01/data/Covid3_data.json": clinical("Covid3", A),
        },
    )
    code, state = builders.run_loader(store)
    assert code == 0
    a, b, c = feedback(store, "raw-a"), feedback(store, "raw-b"), feedback(store, "raw-c")
    assert [p["key"] for p in a["problems"]] == ["raw-a/2021-01-02/images/garbage.dcm"]
    assert a["not_filed"] == {"not a DICOM file": 1}
    # (the claimed record is for the operators only: any line would tell raw-b that Covid1
    # is another centre's patient)
    assert {p["key"]: p["reason"] for p in b["problems"]} == {
        "raw-b/2021-01-03/data/Covid2_data.json": "invalid JSON",
    }
    claimed = [p for p in state.report.problems if p["key"].endswith("Covid1_status.json")]
    assert [p["reason"] for p in claimed] == ["pseudonym claimed by another centre"]
    text = json.dumps(b)
    assert A not in text and "training" not in text and "raw-a" not in text
    assert c["problems"] == [
        {"key": "raw-c/", "reason": "raw prefix not in config", "detail": "not in raw_prefixes"}
    ]
    assert state.report.counts["feedback files written"] == 6
    stamped = [i.key for i in store.list("feedback/raw-a/") if not i.key.endswith("latest.json")]
    assert len(stamped) == 1 and a["run_id"] == state.report.run_id


def test_an_unchanged_rerun_writes_no_feedback_and_a_fixed_prefix_gets_an_empty_one(store):
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a"], training=[A]),
            "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", A),
            "raw-a/2021-01-02/images/garbage.dcm": b"garbage" * 100,
        },
    )
    assert builders.run_loader(store)[0] == 0
    before = sorted(i.key for i in store.list("feedback/"))
    code, state = builders.run_loader(store)
    assert "feedback files written" not in state.report.counts
    assert sorted(i.key for i in store.list("feedback/")) == before
    store.write("raw-a/2021-01-02/images/garbage.dcm", image("Covid1", "DX")[1])
    code, state = builders.run_loader(store)
    assert feedback(store, "raw-a")["problems"] == []
    # the emptied latest.json, and the run's file saying which key is no longer refused
    assert state.report.counts["feedback files written"] == 2
    stamped = sorted(set(i.key for i in store.list("feedback/")) - set(before))
    assert len(stamped) == 1
    changes = json.loads(store.read(stamped[0]))["changes"]
    assert changes["resolved"] == ["raw-a/2021-01-02/images/garbage.dcm"]
    assert changes["new"] == changes["changed"] == [] and changes["total"] == 0


def test_a_dry_run_writes_no_feedback(store):
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a"], training=[A]),
            "raw-a/2021-01-02/images/garbage.dcm": b"garbage" * 100,
        },
    )
    assert builders.run_loader(store, dry_run=True)[0] == 0
    assert not any(store.list("feedback/"))


def test_details_that_would_tell_of_other_sites_are_neutral():
    problem = {
        "key": "raw-b/2021-01-01/data/Covid14_data.json",
        "reason": "group conflict",
        "detail": "Covid14 is in validation; this file would put it in training",
        "facts": {"centre": "B"},
    }
    view = site_view(problem)
    assert set(view) == {"key", "reason", "detail"}
    assert "validation" not in view["detail"]
    grouped = by_prefix([problem, {"key": "training/data/x/", "reason": "symbolic link"}])
    assert list(grouped) == ["raw-b"]


# A site's feedback, read as a hostile site would read it -----------------------------------

GOOD, EVIL = "Good Hospital", "Evil Infirmary"


def _confined_config() -> bytes:
    doc = json.loads(builders.config(["raw-good", "raw-evil"], split=[GOOD], training=[EVIL]))
    doc["prefix_sites"] = {"raw-good": [GOOD], "raw-evil": [EVIL]}
    return json.dumps(doc).encode()


def _anonymous(entries: list[dict], pseudonyms: dict[str, str]) -> list[dict]:
    """Feedback entries with each probed pseudonym (and its image's name) replaced by its
    role, so that two probes can be compared."""
    text = json.dumps(entries, sort_keys=True)
    for pseudonym, role in pseudonyms.items():
        name, _ = image(pseudonym, "DX")
        text = text.replace(name.removesuffix(".dcm"), f"<image of {role}>")
        text = text.replace(pseudonym, role)
    return json.loads(text)


def test_a_site_cannot_tell_another_sites_patient_from_none_nor_training_from_validation(store):
    # At 50 %, Covid1 is training and Covid14 validation (the split rule's published examples).
    good_files = {}
    for patient in ("Covid1", "Covid14"):
        name, data = image(patient, "DX")
        good_files[f"raw-good/2021-01-01/data/{patient}_data.json"] = clinical(patient, GOOD)
        good_files[f"raw-good/2021-01-01/images/{name}"] = data
    builders.put_tree(store, {"config.json": _confined_config(), **good_files})
    assert builders.run_loader(store)[0] == 0

    probes = {"Covid1": "P", "Covid14": "P", "Nobody7": "P"}
    evil = {}
    for patient in probes:
        # an image alone, and a record naming the evil site's own centre, of each pseudonym
        name, data = image(patient, "DX")
        evil[f"raw-evil/2021-02-01/images/{name}"] = data
        evil[f"raw-evil/2021-02-02/data/{patient}_data.json"] = clinical(patient, EVIL)
    builders.put_tree(store, evil)
    code, state = builders.run_loader(store)
    assert code == 0
    # the operators' report keeps the truth ...
    reasons = {p["key"]: p["reason"] for p in state.report.problems}
    assert (
        reasons["raw-evil/2021-02-02/data/Covid1_data.json"]
        == "pseudonym claimed by another centre"
    )
    assert "raw-evil/2021-02-02/data/Nobody7_data.json" not in reasons  # filed: a new patient
    # ... the site reads the same for a training patient, a validation one and nobody: here
    # nothing at all (a record for a pseudonym nobody holds is filed, so any line would tell)
    assert not any(store.list("feedback/raw-evil/"))
    entries = []
    views = {
        patient: _anonymous(
            [e for e in entries if patient in e["key"] or patient in e["detail"]], {patient: "P"}
        )
        for patient in ("Covid1", "Covid14")
    }
    assert views["Covid1"] == views["Covid14"]


def test_images_of_another_sites_patient_read_as_images_of_nobody(store):
    good_name, good_image = image("Covid1", "DX")
    builders.put_tree(
        store,
        {
            "config.json": _confined_config(),
            "raw-good/2021-01-01/data/Covid1_data.json": clinical("Covid1", GOOD),
            f"raw-good/2021-01-01/images/{good_name}": good_image,
        },
    )
    assert builders.run_loader(store)[0] == 0
    probes = {}
    for patient in ("Covid1", "Nobody7"):
        name, data = image(patient, "DX", study="evil")
        probes[f"raw-evil/2021-02-01/images/{name}"] = data
    builders.put_tree(store, probes)
    code, state = builders.run_loader(store)
    assert code == 0
    truth = {p["key"]: p["reason"] for p in state.report.problems}
    assert sorted(truth.values()) == [
        "centre not allowed for this prefix",
        "no patient data for PatientID",
    ]
    entries = feedback(store, "raw-evil")["problems"]
    assert len(entries) == 2
    by_patient = {}
    for entry in entries:
        patient = "Covid1" if "Covid1" in entry["detail"] else "Nobody7"
        by_patient[patient] = {
            "reason": entry["reason"],
            "detail": entry["detail"].replace(patient, "P"),
        }
    assert by_patient["Covid1"] == by_patient["Nobody7"]
    assert by_patient["Covid1"]["reason"] == "no patient data for PatientID"


def test_a_duplicate_or_a_changed_file_never_names_a_group_or_a_warehouse_key(store):
    name, data = image("Covid14", "DX")
    builders.put_tree(
        store,
        {
            "config.json": _confined_config(),
            "raw-good/2021-01-01/data/Covid14_data.json": clinical("Covid14", GOOD),
            f"raw-good/2021-01-01/images/{name}": data,
        },
    )
    assert builders.run_loader(store)[0] == 0
    # the same instance again under another name, and the filed clinical file re-uploaded
    builders.put_tree(
        store,
        {
            "raw-good/2021-01-05/images/again.dcm": data,
            "raw-good/2021-01-01/data/Covid14_data.json": clinical("Covid14", GOOD, Age=40),
        },
    )
    code, state = builders.run_loader(store)
    assert code == 0
    truth = {p["reason"]: p["detail"] for p in state.report.problems}
    assert "validation/" in truth["duplicate image"]  # the operators read where it is
    assert "validation/" in truth["raw file changed after filing"]
    site = feedback(store, "raw-good")
    assert sorted(site["not_filed"]) == ["duplicate image", "raw file changed after filing"]
    text = json.dumps(site)
    assert "validation" not in text and "training" not in text and "xray" not in text


def test_every_reason_has_a_site_view_that_names_no_group_and_no_warehouse_key():
    from warehouse.core.reasons import Reason

    for reason in Reason:
        for key in ("raw-x/2021-01-01/images/a.dcm", "raw-x/2021-01-01/data/P1_data.json"):
            problem = {
                "key": key,
                "reason": reason.value,
                "detail": "filed at validation/xray/P1/1.2/1.3/a.dcm from raw-y/2021-01-01/x.dcm",
                "facts": {"patient": "P1"},
            }
            view = site_view(problem)
            if view is None:
                assert reason.value in (
                    "pseudonym claimed by another centre",
                    "pseudonym differs only in case",
                )
                continue
            if view["detail"] == problem["detail"]:
                # a reason whose own detail a site reads: about its file or its settings only
                assert reason.value not in (
                    "group conflict",
                    "duplicate image",
                    "conflicting duplicate",
                    "raw file changed after filing",
                    "another raw file has the same target",
                    "write failed",
                    "internal error",
                    "no patient data for PatientID",
                )
            else:
                assert "validation" not in view["detail"] and "raw-y" not in view["detail"]


# A site's timestamped files: what changed, under the same rule ------------------------------


def _evil_files(store) -> list[dict]:
    """Every feedback file of raw-evil, oldest first (latest.json last)."""
    keys = sorted(i.key for i in store.list("feedback/raw-evil/"))
    keys.remove("feedback/raw-evil/latest.json")
    return [json.loads(store.read(k)) for k in [*keys, "feedback/raw-evil/latest.json"]]


def test_a_sites_changes_say_no_more_than_its_whole_lists(store):
    good_name, good_image = image("Covid1", "DX")
    claimed = "raw-evil/2021-02-01/data/Covid14_data.json"
    builders.put_tree(
        store,
        {
            "config.json": _confined_config(),
            "raw-good/2021-01-01/data/Covid1_data.json": clinical("Covid1", GOOD),
            "raw-good/2021-01-01/data/Covid14_data.json": clinical("Covid14", GOOD),
            f"raw-good/2021-01-01/images/{good_name}": good_image,
            "raw-evil/2021-02-01/images/g1.dcm": b"garbage",
            claimed: clinical("Covid14", EVIL),  # the good site's patient: operators only
        },
    )
    code, first = builders.run_loader(store)
    assert code == 0
    assert {p["key"]: p["reason"] for p in first.report.problems}[claimed] == (
        "pseudonym claimed by another centre"
    )
    # then images of the good site's patient and of nobody, and more garbage
    probes = {}
    for patient in ("Covid1", "Nobody7"):
        name, data = image(patient, "DX", study="evil")
        probes[patient] = f"raw-evil/2021-02-02/images/{name}"
        store.write(probes[patient], data)
    store.write("raw-evil/2021-02-02/images/g2.dcm", b"garbage")
    assert builders.run_loader(store)[0] == 0
    # and a record of Nobody7 from the evil site's own centre: its image is filed now
    store.write("raw-evil/2021-02-03/data/Nobody7_data.json", clinical("Nobody7", EVIL))
    code, third = builders.run_loader(store)
    assert code == 0
    assert probes["Nobody7"] not in {p["key"] for p in third.report.problems}

    files = _evil_files(store)
    base, second, last, latest = files
    assert [f.get("form") for f in files] == ["changes", "changes", "changes", None]
    # each file names the one before it; the whole list names the newest
    keys = sorted(i.key for i in store.list("feedback/raw-evil/"))[:-1]
    assert [f["previous"] for f in (base, second, last)] == [None, keys[0], keys[1]]
    assert latest["key"] == keys[2] and {f["latest"] for f in (base, second, last)} == {
        "feedback/raw-evil/latest.json"
    }
    assert [p["key"] for p in base["changes"]["new"]] == ["raw-evil/2021-02-01/images/g1.dcm"]
    assert sorted(p["key"] for p in second["changes"]["new"]) == sorted(
        [probes["Covid1"], probes["Nobody7"], "raw-evil/2021-02-02/images/g2.dcm"]
    )
    assert last["changes"]["resolved"] == [probes["Nobody7"]]
    assert last["changes"]["new"] == last["changes"]["changed"] == []
    # each changed entry is the entry a whole list held (the rule existing tests check), and
    # nothing names the claimed record, the good site, its centre or a group
    wholes = {json.dumps(e, sort_keys=True) for e in latest["problems"]}
    for document in (base, second):
        for entry in document["changes"]["new"]:
            assert set(entry) == {"key", "reason", "detail"}
            if entry["key"] != probes["Nobody7"]:
                assert json.dumps(entry, sort_keys=True) in wholes
    for document in files:
        text = json.dumps(document)
        assert claimed not in text and "Covid14" not in text
        for secret in (GOOD, "raw-good", "training", "validation", "reports/"):
            assert secret not in text, (secret, document)
    # the images of another site's patient and of nobody read alike in the changes too
    views = {
        patient: [
            (e["reason"], e["detail"].replace(patient, "P"))
            for e in second["changes"]["new"]
            if e["key"] == probes[patient]
        ]
        for patient in probes
    }
    assert views["Covid1"] == views["Nobody7"] and len(views["Covid1"]) == 1


def test_a_key_the_site_never_read_is_never_resolved_for_it(store):
    from warehouse.core.report import RunReport

    earlier = "feedback/raw-evil/2026-01-01T00-00-00.000000Z.json"
    previous = {
        "problems": [
            {
                "key": "raw-evil/2021-01-01/data/Covid1_data.json",
                "reason": "pseudonym claimed by another centre",
                "detail": f"Covid1 is a patient of {GOOD}",
            },
            {"key": "raw-evil/2021-01-01/images/x.dcm", "reason": "not a DICOM file"},
        ],
        # a record naming another prefix's folder is not followed
        "feedback": {"raw-evil": earlier, "raw-good": "feedback/raw-evil/latest.json"},
    }
    report = RunReport("warehouseloader")
    report.skip(
        "raw-evil/2021-01-02/images/y.dcm",
        Reason.CENTRE_NOT_ALLOWED,
        f"Covid1 is a patient of {GOOD}",
        facts={"patient": "Covid1", "prefix": "raw-evil", "centre": GOOD},
    )
    report.skip(
        "raw-evil/2021-01-02/data/covid2_data.json",
        Reason.CASE_VARIANT,
        "Covid2 is filed",
        facts={"pseudonym": "covid2", "variant": "Covid2"},
    )
    assert publish_feedback(store, report, previous) == 2
    key = report.feedback["raw-evil"]
    assert report.feedback == {"raw-evil": key} and key != earlier
    document = json.loads(store.read(key))
    assert document["previous"] == earlier
    assert document["changes"]["resolved"] == ["raw-evil/2021-01-01/images/x.dcm"]
    (entry,) = document["changes"]["new"]
    assert entry["key"] == "raw-evil/2021-01-02/images/y.dcm"
    assert entry["reason"] == "no patient data for PatientID" and "Covid1" in entry["detail"]
    text = json.dumps(document)
    assert GOOD not in text and "Covid1_data" not in text and "covid2" not in text


# --------------------------------------------------------------------------------------------
# images of an unconfigured site: the reason of their patient's own clinical file

UNLISTED = "Unlisted Trust"
U_CLINICAL = "raw-u/2021-01-01/data/Covid5_data.json"


def _unconfigured_site_tree() -> tuple[dict[str, bytes], list[str], str]:
    """raw-u sends Covid5's record (a centre in no sites list) and two images of Covid5;
    raw-b, a configured site, sends an image of the same pseudonym and no record."""
    files = {
        "config.json": builders.config(["raw-a", "raw-u", "raw-b"], training=[A], validation=[B]),
        "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", A),
        U_CLINICAL: clinical("Covid5", UNLISTED),
    }
    u_images = []
    for instance in (1, 2):
        name, data = image("Covid5", "DX", instance=instance)
        files[f"raw-u/2021-01-02/images/{name}"] = data
        u_images.append(f"raw-u/2021-01-02/images/{name}")
    name, data = image("Covid5", "DX", study="b")
    files[f"raw-b/2021-01-02/images/{name}"] = data
    return files, u_images, f"raw-b/2021-01-02/images/{name}"


def _reasons(problems) -> dict[str, str]:
    return {p["key"]: p["reason"] for p in problems}


def test_images_of_an_unconfigured_site_give_its_clinical_files_reason(store):
    files, u_images, b_image = _unconfigured_site_tree()
    builders.put_tree(store, files)
    code, state = builders.run_loader(store)
    assert code == 0
    report = json.loads(store.read("reports/warehouseloader/latest.json"))
    reasons = _reasons(report["problems"])
    assert reasons[U_CLINICAL] == "site not in config"
    for key in u_images:
        assert reasons[key] == "site not in config"
    details = {p["key"]: p["detail"] for p in report["problems"]}
    assert U_CLINICAL in details[u_images[0]] and UNLISTED in details[u_images[0]]
    # another site's image of the same pseudonym learns nothing of raw-u's record
    assert reasons[b_image] == "no patient data for PatientID"

    u_site = feedback(store, "raw-u")
    assert _reasons(u_site["problems"]) == {
        U_CLINICAL: "site not in config",
        **{key: "site not in config" for key in u_images},
    }
    assert u_site["not_filed"] == {"site not in config": 3}
    b_site = feedback(store, "raw-b")
    assert _reasons(b_site["problems"]) == {b_image: "no patient data for PatientID"}
    text = json.dumps(b_site)
    assert UNLISTED not in text and "raw-u" not in text


def test_a_rerun_and_an_older_memo_keep_the_true_reason_without_reading_the_images(store):
    files, u_images, b_image = _unconfigured_site_tree()
    builders.put_tree(store, files)
    assert builders.run_loader(store)[0] == 0
    # the memo as a version before this one wrote it: the images "no patient data"
    memo_key = "reports/warehouseloader/latest.json"
    memo = json.loads(store.read(memo_key))
    for problem in memo["problems"]:
        if problem["key"] in u_images:
            problem.update(reason="no patient data for PatientID", detail="PatientID 'Covid5'")
            problem["facts"] = {"patient": "Covid5"}
    store.write(memo_key, json.dumps(memo).encode())

    code, state = builders.run_loader(store)
    assert code == 0
    assert "header read requests" not in state.report.counts  # no image was read again
    reasons = _reasons(state.report.problems)
    assert [reasons[key] for key in u_images] == ["site not in config"] * 2
    assert reasons[b_image] == "no patient data for PatientID"
    assert _reasons(feedback(store, "raw-u")["problems"])[u_images[0]] == "site not in config"

    code, state = builders.run_loader(store)  # and once more, from its own memo
    assert code == 0 and "header read requests" not in state.report.counts
    assert [_reasons(state.report.problems)[key] for key in u_images] == ["site not in config"] * 2


def test_once_the_site_is_configured_its_images_are_filed(store):
    files, u_images, _ = _unconfigured_site_tree()
    builders.put_tree(store, files)
    assert builders.run_loader(store)[0] == 0
    config = builders.config(["raw-a", "raw-u", "raw-b"], training=[A, UNLISTED], validation=[B])
    store.write("config.json", config)
    code, state = builders.run_loader(store)
    assert code == 0
    filed = {info.key.rsplit("/", 1)[-1] for info in store.list("training/xray/Covid5/")}
    assert {key.rsplit("/", 1)[-1] for key in u_images} <= filed
    assert not any(p["key"] in u_images for p in state.report.problems)


def test_a_sharded_run_gives_the_same_reasons_as_one_process(tmp_path):
    files, u_images, b_image = _unconfigured_site_tree()
    stores = {}
    for name in ("one", "sharded"):
        (tmp_path / name).mkdir()
        stores[name] = LocalStorage(tmp_path / name)
        builders.put_tree(stores[name], files)
    assert builders.run_loader(stores["one"])[0] == 0
    sharded = stores["sharded"]
    assert builders.run_loader(sharded, phase="clinical", run_id="r1")[0] == 0
    for index in range(2):
        code, _ = builders.run_loader(sharded, shard=(index, 2), phase="images", run_id="r1")
        assert code == 0
    reports = {
        name: json.loads(store.read("reports/warehouseloader/latest.json"))
        for name, store in stores.items()
    }
    assert _reasons(reports["sharded"]["problems"]) == _reasons(reports["one"]["problems"])
    assert _reasons(reports["sharded"]["problems"])[u_images[1]] == "site not in config"
