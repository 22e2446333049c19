"""What one loader run has to do, decided from the listings alone (no request per object).

`plan_inputs` takes the index of the warehouse side, the classified raw side and the last run's
memo, reports everything that needs no reading (links, keys outside the layout, unsafe names,
implausible modification times and upload dates, raw files changed since they were filed,
inputs whose known problem still holds), and returns the work: every new clinical file first
(earliest upload first), then every image not yet filed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from warehouse.core.config import PipelineConfig
from warehouse.core.keys import (
    RawKey,
    clinical_name,
    clinical_target,
    patient_folder,
    upload_date_problem,
)
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.listing.raw import (
    RawListing,
    pending_images,
    raw_stamp,
    report_links,
    report_refused,
)
from warehouse.listing.warehouse import AMBIGUOUS, WarehouseIndex, changed_since_filed, pack_stamp
from warehouse.loader.memo import known_problem
from warehouse.loader.shards import RunPart


def report_listing(listing: RawListing, index: WarehouseIndex, report: RunReport) -> None:
    """Report what the listings show wrong by themselves: patients in both groups, raw
    prefixes the config does not list, keys outside the layout, symbolic links, unsafe names
    and implausible times."""
    for pseudonym, groups in sorted(index.conflicts.items()):
        report.skip(
            patient_folder("|".join(sorted(groups)), pseudonym),
            Reason.WAREHOUSE_CONFLICT,
            pseudonym,
        )
    for prefix in listing.unconfigured:
        report.skip(prefix + "/", Reason.UNCONFIGURED_PREFIX, "not in raw_prefixes")
    report_links(report, listing.links, "raw side")
    report_links(report, index.links, "warehouse")
    for raw in listing.other:
        report.skip(raw.key, Reason.NOT_IN_LAYOUT, raw.reason)
    report_refused(listing, report)


@dataclass
class ImageKnowledge:
    """What is known of the raw images before any is read (`plan_inputs`).

    Attributes
    ----------
    filed : set of str
        Raw keys the catalogue names as filed images' sources, of their listed size.
    changed : set of str
        Raw keys the catalogue names as filed when they had another size.
    settled : dict
        Raw key -> ``(size, modified)`` of raw images found filed already under another raw
        file (`listing.folders`): known while unchanged.
    image_filed : callable, optional
        Whether an image key is filed (the catalogue), for the memo's duplicates.
    """

    filed: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    settled: dict[str, tuple[int, str]] = field(default_factory=dict)
    image_filed: Callable[[str], bool] | None = None

    def is_filed(self, raw: RawKey, size: int) -> bool:
        """Whether ``raw`` (of ``size`` bytes) is known filed, by its own raw key."""
        return raw.key in self.filed or self.settled.get(raw.key) == (size, raw.modified)


def plan_inputs(
    listing: RawListing,
    index: WarehouseIndex,
    memo: dict[str, dict],
    config: PipelineConfig,
    settings,
    report: RunReport,
    *,
    part: RunPart | None = None,
    knowledge: ImageKnowledge | None = None,
    retell: Callable[[dict], dict] | None = None,
) -> tuple[list[tuple[RawKey, int]], list[tuple[RawKey, int]]]:
    """The clinical files to read, in upload order, and the images to read, in key order.

    In a sharded run the clinical phase plans both (it hands the images to the shards, which
    list nothing: `warehouse.loader.inputs`).

    Parameters
    ----------
    listing, index : RawListing, WarehouseIndex
        This run's listings.
    memo : dict
        The last run's unfiled inputs (`memo.memo_of` the last report's problems).
    config : PipelineConfig
        This run's ``config.json``.
    settings : Settings
        This run's settings (size limits).
    report : RunReport
        Where what needs no reading is reported.
    part : RunPart, optional
        The part of a sharded run this process makes (None: the whole run).
    knowledge : ImageKnowledge, optional
        What the catalogue and the folder state know of the raw images.
    retell : callable, optional
        A remembered problem as this run tells it (`decisions.retold`), before it is reported
        again.

    Returns
    -------
    tuple
        ``(clinical, images)``: ``(RawKey, size)`` pairs.
    """
    knowledge = knowledge or ImageKnowledge()
    report_listing(listing, index, report)

    def known_unfiled(raw: RawKey, size: int, new_patients: set[str]) -> bool:
        problem = known_problem(
            memo, raw, size, config, index, new_patients, settings, knowledge.image_filed
        )
        if problem is not None:
            report.skip_again(retell(problem) if retell is not None else problem)
        return problem is not None

    clinical: list[tuple[RawKey, int]] = []
    clinical_sources = _filed_clinical_sources(listing, index)
    for raw, size in listing.clinical:
        target = (raw.pseudonym, clinical_name(raw.clinical_kind, raw.upload_date))
        if index.clinical_filed(*target):
            _report_filed_clinical(raw, size, index, clinical_sources.get(target), report)
            continue
        implausible = upload_date_problem(
            raw.upload_date, dt.datetime.fromisoformat(raw.modified), config.max_upload_delay_days
        )
        if implausible:
            facts = {"max_upload_delay_days": config.max_upload_delay_days}
            report.skip(
                raw.key,
                Reason.IMPLAUSIBLE_DATE,
                implausible,
                stamp=raw_stamp(raw, size),
                facts=facts,
            )
        elif not known_unfiled(raw, size, set()):
            clinical.append((raw, size))
    new_patients = {raw.pseudonym for raw, _ in clinical}
    return clinical, _plan_images(listing, index, new_patients, report, known_unfiled, knowledge)


def _plan_images(listing, index, new_patients, report, known_unfiled, knowledge) -> list:
    """The images to read, reporting the others that need no reading."""
    images = []
    for prefix, n in sorted(listing.filed_images.items()):  # (left out by a full run's listing)
        report.count("images already filed", n, prefix=prefix)
    pending_or_not = pending_images(listing, index, knowledge.is_filed)
    for item, (_, pending) in zip(listing.images, pending_or_not, strict=True):
        raw, size = item
        if raw.key in knowledge.changed:
            report.skip(raw.key, Reason.RAW_CHANGED, _changed(size, raw, f"an image {raw.name}"))
        elif pending is None:
            _report_filed_image(raw, size, index, report)
        elif not known_unfiled(raw, size, new_patients):
            images.append(item)  # the listing's own pair: no new object per image
    return images


def _filed_clinical_sources(listing: RawListing, index: WarehouseIndex) -> dict:
    """For each filed clinical target that raw files point at: the first of them (in upload
    order) unchanged since the copy was made, which is taken for the copy's source."""
    sources: dict[tuple[str, str], str] = {}
    for raw, size in listing.clinical:
        target = (raw.pseudonym, clinical_name(raw.clinical_kind, raw.upload_date))
        filed = index.clinical_stamp(*target)
        if target in sources or filed is None:
            continue
        if not changed_since_filed(pack_stamp(size, raw.modified), filed):
            sources[target] = raw.key
    return sources


def _report_filed_clinical(raw, size, index, source, report) -> None:
    """A raw clinical file whose target is filed: the copy's source (counted), another raw
    file with the same target, or the source changed since (each reported, never copied)."""
    name = clinical_name(raw.clinical_kind, raw.upload_date)
    if source == raw.key or index.clinical_stamp(raw.pseudonym, name) is None:
        report.count("clinical files already filed", prefix=raw.prefix)
        return
    target = clinical_target(
        index.groups.get(raw.pseudonym, "?"), raw.pseudonym, raw.clinical_kind, raw.upload_date
    )
    if source is not None:
        report.skip(raw.key, Reason.DUPLICATE_TARGET, f"{target} is filed from {source}")
    else:
        report.skip(raw.key, Reason.RAW_CHANGED, _changed(size, raw, target))


def _report_filed_image(raw: RawKey, size: int, index: WarehouseIndex, report: RunReport) -> None:
    """A raw image whose name is filed: counted, or reported when it changed since."""
    filed = index.image_stamps.get(raw.name)
    if filed is not None and filed != AMBIGUOUS:
        if changed_since_filed(pack_stamp(size, raw.modified), filed):
            report.skip(raw.key, Reason.RAW_CHANGED, _changed(size, raw, f"an image {raw.name}"))
            return
    report.count("images already filed", prefix=raw.prefix)


def _changed(size: int, raw: RawKey, target: str) -> str:
    return (
        f"{target} was filed from it; it is now {size:,} bytes, last modified {raw.modified}: "
        "not filed again (an operator decides)"
    )
