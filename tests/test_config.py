"""Run settings from the environment and validation of ``config.json``."""

from __future__ import annotations

import json

import pytest

from warehouse.components.config import (
    DEFAULT_WORKERS,
    ConfigError,
    PipelineConfig,
    Settings,
    parse_bool,
    parse_config,
    settings_from_env,
)
from warehouse.components.errors import ExpectedError

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


@pytest.mark.parametrize("text", ["0", "-3", "513", "many", "", "2.5"])
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
    from pathlib import Path

    sample = Path(__file__).resolve().parent.parent / "config.sample.json"
    config = parse_config(sample.read_bytes())
    assert config.raw_prefixes
    assert set(config.site_rules.values()) <= {"split", "training", "validation"}


def test_trailing_slash_normalised_and_duplicates_dropped():
    config = parse_config(doc(raw_prefixes=["raw-a/", "raw-a", "raw-b//", " raw-c "]))
    assert config.raw_prefixes == ("raw-a", "raw-b", "raw-c")


def test_missing_percentage_and_sites_default():
    config = parse_config(json.dumps({"raw_prefixes": []}).encode())
    assert config == PipelineConfig(raw_prefixes=(), training_percentage=0, site_rules={})


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
