"""Key layout rules: raw key parsing, warehouse key building and parsing, identifier safety."""

from __future__ import annotations

import datetime as dt

import pytest

from warehouse.core.keys import (
    IMAGE_FOLDERS,
    MAX_PSEUDONYM_LENGTH,
    MODALITY_FOLDERS,
    RawKey,
    UnsafeIdentifier,
    WarehouseKey,
    check_pseudonym,
    check_uid,
    clinical_name,
    clinical_target,
    dicom_identifier,
    identifier_problem,
    image_stem,
    image_targets,
    is_dicom_uid,
    is_safe_name,
    modification_time_problem,
    normalise_prefix,
    parse_clinical_name,
    parse_raw_key,
    parse_upload_date,
    parse_warehouse_key,
    raw_name_problem,
)

PREFIX = "raw-site"


# --------------------------------------------------------------------------------------------
# parse_raw_key


def test_clinical_data_file():
    raw = parse_raw_key("raw-site/2021-02-28/data/Covid1_data.json", PREFIX)
    assert raw == RawKey(
        key="raw-site/2021-02-28/data/Covid1_data.json",
        kind="clinical",
        prefix=PREFIX,
        upload_date="2021-02-28",
        name="Covid1_data.json",
        clinical_kind="data",
        pseudonym="Covid1",
    )


def test_clinical_status_file():
    raw = parse_raw_key("raw-site/2021-03-01/data/Covid149_status.json", PREFIX)
    assert raw.kind == "clinical"
    assert raw.clinical_kind == "status"
    assert raw.pseudonym == "Covid149"
    assert raw.upload_date == "2021-03-01"
    assert raw.reason == ""


def test_clinical_pseudonym_is_everything_before_the_suffix():
    raw = parse_raw_key(
        "raw-site/2021-03-01/data/Covida9a3751d-f614-4d4a-b3ee-c3f5ca1fb858_data.json", PREFIX
    )
    assert raw.pseudonym == "Covida9a3751d-f614-4d4a-b3ee-c3f5ca1fb858"


@pytest.mark.parametrize("name", ["1.2.3.4.dcm", "1.2.3.4.DCM", "scan.Dcm"])
def test_image_suffix_in_any_case(name):
    raw = parse_raw_key(f"raw-site/2021-02-28/images/{name}", PREFIX)
    assert raw.kind == "image"
    assert raw.name == name
    assert raw.upload_date == "2021-02-28"
    assert raw.prefix == PREFIX
    assert raw.pseudonym == ""


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        # extra levels: ignored, as in the original loader
        ("raw-site/2021-02-28/age-0/data/Covid1_data.json", "not in the raw layout"),
        ("raw-site/2021-02-28/images/sub/1.2.3.dcm", "not in the raw layout"),
        # not a real date, or not a date at all
        ("raw-site/2021-13-01/data/Covid1_data.json", "not in a YYYY-MM-DD upload folder"),
        ("raw-site/2021-02-30/images/1.2.3.dcm", "not in a YYYY-MM-DD upload folder"),
        ("raw-site/21-02-28/data/Covid1_data.json", "not in a YYYY-MM-DD upload folder"),
        ("raw-site/latest/data/Covid1_data.json", "not in a YYYY-MM-DD upload folder"),
        # directly under the date folder, or the prefix
        ("raw-site/2021-02-28/upload.log", "not in the raw layout"),
        ("raw-site/notes.txt", "not in the raw layout"),
        # wrong folder
        ("raw-site/2021-02-28/dicom/1.2.3.dcm", "not in data/ or images/"),
        ("raw-site/2021-02-28/Data/Covid1_data.json", "not in data/ or images/"),
        # wrong names
        ("raw-site/2021-02-28/data/readme.csv", "not a clinical file name"),
        ("raw-site/2021-02-28/data/Covid1_data.JSON", "not a clinical file name"),
        ("raw-site/2021-02-28/images/notes.txt", "not a .dcm file"),
        ("raw-site/2021-02-28/images/.dcm", "not a .dcm file"),
        ("raw-site/2021-02-28/images/1.2.3.dcm.gz", "not a .dcm file"),
        # listed under another prefix
        ("raw-other/2021-02-28/data/Covid1_data.json", "outside prefix"),
        ("raw-site2/2021-02-28/data/Covid1_data.json", "outside prefix"),
    ],
)
def test_other_keys_have_a_reason(key, reason):
    raw = parse_raw_key(key, PREFIX)
    assert raw.kind == "other"
    assert raw.reason == reason
    assert raw.key == key


def test_date_folder_with_a_trailing_newline_is_not_a_date():
    assert parse_upload_date("2021-02-28") == "2021-02-28"
    assert parse_upload_date("2021-02-28\n") is None
    assert parse_upload_date("2021-2-28") is None


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("raw-x/", "raw-x"), ("raw-x", "raw-x"), ("/raw-x//", "raw-x"), (" raw-x/ ", "raw-x")],
)
def test_normalise_prefix(prefix, expected):
    assert normalise_prefix(prefix) == expected


# --------------------------------------------------------------------------------------------
# warehouse keys


def test_clinical_target():
    assert (
        clinical_target("training", "Covid1", "data", "2021-03-01")
        == "training/data/Covid1/data_2021-03-01.json"
    )
    assert (
        clinical_target("validation", "Covid14", "status", "2021-02-15")
        == "validation/data/Covid14/status_2021-02-15.json"
    )


def test_image_targets():
    image, metadata = image_targets("training", "xray", "Covid0000", "1.2.3", "1.2.3.4", "5.6.dcm")
    assert image == "training/xray/Covid0000/1.2.3/1.2.3.4/5.6.dcm"
    assert metadata == "training/xray-metadata/Covid0000/1.2.3/1.2.3.4/5.6.json"


def test_image_targets_keep_the_name_and_drop_an_upper_case_suffix_for_metadata():
    image, metadata = image_targets("validation", "ct", "P", "1.2", "1.2.3", "Scan.DCM")
    assert image == "validation/ct/P/1.2/1.2.3/Scan.DCM"
    assert metadata == "validation/ct-metadata/P/1.2/1.2.3/Scan.json"


def test_image_stem():
    assert image_stem("a.b.dcm") == "a.b"
    assert image_stem("a.DCM") == "a"
    assert image_stem("noext") == "noext"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            "training/data/Covid1/data_2021-03-01.json",
            WarehouseKey("training", "clinical", "Covid1", "data_2021-03-01.json"),
        ),
        (
            "validation/data/Covid14/status_2021-02-15.json",
            WarehouseKey("validation", "clinical", "Covid14", "status_2021-02-15.json"),
        ),
        (
            "training/xray/Covid1/1.2/1.2.3/9.dcm",
            WarehouseKey("training", "image", "Covid1", "9.dcm"),
        ),
        ("validation/ct/P/1.2/1.2.3/9.dcm", WarehouseKey("validation", "image", "P", "9.dcm")),
        ("training/mri/P/1.2/1.2.3/9.DCM", WarehouseKey("training", "image", "P", "9.DCM")),
        (
            "training/xray-metadata/Covid1/1.2/1.2.3/9.json",
            WarehouseKey("training", "metadata", "Covid1", "9.json"),
        ),
        (
            "validation/mri-metadata/P/1.2/1.2.3/9.json",
            WarehouseKey("validation", "metadata", "P", "9.json"),
        ),
    ],
)
def test_parse_warehouse_key(key, expected):
    assert parse_warehouse_key(key) == expected


@pytest.mark.parametrize(
    "key",
    [
        "config.json",
        "raw-site/2021-02-28/data/Covid1_data.json",
        "reports/warehouseloader/2021.json",
        "testing/data/Covid1/data_2021-03-01.json",  # not a group
        "training/data/Covid1",  # too short
        "training/data/Covid1/extra/data_2021-03-01.json",  # too deep
        "training/unknown/P/1.2/1.2.3/9.dcm",  # not a modality folder
        "training/xray/P/1.2/9.dcm",  # missing the series level
        "training",
    ],
)
def test_parse_warehouse_key_outside_the_layout(key):
    assert parse_warehouse_key(key) is None


def test_built_keys_parse_back():
    image, metadata = image_targets("training", "ct", "Covid1", "1.2", "1.2.3", "x.dcm")
    assert parse_warehouse_key(image) == WarehouseKey("training", "image", "Covid1", "x.dcm")
    assert parse_warehouse_key(metadata) == WarehouseKey("training", "metadata", "Covid1", "x.json")
    clinical = clinical_target("validation", "Covid2", "data", "2021-01-01")
    assert parse_warehouse_key(clinical) == WarehouseKey(
        "validation", "clinical", "Covid2", "data_2021-01-01.json"
    )


# --------------------------------------------------------------------------------------------
# identifier safety


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.826.0.1.3680043.10.1.12345",
        "0",
        "1.0.2",
        "2.25.329800735698586629295641978511506172918",
        "1." + "2" * 62,  # exactly 64 characters
    ],
)
def test_valid_dicom_uids(uid):
    assert is_dicom_uid(uid)
    assert check_uid(uid, "StudyInstanceUID") == uid


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1." + "2" * 63,  # 65 characters
        "1.2." + "9" * 66,
        "1.2.826.0.abc.7",
        "1.02.3",  # leading zero in a component
        "01.2",
        "1..2",  # empty component
        ".1.2",
        "1.2.",
        "1.2.826.0.1\x01.5",  # control character
        "1.2.3\n",  # trailing newline
        "1.2.3 ",
        "1/2/3",
        "../1.2",
        None,
        123,
    ],
)
def test_invalid_dicom_uids(uid):
    assert not is_dicom_uid(uid)


def test_check_uid_names_what_it_checked():
    with pytest.raises(UnsafeIdentifier, match="SeriesInstanceUID is not a DICOM UID: '1.02'"):
        check_uid("1.02", "SeriesInstanceUID")


@pytest.mark.parametrize(
    "name",
    [
        "Covid1",
        "Covid0000",
        "Covida9a3751d-f614-4d4a-b3ee-c3f5ca1fb858",
        "1.2.826.0.1.3680043.10.1.5.dcm",
        "scan 1.dcm",
        "a",
        "a.b",
    ],
)
def test_safe_names(name):
    assert is_safe_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        ".",
        "../x",
        "a/../b",
        "a..b",
        "a/b",
        "a\\b",
        ".hidden",
        "-rf",
        "a\x00b",
        "a\x01",
        "Covid1\n",  # trailing newline ($ alone would accept it)
        "Covid1\r",
        "a\tb",
        "a\x7f",
        "trailing ",
        " leading",
        "caf\u00e9",
        None,
        1,
    ],
)
def test_unsafe_names(name):
    assert not is_safe_name(name)


def test_name_length_limit():
    assert is_safe_name("a" * 255)
    assert not is_safe_name("a" * 256)
    assert is_safe_name("a" * 10, max_length=10)
    assert not is_safe_name("a" * 11, max_length=10)


@pytest.mark.parametrize(
    "pseudonym",
    ["Covid1", "Covid149", "Covida9a3751d-f614-4d4a-b3ee-c3f5ca1fb858", "C" * MAX_PSEUDONYM_LENGTH],
)
def test_check_pseudonym_accepts(pseudonym):
    assert check_pseudonym(pseudonym) == pseudonym


@pytest.mark.parametrize(
    "pseudonym",
    [
        "../x",
        "a/b",
        "..",
        ".Covid1",
        "Covid1\x07",
        "Covid1\n",
        "",
        "C" * (MAX_PSEUDONYM_LENGTH + 1),
    ],
)
def test_check_pseudonym_rejects(pseudonym):
    with pytest.raises(UnsafeIdentifier, match="unsafe pseudonym") as caught:
        check_pseudonym(pseudonym)
    if len(pseudonym) > MAX_PSEUDONYM_LENGTH:  # (quoted shortened, its length said)
        assert f"{len(pseudonym)} characters (at most {MAX_PSEUDONYM_LENGTH})" in str(caught.value)
    else:
        assert repr(pseudonym) in str(caught.value)


@pytest.mark.parametrize(
    ("pseudonym", "named"),
    [
        ("12.02.15-15:49:23-STD-1.3.12", "':' (COLON) at 11"),
        ("Smith^John", "'^' (CIRCUMFLEX ACCENT) at 5"),
        ("Covid#1", "'#' (NUMBER SIGN) at 5"),
        ("Covid1(a)", "'(' (LEFT PARENTHESIS) at 6"),
        ("a/b", "'/' (SOLIDUS) at 1"),
        ("a\\b", "'\\\\' (REVERSE SOLIDUS) at 1"),
        ("Caf\u00e9", "'\u00e9' (LATIN SMALL LETTER E WITH ACUTE) at 3"),
        ("Covid\u0661", "'\u0661' (ARABIC-INDIC DIGIT ONE) at 5"),  # a digit, not ASCII
    ],
)
def test_a_character_outside_the_allow_list_is_named_with_its_position(pseudonym, named):
    assert identifier_problem(pseudonym) == (
        f"unsafe pseudonym {pseudonym!r}: {named} (allowed: letters, digits and ._-+=@,)"
    )


@pytest.mark.parametrize(
    ("pseudonym", "detail"),
    [
        (".Covid1", "'.' (FULL STOP) at 0 (the first character must be a letter or a digit)"),
        ("-rf", "'-' (HYPHEN-MINUS) at 0 (the first character must be a letter or a digit)"),
        ("Covid..1", "'..' at 5"),
        ("Covid 1", "SPACE at 5"),
        ("Covid1\u00a0", "NO-BREAK SPACE at 6"),
        ("Covid\x001", "control character U+0000 at 5"),
        ("Covid\u202e1", "RIGHT-TO-LEFT OVERRIDE at 5"),
        ("", "empty or not text"),
    ],
)
def test_every_other_refusal_says_what_and_where(pseudonym, detail):
    assert identifier_problem(pseudonym) == f"unsafe pseudonym {pseudonym!r}: {detail}"


def test_the_allow_list_accepts_each_of_its_characters():
    for pseudonym in ("Covid1", "a.b_c-d+e=f@g,h", "0", "Z" + "._-+=@," * 10):
        assert identifier_problem(pseudonym) is None, pseudonym


def test_a_refusal_quotes_a_hostile_value_escaped_and_cut_short():
    """A refusal's detail stays one short line whatever the upload holds.

    The value is quoted at most 120 characters, its controls escaped.
    """
    pseudonym = "C" * 100 + "\x1b[2J" + "#" * 5000
    problem = identifier_problem(pseudonym)
    assert problem is not None and "\x1b" not in problem and "\n" not in problem
    assert problem.endswith("..." + "#" * 58 + "': control character U+001B at 100")
    assert len(problem) < 200


@pytest.mark.parametrize(
    ("text", "identifier"),
    [
        ("7DkT2Tp\x00", "7DkT2Tp"),
        ("Covid1 ", "Covid1"),
        ("Covid1\x00 \x00", "Covid1"),
        ("1.2.840.10008\x00", "1.2.840.10008"),
        (" Covid1", " Covid1"),  # leading: not padding
        ("Cov\x00id1", "Cov\x00id1"),  # inner: not padding
        ("Covid1\t", "Covid1\t"),
    ],
)
def test_dicom_padding_is_trailing_spaces_and_nuls_only(text, identifier):
    assert dicom_identifier(text) == identifier


def test_clinical_key_with_unsafe_pseudonym_is_parsed_but_not_safe():
    """parse_raw_key reports positions; safety is checked separately before use as a key."""
    raw = parse_raw_key("raw-site/2021-02-28/data/.._data.json", PREFIX)
    assert raw.kind == "clinical"
    assert raw.pseudonym == ".."
    with pytest.raises(UnsafeIdentifier):
        check_pseudonym(raw.pseudonym)


def test_warehouse_keys_say_their_folder_study_and_series():
    image = parse_warehouse_key("training/ct/P/1.2/1.2.3/9.dcm")
    metadata = parse_warehouse_key("validation/mri-metadata/P/1.2/1.2.3/9.json")
    assert (image.folder, image.study, image.series) == ("ct", "1.2", "1.2.3")
    assert (metadata.kind, metadata.folder, metadata.study) == ("metadata", "mri", "1.2")
    clinical_key = parse_warehouse_key("training/data/P/data_2021-03-01.json")
    assert (clinical_key.folder, clinical_key.study, clinical_key.series) == ("", "", "")
    # the image folders are exactly the modality map's, and every image target the loader
    # builds parses back to what it was built from
    assert set(IMAGE_FOLDERS) == set(MODALITY_FOLDERS.values())
    for folder in IMAGE_FOLDERS:
        built = image_targets("training", folder, "P", "1.2", "1.2.3", "a.DCM")
        parsed = [parse_warehouse_key(key) for key in built]
        assert [p.kind for p in parsed] == ["image", "metadata"]
        assert {p.folder for p in parsed} == {folder}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("data_2021-03-01.json", ("data", dt.date(2021, 3, 1))),
        ("status_2020-12-31.json", ("status", dt.date(2020, 12, 31))),
        ("data_2021-02-30.json", None),  # no such day
        ("data_2021-03-01.JSON", None),
        ("other_2021-03-01.json", None),
        ("data_2021-3-1.json", None),
    ],
)
def test_parse_clinical_name(name, expected):
    assert parse_clinical_name(name) == expected
    if expected:
        assert clinical_name(expected[0], expected[1].isoformat()) == name


# --------------------------------------------------------------------------------------------
# raw names and times that no layout position can make an input


@pytest.mark.parametrize(
    "key",
    [
        "raw-a/2021-01-01/images/x.dcm",
        "raw-a/2021-01-01/images/.tmp-12345-x.dcm",  # hidden: the image rule refuses it later
        "raw-a/2021-01-01/images/.tmp-\u00b2-x.dcm",
        "raw-a/2021-01-01/images/caf\u00e9 \u0416.dcm",
        "raw-a/2021-01-01/images/",  # an S3 console's folder marker
        "raw-a/" + "d/" * 14 + "x",  # 16 levels
        "raw-a/2021-01-01/images/" + "x" * (1024 - 24),  # 1,024 bytes
    ],
)
def test_names_any_layout_position_may_take(key):
    assert raw_name_problem(key) is None


@pytest.mark.parametrize(
    ("key", "detail"),
    [
        ("raw-a/2021-01-01/data/Covid1\n_data.json", "'Covid1\\n_data.json' holds U+000A at 6"),
        ("raw-a/2021-01-01/images/\x1b[31mx.dcm", "holds U+001B at 0"),
        ("raw-a/2021-01-01/images/a\u202egpj.dcm", "holds U+202E at 1"),  # bidi override
        ("raw-a/2021-01-01/images/\udcff.dcm", "holds U+DCFF at 0"),  # not UTF-8 on disk
        ("raw-a/2021-01-01/images/\x7f.dcm", "holds U+007F at 0"),
        ("raw-a/2021-01-01/../images/x.dcm", "a '.' or '..' level"),
        ("raw-a/./2021-01-01/images/x.dcm", "a '.' or '..' level"),
        ("raw-a/" + "d/" * 15 + "x", "17 levels (at most 16)"),
        ("raw-a/" + "d/" * 500 + "x.dcm", "502 levels (at most 16)"),
        ("raw-a/2021-01-01/images/" + "\u00e9" * 501, "1,026 bytes long (at most 1,024)"),
    ],
)
def test_unsafe_raw_names(key, detail):
    problem = raw_name_problem(key)
    assert problem is not None and detail in problem
    assert problem.isascii() and "\n" not in problem  # safe to show anywhere


NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "modified",
    [
        dt.datetime(1990, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2021, 1, 1, 9, 30),  # naive: UTC
        NOW + dt.timedelta(days=1),  # clocks disagree a little
        NOW - dt.timedelta(days=3000),
    ],
)
def test_plausible_modification_times(modified):
    assert modification_time_problem(modified, NOW) is None


@pytest.mark.parametrize(
    ("modified", "detail"),
    [
        (dt.datetime(2300, 1, 1, tzinfo=dt.UTC), "last modified 2300-01-01T00:00:00+00:00, after"),
        (NOW + dt.timedelta(days=1, seconds=1), "after the listing (2026-06-01T12:00:00+00:00)"),
        (dt.datetime.max.replace(tzinfo=dt.UTC), "last modified 9999-12-31"),
        (dt.datetime(1989, 12, 31, 23, 59, tzinfo=dt.UTC), "before 1990-01-01"),
        (dt.datetime(1970, 1, 1), "last modified 1970-01-01T00:00:00+00:00, before 1990-01-01"),
        (dt.datetime.min.replace(tzinfo=dt.UTC), "before 1990-01-01"),
    ],
)
def test_implausible_modification_times(modified, detail):
    problem = modification_time_problem(modified, NOW)
    assert problem is not None and detail in problem
