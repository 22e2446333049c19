"""A graph's services: the ones every graph has, built on first use."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

from warehouse.core.config import CLINICAL_PHASE, settings_from_env
from warehouse.core.errors import ExpectedError
from warehouse.core.report import RunReport
from warehouse.core.run import EXIT_CONFIG, RUN_CONTEXT, WorkerPool
from warehouse.storage.url import storage_from_url


class LazyServices(Mapping):
    """A graph's services, built on first use.

    bonobo reads the services only when it starts the graph, so ``bonobo inspect`` never builds
    them (it needs no environment), while a run with a bad setting stops before any node starts:
    ``factory`` raising `ExpectedError` prints its message and exits with the error's
    ``exit_code`` (`EXIT_CONFIG` by default; `EXIT_BUSY` when another run holds the lease).
    """

    def __init__(self, factory: Callable[[], dict]):
        self._factory = factory
        self._services: dict | None = None

    @property
    def built(self) -> bool:
        """Whether the services have been built."""
        return self._services is not None

    def load(self) -> dict:
        """Build the services (once) and return them."""
        if self._services is None:
            try:
                self._services = self._factory()
            except ExpectedError as exc:
                print(f"error: {exc}", file=sys.stderr)
                raise SystemExit(getattr(exc, "exit_code", EXIT_CONFIG)) from None
        return self._services

    def __getitem__(self, name):
        return self.load()[name]

    def __iter__(self):
        return iter(self.load())

    def __len__(self) -> int:
        return len(self.load())


def graph_services(graph: str, state_type: type, settings=None, storage=None) -> dict:
    """The services every graph has: ``storage`` and ``state`` (a ``state_type``, with the run's
    report and `WorkerPool`).

    Parameters
    ----------
    graph : str
        The graph's name (its run report's folder).
    state_type : type
        The graph's `RunState` subclass.
    settings : Settings, optional
        Run settings; read from the environment when omitted.
    storage : Storage, optional
        A store to use instead of the one the settings name (tests swap backends here).
    """
    settings = settings or settings_from_env()
    if storage is None:
        storage = storage_from_url(
            settings.bucket, workers=settings.workers, dry_run=settings.dry_run
        )
    storage.check_store()  # before anything is read: a missing bucket is a settings error
    report = RunReport(graph, settings.run_id)
    shard = f"{settings.shard[0]}/{settings.shard[1]}" if settings.shard else None
    if settings.phase == CLINICAL_PHASE:
        shard = CLINICAL_PHASE  # the clinical phase of a sharded run
    RUN_CONTEXT.update(graph=graph, run_id=report.run_id, shard=shard)
    state = state_type(settings, report, WorkerPool(settings.workers))
    # bonobo adds an ``fs`` (pyfilesystem, which needs pkg_resources) and an ``http``
    # (requests) service to any graph without them; no node uses either, so neither is built.
    return {"storage": storage, "state": state, "fs": None, "http": None}
