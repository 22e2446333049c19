"""The series table's flags on the internal dashboard, per submitting centre and modality.

For each: how many series, and how many are complete volumes, have gaps, irregular spacing,
mixed orientation or duplicate positions, are single images or multi-frame
(`warehouse.catalogue.series`).
"""

from __future__ import annotations

import pandas as pd

from warehouse.catalogue.series import COUNT_COLUMNS

#: The site of a patient the cleaned patient table has no centre for.
NO_SITE = "(no clinical record)"
#: The columns of the dashboard's table.
SITE_COLUMNS = ("SubmittingCentre", "modality_folder", *COUNT_COLUMNS)


def series_by_site(counts: pd.DataFrame | None, patient_clean: pd.DataFrame) -> pd.DataFrame:
    """Sum the series counts of each patient (`series.series_counts`) per site and modality.

    Parameters
    ----------
    counts : pandas.DataFrame or None
        Per group, patient and modality folder: series and flag counts.
    patient_clean : pandas.DataFrame
        The cleaned patient table: each ``Pseudonym``'s ``SubmittingCentre`` (its first row).

    Returns
    -------
    pandas.DataFrame
        `SITE_COLUMNS`, sorted by site and modality folder; a patient without a centre counts
        under `NO_SITE`.
    """
    if counts is None or not len(counts):
        return pd.DataFrame({name: pd.Series([], dtype="object") for name in SITE_COLUMNS})
    sites: dict[str, str] = {}
    if {"Pseudonym", "SubmittingCentre"} <= set(patient_clean.columns):
        first = patient_clean.drop_duplicates("Pseudonym")
        for pseudonym, centre in zip(first["Pseudonym"], first["SubmittingCentre"], strict=True):
            if isinstance(centre, str) and centre:
                sites[str(pseudonym)] = centre
    frame = counts.assign(
        SubmittingCentre=[sites.get(str(patient), NO_SITE) for patient in counts["PatientID"]]
    )
    frame["modality_folder"] = frame["modality_folder"].fillna("")
    table = frame.groupby(["SubmittingCentre", "modality_folder"], as_index=False)[
        list(COUNT_COLUMNS)
    ].sum()
    return table.sort_values(["SubmittingCentre", "modality_folder"], ignore_index=True)[
        list(SITE_COLUMNS)
    ]
