"""Synthetic clinical records: the positive patients' full records and the negative ones'
status records, in the forms sites really send (US dates, codes, measures), and corrections."""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from typing import Any

from warehouse.synthetic.choices import CLINICAL_DAYS, CLINICAL_START, patient_traits
from warehouse.synthetic.sites import SITES


def _clinical_day(rng: random.Random) -> date:
    return CLINICAL_START + timedelta(days=rng.randrange(CLINICAL_DAYS))


def _us_date(day: date, rng: random.Random) -> Any:
    """A MM/DD/YYYY date, sometimes in one of the messy forms seen in real uploads."""
    roll = rng.random()
    if roll < 0.04:
        return f"{rng.choice(['Admitted', 'Swab', 'Unknown time'])} - {day.isoformat()}"
    if roll < 0.06:
        return (day - date(1899, 12, 30)).days  # Excel serial number
    if roll < 0.09:
        return f"{day.month}/{day.day}/{day.year % 100:02d}"  # M/D/YY
    return day.strftime("%m/%d/%Y")


def _measure(value: float | int, rng: random.Random, day: date) -> Any:
    """A measurement as a number, a string, ``[value] - date`` text, or blank."""
    roll = rng.random()
    if roll < 0.06:
        return f"[{value}] - {day.isoformat()}"
    if roll < 0.09:
        return ""
    if roll < 0.2:
        return str(value)
    return value


def _code(value: int, rng: random.Random, texts: tuple[str, ...] = ()) -> Any:
    """A coded answer as an int, sometimes as a string or a code with free text."""
    roll = rng.random()
    if texts and roll < 0.08:
        return f"{value} - {rng.choice(texts)}"
    if roll < 0.2:
        return str(value)
    return value


def _status_record(pseudonym: str, centre: str, rng: random.Random) -> dict[str, Any]:
    swab = _clinical_day(rng)
    record: dict[str, Any] = {
        "Pseudonym": pseudonym,
        "SubmittingCentre": centre,
        "SwabStatus": rng.choice((0, 0, 0, "0")),
        "SwabDate": swab.strftime("%d/%m/%Y"),
    }
    if rng.random() < 0.15:
        earlier = swab - timedelta(days=rng.randint(2, 20))
        record["SwabDates"] = [
            {"SwabDate": earlier.strftime("%d/%m/%Y"), "SwabStatus": 0},
            {"SwabDate": record["SwabDate"], "SwabStatus": 0},
        ]
    if rng.random() < 0.1:
        record["SpecialFormatTimestamp"] = f"{swab.isoformat()}T09:{rng.randint(10, 59)}:00Z"
    return record


def _data_record(pseudonym: str, centre: str, rng: random.Random) -> dict[str, Any]:
    sex, age = patient_traits(pseudonym)
    swab = _clinical_day(rng)
    admitted = swab + timedelta(days=rng.randint(-3, 4))
    hospitals = next((s.hospitals for s in SITES if s.centre == centre), (centre,))
    record: dict[str, Any] = {"Pseudonym": pseudonym, "SubmittingCentre": centre}
    record["Hospital"] = rng.choice(hospitals)

    roll = rng.random()
    record["Age"] = (
        round(age + rng.random(), 3) if roll < 0.05 else (str(age) if roll < 0.15 else age)
    )
    roll = rng.random()
    sex_code = 1 if sex == "M" else 0
    record["Sex"] = sex if roll < 0.05 else (2 if roll < 0.07 else sex_code)
    roll = rng.random()
    if roll < 0.08:
        record["Ethnicity"] = rng.choice(("Any other ethnic group", "Unknown", "99", "0", "Indian"))
    else:
        record["Ethnicity"] = rng.choice("AAAAAABCDHJKLMNPRS")

    record["Date of Positive Covid Swab"] = _us_date(swab, rng)
    record["Date of acquisition of 1st RT-PCR"] = _us_date(swab, rng)
    record["Date of result of 1st RT-PCR"] = _us_date(swab + timedelta(days=1), rng)
    record["1st RT-PCR result"] = rng.choice((1, 1, 1, "1", "RNA DETECTED (SARS-CoV-2)"))
    if rng.random() < 0.4:
        second = swab + timedelta(days=rng.randint(3, 10))
        record["Date of acquisition of 2nd RT-PCR"] = _us_date(second, rng)
        record["Date of result of 2nd RT-PCR"] = _us_date(second + timedelta(days=1), rng)
        record["2nd RT-PCR result"] = rng.choice((0, 1, "0", ""))
    record["Final COVID Status"] = rng.choice((1, 1, 1, "1"))
    record["Date of admission"] = _us_date(admitted, rng)
    record["Duration of symptoms"] = _measure(rng.randint(1, 21), rng, admitted)

    smoking = rng.randint(0, 3)
    record["Smoking status"] = _code(smoking, rng)
    if smoking in (1, 2):
        record["Pack year history"] = rng.choice((rng.randint(5, 60), "20-30", "approx 15", ""))
    if rng.random() < 0.06:
        record["PMH h1pertension"] = rng.choice(("1es", 1, 2))
    else:
        record["PMH hypertension"] = _code(rng.choice((0, 0, 1, 1, 2, 3)), rng)
    ckd = rng.choice((0, 0, 0, 1, 2))
    record["PMH CKD"] = _code(ckd, rng)
    if ckd == 1:
        record["If CKD, stage"] = _code(rng.randint(2, 5), rng)
    record["PMH CVS disease"] = _code(rng.randint(0, 4), rng)
    record["PMH Lung disease"] = _code(
        rng.choice((0, 0, 0, 1, 2, 4, 5, 6)), rng, ("Bronchiectasis", "Lung Ca", "OSA")
    )
    if rng.random() < 0.08:
        record["PMH diabetes mellitus TYPE II"] = rng.choice((0, 1, 2, "Yes"))
    else:
        record["PMH diabetes mellitus type II"] = _code(rng.choice((0, 0, 1, 2)), rng)
    record["Current ACEi use"] = _code(rng.choice((0, 0, 1, 2)), rng)
    record["Current Angiotension receptor blocker use"] = _code(rng.choice((0, 0, 1, 2)), rng)
    record["Current NSAID used"] = _code(rng.choice((0, 0, 1, 2)), rng)

    record["Respiratory rate on admission"] = _measure(rng.randint(12, 40), rng, admitted)
    record["Heart rate on admission"] = _measure(rng.randint(55, 140), rng, admitted)
    record["FiO2"] = rng.choice(
        (21, 21, 0.28, 0.4, "0.35", "10L", "2 L", "Blue", "white", 15, "RA")
    )
    record["O2 saturation"] = _measure(rng.randint(82, 100), rng, admitted)
    record["PaO2"] = _measure(round(rng.uniform(6.5, 14.0), 1), rng, admitted)
    systolic, diastolic = rng.randint(95, 175), rng.randint(50, 100)
    if rng.random() < 0.06:
        blood_pressure = f"[{systolic}/{diastolic}] - {admitted.isoformat()}"
        record["Systolic BP"] = record["Diastolic BP"] = blood_pressure
    else:
        record["Systolic BP"] = systolic
        record["Diastolic BP"] = diastolic
    temperature = round(rng.uniform(36.0, 39.8), 1)
    if rng.random() < 0.05:
        temperature = round(temperature * 9 / 5 + 32, 1)  # sent in Fahrenheit
    record["Temperature on admission"] = _measure(temperature, rng, admitted)
    record["NEWS2 score on arrival"] = _measure(rng.randint(0, 12), rng, admitted)
    record["WCC on admission"] = _measure(round(rng.uniform(3.0, 18.0), 1), rng, admitted)
    record["Lymphocyte count on admission"] = _measure(
        round(rng.uniform(0.3, 3.0), 2), rng, admitted
    )
    record["Platelet count on admission"] = _measure(rng.randint(90, 450), rng, admitted)
    record["CRP on admission"] = _measure(rng.randint(2, 350), rng, admitted)
    record["D-dimer on admission"] = _measure(rng.randint(200, 5000), rng, admitted)
    if rng.random() < 0.3:
        record["Fibrinogen  if d-dimer not performed"] = _measure(
            round(rng.uniform(1.5, 7.0), 1), rng, admitted
        )
    record["Ferritin"] = _measure(rng.randint(20, 3000), rng, admitted)
    record["Urea on admission"] = _measure(round(rng.uniform(2.5, 30.0), 1), rng, admitted)
    record["Creatinine on admission"] = _measure(rng.randint(45, 400), rng, admitted)
    if rng.random() < 0.5:
        record["Troponin I"] = _measure(rng.randint(2, 800), rng, admitted)
    else:
        record["Troponin T"] = _measure(rng.randint(3, 500), rng, admitted)

    first_cxr = admitted + timedelta(days=rng.randint(0, 2))
    record["Date of 1st CXR"] = _us_date(first_cxr, rng)
    record["CXR severity"] = _code(rng.randint(1, 3), rng)
    record["COVID CODE"] = f"CVCX{rng.randint(0, 3)}"
    if rng.random() < 0.5:
        record["Date of 2nd CXR"] = _us_date(first_cxr + timedelta(days=rng.randint(2, 14)), rng)
        record["CXR severity 3"] = rng.choice((0, 1, 2, 3, "2", "improving"))
        record["COVID CODE 2"] = f"CVCX{rng.randint(0, 3)}"

    itu = rng.random() < 0.2
    record["ITU admission " if rng.random() < 0.05 else "ITU admission"] = int(itu)
    if itu:
        itu_day = admitted + timedelta(days=rng.randint(0, 5))
        record["Date of ITU admission"] = _us_date(itu_day, rng)
        record["APACHE score on ITU arrival"] = _measure(rng.randint(5, 40), rng, itu_day)
        intubated = rng.random() < 0.6
        record["Intubation"] = int(intubated)
        if intubated:
            record["Date of intubation"] = _us_date(itu_day + timedelta(days=1), rng)
    else:
        record["Intubation"] = 0
    died = rng.random() < 0.15
    record["Death"] = int(died)
    last_seen = admitted + timedelta(days=rng.randint(3, 60))
    if died:
        record["Date of death"] = _us_date(last_seen, rng)
    record["Date last known alive"] = _us_date(last_seen, rng)
    if rng.random() < 0.1:
        record["OtherDataSources"] = {
            "SegmentationData": {"Ethnicity": rng.choice(("CA", "C2", "LA", "PB", "GC"))}
        }
    return record


def clinical_record(pseudonym: str, centre: str, kind: str, rng: random.Random) -> dict[str, Any]:
    """Return a realistic clinical record for one patient upload.

    Parameters
    ----------
    pseudonym : str
        The patient's pseudonym (``Pseudonym`` field; equals DICOM PatientID).
    centre : str
        The ``SubmittingCentre`` value.
    kind : {"data", "status"}
        ``"data"``: a COVID-positive patient's full record (clinical-data.md section 2):
        demographics, swab and RT-PCR dates (MM/DD/YYYY), history, admission measurements,
        outcomes, with some of the messy values real sites send (text-embedded values,
        Excel serial dates, Fahrenheit, header typos, nested ``OtherDataSources``).
        ``"status"``: a negative control: ``Pseudonym``, ``SubmittingCentre``,
        ``SwabStatus``, ``SwabDate`` (DD/MM/YYYY), sometimes ``SwabDates``.
    rng : random.Random
        Source of randomness; the record depends only on it and the arguments.

    Returns
    -------
    dict
        The record, ready for ``json.dumps``. Age and sex agree with the patient's DICOM
        headers made by :func:`build_dicom`.
    """
    if kind == "status":
        return _status_record(pseudonym, centre, rng)
    if kind == "data":
        return _data_record(pseudonym, centre, rng)
    raise ValueError(f"kind must be 'data' or 'status', not {kind!r}")


def correction(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Return a later corrected upload of ``record`` (same patient, same kind)."""
    corrected = dict(record)
    if "SwabDate" in record and "Date of admission" not in record:
        corrected["SwabDates"] = [
            {"SwabDate": record["SwabDate"], "SwabStatus": 0},
            {"SwabDate": _clinical_day(rng).strftime("%d/%m/%Y"), "SwabStatus": 0},
        ]
    else:
        corrected["Death"] = 1
        corrected["Date of death"] = _us_date(_clinical_day(rng) + timedelta(days=30), rng)
        corrected["Ethnicity"] = rng.choice("ABHMR")
    return corrected


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("ascii")
