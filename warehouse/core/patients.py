"""Patients and their group: the split rule, and the registry of groups for one run.

The split rule must stay bit-for-bit stable: existing warehouses depend on it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable

from warehouse.core.config import PipelineConfig
from warehouse.core.reasons import Reason


def is_training_by_hash(pseudonym: str, training_percentage: int) -> bool:
    """Return whether a split site's patient goes to training.

    ``int(sha512(pseudonym.strip().upper()).hexdigest(), 16) % 100 < training_percentage``.

    Parameters
    ----------
    pseudonym : str
        The patient's pseudonym; case and surrounding white space do not matter.
    training_percentage : int
        Share of patients (0..100) that go to training.
    """
    digest = hashlib.sha512(pseudonym.strip().upper().encode("utf-8")).hexdigest()
    return int(digest, 16) % 100 < training_percentage


class UnknownSite(LookupError):
    """The submitting centre is in no list of ``config.json``."""

    reason = Reason.SITE_NOT_IN_CONFIG

    def __init__(self, centre: str):
        super().__init__(f"SubmittingCentre {centre!r}")
        self.centre = centre

    def __str__(self) -> str:  # (LookupError would quote the message)
        return str(self.args[0])


def group_for(pseudonym: str, centre: str, config: PipelineConfig) -> str:
    """Group (``training`` or ``validation``) that the config gives a patient of ``centre``.

    Raises
    ------
    UnknownSite
        When ``centre`` is not configured (matched by `PipelineConfig.site_rule`).
    """
    rule = config.site_rule(centre)
    if rule is None:
        raise UnknownSite(centre)
    if rule == "split":
        return (
            "training"
            if is_training_by_hash(pseudonym, config.training_percentage)
            else "validation"
        )
    return rule


class GroupConflict(Exception):
    """A patient already has the other group."""

    reason = Reason.GROUP_CONFLICT

    def __init__(self, pseudonym: str, existing: str, wanted: str):
        super().__init__(f"{pseudonym} is in {existing}; this file would put it in {wanted}")
        self.pseudonym, self.existing, self.wanted = pseudonym, existing, wanted


class CaseVariant(Exception):
    """A new pseudonym that differs only in case from a known patient's: the split rule
    (upper case) takes them for one patient, the warehouse folders for two."""

    reason = Reason.CASE_VARIANT

    def __init__(self, pseudonym: str, known: str):
        super().__init__(f"{pseudonym!r} differs only in case from the patient {known!r}")
        self.pseudonym, self.known = pseudonym, known


class PatientGroups:
    """Each patient's group for one run: those already in the warehouse win, then first come.

    Thread-safe; assignments for new patients must be made in a deterministic order (earliest
    upload first), which the clinical node guarantees.
    """

    def __init__(self, existing: dict[str, str] | None = None, conflicted: Iterable[str] = ()):
        self._groups: dict[str, str] = dict(existing or {})
        # Patients already filed in both groups: nothing more is filed for them.
        self._conflicted = frozenset(conflicted)
        for pseudonym in self._conflicted:
            self._groups.pop(pseudonym, None)
        self._by_case: dict[str, str] = {}
        for pseudonym in (*self._groups, *self._conflicted):
            self._by_case.setdefault(pseudonym.upper(), pseudonym)
        self._lock = threading.Lock()

    def case_variant(self, pseudonym: str) -> str | None:
        """A known patient whose pseudonym differs from this one only in case, or None."""
        known = self._by_case.get(pseudonym.upper())
        return known if known is not None and known != pseudonym else None

    def get(self, pseudonym: str) -> str | None:
        """Return the patient's group, or None if the patient is unknown or conflicted."""
        return self._groups.get(pseudonym)

    def assign(self, pseudonym: str, group: str) -> str:
        """Record ``group`` for a new patient, or check it against the known one.

        Returns
        -------
        str
            The patient's group.

        Raises
        ------
        GroupConflict
            When the patient already has the other group.
        CaseVariant
            When another patient's pseudonym differs from this one only in case.
        """
        if pseudonym in self._conflicted:
            raise GroupConflict(pseudonym, "both groups", group)
        with self._lock:
            known = self.case_variant(pseudonym)
            if known is not None:
                raise CaseVariant(pseudonym, known)
            self._by_case.setdefault(pseudonym.upper(), pseudonym)
            existing = self._groups.setdefault(pseudonym, group)
        if existing != group:
            raise GroupConflict(pseudonym, existing, group)
        return existing

    def pseudonyms(self) -> list[str]:
        """Return the patients that have a group (a snapshot)."""
        with self._lock:
            return list(self._groups)

    def __len__(self) -> int:
        return len(self._groups)
