"""One loader run's state, shared by its nodes (a bonobo service): the config, groups and bindings,
the catalogue, the lease, progress and how the run ends."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from warehouse import __version__
from warehouse.catalogue.index import key_hash
from warehouse.catalogue.run import LoaderCatalogue
from warehouse.core.clinical import (
    InvalidClinicalFile,
    MissingSubmittingCentre,
    parse_clinical_record,
    submitting_centre,
)
from warehouse.core.config import CLINICAL_PHASE, IMAGE_PHASE, PipelineConfig, nfc
from warehouse.core.errors import ExpectedError, StorageError
from warehouse.core.keys import raw_prefix_of
from warehouse.core.lease import RunLease, graph_lease, release_run_lease
from warehouse.core.patients import (
    PatientGroups,
)
from warehouse.core.reasons import Reason
from warehouse.core.run import ByteBudget, RunState, loaded
from warehouse.core.stop import NOT_REACHED
from warehouse.dicom.screen import Profile
from warehouse.listing.folders import FolderState, save_state, window_days
from warehouse.listing.warehouse import WarehouseIndex
from warehouse.loader.feedback import publish_feedback
from warehouse.loader.memo import limit_facts
from warehouse.loader.parts import (
    finish_run,
    load_handoff,
    pending_key,
    snapshot_key,
    write_pending,
)
from warehouse.loader.shards import Handoff, RunPart, part_key, part_of
from warehouse.loader.tasks import Task, input_stamp
from warehouse.storage.base import Storage
from warehouse.storage.wrappers import LeasedStorage

logger = logging.getLogger(__name__)

#: Bytes of clinical files a run holds in memory at once, read and decoded (`ByteBudget`).
CLINICAL_BYTES_IN_FLIGHT = 8 * 1024 * 1024


class Progress:
    """How far a loader run is: clinical files and images done out of those planned, and the
    rate of images, for the progress line of the status lines."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.total: dict[str, int | None] = {"clinical": None, "image": None}
        self.done = {"clinical": 0, "image": 0}
        self._first_image: float | None = None

    def plan(self, clinical: int, images: int) -> None:
        """The inputs this run has to read."""
        with self._lock:
            self.total = {"clinical": clinical, "image": images}

    def finished(self, action: str) -> None:
        """One input of ``action`` (``clinical`` or ``image``) is done (filed or reported)."""
        with self._lock:
            if action in self.done:
                self.done[action] += 1
                if action == "image" and self._first_image is None:
                    self._first_image = self._clock()

    def line(self) -> str | None:
        """``progress: images 1,145/8,000 (14%), clinical files 968/968, 52.1 images/s, about
        2 min 11 s left``; None before the inputs are known."""
        with self._lock:
            total, done = dict(self.total), dict(self.done)
            started = self._first_image
        if total["image"] is None:
            return None
        images, all_images = done["image"], total["image"]
        share = f" ({100 * images // all_images}%)" if all_images else ""
        parts = [
            f"images {images:,}/{all_images:,}{share}",
            f"clinical files {done['clinical']:,}/{total['clinical']:,}",
        ]
        elapsed = self._clock() - started if started is not None else 0.0
        if images and elapsed > 0:
            rate = images / elapsed
            parts.append(f"{rate:.1f} images/s")
            if images < all_images:
                parts.append(f"about {_duration((all_images - images) / rate)} left")
        return "progress: " + ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@dataclass
class LoaderState(RunState):
    """Everything one loader run shares between its nodes (one instance, a bonobo service)."""

    config: PipelineConfig | None = None
    #: The identifying-data screen's profile, loaded with the config (`load_config`).
    profile: Profile | None = None
    index: WarehouseIndex | None = None
    groups: PatientGroups | None = None
    header_requests: int = 0
    header_bytes: int = 0
    lease: RunLease | None = None
    #: The centre of each patient's first accepted record in this run (NFC).
    bound_centres: dict[str, str] = field(default_factory=dict)
    #: ``(raw prefix, pseudonym)`` whose records this run (or a recent one) refused as
    #: claimed by another centre: images under that prefix for that patient are refused too.
    refused_claims: set[tuple[str, str]] = field(default_factory=set)
    #: ``(raw prefix, pseudonym) -> (centre, clinical key)`` of the clinical files this run (or
    #: a recent one) refused as "site not in config": that prefix's images of the patient are
    #: refused for the same reason (`decisions.unconfigured_site`).
    unconfigured: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    filed_centres: FiledCentres | None = None
    progress: Progress = field(default_factory=Progress)
    clinical_budget: ByteBudget = field(
        default_factory=lambda: ByteBudget(CLINICAL_BYTES_IN_FLIGHT)
    )
    #: The part of a sharded run this process makes (`shards.part_of` its settings), or None.
    part: RunPart | None = None
    #: Pseudonyms of the clinical files this run reads (the clinical phase hands them over).
    new_patients: set[str] = field(default_factory=set)
    #: For an image shard: what its run's clinical phase handed over.
    handoff: Handoff | None = None
    #: The run's image catalogue part (`warehouse.catalogue.run`).
    catalogue: LoaderCatalogue | None = None
    #: ``daily``, ``full`` or ``shard``: what the run looked at (`warehouse.loader.inputs`).
    mode: str = ""
    #: The folder state the run started from, the folders it listed, and when.
    folders: tuple | None = None
    #: The images the run planned to read (a clinical phase hands them to its shards).
    pending_images: list = field(default_factory=list)
    #: Raw images found filed already under another raw file (raw key -> stamp).
    settled: dict[str, tuple[int, str]] = field(default_factory=dict)
    _claimed: dict[str, str] = field(default_factory=dict)
    _pseudonyms: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.part is None:
            self.part = part_of(self.settings)
        if self.catalogue is None:
            submit = self.workers.submit if self.workers is not None else None
            self.catalogue = LoaderCatalogue(
                self.report,
                submit,
                max_header_bytes=self.settings.max_header_bytes,
                count_read=self.count_header_read,
            )

    def count_header_read(self, requests: int, size: int) -> None:
        """Add one header read's requests and bytes to the run's totals."""
        with self._lock:
            self.header_requests += requests
            self.header_bytes += size

    def take_lease(self, storage: Storage) -> Storage:
        """Take the run lease on the warehouse (or, for a process of a sharded run, join it)
        before anything is read, renewing it while the run lasts; return the store to use,
        whose writes stop if the lease is lost.

        Raises
        ------
        LeaseHeld
            When another run holds the warehouse (exit code 3).
        ClinicalPhaseMissing
            When this image shard's clinical phase did not hand over (exit code 2; checked
            first, so that is what the shard says).
        """
        if self.part is not None and self.part.shard is not None:
            self.handoff = load_handoff(storage, self.settings, self.report.graph)
        lease = graph_lease(
            self.report.graph,
            storage,
            self.report.run_id,
            on_lost=lambda exc: self.report.fail(str(exc)),
        )
        if self.settings.shard is not None:
            lease.join()
        else:
            lease.acquire()
        lease.start_renewing()
        self.lease = lease
        return LeasedStorage(storage, lease)

    def settle(self, task: Task) -> None:
        """Remember a raw image found filed already under another raw file: the folder state
        keeps it while its folder is open, so it is not read again."""
        with self._lock:
            self.settled[task.key] = input_stamp(task)

    def folder_state(self) -> FolderState | None:
        """The raw side's folder state after this run (None when it listed nothing)."""
        if self.folders is None or self.config is None:
            return None
        previous, listed, now = self.folders
        days = window_days(self.config.max_upload_delay_days)
        after: FolderState = previous.after(listed, now, days, dict(self.settled))
        return after

    def save_folder_state(self, storage: Storage) -> None:
        """Write the folder state (`listing.folders`) once a whole run that listed its inputs
        completed; a failed write makes the run incomplete (the next run lists more)."""
        new = self.folder_state()
        if new is None or not self.report.completed or self.settings.dry_run:
            return
        if self.folders is not None and new == self.folders[0]:
            return  # nothing opened, closed or settled: nothing to write
        try:
            save_state(storage, new, self.report.run_id, dt.datetime.now(dt.UTC))
        except StorageError as exc:
            self.report.fail(f"folder state not written: {exc}")

    def publish_feedback(self, storage: Storage) -> None:
        """Write each raw prefix's feedback file that changed (see `feedback`); a failed
        write makes the run incomplete."""
        try:
            written = publish_feedback(storage, self.report, self.report.previous)
        except StorageError as exc:
            self.report.fail(f"feedback not written: {exc}")
            return
        if written:
            self.report.count("feedback files written", written)

    def conclude(self, storage: Storage) -> str:
        """The end of a loader run, before its report is written: count the header reads and
        the lease's requests, write the run's image catalogue part and the feedback files (a
        run that listed its inputs), and the summary; a part of a sharded run writes its part
        report and, when it is the last, ends the run."""
        report = self.report
        if self.header_requests:
            report.count("header read requests", self.header_requests)
        self.count_lease_requests()
        images = loaded(self.catalogue, "the run's image catalogue")
        catalogue = images.publish(storage, self.settings) if report.listed else ""
        if report.describes_all_inputs and not self.settings.dry_run and self.part is None:
            # (a sharded run's, once all its parts are done; a stopped run's feedback would
            # tell the sites that what it did not reach is resolved)
            self.publish_feedback(storage)
            self.save_folder_state(storage)
        summary = report.summary() + catalogue
        if self.settings.dry_run:
            summary += "\n  (dry run: nothing was written)"
        if self.part is not None:
            summary += end_part(storage, self, report.graph)
        return summary

    def publishes_report(self) -> bool:
        """A part of a sharded run writes its part report instead (`end_part`); the run's
        report is the parts' combined."""
        return self.part is None

    def count_lease_requests(self) -> None:
        """Count what the lease cost, its release (one DELETE, made once the report is
        written) included."""
        if self.lease is not None and not self.settings.dry_run:
            release = 0 if self.part is not None else 1
            self.report.count("run lease requests", self.lease.request_count + release)

    def release_lease(self) -> None:
        """Give the lease back, once the report is written (`close`); a part of a sharded
        run only stops renewing it (the run's lease outlives its parts: `runs.finish_run`
        releases it)."""
        if self.lease is not None:
            if self.part is None:
                self.lease.release()
            else:
                self.lease.stop()
            self.lease = None

    def close(self) -> None:
        self.release_lease()
        super().close()

    def give_back_at_once(self) -> None:
        """The lease of a run ended at once (a part of a sharded run leaves its run's lease to
        the process that took it)."""
        if self.lease is not None and self.part is None:
            self.lease.release()

    def progress_line(self) -> str | None:
        """The status lines' progress line (see `Progress.line`)."""
        return self.progress.line()

    def item_failed(self, item: object, exc: BaseException) -> list:
        if isinstance(item, Task):
            self.progress.finished(item.action)
        return super().item_failed(item, exc)

    def not_reached(self, item: object) -> list:
        """Count an input the stopped run did not start, by its raw prefix."""
        prefix = raw_prefix_of(item.key) if isinstance(item, Task) else None
        self.report.count(NOT_REACHED, prefix=prefix)
        return []

    def skip_extras(self, item: object, reason: Reason) -> dict:
        """A raw input that failed is reported with its listing stamp, so the next run knows
        it unchanged and does not read it again (memo)."""
        if not isinstance(item, Task) or item.action not in ("clinical", "image"):
            return {}
        if reason is Reason.INTERNAL_ERROR:
            return {"stamp": input_stamp(item), "facts": {"version": __version__}}
        facts = limit_facts(reason, self.settings)
        return (
            {"stamp": input_stamp(item), "facts": facts} if facts else {"stamp": input_stamp(item)}
        )

    def pseudonym_of(self, hashed: int) -> str | None:
        """Return the patient whose pseudonym's `key_hash` is ``hashed`` (the index keeps
        patients as hashes), among those with a group; None when none is.

        Asked only of a leakage conflict (rare), so the hashes are made on the first call
        and again when one is not found (a patient may have been given a group since).
        """
        with self._lock:
            found = self._pseudonyms.get(hashed)
        if found is None and self.groups is not None:
            names = {key_hash(p): p for p in self.groups.pseudonyms()}
            with self._lock:
                self._pseudonyms = names
            found = names.get(hashed)
        return found

    def claim(self, target: str, key: str) -> str:
        """Claim a target key for the raw file ``key``; the raw file that has it (``key``
        itself unless another raw file claimed it first in this run)."""
        with self._lock:
            return self._claimed.setdefault(target, key)


class FiledCentres:
    """The ``SubmittingCentre`` each filed patient is bound to: that of its first filed record
    (earliest upload), read once per patient and run, only when a new record or an image needs
    it (workers call it; thread-safe).
    """

    def __init__(self, storage: Storage, index: WarehouseIndex):
        self.storage = storage
        self.index = index
        self._known: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def __call__(self, pseudonym: str) -> str | None:
        with self._lock:
            if pseudonym in self._known:
                return self._known[pseudonym]
        key = self.index.first_clinical_key(pseudonym)
        centre = None
        if key is not None:
            try:
                centre = nfc(submitting_centre(parse_clinical_record(self.storage.read(key))))
            except (InvalidClinicalFile, MissingSubmittingCentre):
                centre = None  # no binding can be read: the first accepted record binds
        with self._lock:
            self._known[pseudonym] = centre
        return centre

    def known(self) -> dict[str, str | None]:
        """The centres read so far, by pseudonym (None: none could be read)."""
        with self._lock:
            return dict(self._known)

    def seed(self, centres: dict[str, str | None]) -> None:
        """Take centres another process of the run read (the clinical phase's hand-off)."""
        with self._lock:
            for pseudonym, centre in centres.items():
                self._known.setdefault(pseudonym, centre)


# -- a part of a sharded run ends: its report, the clinical phase's hand-off ---------------


def write_handoff_files(storage: Storage, state: LoaderState, graph: str) -> Handoff:
    """The clinical phase's hand-off, its pending images and what the warehouse holds written
    for the shards (they list nothing)."""
    handoff = handoff_of(state)
    run_id = state.report.run_id
    handoff.pending = pending_key(graph, run_id)
    write_pending(storage, handoff.pending, state.pending_images)
    handoff.warehouse = snapshot_key(graph, run_id)
    keys = state.index.patient_keys() if state.index is not None else []
    storage.write(handoff.warehouse, json.dumps(keys).encode("utf-8"))
    catalogue = loaded(state.catalogue, "the run's image catalogue")
    handoff.catalogue_pointer = catalogue.pointer
    # the parts it read and those it wrote (the filed images it found in no part): the shards
    # know every instance it knew
    handoff.catalogue_parts = sorted({*catalogue.newer_parts, *catalogue.written_parts})
    return handoff


def handoff_of(state: LoaderState) -> Handoff:
    """What the clinical phase hands to the shards, from its state at the end."""
    known = loaded(state.groups, "the patients' groups")
    groups = {p: g for p in state.new_patients if (g := known.get(p)) is not None}
    return Handoff(
        groups=groups,
        new_patients=sorted(state.new_patients),
        refused_claims=[list(pair) for pair in state.refused_claims],
        unconfigured=[
            [prefix, pseudonym, centre, key]
            for (prefix, pseudonym), (centre, key) in state.unconfigured.items()
        ],
        bound_centres=dict(state.bound_centres),
        filed_centres=state.filed_centres.known() if state.filed_centres else {},
    )


def part_report(state: LoaderState, handoff: Handoff | None = None) -> dict:
    """A part's report: the run report of its process, with its phase and shard; for a
    clinical phase that listed and did not stop, the hand-off and the folder state the run
    leaves if it completes; for a shard, the raw images it found settled."""
    part, report = state.part, state.report
    if part is None:
        raise ValueError("not a part of a sharded run (its report is the run's own)")
    data: dict = report.as_dict()
    data["phase"] = part.phase
    data["shard"] = list(part.shard) if part.shard else None
    data["listed"] = report.describes_all_inputs  # (a stopped part leaves inputs unstarted)
    if handoff is not None:
        data["handoff"] = handoff.as_dict()
        folders = state.folder_state()
        if folders is not None:
            data["folder_state"] = folders.as_dict(report.run_id, dt.datetime.now(dt.UTC))
    data["settled"] = [[key, size, when] for key, (size, when) in sorted(state.settled.items())]
    return data


def end_part(storage: Storage, state: LoaderState, graph: str) -> str:
    """After a part's graph: write its report, stop renewing the run's lease (which stays for
    the other parts), and, for a shard that `RunPart.finishes`, end the run when every part has
    written its report.

    Returns
    -------
    str
        Summary lines (where the reports are).
    """
    part, report = state.part, state.report
    if part is None:
        raise ValueError("not a part of a sharded run (its report is the run's own)")
    key = part_key(graph, report.run_id, part)
    lines = ""
    try:
        handoff = None
        if part.phase == CLINICAL_PHASE and report.describes_all_inputs and report.fatal is None:
            handoff = write_handoff_files(storage, state, graph)
        data = part_report(state, handoff)
        storage.write(key, json.dumps(data, indent=2).encode("utf-8"))
        lines += f"\n  {part.label} report: {storage.url}/{key}"
    except ExpectedError as exc:
        logger.error("could not write the %s report: %s", part.label, exc)
        report.fail(f"{part.label} report not written: {exc}")
        return lines
    finally:
        state.release_lease()
    if part.phase == CLINICAL_PHASE and part.finishes and "handoff" not in data:
        # no shard can start: the run ends here (and the next one need not wait for expiry)
        try:
            release_run_lease(storage, report.run_id)
        except ExpectedError as exc:
            logger.error("could not release the run lease: %s", exc)
    if part.phase == IMAGE_PHASE and part.finishes and part.shard is not None:
        try:
            ended = finish_run(storage, graph, report.run_id, part.shard[1], force=False)
        except ExpectedError as exc:
            logger.error("could not end run %s: %s", report.run_id, exc)
            report.fail(f"the run's end failed: {exc}")
            return lines
        lines += ended.lines
    return lines
