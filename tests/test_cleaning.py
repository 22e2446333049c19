"""Clinical cleaning rules (reference/clinical-data.md section 3), per value and per table."""

import math
import random

import numpy as np
import pandas as pd
import pytest

from warehouse.dashboard import cleaning
from warehouse.dashboard.cleaning import (
    age_years,
    blood_pressure,
    clean_column_name,
    clean_ethnicity,
    clean_patient_table,
    clean_sex,
    fill_from_dicom,
    fio2_percent,
    h1pertension_flag,
    pack_years,
    parse_swab_date,
    parse_swab_dates,
    parse_us_date,
    test_result,
    to_binary,
    to_category,
    to_number,
)
from warehouse.dashboard.tables import patient_table
from warehouse.dicom.values import dicom_age_years

T = pd.Timestamp


def is_missing(value):
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


# --- column names (3.1) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Date of admission", "date_of_admission"),
        ("If CKD, stage", "if_ckd_stage"),
        ("Fibrinogen  if d-dimer not performed", "fibrinogen__if_d-dimer_not_performed"),
        ("1st RT-PCR result", "1st_rt-pcr_result"),
        ("Date of acquisition of 1st RT-PCR", "date_of_acquisition_of_1st_rt-pcr"),
    ],
)
def test_clean_column_name(raw, clean):
    assert clean_column_name(raw) == clean


# --- ethnicity (3.2) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "group"),
    [
        *[(code, "White") for code in "ABC"],
        *[(code, "Multiple") for code in "DEFG"],
        *[(code, "Asian") for code in "HJKLR"],
        *[(code, "Black") for code in "MNP"],
        ("S", "Other"),
        ("a", "White"),
        ("s", "Other"),
        # master-only sub-codes
        ("C2", "White"),
        ("C3", "White"),
        ("CA", "White"),
        ("cy", "White"),
        ("GA", "Multiple"),
        ("GF", "Multiple"),
        ("LA", "Asian"),
        ("LK", "Asian"),
        ("PA", "Black"),
        ("PE", "Black"),
        ("SA", "Other"),
        ("SE", "Other"),
        # text values
        ("Indian", "Asian"),
        ("Pakistani", "Asian"),
        ("chinese", "Asian"),
        ("Caribbean", "Black"),
        ("African", "Black"),
        ("Any other Black background", "Black"),
        ("Any other Asian background", "Asian"),
        ("Any other ethnic group", "Other"),
        # the group names themselves
        ("White", "White"),
        ("black", "Black"),
        ("ASIAN", "Asian"),
        ("Multiple", "Multiple"),
        ("Other", "Other"),
        ("Unknown", "Unknown"),
        # heuristics: white wins over mixed
        ("White and Black Caribbean (mixed)", "White"),
        ("Any other mixed background", "Multiple"),
        ("Multiple ethnic groups", "Multiple"),
        ("White British", "White"),
        # everything else
        ("Z", "Unknown"),
        ("99", "Unknown"),
        ("0", "Unknown"),
        ("Not stated", "Unknown"),
        ("Bangladeshi", "Unknown"),
        ("black british", "Unknown"),
        ("GG", "Unknown"),
        (None, "Unknown"),
        (math.nan, "Unknown"),
        (0, "Unknown"),
        (["A"], "Unknown"),
    ],
)
def test_clean_ethnicity(raw, group):
    assert clean_ethnicity(raw) == group


def test_ethnicity_mapping_is_pure():
    # The original stored heuristic results in a module-level dict; ours must not leak state.
    before = dict(cleaning._ETHNICITY)
    clean_patient_table(pd.DataFrame({"Ethnicity": ["Some mixed text", "white-ish"]}))
    assert clean_ethnicity("Some mixed text") == "Multiple"
    assert dict(cleaning._ETHNICITY) == before


# --- sex (3.3) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "sex"),
    [
        ("0", "F"),
        ("f", "F"),
        ("F", "F"),
        ("1", "M"),
        ("m", "M"),
        ("M", "M"),
        ("2", "Unknown"),
        ("3", "Unknown"),
        ("unknown", "Unknown"),
        ("Male", "Unknown"),
        ("Female", "Unknown"),
        ("U", "Unknown"),
        ("", "Unknown"),
        (None, "Unknown"),
        (math.nan, "Unknown"),
        # converted to a string first: integers map even beside strings
        (0, "F"),
        (1, "M"),
        (2, "Unknown"),
        (1.0, "M"),  # an integer column with gaps becomes float64
        ("1.0", "Unknown"),
    ],
)
def test_clean_sex(raw, sex):
    assert clean_sex(raw) == sex


# --- numbers (3.4) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        ("5", 5.0),
        ("37.5", 37.5),
        (37.5, 37.5),
        (12, 12.0),
        ("5.", 5.0),
        (".5", 0.5),
        ("[55]", 55.0),
        ("[55] - 2020-03-27", 55.0),
        ("[5.5]", 5.5),
        ("text [123.25] more", 123.25),
        ("[5]", math.nan),
        ("-3", math.nan),
        ("1e3", math.nan),
        ("12 ug/L", math.nan),
        ("", math.nan),
        ("nan", math.nan),
        (".", math.nan),
        ("1.2.3", math.nan),
        (None, math.nan),
        (math.nan, math.nan),
        ("120/80", math.nan),
    ],
)
def test_to_number(raw, number):
    result = to_number(raw)
    assert isinstance(result, float)
    assert (math.isnan(result) and math.isnan(number)) or result == number


@pytest.mark.parametrize(
    ("raw", "pair"),
    [
        ("[137/91] - 2020-06-02", (137.0, 91.0)),
        ("[90/60]", (90.0, 60.0)),
        ("120", (120.0, 120.0)),
        (80, (80.0, 80.0)),
        ("120/80", (math.nan, math.nan)),
        ("[1200/80]", (math.nan, math.nan)),
        ("[9/60]", (math.nan, math.nan)),
        (None, (math.nan, math.nan)),
    ],
)
def test_blood_pressure(raw, pair):
    result = blood_pressure(raw)
    for got, want in zip(result, pair, strict=True):
        assert (math.isnan(got) and math.isnan(want)) or got == want


@pytest.mark.parametrize(
    ("raw", "age"),
    [
        (45.9, 45.0),
        ("45.9", 45.0),
        (78.876, 78.0),
        (81, 81.0),
        ("81", 81.0),
        (-1, -1.0),  # no range check
        ("eighty", math.nan),
        ("", math.nan),
        (None, math.nan),
        (math.nan, math.nan),
        (True, math.nan),
        ("inf", math.nan),
    ],
)
def test_age_years(raw, age):
    result = age_years(raw)
    assert (math.isnan(result) and math.isnan(age)) or result == age


# --- clipping (3.5) -------------------------------------------------------------------------


def test_clipping_in_table():
    df = pd.DataFrame(
        {
            "Temperature on admission": ["24.9", "25", "37.2", "45", "45.1", "98.6", "0"],
            "Urea on admission": ["0", "100", "100.5", "5", "x", "[12.5]", "[150]"],
            "O2 saturation": ["101", "98", "0", "", None, "50", "100"],
            "Fibrinogen  if d-dimer not performed": ["3", "200", "0", "100", "1", "2", "3"],
        }
    )
    out = clean_patient_table(df)
    nan = np.nan
    np.testing.assert_array_equal(
        out["temperature_on_admission"], [nan, 25, 37.2, 45, nan, nan, nan]
    )
    np.testing.assert_array_equal(out["urea_on_admission"], [0, 100, nan, 5, nan, 12.5, nan])
    np.testing.assert_array_equal(out["o2_saturation"], [nan, 98, 0, nan, nan, 50, 100])
    np.testing.assert_array_equal(
        out["fibrinogen__if_d-dimer_not_performed"], [3, nan, 0, 100, 1, 2, 3]
    )
    for column in ("temperature_on_admission", "urea_on_admission", "o2_saturation"):
        assert out[column].dtype == "float64"


# --- dates (3.6) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "date"),
    [
        ("03/31/2020", T("2020-03-31")),
        ("3/4/2020", T("2020-03-04")),
        ("03/04/20", T("2020-03-04")),
        ("31/03/2020", T("2020-03-31")),  # first number cannot be a month: day-first
        ("13/13/2020", pd.NaT),
        ("02/30/2020", pd.NaT),
        ("[Text] - 2020-03-27", T("2020-03-27")),
        ("2020-03-27", T("2020-03-27")),
        ("2020-13-27", pd.NaT),
        ("2020/03/04", T("2004-03-20")),  # quirk: token "20/03/04"
        ("admitted 04/01/2020 14:30", T("2020-04-01")),
        ("04/01/2020 and 2020-05-01", T("2020-04-01")),
        ("1/2/202", pd.NaT),
        (43909, pd.NaT),  # Excel serial
        ("43909", pd.NaT),
        (".", pd.NaT),
        (" ", pd.NaT),
        ("unknown", pd.NaT),
        (None, pd.NaT),
        (math.nan, pd.NaT),
    ],
)
def test_parse_us_date(raw, date):
    result = parse_us_date(raw)
    assert (result is pd.NaT and date is pd.NaT) or result == date


@pytest.mark.parametrize(
    ("raw", "date"),
    [
        ("05/04/2020", T("2020-04-05")),
        ("05/16/2020", T("2020-05-16")),  # falls back to month-first
        ("5/4/2020", T("2020-04-05")),
        ("05-04-2020", T("2020-04-05")),
        ("05.04.2020", T("2020-04-05")),
        ("05/04/20", T("2020-04-05")),
        ("2020-04-05", T("2020-04-05")),
        ("2020-04-05T10:30:00", T("2020-04-05")),
        ("2020-04-05 10:30:00", T("2020-04-05")),
        ("2020/04/05", T("2020-04-05")),
        ("20200405", T("2020-04-05")),
        ("5 April 2020", T("2020-04-05")),
        ("5-Apr-2020", T("2020-04-05")),
        (" 05/04/2020 ", T("2020-04-05")),
        ("31/02/2020", pd.NaT),
        ("13/13/2020", pd.NaT),
        ("[Text] - 2020-03-27", pd.NaT),
        ("5 Smarch 2020", pd.NaT),
        ("", pd.NaT),
        (43909, pd.NaT),
        (None, pd.NaT),
    ],
)
def test_parse_swab_date(raw, date):
    result = parse_swab_date(raw)
    assert (result is pd.NaT and date is pd.NaT) or result == date


def test_swab_dates_parsed_per_element_not_per_column():
    out = clean_patient_table(
        pd.DataFrame({"SwabDate": ["05/04/2020", "05/16/2020", "2020-04-05"]})
    )
    assert out["swabdate"].tolist() == [T("2020-04-05"), T("2020-05-16"), T("2020-04-05")]
    assert str(out["swabdate"].dtype).startswith("datetime64")


def test_parse_swab_dates():
    value = [
        {"SwabDate": "05/04/2020", "SwabStatus": 0},
        {"SwabDate": "junk", "SwabStatus": "0"},
        "not an object",
    ]
    parsed = parse_swab_dates(value)
    assert parsed[0] == {"SwabDate": T("2020-04-05"), "SwabStatus": 0}
    assert parsed[1]["SwabDate"] is pd.NaT and parsed[1]["SwabStatus"] == "0"
    assert parsed[2]["SwabDate"] is pd.NaT and parsed[2]["SwabStatus"] is None
    assert parse_swab_dates(None) == []
    assert parse_swab_dates(math.nan) == []
    assert parse_swab_dates("05/04/2020") == []


def test_latest_swab_date_needs_both_columns():
    df = pd.DataFrame(
        {
            "Date of Positive Covid Swab": ["04/10/2020", None, "04/10/2020", None],
            "SwabDate": ["05/04/2020", "05/04/2020", "01/04/2020", None],
        }
    )
    out = clean_patient_table(df)
    assert out["latest_swab_date"].tolist()[:3] == [
        T("2020-04-10"),
        T("2020-04-05"),
        T("2020-04-10"),
    ]
    assert out["latest_swab_date"].isna().tolist()[3]
    # master: not computed without SwabDate
    only_positive = clean_patient_table(df[["Date of Positive Covid Swab"]])
    assert "latest_swab_date" not in only_positive
    assert "swabdate" not in only_positive


# --- binary (3.7) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "flag"),
    [
        (0, False),
        ("0", False),
        ("0.0", False),
        (0.0, False),
        (False, False),
        (1, True),
        ("1", True),
        ("1.0", True),
        (1.0, True),
        (True, True),
        (2, None),
        ("2", None),
        ("Yes", None),
        ("", None),
        (None, None),
        (math.nan, None),
        ([1], None),
    ],
)
def test_to_binary(raw, flag):
    assert to_binary(raw) is flag


def test_h1pertension_flag():
    assert h1pertension_flag("1") is True
    assert h1pertension_flag("1es") is True
    assert h1pertension_flag(1) is None  # integer not matched
    assert h1pertension_flag(2) is None
    assert h1pertension_flag("2") is None


def test_hypertension_merge():
    df = pd.DataFrame(
        {
            "PMH hypertension": pd.Series([0, 2, "2", None, 1, None], dtype="object"),
            "PMH h1pertension": pd.Series(["1", "1es", 1, "1", "0", 2], dtype="object"),
        }
    )
    out = clean_patient_table(df)
    assert out["pmh_hypertension"].dtype == "boolean"
    assert out["pmh_hypertension"].tolist() == [False, True, pd.NA, True, True, pd.NA]


def test_hypertension_typo_column_alone():
    out = clean_patient_table(pd.DataFrame({"PMH h1pertension": ["1", "x"]}))
    assert out["pmh_hypertension"].tolist() == [True, pd.NA]


def test_diabetes_merge():
    df = pd.DataFrame(
        {
            "PMH diabetes mellitus type II": pd.Series([0, None, None, 1, None], dtype="object"),
            "PMH diabetes mellitus TYPE II": pd.Series([1, 1, "Yes", 0, 2], dtype="object"),
            "PMH diabetes mellitus TYPE I": pd.Series([1, 1, 1, 1, 1], dtype="object"),
        }
    )
    out = clean_patient_table(df)
    assert out["pmh_diabetes_mellitus_type_2"].tolist() == [False, True, pd.NA, True, pd.NA]
    assert "pmh_diabetes_mellitus_type_i" not in out
    # only the old upper-case column: no output column (as in master)
    old_only = clean_patient_table(df[["PMH diabetes mellitus TYPE II"]])
    assert "pmh_diabetes_mellitus_type_2" not in old_only


# --- categorical (3.8) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "allowed", "code"),
    [
        ("5 - Lung Ca", {"0", "1", "2", "3", "4", "5"}, "5"),
        ("CVCX2", {"0", "1", "2", "3"}, "2"),
        ("CVCX0", {"0", "1", "2", "3"}, "0"),
        ("2a", {"1", "2", "3"}, "2"),
        (1.0, {"0", "1", "2"}, "1"),
        (3, {"0", "1", "2"}, None),  # smoking 3 = Unknown
        ("6", {"0", "1", "2", "3", "4", "5"}, None),  # lung disease 6 = unknown
        ("10", {"2", "3", "4", "5"}, None),
        ("Unknown", {"0", "1"}, None),
        (None, {"0", "1"}, None),
        (math.nan, {"0", "1"}, None),
    ],
)
def test_to_category(raw, allowed, code):
    assert to_category(raw, allowed) == code


@pytest.mark.parametrize(
    ("raw", "years"),
    [
        ("20-30", "20"),
        ("approx 15", "15"),
        ("40", "40"),
        ("150", "150"),  # no range check
        ("none", None),
        ("", None),
        (20, None),  # non-strings are missing (section 7: a numbers-only column)
        (None, None),
    ],
)
def test_pack_years(raw, years):
    assert pack_years(raw) == years


def test_pack_years_numbers_only_column_does_not_raise():
    out = clean_patient_table(pd.DataFrame({"Pack year history": [10, 20, None]}))
    assert out["pack_year_history"].isna().all()


# --- test results (3.9) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "result"),
    [
        (0, "Negative"),
        ("0", "Negative"),
        (1, "Positive"),
        ("1", "Positive"),
        ("RNA DETECTED (SARS-CoV-2)", "Positive"),
        ("Positive", None),
        ("Negative", None),
        ("1.0", None),
        ("", None),
        (None, None),
        (math.nan, None),
        (2, None),
    ],
)
def test_test_result(raw, result):
    assert test_result(raw) == result


# --- FiO2 (3.10) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "percent"),
    [
        # branch 1: fractions
        ("0.28", 28),
        ("1.0", 100),
        (0.4, 40),
        ("0.215", 22),
        ("0.285", 28),  # float error: 28.4999...
        ("28.0", None),  # 2800, out of range
        # branch 2: litres/min and colours, case-insensitive
        ("10L", 60),
        ("10l", 60),
        ("15L", 100),
        ("Blue", 24),
        ("yellow", 35),
        ("YELLOW", 35),
        # branch 3: exact keys, case-sensitive
        ("7", 41),
        ("15", 100),
        (15, 100),
        ("1", 25),
        ("white", 28),
        ("green", 60),
        ("White", None),
        ("Green", None),
        # branch 4: plain percentages
        ("21", 21),
        ("100", 100),
        ("0", 0),
        ("16", 16),
        (21, 21),
        ("101", None),
        ("RA", None),
        ("-5", None),
        (None, None),
        (math.nan, None),
        # crash the original (AttributeError); missing here
        (".", None),
        ("2.5L", None),
        ("4l/min", None),
        ("2 L", None),
        ("null", None),
        ("1.0e400", None),
    ],
)
def test_fio2_percent(raw, percent):
    assert fio2_percent(raw) == percent


# --- DICOM age (3.13) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "years"),
    [
        ("024M", 2.0),
        ("026W", 0.5),
        ("073D", 0.2),
        ("111Y", 111.0),
        ("045Y", 45.0),
        ("045Y ", 45.0),
        ("81", None),
        ("XXXY", None),
        ("045X", None),
        ("Y", None),
        ("", None),
        (None, None),
        (math.nan, None),
        (45, None),
    ],
)
def test_dicom_age_years(raw, years):
    result = dicom_age_years(raw)
    assert result == pytest.approx(years) if years is not None else result is None


# --- the table pipeline (3.1, 3.11) ---------------------------------------------------------


def raw_records():
    return [
        {
            "Pseudonym": "Covid1",
            "SubmittingCentre": "Imperial College Healthcare NHS Trust",
            "Age": 45.9,
            "Sex": 1,
            "Ethnicity": "A",
            "Date of Positive Covid Swab": "03/31/2020",
            "Date of admission": "[Text] - 2020-03-27",
            "Temperature on admission": "98.6",
            "Heart rate on admission": "[88] - 2020-03-27",
            "Systolic BP": "[137/91] - 2020-06-02",
            "Diastolic BP": "[137/91] - 2020-06-02",
            "FiO2": 21,
            "PMH hypertension": 1,
            "Smoking status": "1",
            "Pack year history": "20-30",
            "CXR severity": "2",
            "CXR severity 3": "3",
            "COVID CODE": "CVCX1",
            "1st RT-PCR result": "RNA DETECTED (SARS-CoV-2)",
            "Final COVID Status": 1,
            "If CKD, stage": "3",
            "Death": "0",
        },
        {
            "Pseudonym": "Covid2",
            "SubmittingCentre": "Cambridge University Hospitals NHS Foundation Trust",
            "Sex": "F",
            "Ethnicity": "White and Black Caribbean (mixed)",
            "SwabStatus": 0,
            "SwabDate": "05/16/2020",
            "SwabDates": [{"SwabDate": "05/04/2020", "SwabStatus": 0}],
            "FiO2": "2 L",
            "Age": "unknown",
        },
    ]


def raw_table():
    rows = [
        {
            **record,
            "filename_earliest_date": "2021-02-15",
            "filename_covid_status": i == 0,
            "filename_latest_date": "2021-03-01",
            "last_modified": "2021-03-02",
            "group": "training",
        }
        for i, record in enumerate(raw_records())
    ]
    return patient_table(rows)


def test_clean_patient_table_end_to_end():
    raw = raw_table()
    before = raw.copy()
    out = clean_patient_table(raw)
    pd.testing.assert_frame_equal(raw, before)  # input untouched

    assert list(out.columns[: len(raw.columns)]) == list(raw.columns)  # raw columns kept first
    first, second = out.iloc[0], out.iloc[1]

    assert out["ethnicity"].tolist() == ["White", "White"]
    assert out["sex"].tolist() == ["M", "F"]
    assert first["age"] == 45.0 and math.isnan(second["age"])
    assert math.isnan(first["temperature_on_admission"])  # 98.6 F is not converted
    assert first["heart_rate_on_admission"] == 88.0
    assert (first["systolic_bp"], first["diastolic_bp"]) == (137.0, 91.0)
    assert first["date_of_positive_covid_swab"] == T("2020-03-31")
    assert first["date_of_admission"] == T("2020-03-27")
    assert second["swabdate"] == T("2020-05-16")
    assert out["latest_swab_date"].tolist() == [T("2020-03-31"), T("2020-05-16")]
    assert second["swabdates"] == [{"SwabDate": T("2020-04-05"), "SwabStatus": 0}]
    assert out["swabdates"].iloc[0] == []
    assert first["fio2"] == 21.0 and math.isnan(second["fio2"])
    assert out["pmh_hypertension"].tolist() == [True, pd.NA]
    assert out["death"].tolist() == [False, pd.NA]
    assert first["smoking_status"] == "1"
    assert first["pack_year_history"] == "20"
    assert first["cxr_severity"] == "2"
    assert first["cxr_severity_2"] == "3"  # header fix
    assert "cxr_severity_3" not in out
    assert first["covid_code"] == "1"
    assert first["if_ckd_stage"] == "3"
    assert first["1st_rt-pcr_result"] == "Positive"
    assert first["final_covid_status"] == "Positive"

    assert out["age"].dtype == "float64"
    assert out["fio2"].dtype == "float64"
    assert out["heart_rate_on_admission"].dtype == "float64"
    assert out["date_of_admission"].dtype == "datetime64[ns]"
    assert out["swabdate"].dtype == "datetime64[ns]"
    assert out["death"].dtype == "boolean"
    assert out["ethnicity"].dtype == "str"


def test_header_fix_keeps_position():
    out = clean_patient_table(pd.DataFrame({"CXR severity": ["1"], "CXR severity 3": ["2"]}))
    cleaned = [c for c in out.columns if c.startswith("cxr")]
    assert cleaned == ["cxr_severity", "cxr_severity_2"]


def test_all_blank_numeric_column_is_float64():
    out = clean_patient_table(pd.DataFrame({"Ferritin": ["", None, " "]}))
    assert out["ferritin"].dtype == "float64"
    assert out["ferritin"].isna().all()


def test_without_ethnicity_and_sex_columns():
    df = pd.DataFrame({"Pseudonym": ["Covid1", "Covid2"], "Age": [50, None]})
    out = clean_patient_table(df)
    assert out["ethnicity"].isna().all()
    assert out["sex"].isna().all()
    assert out["age"].tolist()[0] == 50.0


def test_empty_table():
    out = clean_patient_table(pd.DataFrame())
    assert len(out) == 0
    assert {"ethnicity", "sex"} <= set(out.columns)


def test_steps_only_for_present_columns():
    out = clean_patient_table(pd.DataFrame({"Pseudonym": ["Covid1"], "Sex": ["m"]}))
    assert set(out.columns) == {"Pseudonym", "Sex", "ethnicity", "sex"}


def test_integer_only_sex_column_is_cleaned():
    out = clean_patient_table(pd.DataFrame({"Sex": [0, 1, 2]}))
    assert out["sex"].tolist() == ["F", "M", "Unknown"]


def test_str_dtype_columns_and_mixed_object_columns():
    df = pd.DataFrame(
        {
            "Ethnicity": pd.Series(["a", None, "Indian"], dtype="str"),
            "Heart rate on admission": pd.Series([80, "[90] - 2020-01-01", None], dtype="object"),
            "Date of admission": pd.Series(["03/04/2020", 43909, None], dtype="object"),
        }
    )
    out = clean_patient_table(df)
    assert out["ethnicity"].tolist() == ["White", "Unknown", "Asian"]
    assert out["heart_rate_on_admission"].tolist()[:2] == [80.0, 90.0]
    assert out["date_of_admission"].tolist()[0] == T("2020-03-04")
    assert out["date_of_admission"].isna().tolist() == [False, True, True]


def test_index_is_preserved():
    df = pd.DataFrame({"Age": ["40", "50"]}, index=[7, 3])
    out = clean_patient_table(df)
    assert out.index.tolist() == [7, 3]
    assert out.loc[3, "age"] == 50.0


# --- filling from DICOM (3.13) --------------------------------------------------------------


def images(rows):
    return pd.DataFrame(rows, columns=["Pseudonym", "PatientSex", "PatientAge"])


def test_fill_from_dicom():
    clean = pd.DataFrame(
        {
            "Pseudonym": ["Covid1", "Covid2", "Covid3", "Covid4", "Covid5"],
            "age": [50.0, np.nan, np.nan, np.nan, np.nan],
            "sex": ["M", "Unknown", "Unknown", "F", "Unknown"],
        }
    )
    image_rows = images(
        [
            ("Covid1", "F", "060Y"),
            ("Covid2", "F", "045Y"),
            ("Covid2", "F", "047Y"),  # oldest is chosen
            ("Covid2", "F", "024M"),
            ("Covid3", "M", "030Y"),
            ("Covid3", "", "81"),  # unparseable age: this row wins
            ("Covid4", "M", "026W"),
        ]
    )
    out = fill_from_dicom(clean, image_rows)
    assert out["age_update"].tolist()[:2] == [50.0, 47.0]  # age present: kept
    assert math.isnan(out["age_update"].tolist()[2])
    assert out["age_update"].tolist()[3] == pytest.approx(0.5)  # not floored
    assert math.isnan(out["age_update"].tolist()[4])  # no image
    assert out["sex_update"].tolist() == ["M", "F", "", "F", "Unknown"]
    assert out["age_update"].dtype == "float64"
    assert "age_update" not in clean  # input untouched


def test_fill_from_dicom_missing_sex_is_filled():
    clean = pd.DataFrame({"Pseudonym": ["Covid1", "Covid2"], "sex": [np.nan, np.nan]})
    out = fill_from_dicom(clean, images([("Covid1", "O", "045Y"), ("Covid2", None, None)]))
    assert out["sex_update"].tolist()[0] == "O"
    assert pd.isna(out["sex_update"].tolist()[1])
    assert out["age_update"].tolist()[0] == 45.0


@pytest.mark.parametrize("image_rows", [None, pd.DataFrame(), images([])])
def test_fill_from_dicom_without_images(image_rows):
    clean = pd.DataFrame({"Pseudonym": ["Covid1"], "age": [np.nan], "sex": ["Unknown"]})
    out = fill_from_dicom(clean, image_rows)
    assert math.isnan(out["age_update"].iloc[0])
    assert out["sex_update"].iloc[0] == "Unknown"


def test_fill_from_dicom_tolerates_missing_columns():
    out = fill_from_dicom(
        pd.DataFrame({"Pseudonym": ["Covid1"]}), pd.DataFrame({"Pseudonym": ["Covid1"]})
    )
    assert math.isnan(out["age_update"].iloc[0])
    assert pd.isna(out["sex_update"].iloc[0])


# --- many patients --------------------------------------------------------------------------------


def synthetic_patients(n, seed=0):
    rng = random.Random(seed)
    messy = {
        "Age": [45, 78.876, "81", "", None],
        "Sex": ["0", "1", "F", "M", 0, 1, "Unknown", None],
        "Ethnicity": ["A", "CA", "Indian", "White British", "Mixed", "99", None],
        "Date of Positive Covid Swab": ["03/31/2020", "31/03/2020", "[x] - 2020-03-27", 43909],
        "Date of admission": ["04/01/2020", "2020/03/04", None],
        "SwabDate": ["05/04/2020", "05/16/2020", "2020-04-05", None],
        "Heart rate on admission": ["88", "[88] - 2020-03-27", "-3", 90],
        "Temperature on admission": ["37.2", "98.6", "[38.5] - 2020-01-01", ""],
        "Systolic BP": ["120", "[137/91] - 2020-06-02", "120/80"],
        "Diastolic BP": ["80", "[137/91] - 2020-06-02", ""],
        "FiO2": ["0.28", "10L", "Blue", "21", "2 L", ".", None, 21],
        "PMH hypertension": [0, 1, 2, "1", "Yes"],
        "PMH h1pertension": ["1", "1es", 2, None],
        "Smoking status": ["0", "1", "3", "2a"],
        "Pack year history": ["20-30", "approx 15", 20, None],
        "CXR severity 3": ["1", "0", "Severe"],
        "COVID CODE": ["CVCX0", "CVCX2", ""],
        "1st RT-PCR result": [0, "1", "RNA DETECTED (SARS-CoV-2)", "Positive"],
        "Death": [0, 1, "0.0", ""],
    }
    numeric = [c for c in cleaning.NUMERIC_COLUMNS if c not in messy]
    rows = []
    for i in range(n):
        row = {"Pseudonym": f"Covid{i}"}
        row.update({k: rng.choice(v) for k, v in messy.items()})
        row.update({k: rng.choice(["12", "[55] - 2020-01-01", "x", 7.5]) for k in numeric})
        rows.append(row)
    return pd.DataFrame(rows, dtype="object")


def test_5000_messy_patients_are_cleaned_row_by_row():
    """The whole table at once (vectorised) gives each patient the row it gets alone. (How long
    it takes is a figure of the benchmarks, not a test: no wall-clock assertion here.)
    """
    df = synthetic_patients(5000)
    out = clean_patient_table(df)
    assert len(out) == 5000
    assert out["Pseudonym"].tolist() == [f"Covid{i}" for i in range(5000)]
    for i in range(0, 5000, 97):
        alone = clean_patient_table(df.iloc[[i]].reset_index(drop=True))
        pd.testing.assert_frame_equal(
            out.iloc[[i]].reset_index(drop=True), alone, check_dtype=False
        )
