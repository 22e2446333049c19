"""The split rule and each run's registry of patient groups."""

from __future__ import annotations

import hashlib
import threading

import pytest

from warehouse.core.config import PipelineConfig
from warehouse.core.patients import (
    GroupConflict,
    PatientGroups,
    UnknownSite,
    group_for,
    is_training_by_hash,
)

KNOWN_AT_50 = {
    "Covid1": True,
    "Covid14": False,
    "Covid20": True,
    "Covid149": False,
}


def config(percentage=50) -> PipelineConfig:
    return PipelineConfig(
        raw_prefixes=("raw-a",),
        training_percentage=percentage,
        site_rules={"Split Site": "split", "Train Site": "training", "Hold Site": "validation"},
    )


# --------------------------------------------------------------------------------------------
# the split rule


@pytest.mark.parametrize(("pseudonym", "training"), KNOWN_AT_50.items())
def test_known_values_at_50(pseudonym, training):
    assert is_training_by_hash(pseudonym, 50) is training


@pytest.mark.parametrize("pseudonym", KNOWN_AT_50)
@pytest.mark.parametrize("variant", [str.upper, str.lower, lambda p: f"  {p}\t\n", str.swapcase])
def test_case_and_white_space_do_not_matter(pseudonym, variant):
    assert is_training_by_hash(variant(pseudonym), 50) is KNOWN_AT_50[pseudonym]


def test_formula_bit_for_bit():
    """The rule as DESIGN states it, over many pseudonyms and percentages."""
    for n in range(300):
        pseudonym = f"Covid{n}"
        value = int(hashlib.sha512(pseudonym.upper().encode()).hexdigest(), 16) % 100
        for percentage in (0, 1, 33, 50, 99, 100):
            assert is_training_by_hash(pseudonym, percentage) is (value < percentage)


def test_zero_and_hundred_percent():
    pseudonyms = [f"Covid{n}" for n in range(200)] + list(KNOWN_AT_50)
    assert not any(is_training_by_hash(p, 0) for p in pseudonyms)
    assert all(is_training_by_hash(p, 100) for p in pseudonyms)


def test_share_is_roughly_the_percentage():
    share = sum(is_training_by_hash(f"Covid{n}", 30) for n in range(2000)) / 2000
    assert 0.25 < share < 0.35


def test_group_for_split_site():
    assert group_for("Covid1", "Split Site", config()) == "training"
    assert group_for("Covid14", "Split Site", config()) == "validation"
    assert group_for("Covid14", "Split Site", config(100)) == "training"
    assert group_for("Covid1", "Split Site", config(0)) == "validation"


@pytest.mark.parametrize("pseudonym", ["Covid1", "Covid14", "Covid20", "Covid149"])
def test_group_for_fixed_sites_ignore_the_hash(pseudonym):
    assert group_for(pseudonym, "Train Site", config()) == "training"
    assert group_for(pseudonym, "Hold Site", config()) == "validation"


@pytest.mark.parametrize("centre", ["Elsewhere", "split site", "Split Site ", ""])
def test_group_for_unknown_site(centre):
    with pytest.raises(UnknownSite) as caught:
        group_for("Covid1", centre, config())
    assert caught.value.centre == centre and str(caught.value) == f"SubmittingCentre {centre!r}"
    assert caught.value.reason.value == "site not in config"


# --------------------------------------------------------------------------------------------
# PatientGroups


def test_new_patients_first_come():
    groups = PatientGroups()
    assert groups.get("Covid1") is None
    assert groups.assign("Covid1", "training") == "training"
    assert groups.assign("Covid1", "training") == "training"
    assert groups.get("Covid1") == "training"
    assert len(groups) == 1


def test_existing_groups_win():
    groups = PatientGroups({"Covid1": "validation"})
    assert groups.get("Covid1") == "validation"
    with pytest.raises(GroupConflict) as caught:
        groups.assign("Covid1", "training")
    conflict = caught.value
    assert (conflict.pseudonym, conflict.existing, conflict.wanted) == (
        "Covid1",
        "validation",
        "training",
    )
    assert str(conflict) == "Covid1 is in validation; this file would put it in training"
    assert groups.get("Covid1") == "validation"


def test_conflict_between_two_new_files():
    groups = PatientGroups()
    groups.assign("Covid2", "validation")
    with pytest.raises(GroupConflict, match="Covid2 is in validation"):
        groups.assign("Covid2", "training")
    assert groups.get("Covid2") == "validation"


def test_existing_dict_is_copied():
    existing = {"Covid1": "training"}
    groups = PatientGroups(existing)
    groups.assign("Covid2", "validation")
    assert existing == {"Covid1": "training"}


def test_conflicted_patients_get_nothing():
    groups = PatientGroups({"Covid1": "training", "Covid2": "validation"}, conflicted={"Covid1"})
    assert groups.get("Covid1") is None
    assert len(groups) == 1
    for group in ("training", "validation"):
        with pytest.raises(GroupConflict, match="Covid1 is in both groups"):
            groups.assign("Covid1", group)


def test_assign_is_thread_safe():
    """Many threads racing for the same patients: exactly one group each, the rest conflict."""
    groups = PatientGroups()
    barrier = threading.Barrier(8)
    outcomes: list[tuple[str, str, bool]] = []
    lock = threading.Lock()

    def racer(index: int) -> None:
        group = ("training", "validation")[index % 2]
        barrier.wait()
        for n in range(200):
            try:
                groups.assign(f"P{n}", group)
                ok = True
            except GroupConflict:
                ok = False
            with lock:
                outcomes.append((f"P{n}", group, ok))

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(groups) == 200
    for pseudonym, group, ok in outcomes:
        assert ok is (groups.get(pseudonym) == group)
