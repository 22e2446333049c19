"""Worker pools inside bonobo nodes: a node submits storage work to the run's `WorkerPool`
and yields results in input order; one item's failure is reported against it and never costs
the items behind it. Once the run is stopped (SIGTERM, SIGINT: `warehouse.core.run.RunStop`),
a pool of a node that reads inputs starts no more of them; a pool of writes finishes its work."""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future

from bonobo.config.processors import use_context_processor

from warehouse.core.run import WorkerPool
from warehouse.core.stop import RunStop, RunStopped

logger = logging.getLogger(__name__)


class OrderedPool:
    """A node's view of the `WorkerPool`: its results come back in submission order.

    Work is submitted from a node's thread; ``then`` callbacks turn each result into the node's
    outputs, in the node's thread and in input order, so decisions that depend on order (first
    upload wins, first claim of a target) do not depend on timing or on the number of workers.
    At most ``window`` items are in flight: the node blocks on the oldest when it is full.

    An exception in the work or in ``then`` is handed to ``on_error(item, exception)``, which
    returns the item's outputs (usually none, after reporting it): one bad item never costs the
    items behind it. Without ``on_error`` the exception propagates.

    With ``stop`` (a pool whose work reads the run's inputs), once the run is stopped no work
    is started: what is submitted then, or was submitted and waits for a worker, is handed to
    ``on_stopped(item)`` instead (the input is counted as not reached); work running finishes.
    """

    def __init__(
        self,
        workers: WorkerPool,
        window: int | None = None,
        on_error=None,
        *,
        stop: RunStop | None = None,
        on_stopped=None,
    ):
        self.workers = workers
        self.window = window or workers.size * 4
        self.on_error = on_error
        self.stop = stop
        self.on_stopped = on_stopped
        self._pending: deque[tuple[Future, Callable, object]] = deque()

    def submit(self, work: Callable, *args, then: Callable, item=None) -> None:
        """Run ``work(*args)`` in a worker; ``then(result)`` later yields the outputs.

        ``item`` is what a failure is reported against (default: the first argument after
        the storage, the usual input of a worker).
        """
        if item is None and args:
            item = args[-1]
        stop = self.stop
        if stop is None:
            future = self.workers.submit(work, *args)
        elif stop.requested:
            future = Future()
            future.set_exception(RunStopped())
        else:
            future = self.workers.submit(_unless_stopped, stop, work, *args)
        self._pending.append((future, then, item))

    @property
    def pending(self) -> int:
        """Results not yet handed out."""
        return len(self._pending)

    def put(self, value, *, then: Callable, item=None) -> None:
        """Queue an already-known result behind the work submitted before it."""
        future: Future = Future()
        future.set_result(value)
        self._pending.append((future, then, value if item is None else item))

    def _outputs(self, future: Future, then: Callable, item) -> Iterable:
        try:
            result = future.result()
        except RunStopped:
            return list(self.on_stopped(item) or ()) if self.on_stopped is not None else []
        except Exception as exc:
            if self.on_error is None:
                raise
            return list(self.on_error(item, exc) or ())
        try:
            return list(then(result) or ())
        except Exception as exc:
            if self.on_error is None:
                raise
            return list(self.on_error(item, exc) or ())

    def ready(self) -> Iterator[tuple]:
        """Outputs of the oldest results that are done (waiting only when the window is full),
        each as a one-item tuple, the shape bonobo passes between nodes."""
        while self._pending and (self._pending[0][0].done() or len(self._pending) >= self.window):
            for output in self._outputs(*self._pending.popleft()):
                yield (output,)

    def drain(self) -> Iterator:
        """Outputs of every remaining result, in order, waiting for them."""
        while self._pending:
            yield from self._outputs(*self._pending.popleft())


def _unless_stopped(stop: RunStop, work: Callable, *args):
    """Worker: ``work(*args)``, unless the run was stopped while the work waited for a worker."""
    if stop.requested:
        raise RunStopped()
    return work(*args)


def per_item(node):
    """Report an exception a node raises for one input against that input
    (``state.item_failed``; the node must use the ``state`` service) instead of letting bonobo
    count an unexpected error: the node goes on with the next input."""
    names = list(inspect.signature(node).parameters)
    state_at = names.index("state")
    item_at = 1 if names and names[0] == "pool" else 0

    @functools.wraps(node)
    def guarded(*args, **kwargs):
        try:
            yield from node(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported against its input; the node goes on
            state = args[state_at] if len(args) > state_at else kwargs["state"]
            item = args[item_at] if len(args) > item_at else None
            state.item_failed(item, exc)

    return guarded


def pooled(node):
    """Give a node function that reads the run's inputs a first argument ``pool`` (an
    `OrderedPool` on the run's `WorkerPool`, ``state.workers``; the node must use the
    ``state`` service).

    The node submits work and yields ``pool.ready()``; when its input ends, what is still in
    flight is drained and sent downstream before the end of the stream is (bonobo tears a node
    down before it passes END on). A failure of one item is reported against it
    (``state.item_failed``), in the node body, the work or its ``then``, and every other item
    is still handled. Once the run is stopped, no more reads are started: the inputs not
    started are counted (``state.not_reached``).
    """
    return _pooled(node, stops=True)


def pooled_writes(node):
    """`pooled`, for a node whose work writes what the run has read: a stopped run still
    writes it (within the stop's grace), so that every input it read is filed whole."""
    return _pooled(node, stops=False)


def _pooled(node, *, stops: bool):
    def open_pool(node, context, *args, **services):
        context.set_output_type(tuple)
        state = services["state"]
        pool = OrderedPool(
            state.workers,
            on_error=getattr(state, "item_failed", None),
            stop=getattr(state, "stop", None) if stops else None,
            on_stopped=getattr(state, "not_reached", None),
        )
        yield pool
        while pool.pending:  # a failure that escapes on_error ends one drain, not the rest
            for output in _guarded(pool.drain(), node):
                context.send(output)

    return use_context_processor(open_pool)(per_item(node))


def bounded_input(size: int):
    """Make a node's input queue hold at most ``size`` items instead of bonobo's 8,192.

    A node whose items are large (parsed headers) then holds its producers back when it lags,
    so memory stays flat however fast the reads upstream are. The strategy's graph context
    (`warehouse.runtime.strategy.input_size`) applies the size before any node starts.
    """

    def mark(node):
        node.__input_size__ = size
        return node

    return mark


def _guarded(outputs: Iterable, node) -> Iterator:
    """Drain outputs, logging (and counting on the run) an unexpected error without losing the
    rest of the queue."""
    iterator = iter(outputs)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except Exception:
            logger.exception("unexpected error while finishing %s", getattr(node, "__name__", node))
            _UNEXPECTED.set()


_UNEXPECTED = threading.Event()


def unexpected_error_seen() -> bool:
    """Whether a pooled node met an error while draining its work in this run."""
    return _UNEXPECTED.is_set()


def forget_unexpected_error() -> None:
    """Start a run with no unexpected error seen."""
    _UNEXPECTED.clear()
