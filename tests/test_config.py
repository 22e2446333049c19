"""Run settings from the environment and validation of ``config.json``."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import unicodedata
from pathlib import Path

import jsonschema
import pytest

from warehouse.core import config as config_module
from warehouse.core.config import (
    CONFIG_SCHEMA,
    DEFAULT_WORKERS,
    ConfigError,
    PipelineConfig,
    Settings,
    config_help,
    parse_bool,
    parse_config,
    settings_from_env,
)
from warehouse.core.errors import ExpectedError
from warehouse.core.keys import upload_date_problem
from warehouse.core.patients import UnknownSite, group_for
from warehouse.listing.warehouse import WarehouseIndex
from warehouse.loader.memo import still_holds

REPO = Path(__file__).resolve().parent.parent

SAMPLE = {
    "raw_prefixes": ["raw-imperial", "raw-cambridge/"],
    "training_percentage": 50,
    "sites": {
        "split": ["Imperial College Healthcare NHS Trust", "Cambridge University Hospitals"],
        "training": ["Royal Cornwall Hospitals NHS Trust"],
        "validation": ["West Suffolk NHS Foundation Trust"],
    },
}


def doc(**changes) -> bytes:
    """The sample config with top-level ``changes`` (a value of None deletes the key)."""
    config = dict(SAMPLE)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return json.dumps(config).encode()


# --------------------------------------------------------------------------------------------
# parse_bool


@pytest.mark.parametrize(
    "text", ["true", "True", "TRUE", "1", "yes", "YES", "Yes", "on", "ON", " true ", "tRuE"]
)
def test_parse_bool_true(text):
    assert parse_bool(text, "DRY_RUN") is True


@pytest.mark.parametrize("text", ["false", "False", "FALSE", "0", "no", "NO", "off", "Off", " 0 "])
def test_parse_bool_false(text):
    assert parse_bool(text, "DRY_RUN") is False


@pytest.mark.parametrize("text", ["maybe", "", "2", "y", "n", "truthy", "t"])
def test_parse_bool_rejects_anything_else(text):
    with pytest.raises(ConfigError) as caught:
        parse_bool(text, "DRY_RUN")
    message = str(caught.value)
    assert f"DRY_RUN={text!r}" in message
    assert "true/false, 1/0, yes/no or on/off" in message


def test_config_error_is_an_expected_error():
    assert issubclass(ConfigError, ExpectedError)


# --------------------------------------------------------------------------------------------
# settings_from_env


def test_settings_from_warehouse_bucket():
    settings = settings_from_env({"WAREHOUSE_BUCKET": "my-bucket"})
    assert settings == Settings(bucket="my-bucket", dry_run=False, workers=DEFAULT_WORKERS)


def test_settings_bucket_name_fallback():
    assert settings_from_env({"BUCKET_NAME": "legacy"}).bucket == "legacy"


def test_warehouse_bucket_wins_over_bucket_name():
    env = {"WAREHOUSE_BUCKET": "s3://new", "BUCKET_NAME": "legacy"}
    assert settings_from_env(env).bucket == "s3://new"


def test_empty_warehouse_bucket_falls_back_to_bucket_name():
    assert settings_from_env({"WAREHOUSE_BUCKET": "", "BUCKET_NAME": "legacy"}).bucket == "legacy"


@pytest.mark.parametrize("env", [{}, {"WAREHOUSE_BUCKET": "  "}, {"BUCKET_NAME": ""}])
def test_no_bucket_is_a_config_error_naming_the_variable(env):
    with pytest.raises(ConfigError, match="WAREHOUSE_BUCKET"):
        settings_from_env(env)


def test_settings_read_os_environ_by_default(monkeypatch):
    monkeypatch.delenv("BUCKET_NAME", raising=False)
    monkeypatch.setenv("WAREHOUSE_BUCKET", "file:///tmp/x")
    monkeypatch.setenv("DRY_RUN", "yes")
    monkeypatch.setenv("WAREHOUSE_WORKERS", "4")
    settings = settings_from_env()
    assert settings.bucket == "file:///tmp/x"
    assert settings.dry_run is True
    assert settings.workers == 4


@pytest.mark.parametrize(("text", "expected"), [("on", True), ("0", False), ("FALSE", False)])
def test_dry_run(text, expected):
    env = {"WAREHOUSE_BUCKET": "b", "DRY_RUN": text}
    assert settings_from_env(env).dry_run is expected


def test_bad_dry_run():
    with pytest.raises(ConfigError, match="DRY_RUN='sure' is not a boolean"):
        settings_from_env({"WAREHOUSE_BUCKET": "b", "DRY_RUN": "sure"})


@pytest.mark.parametrize(("text", "expected"), [("1", 1), (" 16 ", 16), ("512", 512)])
def test_workers(text, expected):
    env = {"WAREHOUSE_BUCKET": "b", "WAREHOUSE_WORKERS": text}
    assert settings_from_env(env).workers == expected


@pytest.mark.parametrize("text", ["0", "-3", "513", "many", "", "2.5", "1_6", "+4", "\u0661\u0666"])
def test_bad_workers(text):
    env = {"WAREHOUSE_BUCKET": "b", "WAREHOUSE_WORKERS": text}
    with pytest.raises(ConfigError) as caught:
        settings_from_env(env)
    assert f"WAREHOUSE_WORKERS={text.strip()!r} must be an integer from 1 to 512" in str(
        caught.value
    )


def test_progress_seconds():
    env = {"WAREHOUSE_BUCKET": "b", "WAREHOUSE_PROGRESS_SECONDS": "2.5"}
    assert settings_from_env(env).progress_seconds == 2.5
    assert settings_from_env({"WAREHOUSE_BUCKET": "b"}).progress_seconds == 10.0


@pytest.mark.parametrize("text", ["0", "-1", "soon"])
def test_bad_progress_seconds(text):
    env = {"WAREHOUSE_BUCKET": "b", "WAREHOUSE_PROGRESS_SECONDS": text}
    with pytest.raises(ConfigError, match="WAREHOUSE_PROGRESS_SECONDS=.* must be a positive"):
        settings_from_env(env)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("s3://inventory-bucket/reconcile", "s3://inventory-bucket/reconcile"),
        (" s3://inventory-bucket ", "s3://inventory-bucket"),
        ("file:///data/inventory", "file:///data/inventory"),
    ],
)
def test_inventory(text, expected):
    env = (
        {"WAREHOUSE_BUCKET": "b"}
        if text is None
        else {"WAREHOUSE_BUCKET": "b", "WAREHOUSE_INVENTORY": text}
    )
    assert settings_from_env(env).inventory == expected


@pytest.mark.parametrize(
    "text", ["inventory-bucket/reconcile", "http://host/x", "/data/inventory", "s3://b/\x1b[2J"]
)
def test_bad_inventory(text):
    env = {"WAREHOUSE_BUCKET": "b", "WAREHOUSE_INVENTORY": text}
    with pytest.raises(
        ConfigError, match="WAREHOUSE_INVENTORY=.* must be s3://bucket/prefix"
    ) as raised:
        settings_from_env(env)
    assert "\x1b" not in str(raised.value)  # quoted: the escape shown, never sent


# --------------------------------------------------------------------------------------------
# parse_config


def test_valid_sample():
    config = parse_config(doc())
    assert config == PipelineConfig(
        raw_prefixes=("raw-imperial", "raw-cambridge"),
        training_percentage=50,
        site_rules={
            "Imperial College Healthcare NHS Trust": "split",
            "Cambridge University Hospitals": "split",
            "Royal Cornwall Hospitals NHS Trust": "training",
            "West Suffolk NHS Foundation Trust": "validation",
        },
    )


def test_repo_sample_config_is_valid():
    sample = REPO / "config.sample.json"
    config = parse_config(sample.read_bytes())
    assert config.raw_prefixes
    assert set(config.site_rules.values()) <= {"split", "training", "validation"}


def test_trailing_slash_normalised_and_duplicates_dropped():
    config = parse_config(doc(raw_prefixes=["raw-a/", "raw-a", "raw-b//", " raw-c "]))
    assert config.raw_prefixes == ("raw-a", "raw-b", "raw-c")


def test_sites_and_the_optional_keys_default():
    config = parse_config(json.dumps({"raw_prefixes": [], "training_percentage": 0}).encode())
    assert config == PipelineConfig(raw_prefixes=(), training_percentage=0, site_rules={})
    assert config.prefix_sites == {} and config.max_upload_delay_days is None


def test_sites_groups_may_be_omitted():
    config = parse_config(doc(sites={"training": ["A"]}))
    assert config.site_rules == {"A": "training"}


def test_same_site_twice_in_one_group_is_fine():
    config = parse_config(doc(sites={"split": ["A", "A"]}))
    assert config.site_rules == {"A": "split"}


@pytest.mark.parametrize("percentage", [0, 100])
def test_percentage_bounds(percentage):
    assert parse_config(doc(training_percentage=percentage)).training_percentage == percentage


def test_empty_file_is_invalid_json():
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        parse_config(b"")


def test_invalid_json_names_the_position():
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON: .*line 1 column"):
        parse_config(b'{"raw_prefixes": [}')


def test_not_utf8():
    with pytest.raises(ConfigError, match="config.json is not UTF-8 text"):
        parse_config('{"raw_prefixes": ["raw-caf\u00e9"]}'.encode("latin-1"))


@pytest.mark.parametrize(
    ("text", "kind"), [(b"[]", "list"), (b'"x"', "str"), (b"null", "NoneType")]
)
def test_not_an_object(text, kind):
    with pytest.raises(ConfigError, match=f"config.json must be a JSON object, got {kind}"):
        parse_config(text)


@pytest.mark.parametrize("prefixes", [None, "raw-a", ["raw-a", 3], {"raw-a": 1}])
def test_raw_prefixes_wrong_type(prefixes):
    with pytest.raises(ConfigError, match="raw_prefixes must be a list of strings"):
        parse_config(doc(raw_prefixes=prefixes))


@pytest.mark.parametrize("prefix", ["data", "raw-a/2021-01-01", "raw-../x", "", "../raw-a"])
def test_raw_prefix_must_be_one_raw_folder(prefix):
    with pytest.raises(ConfigError) as caught:
        parse_config(doc(raw_prefixes=[prefix]))
    assert f"raw prefix {prefix!r} must be one folder named raw-<uploader>" in str(caught.value)


@pytest.mark.parametrize("percentage", [-1, 101, 1000])
def test_percentage_out_of_range(percentage):
    with pytest.raises(ConfigError) as caught:
        parse_config(doc(training_percentage=percentage))
    assert f"training_percentage must be between 0 and 100, got {percentage}" in str(caught.value)


@pytest.mark.parametrize(
    ("percentage", "shown"), [(True, "True"), (False, "False"), (50.0, "50.0"), ("50", "'50'")]
)
def test_percentage_wrong_type(percentage, shown):
    with pytest.raises(ConfigError) as caught:
        parse_config(doc(training_percentage=percentage))
    assert f"training_percentage must be an integer 0..100, got {shown}" in str(caught.value)


def test_sites_not_an_object():
    with pytest.raises(ConfigError, match="sites must be an object"):
        parse_config(doc(sites=["A"]))


@pytest.mark.parametrize("names", ["A", ["A", 1], {"A": 1}])
def test_site_list_wrong_type(names):
    with pytest.raises(ConfigError, match="sites.training must be a list of strings"):
        parse_config(doc(sites={"training": names}))


def test_site_in_two_groups():
    with pytest.raises(ConfigError) as caught:
        parse_config(doc(sites={"split": ["A"], "validation": ["B", "A"]}))
    assert "site 'A' is in both sites.split and sites.validation" in str(caught.value)


def test_unknown_sites_key():
    with pytest.raises(ConfigError) as caught:
        parse_config(doc(sites={"split": ["A"], "holdout": ["B"], "Training": []}))
    message = str(caught.value)
    assert "unknown key(s) in sites: Training, holdout" in message
    assert "expected split, training, validation" in message


def test_site_names_match_exactly():
    config = parse_config(doc(sites={"training": ["Site A"], "validation": ["site a"]}))
    assert config.site_rules == {"Site A": "training", "site a": "validation"}


# --------------------------------------------------------------------------------------------
# The schema: unknown keys, required keys, config_help


def message_of(data: bytes) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(CONFIG_SCHEMA)


def test_misspelt_top_level_key_suggests_the_known_one():
    data = json.dumps({"raw_prefixes": ["raw-a"], "trainingPercentage": 70}).encode()
    message = message_of(data)
    assert "unknown key(s) at the top level: trainingPercentage" in message
    assert "trainingPercentage: did you mean training_percentage?" in message
    # The unknown key comes first: it explains the missing one.
    assert message.index("trainingPercentage") < message.index("missing key")


def test_misspelt_sites_key_names_its_path_and_the_closest_key():
    message = message_of(doc(sites={"splitt": ["A"]}))
    assert "unknown key(s) in sites: splitt" in message
    assert "sites.splitt: did you mean sites.split?" in message


def test_unknown_key_without_a_close_match():
    message = message_of(doc(colour="blue"))
    assert "unknown key(s) at the top level: colour" in message
    assert "did you mean" not in message


def test_unknown_key_with_a_control_character_is_shown_escaped():
    message = message_of(doc(**{"max_upload\x00delay": 3}))
    assert "'max_upload\\x00delay'" in message and "\x00" not in message
    assert "did you mean max_upload_delay_days?" in message


def test_missing_training_percentage_is_an_error_not_a_default():
    message = message_of(doc(training_percentage=None))
    assert message == (
        "config.json: missing key training_percentage (it has no default): "
        "training_percentage must be an integer 0..100"
    )


def test_every_problem_is_listed_in_one_message():
    data = json.dumps(
        {"raw_prefixes": ["raw-a", 3], "training_percentage": 5.0, "sites": {"splitt": []}}
    ).encode()
    message = message_of(data)
    assert message.startswith("config.json has 3 problems:\n")
    assert "sites.splitt: did you mean sites.split?" in message
    assert "raw_prefixes must be a list of strings, got 3 at raw_prefixes[1]" in message
    assert "training_percentage must be an integer 0..100, got 5.0" in message


def _schema_paths(schema, path=""):
    for name, child in schema.get("properties", {}).items():
        yield f"{path}{name}", child
        yield from _schema_paths(child, f"{path}{name}.")


def test_config_help_describes_every_key_from_the_schema():
    lines = config_help().splitlines()
    assert all(len(line) <= 80 for line in lines)
    paths = [path for path, _ in _schema_paths(CONFIG_SCHEMA)]
    entries: dict[str, str] = {}
    for line in lines[1:]:
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        # An entry starts at two spaces per level; its continuation lines are indented more.
        starts = [p for p in paths if text.startswith(f"{p} (") and indent == 2 + 2 * p.count(".")]
        if starts:
            current = max(starts, key=len)
            entries[current] = text
        else:
            entries[current] += " " + text
    assert list(entries) == paths
    for path in paths:
        required = path in CONFIG_SCHEMA["required"]
        assert ("; required)" if required else "; optional, ") in entries[path], path
    assert entries["training_percentage"].startswith("training_percentage (an integer 0..100;")
    assert entries["max_upload_delay_days"].startswith(
        "max_upload_delay_days (an integer 0..36500; optional, when absent: no limit)"
    )
    assert "prefix_sites.<raw prefix> (a non-empty list of strings)" in entries["prefix_sites"]
    assert "every key not listed here is an error" in lines[0]


def test_config_help_follows_the_schema(monkeypatch):
    schema = json.loads(json.dumps(CONFIG_SCHEMA))
    del schema["properties"]["max_upload_delay_days"]["x-when-absent"]
    schema["properties"]["max_upload_delay_days"]["default"] = 7
    schema["properties"]["max_upload_delay_days"]["description"] = "a changed meaning"
    monkeypatch.setattr(config_module, "CONFIG_SCHEMA", schema)
    text = " ".join(line.strip() for line in config_help().splitlines())
    assert "max_upload_delay_days (an integer 0..36500; optional, default 7): a changed" in text


def test_readme_documents_every_config_key():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration: `config.json`")[1].split("\n## ")[0]
    for path, _ in _schema_paths(CONFIG_SCHEMA):
        assert f"`{path}`" in section, path


# --------------------------------------------------------------------------------------------
# Every problem is a ConfigError with one message


def test_json_nested_thousands_of_levels_deep():
    for data in (
        b"[" * 5000 + b"]" * 5000,
        b'{"raw_prefixes": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ):
        assert "nested too deeply" in message_of(data)


def test_json_nested_hundreds_of_levels_gives_a_short_message():
    nested = b"[" * 400 + b"]" * 400
    message = message_of(b'{"raw_prefixes": ' + nested + b', "training_percentage": 1}')
    assert "raw_prefixes must be a list of strings" in message
    assert len(message) < 300


def test_integer_of_5000_digits():
    data = b'{"raw_prefixes": [], "training_percentage": ' + b"7" * 5000 + b"}"
    assert "an integer of more than 4300 digits" in message_of(data)


def test_long_integer_within_the_limit_is_shown_shortened():
    data = b'{"raw_prefixes": [], "training_percentage": ' + b"7" * 4000 + b"}"
    message = message_of(data)
    assert "training_percentage must be between 0 and 100" in message and len(message) < 200


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant):
    data = f'{{"raw_prefixes": [], "training_percentage": {constant}}}'.encode()
    assert f"config.json is not valid JSON: {constant} is not a JSON number" in message_of(data)


def test_byte_order_mark_is_not_json():
    assert "config.json is not valid JSON" in message_of(b"\xef\xbb\xbf" + doc())


@pytest.mark.parametrize("prefix", ["raw-a\x00", "raw-\x01a", "raw-a\tb", "raw-a\x7f", "raw-a\x85"])
def test_control_character_in_a_raw_prefix(prefix):
    message = message_of(doc(raw_prefixes=[prefix]))
    assert "contains a control character" in message
    assert prefix not in message  # shown escaped


def test_lone_surrogate_is_not_text():
    data = b'{"raw_prefixes": [], "training_percentage": 1, "sites": {"split": ["A\\ud800"]}}'
    assert "sites.split[0] is not text" in message_of(data)


def test_duplicate_top_level_key():
    data = b'{"raw_prefixes": [], "training_percentage": 10, "training_percentage": 90}'
    assert message_of(data) == (
        "config.json: duplicate key training_percentage: a key may appear once in an object"
    )


def test_duplicate_nested_keys_are_named_with_their_path():
    data = (
        b'{"raw_prefixes": ["raw-a"], "training_percentage": 1,'
        b' "sites": {"split": ["A"], "training": [], "split": ["B"]},'
        b' "prefix_sites": {"raw-a": ["A"], "raw-a": ["B"]}}'
    )
    message = message_of(data)
    assert "duplicate key sites.split" in message
    assert "duplicate key prefix_sites.raw-a" in message


def test_duplicate_key_inside_a_replaced_value_is_still_reported():
    data = b'{"raw_prefixes": [], "training_percentage": 1, "sites": {"x": 1, "x": 2}, "sites": {}}'
    message = message_of(data)
    assert "duplicate key sites" in message and "duplicate key x" in message


@pytest.mark.parametrize(
    ("value", "shown"),
    [("30", "'30'"), (30.0, "30.0"), (True, "True"), (None, "None"), ([30], "[30]")],
)
def test_max_upload_delay_days_wrong_type(value, shown):
    data = json.dumps({**SAMPLE, "max_upload_delay_days": value}).encode()
    message = message_of(data)
    assert f"max_upload_delay_days must be an integer 0..36500, got {shown}" in message


@pytest.mark.parametrize("value", [-1, 36501, 10**30])
def test_max_upload_delay_days_out_of_range(value):
    message = message_of(doc(max_upload_delay_days=value))
    assert "max_upload_delay_days must be between 0 and 36500" in message


@pytest.mark.parametrize("value", [0, 30, 36500])
def test_max_upload_delay_days(value):
    assert parse_config(doc(max_upload_delay_days=value)).max_upload_delay_days == value


@pytest.mark.parametrize(
    ("prefix_sites", "expected"),
    [
        (["raw-a"], "prefix_sites must be an object mapping <raw prefix> to"),
        ({"raw-imperial": "A"}, "prefix_sites.raw-imperial must be a non-empty list of strings"),
        ({"raw-imperial": []}, "prefix_sites.raw-imperial must be a non-empty list of strings"),
        (
            {"raw-imperial": ["A", 2]},
            "prefix_sites.raw-imperial must be a non-empty list of strings, got 2 at "
            "prefix_sites.raw-imperial[1]",
        ),
    ],
)
def test_prefix_sites_wrong_type(prefix_sites, expected):
    assert expected in message_of(doc(prefix_sites=prefix_sites))


def test_prefix_sites_must_name_a_configured_prefix():
    message = message_of(doc(prefix_sites={"raw-imperail": ["A"]}))
    assert "prefix_sites.raw-imperail: 'raw-imperail' is not one of raw_prefixes" in message
    assert "did you mean raw-imperial?" in message


def test_prefix_sites_names_a_prefix_once():
    message = message_of(doc(prefix_sites={"raw-imperial": ["A"], "raw-imperial/": ["B"]}))
    assert "raw prefix raw-imperial is named twice in prefix_sites" in message


def test_site_in_two_lists_once_nfc_normalised():
    composed, decomposed = "Caf\u00e9 Trust", "Cafe\u0301 Trust"
    message = message_of(doc(sites={"split": [composed], "training": [decomposed]}))
    assert "is in both sites.split and sites.training" in message
    assert "the same name once NFC-normalised" in message


def test_mutated_configs_give_a_config_or_a_config_error():
    """Whatever the bytes, parse_config returns a config or raises ConfigError, nothing else."""
    sample = (REPO / "config.sample.json").read_bytes()
    rng = random.Random(20261125)
    alphabet = b'{}[]",:0123456789.-eE\\u \x00\xff\xc3tfnNaI'
    outcomes = set()
    for _ in range(3000):
        data = bytearray(sample)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[position] = rng.choice(alphabet)
            elif action == 1:
                del data[position : position + rng.randint(1, 20)]
            else:
                data[position:position] = bytes(rng.choices(alphabet, k=rng.randint(1, 5)))
        try:
            parse_config(bytes(data))
            outcomes.add("parsed")
        except ConfigError:
            outcomes.add("ConfigError")
    assert outcomes == {"parsed", "ConfigError"}


# --------------------------------------------------------------------------------------------
# Site names: NFC, otherwise exact; prefix_sites


COMPOSED = "H\u00f4pital Saint-\u00c9tienne"
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)


def test_nfd_and_nfc_spellings_differ_as_strings():
    assert COMPOSED != DECOMPOSED and unicodedata.normalize("NFC", DECOMPOSED) == COMPOSED


@pytest.mark.parametrize(
    ("in_config", "in_record"), [(COMPOSED, DECOMPOSED), (DECOMPOSED, COMPOSED)]
)
def test_site_rule_matches_after_nfc_on_both_sides(in_config, in_record):
    config = parse_config(doc(sites={"validation": [in_config]}))
    assert list(config.site_rules) == [COMPOSED]
    assert config.site_rule(in_record) == "validation"
    assert config.site_rule(in_config) == "validation"


def test_site_rule_is_otherwise_exact():
    config = parse_config(doc(sites={"training": ["Site A"]}))
    assert config.site_rule("Site A") == "training"
    for other in ("site a", "SITE A", "Site A ", " Site A", "Site  A", "SiteA"):
        assert config.site_rule(other) is None
    assert config.site_rule(None) is None and config.site_rule(3) is None


def test_a_config_built_directly_is_normalised_too():
    config = PipelineConfig(("raw-a/",), 50, {DECOMPOSED: "split"}, {"raw-a/": [DECOMPOSED]})
    assert config.site_rules == {COMPOSED: "split"}
    assert config.prefix_sites == {"raw-a": frozenset({COMPOSED})}


def test_group_for_matches_an_nfd_record_centre():
    config = parse_config(doc(sites={"training": [COMPOSED]}))
    assert group_for("Covid1", DECOMPOSED, config) == "training"
    with pytest.raises(UnknownSite):
        group_for("Covid1", COMPOSED.upper(), config)


def test_memo_sees_an_nfd_centre_as_configured():
    problem = {"reason": "site not in config", "facts": {"centre": DECOMPOSED}}
    unconfigured = parse_config(doc())
    configured = parse_config(doc(sites={"split": [COMPOSED]}))
    assert still_holds(problem, unconfigured, WarehouseIndex(), set())
    assert not still_holds(problem, configured, WarehouseIndex(), set())


def test_prefix_sites_parsed_and_matched():
    config = parse_config(
        doc(
            prefix_sites={
                "raw-imperial/": ["Imperial College Healthcare NHS Trust", DECOMPOSED],
                "raw-cambridge": ["Imperial College Healthcare NHS Trust"],
            }
        )
    )
    assert config.prefix_sites == {
        "raw-imperial": frozenset({"Imperial College Healthcare NHS Trust", COMPOSED}),
        "raw-cambridge": frozenset({"Imperial College Healthcare NHS Trust"}),
    }
    # Several prefixes may send the same centre (a site with several uploader accounts).
    assert config.centre_allowed("raw-imperial", "Imperial College Healthcare NHS Trust")
    assert config.centre_allowed("raw-cambridge", "Imperial College Healthcare NHS Trust")
    assert config.centre_allowed("raw-imperial", COMPOSED)  # NFC on both sides
    assert config.centre_allowed("raw-imperial/", DECOMPOSED)
    assert not config.centre_allowed("raw-cambridge", "Cambridge University Hospitals")
    assert not config.centre_allowed("raw-imperial", "imperial college healthcare nhs trust")
    assert not config.centre_allowed("raw-imperial", None)


def test_a_prefix_not_in_prefix_sites_may_send_any_centre():
    config = parse_config(doc(prefix_sites={"raw-imperial": ["A"]}))
    assert config.centre_allowed("raw-cambridge", "Anything at all")
    assert parse_config(doc()).centre_allowed("raw-imperial", "Anything at all")


# --------------------------------------------------------------------------------------------
# upload_date_problem

UTC = dt.UTC


@pytest.mark.parametrize(
    ("folder", "modified"),
    [
        ("2021-01-05", dt.datetime(2021, 1, 5, 12, tzinfo=UTC)),  # same day
        ("2021-01-06", dt.datetime(2021, 1, 5, 23, tzinfo=UTC)),  # one day for time zones
        ("2020-12-06", dt.datetime(2021, 1, 5, 23, 59, tzinfo=UTC)),  # exactly 30 days
        ("2021-01-05", dt.datetime(2021, 1, 5, 1)),  # naive: UTC
    ],
)
def test_plausible_upload_dates(folder, modified):
    assert upload_date_problem(folder, modified, 30) is None


def test_folder_after_the_object():
    modified = dt.datetime(2021, 1, 5, 10, tzinfo=UTC)
    assert upload_date_problem("2031-01-01", modified, 30) == (
        "folder 2031-01-01 is after the object's last-modified 2021-01-05"
    )
    assert upload_date_problem("2021-01-07", modified, 30) == (
        "folder 2021-01-07 is after the object's last-modified 2021-01-05"
    )


def test_folder_too_long_before_the_object():
    modified = dt.datetime(2021, 1, 5, tzinfo=UTC)
    assert upload_date_problem("2020-12-05", modified, 30) == (
        "folder 2020-12-05 is 31 days before the object's last-modified 2021-01-05 "
        "(at most 30 allowed)"
    )
    assert upload_date_problem("2021-01-04", modified, 0) is not None
    assert upload_date_problem("1925-01-01", modified, 36500) is None


def test_upload_date_compares_in_utc():
    # 23:30 in New York on 5 January is 04:30 UTC on 6 January.
    new_york = dt.timezone(dt.timedelta(hours=-5))
    modified = dt.datetime(2021, 1, 5, 23, 30, tzinfo=new_york)
    assert upload_date_problem("2021-01-07", modified, 30) is None
    assert "last-modified 2021-01-06" in upload_date_problem("2021-01-08", modified, 30)


@pytest.mark.parametrize("folder", ["2021-02-30", "yesterday", "2021-01-05\n"])
def test_upload_date_that_is_no_date(folder):
    problem = upload_date_problem(folder, dt.datetime(2021, 1, 5, tzinfo=UTC), 30)
    assert problem == f"folder {folder!r} is not a YYYY-MM-DD date"


# --------------------------------------------------------------------------------------------
# The new settings


def settings(**env):
    return settings_from_env({"WAREHOUSE_BUCKET": "b", **env})


def setting_error(**env) -> str:
    with pytest.raises(ConfigError) as caught:
        settings(**env)
    return str(caught.value)


def test_new_settings_default():
    assert settings() == Settings(
        bucket="b",
        max_clinical_bytes=1024 * 1024,
        max_header_bytes=64 * 1024 * 1024,
        log_format="text",
        shard=None,
        processes=1,
        phase="all",
        run_id=None,
    )


def test_workers_of_5000_digits_is_a_config_error():
    assert "WAREHOUSE_WORKERS=" in setting_error(WAREHOUSE_WORKERS="9" * 5000)


@pytest.mark.parametrize("text", ["inf", "nan", "-inf"])
def test_progress_seconds_must_be_finite(text):
    assert "WAREHOUSE_PROGRESS_SECONDS" in setting_error(WAREHOUSE_PROGRESS_SECONDS=text)


@pytest.mark.parametrize("name", ["WAREHOUSE_MAX_CLINICAL_BYTES", "WAREHOUSE_MAX_HEADER_BYTES"])
def test_byte_limits(name):
    field = name.removeprefix("WAREHOUSE_").lower()
    assert getattr(settings(**{name: " 1024 "}), field) == 1024
    assert getattr(settings(**{name: str(1 << 40)}), field) == 1 << 40
    for bad in ("0", "-1", "16MiB", "1_000", "1e6", "", str((1 << 40) + 1), "9" * 5000):
        message = setting_error(**{name: bad})
        assert message.startswith(f"{name}=") and "whole number of bytes from 1 to" in message


@pytest.mark.parametrize(
    ("text", "expected"), [("json", "json"), (" JSON ", "json"), ("text", "text")]
)
def test_log_format(text, expected):
    assert settings(WAREHOUSE_LOG_FORMAT=text).log_format == expected


def test_bad_log_format():
    assert setting_error(WAREHOUSE_LOG_FORMAT="xml") == (
        "WAREHOUSE_LOG_FORMAT='xml' must be text or json (default text)"
    )


@pytest.mark.parametrize(
    ("text", "expected"), [("all", "all"), ("clinical", "clinical"), (" Images", "images")]
)
def test_phase(text, expected):
    assert settings(WAREHOUSE_PHASE=text, WAREHOUSE_RUN_ID="r1").phase == expected


def test_the_image_phase_alone_is_shard_0_of_1():
    assert settings(WAREHOUSE_PHASE="images", WAREHOUSE_RUN_ID="r1").shard == (0, 1)


def test_a_shard_runs_the_image_phase():
    assert settings(WAREHOUSE_SHARD="1/4", WAREHOUSE_RUN_ID="r1").phase == "images"


@pytest.mark.parametrize(
    ("env", "start"),
    [
        ({"WAREHOUSE_SHARD": "1/4"}, "WAREHOUSE_SHARD=1/4 needs WAREHOUSE_RUN_ID"),
        (
            {"WAREHOUSE_SHARDS": "4", "AWS_BATCH_JOB_ARRAY_INDEX": "2"},
            "WAREHOUSE_SHARDS=4 needs WAREHOUSE_RUN_ID",
        ),
        ({"WAREHOUSE_PHASE": "images"}, "WAREHOUSE_PHASE=images needs WAREHOUSE_RUN_ID"),
        (
            {"WAREHOUSE_PHASE": "clinical", "WAREHOUSE_SHARD": "0/2", "WAREHOUSE_RUN_ID": "r"},
            "WAREHOUSE_PHASE=clinical cannot be combined with WAREHOUSE_SHARD=0/2",
        ),
        (
            {"WAREHOUSE_PHASE": "clinical", "WAREHOUSE_PROCESSES": "2"},
            "WAREHOUSE_PROCESSES=2 cannot be combined with WAREHOUSE_PHASE=clinical",
        ),
        (
            {"WAREHOUSE_SHARD": "0/2", "WAREHOUSE_RUN_ID": "r", "DRY_RUN": "true"},
            "DRY_RUN=true cannot be combined with WAREHOUSE_SHARD=0/2",
        ),
        (
            {"WAREHOUSE_PHASE": "clinical", "DRY_RUN": "yes"},
            "DRY_RUN=true cannot be combined with WAREHOUSE_PHASE=clinical",
        ),
    ],
)
def test_bad_parts_of_a_sharded_run_name_the_variable(env, start):
    assert setting_error(**env).startswith(start)


@pytest.mark.parametrize("text", ["both", "", "image"])
def test_bad_phase(text):
    message = setting_error(WAREHOUSE_PHASE=text)
    assert message.startswith("WAREHOUSE_PHASE=") and "all, clinical or images" in message


@pytest.mark.parametrize(
    ("text", "expected"), [("0/1", (0, 1)), (" 2/4 ", (2, 4)), ("9999/10000", (9999, 10000))]
)
def test_shard(text, expected):
    assert settings(WAREHOUSE_SHARD=text, WAREHOUSE_RUN_ID="r1").shard == expected


@pytest.mark.parametrize(
    "text",
    ["4/4", "1/0", "0/0", "-1/4", "a/b", "1", "1/4/5", "1 / 4", "0/10001", "", "1/" + "9" * 5000],
)
def test_bad_shard(text):
    message = setting_error(WAREHOUSE_SHARD=text)
    assert message.startswith("WAREHOUSE_SHARD=") and "must be i/N" in message


def test_shard_from_an_aws_batch_array_job():
    env = {"WAREHOUSE_SHARDS": "8", "AWS_BATCH_JOB_ARRAY_INDEX": "3", "WAREHOUSE_RUN_ID": "r1"}
    assert settings(**env).shard == (3, 8)
    assert settings(**env, WAREHOUSE_SHARD="3/8").shard == (3, 8)  # both, agreeing


def test_array_index_alone_is_not_a_shard():
    assert settings(AWS_BATCH_JOB_ARRAY_INDEX="3").shard is None


@pytest.mark.parametrize("text", ["0", "many", "", "10001", "-2"])
def test_bad_shard_count(text):
    message = setting_error(WAREHOUSE_SHARDS=text, AWS_BATCH_JOB_ARRAY_INDEX="0")
    assert message.startswith("WAREHOUSE_SHARDS=") and "number of shards" in message


def test_shard_count_needs_the_array_index():
    message = setting_error(WAREHOUSE_SHARDS="4")
    assert message.startswith("WAREHOUSE_SHARDS=4 needs AWS_BATCH_JOB_ARRAY_INDEX")


@pytest.mark.parametrize("index", ["4", "40", "-1", "x", ""])
def test_array_index_out_of_range_or_garbage(index):
    message = setting_error(WAREHOUSE_SHARDS="4", AWS_BATCH_JOB_ARRAY_INDEX=index)
    assert message.startswith("AWS_BATCH_JOB_ARRAY_INDEX=")
    assert "must be a shard index from 0 to 3 (WAREHOUSE_SHARDS=4)" in message


@pytest.mark.parametrize("shard", ["2/8", "3/4"])
def test_shard_and_array_job_disagreeing(shard):
    env = {"WAREHOUSE_SHARD": shard, "WAREHOUSE_SHARDS": "8", "AWS_BATCH_JOB_ARRAY_INDEX": "3"}
    message = setting_error(**env)
    assert message.startswith(f"WAREHOUSE_SHARD={shard} disagrees with WAREHOUSE_SHARDS=8")
    assert "AWS_BATCH_JOB_ARRAY_INDEX=3" in message


@pytest.mark.parametrize(("text", "expected"), [("1", 1), (" 4 ", 4), ("256", 256)])
def test_processes(text, expected):
    assert settings(WAREHOUSE_PROCESSES=text).processes == expected


def test_processes_auto_is_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(config_module.os, "sched_getaffinity", lambda pid: {0, 2, 5})
    assert settings(WAREHOUSE_PROCESSES="auto").processes == 3
    assert settings(WAREHOUSE_PROCESSES="AUTO").processes == 3
    monkeypatch.setattr(config_module.os, "sched_getaffinity", lambda pid: set(range(300)))
    assert settings(WAREHOUSE_PROCESSES="auto").processes == 256


@pytest.mark.parametrize("text", ["0", "257", "many", "", "2.0"])
def test_bad_processes(text):
    message = setting_error(WAREHOUSE_PROCESSES=text)
    assert message.startswith("WAREHOUSE_PROCESSES=") and "from 1 to 256, or auto" in message


@pytest.mark.parametrize(
    "env",
    [
        {"WAREHOUSE_SHARD": "0/2", "WAREHOUSE_PROCESSES": "2"},
        {"WAREHOUSE_SHARD": "0/2", "WAREHOUSE_PROCESSES": "auto"},
        {"WAREHOUSE_SHARDS": "2", "AWS_BATCH_JOB_ARRAY_INDEX": "1", "WAREHOUSE_PROCESSES": "4"},
    ],
)
def test_processes_with_a_shard_is_an_error(env):
    message = setting_error(**env)
    assert message.startswith("WAREHOUSE_PROCESSES=") and "cannot be combined with" in message
    assert "WAREHOUSE_SHARD" in message


def test_one_process_with_a_shard_is_fine():
    env = {"WAREHOUSE_SHARD": "1/2", "WAREHOUSE_PROCESSES": "1", "WAREHOUSE_RUN_ID": "r1"}
    assert settings(**env).shard == (1, 2)


@pytest.mark.parametrize("text", ["run-2026_11-25", "A" * 64, "7"])
def test_run_id(text):
    assert settings(WAREHOUSE_RUN_ID=text).run_id == text


@pytest.mark.parametrize("text", ["", "A" * 65, "a b", "r\u00e9sum\u00e9", "x/y", "a\x00"])
def test_bad_run_id(text):
    message = setting_error(WAREHOUSE_RUN_ID=text)
    assert re.match(r"WAREHOUSE_RUN_ID=.* must be 1 to 64 ASCII letters, digits, - or _", message)


def test_messages_for_keywords_the_schema_may_use_later_stay_short():
    def problem(schema, value):
        error = next(config_module._ConfigValidator(schema).iter_errors(value))
        return config_module._schema_problem(error)

    assert problem({"type": "integer", "minimum": 0}, -1) == [
        "the document must be at least 0, got -1"
    ]
    assert problem({"maximum": 9}, 10) == ["the document must be at most 9, got 10"]
    (message,) = problem({"maxLength": 2}, "abcdef" * 100)
    assert message.startswith("the document must meet maxLength=2, got 'abc") and len(message) < 200
