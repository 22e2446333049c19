"""The synthetic sites: their centres, uploader prefixes, hospitals and upload days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

FIRST_UPLOAD = date(2021, 1, 4)

UPLOAD_BATCHES = 12


@dataclass(frozen=True)
class Site:
    """One submitting centre and the uploader prefix it writes under.

    Attributes
    ----------
    centre : str
        The ``SubmittingCentre`` value of its clinical records.
    uploader : str
        Its raw prefix, ``raw-<aws user>``.
    kind : str
        ``split``, ``training`` or ``validation`` (its list in ``config.json``),
        ``unconfigured`` (prefix listed, centre in no list) or ``unlisted`` (centre in
        ``sites.split`` but prefix absent from ``raw_prefixes``, so all its files are ignored).
    hospitals : tuple of str
        Values of the clinical ``Hospital`` field (a mix of short and full names).
    weekday : int
        Day offset of its weekly upload batches from the first Monday.
    """

    centre: str
    uploader: str
    kind: str
    hospitals: tuple[str, ...]
    weekday: int

    def upload_dates(self) -> list[str]:
        """Return the site's weekly upload batch dates, ``YYYY-MM-DD``, oldest first."""
        first = FIRST_UPLOAD + timedelta(days=self.weekday)
        return [(first + timedelta(weeks=k)).isoformat() for k in range(UPLOAD_BATCHES)]


#: The synthetic sites: two split, one all-training, one all-validation, one unconfigured,
#: one whose prefix is not listed. Patients are spread over the first four by these weights.
SITES = (
    Site(
        "Imperial College Healthcare NHS Trust",
        "raw-imperial",
        "split",
        ("Hammersmith Hospital", "St Mary's Hospital", "Charing Cross Hospital", "ICHT"),
        0,
    ),
    Site(
        "Cambridge University Hospitals NHS Foundation Trust",
        "raw-cambridge",
        "split",
        ("Addenbrooke's Hospital", "Cambridge University Hospitals NHS Foundation Trust"),
        1,
    ),
    Site(
        "Royal Cornwall Hospitals NHS Trust",
        "raw-cornwall",
        "training",
        ("Royal Cornwall Hospital", "RCHT", "West Cornwall Hospital"),
        2,
    ),
    Site(
        "West Suffolk NHS Foundation Trust",
        "raw-westsuffolk",
        "validation",
        ("West Suffolk Hospital", "West Suffolk NHS Foundation Trust"),
        3,
    ),
    Site(
        "Norfolk and Norwich University Hospitals NHS Foundation Trust",
        "raw-norwich",
        "unconfigured",
        ("Norfolk and Norwich University Hospital", "NNUH"),
        4,
    ),
    Site(
        "Sheffield Children's NHS Foundation Trust",
        "raw-sheffield",
        "unlisted",
        ("Sheffield Children's Hospital",),
        1,
    ),
)
