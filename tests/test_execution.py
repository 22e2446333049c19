"""Running graphs: logging on Python 3.11 despite mondrian, ordered worker pools, status lines
when output is not a terminal, and lazily built services."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import bonobo
import pytest
from bonobo.config import use

from warehouse.core import run as run_module
from warehouse.core.config import ConfigError
from warehouse.core.run import EXIT_CONFIG, WorkerPool
from warehouse.runtime import command, pools
from warehouse.runtime.plugins import StatusLines
from warehouse.runtime.pools import OrderedPool, pooled
from warehouse.runtime.services import LazyServices
from warehouse.runtime.strategy import StartedThreadPoolStrategy

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# logging (in a subprocess: the mondrian repair and the root handlers are process-wide)

LOGGING_SCRIPT = textwrap.dedent(
    """
    import io, json, logging, sys

    import mondrian
    from mondrian import filters, formatters

    # A handler of our own with mondrian's formatter, like the one mondrian.setup() installs.
    buffer = io.StringIO()
    own = logging.StreamHandler(buffer)
    own.setFormatter(formatters.Formatter())
    own.addFilter(filters.Filter())
    probe = logging.getLogger("probe")
    probe.addHandler(own)
    probe.propagate = False

    mondrian.setup()  # what bonobo's CLI and bonobo.run do
    probe.warning("before the fix")
    before = buffer.getvalue()
    sys.stderr.write("=== configure_logging ===\\n")
    sys.stderr.flush()

    from warehouse.core.errors import ExpectedError
    from warehouse.runtime.logs import configure_logging

    configure_logging()
    probe.warning("after the fix %s", 42)
    after = buffer.getvalue()
    logging.getLogger("demo").info("hello %s", "world")
    logging.getLogger("demo").debug("not shown at INFO")
    try:
        raise ExpectedError("bucket nope does not exist")
    except ExpectedError:
        logging.getLogger("node").exception("node failed")
    try:
        raise RuntimeError("a real bug")
    except RuntimeError:
        logging.getLogger("node").exception("node crashed")
    print(json.dumps({"before": before, "after": after}))
    """
)


@pytest.fixture(scope="module")
def logging_run():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    before, _, after = result.stderr.partition("=== configure_logging ===\n")
    return json.loads(result.stdout), before, after


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def test_mondrian_is_broken_without_the_repair(logging_run):
    """The premise: after mondrian.setup() on Python 3.11 a record cannot be formatted."""
    formatted, before, _ = logging_run
    assert formatted["before"] == ""
    assert "--- Logging error ---" in before
    assert "'_Style' object has no attribute '_defaults'" in before


def test_mondrian_formatter_works_after_configure_logging(logging_run):
    formatted, _, after = logging_run
    lines = strip_ansi(formatted["after"]).splitlines()
    assert len(lines) == 1
    # mondrian's own level names (WARN, ERR.) and elapsed-time column
    assert re.fullmatch(r"WARN:\d{4}:probe: after the fix 42", lines[0])
    assert "Logging error" not in after
    assert "_defaults" not in after


def test_root_logging_is_clean_when_piped(logging_run):
    _, _, after = logging_run
    lines = after.splitlines()
    assert "INFO demo: hello world" in lines
    assert "not shown at INFO" not in after
    assert "\x1b[" not in after  # no colour codes in container logs


def test_expected_error_is_logged_as_its_message_alone(logging_run):
    _, _, after = logging_run
    assert re.search(r"^ERR\S* node: bucket nope does not exist$", after, re.M)
    assert "node failed" not in after
    assert "ExpectedError" not in after


def test_other_errors_keep_their_traceback(logging_run):
    _, _, after = logging_run
    crashed = after[after.index(" node: node crashed") :]
    assert "Traceback (most recent call last)" in crashed
    assert "RuntimeError: a real bug" in crashed


def test_configure_logging_without_a_handler_installs_a_plain_one():
    script = textwrap.dedent(
        """
        import logging
        import mondrian
        from warehouse.runtime.logs import configure_logging

        configure_logging()
        configure_logging()  # idempotent: still one handler, one filter
        root = logging.getLogger()
        assert len(root.handlers) == 1, root.handlers
        assert len(root.handlers[0].filters) == 1, root.handlers[0].filters
        assert mondrian.is_setup
        mondrian.setup()  # bonobo.run later: must not add a second handler
        assert len(root.handlers) == 1
        assert logging.getLogger("botocore").level == logging.WARNING
        logging.getLogger("x").info("only once")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["INFO x: only once"]


# --------------------------------------------------------------------------------------------
# OrderedPool


class OutOfOrder:
    """Work that finishes out of submission order, for certain and without sleeping: in every
    block of ``block`` items the first waits until the last of its block has finished."""

    def __init__(self, count: int, block: int = 4):
        self.count, self.block = count, block
        self.done = [threading.Event() for _ in range(count)]
        self.finished: list[int] = []
        self._lock = threading.Lock()

    def start(self, n: int) -> None:
        partner = n + self.block - 1
        if n % self.block == 0 and partner < self.count:
            assert self.done[partner].wait(10), f"item {partner} never finished"

    def end(self, n: int) -> None:
        with self._lock:
            self.finished.append(n)
        self.done[n].set()

    def reordered_blocks(self) -> list[int]:
        """The first item of each block that finished after its block's last item."""
        return [
            n
            for n in range(0, self.count - self.block + 1, self.block)
            if self.finished.index(n + self.block - 1) < self.finished.index(n)
        ]


def test_results_come_back_in_submission_order():
    order = OutOfOrder(60)

    def work(n):
        order.start(n)  # the first item of each block of four finishes after the fourth
        order.end(n)
        return n * 10

    pool = OrderedPool(WorkerPool(8), window=16)
    outputs = []
    try:
        for n in range(60):
            pool.submit(work, n, then=lambda result: [result])
            outputs.extend(pool.ready())
        assert all(isinstance(out, tuple) and len(out) == 1 for out in outputs)
        outputs = [out for (out,) in outputs]
        outputs.extend(pool.drain())
    finally:
        pool.workers.shutdown()
    assert outputs == [n * 10 for n in range(60)]
    assert order.reordered_blocks() == list(range(0, 60, 4))  # completion order differed


def test_then_may_yield_several_outputs_or_none():
    pool = OrderedPool(WorkerPool(2))
    try:
        pool.submit(lambda n: n, 1, then=lambda r: [r, r + 100])
        pool.submit(lambda n: n, 2, then=lambda r: None)
        pool.put(3, then=lambda r: (r,))
        assert list(pool.drain()) == [1, 101, 3]
        assert list(pool.drain()) == []
    finally:
        pool.workers.shutdown()


def test_put_waits_behind_earlier_work():
    release = threading.Event()

    def slow(n):
        release.wait(5)
        return n

    pool = OrderedPool(WorkerPool(2), window=10)
    try:
        pool.submit(slow, "first", then=lambda r: [r])
        pool.put("known", then=lambda r: [r])
        assert list(pool.ready()) == []  # "known" is done but waits behind "first"
        release.set()
        assert list(pool.drain()) == ["first", "known"]
    finally:
        pool.workers.shutdown()


def test_in_flight_work_is_bounded_by_the_window():
    workers, window = 2, 4
    running = 0
    max_running = 0
    lock = threading.Lock()
    submitted = delivered = max_in_flight = 0
    full = threading.Event()

    def work(n):
        nonlocal running, max_running
        with lock:
            running += 1
            max_running = max(max_running, running)
        full.wait(10)  # held until the window is full: the pool must then stop taking more
        with lock:
            running -= 1
        return n

    pool = OrderedPool(WorkerPool(workers), window=window)
    outputs = []
    try:
        for n in range(16):
            pool.submit(work, n, then=lambda r: [r])
            submitted += 1
            max_in_flight = max(max_in_flight, submitted - delivered)
            if submitted - delivered == window:
                full.set()
            for (out,) in pool.ready():
                outputs.append(out)
                delivered += 1
            assert submitted - delivered < window  # ready() made room before returning
        outputs.extend(pool.drain())
    finally:
        pool.workers.shutdown()
    assert outputs == list(range(16))
    assert max_in_flight == window
    assert max_running <= workers


def test_work_errors_surface_in_order():
    def work(n):
        if n == 1:
            raise ValueError("bad item")
        return n

    pool = OrderedPool(WorkerPool(2))
    try:
        for n in range(3):
            pool.submit(work, n, then=lambda r: [r])
        drained = pool.drain()
        assert next(drained) == 0
        with pytest.raises(ValueError, match="bad item"):
            next(drained)
    finally:
        pool.workers.shutdown()


def test_default_window_and_worker_floor():
    pool = OrderedPool(WorkerPool(0))
    try:
        assert pool.workers.size == 1
        assert pool.window == 4
    finally:
        pool.workers.shutdown()


# --------------------------------------------------------------------------------------------
# graphs: status lines, pooled nodes


@pytest.fixture
def keep_root_logger():
    """bonobo.run sets the root logger's level; put it back."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def extract():
    yield from range(3)


def double(n):
    yield n * 2


def test_status_lines_to_a_given_stream(keep_root_logger):
    collected = []

    def sink(n):
        collected.append(n)

    stream = io.StringIO()
    graph = bonobo.Graph(extract, double, sink)
    context = bonobo.run(
        graph,
        services={},
        plugins=[StatusLines(period=3600, stream=stream)],
        strategy=StartedThreadPoolStrategy(),
    )
    assert collected == [0, 2, 4]
    assert stream.getvalue().splitlines() == [
        "- extract in=1 out=3 [done]",
        "- double in=3 out=3 [done]",
        "- sink in=3 [done]",
    ]
    assert command.unexpected_errors(context) == 0


class WatchedStream(io.StringIO):
    """A stream that says when a line matching ``pattern`` has been written to it."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern, re.M)
        self.seen = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.pattern.search(self.getvalue()):
            self.seen.set()
        return written


def test_status_lines_while_running(keep_root_logger):
    stream = WatchedStream(r"^\[\d\d:\d\d:\d\d\] \+ slow in=\d")

    def slow(n):
        # running until a status line has shown it running (bonobo ticks on its own clock)
        assert stream.seen.wait(10), "no status line while the node was running"
        yield n

    graph = bonobo.Graph(extract, slow)
    bonobo.run(
        graph,
        services={},
        plugins=[StatusLines(period=0.01, stream=stream)],
        strategy=StartedThreadPoolStrategy(),
    )
    lines = stream.getvalue().splitlines()
    periodic = [line for line in lines if line.startswith("[")]
    assert periodic, lines
    assert all(re.match(r"^\[\d\d:\d\d:\d\d\] [-+] (extract|slow) in=", line) for line in periodic)
    assert any(re.search(r"\] \+ slow in=\d", line) for line in periodic)  # seen running
    assert lines[-2:] == ["- extract in=1 out=3 [done]", "- slow in=3 out=3 [done]"]


def test_run_prints_status_lines_when_stdout_is_not_a_tty(capsys, keep_root_logger):
    def fail_on_two(n):
        if n == 2:
            raise ValueError("boom")
        yield n

    finished = []
    graph = bonobo.Graph(extract, double, fail_on_two)
    assert not sys.stdout.isatty()
    context = command.run(graph, {}, finish=finished.append, progress_seconds=3600)
    stderr = capsys.readouterr().err
    assert "- extract in=1 out=3 [done]" in stderr.splitlines()
    assert "- double in=3 out=3 [done]" in stderr.splitlines()
    assert "- fail_on_two in=3 out=2 err=1 [done]" in stderr.splitlines()
    assert finished == [context]
    assert command.unexpected_errors(context) == 1


def test_pooled_node_sends_everything_in_order(keep_root_logger):
    order = OutOfOrder(40)
    collected = []

    def numbers():
        yield from range(40)

    def slow_square(n):
        order.start(n)
        order.end(n)
        return n * n

    workers = WorkerPool(4)

    @use("state")
    @pooled
    def squares(pool, n, state):
        pool.submit(slow_square, n, then=lambda r: [r])
        yield from pool.ready()

    def sink(n):
        collected.append(n)

    stream = io.StringIO()
    context = bonobo.run(
        bonobo.Graph(numbers, squares, sink),
        services={"state": SimpleNamespace(workers=workers)},
        plugins=[StatusLines(period=3600, stream=stream)],
        strategy=StartedThreadPoolStrategy(),
    )
    workers.shutdown()
    # what was still in flight when the input ended was drained and sent before the end
    assert collected == [n * n for n in range(40)]
    assert order.reordered_blocks() == list(range(0, 40, 4))  # (finished out of order)
    assert "- squares in=40 out=40 [done]" in stream.getvalue().splitlines()
    assert command.unexpected_errors(context) == 0


# --------------------------------------------------------------------------------------------
# LazyServices


def test_lazy_services_build_once_on_first_use():
    calls = []

    def factory():
        calls.append(1)
        return {"storage": "s", "state": "t"}

    services = LazyServices(factory)
    assert calls == []
    assert services["storage"] == "s"
    assert sorted(services) == ["state", "storage"]
    assert len(services) == 2
    assert dict(services) == {"storage": "s", "state": "t"}
    assert calls == [1]


def test_lazy_services_config_error_exits_with_its_message(capsys):
    def factory():
        raise ConfigError("No warehouse bucket: set WAREHOUSE_BUCKET")

    services = LazyServices(factory)
    with pytest.raises(SystemExit) as caught:
        services["storage"]
    assert caught.value.code == EXIT_CONFIG
    assert capsys.readouterr().err == "error: No warehouse bucket: set WAREHOUSE_BUCKET\n"


def test_lazy_services_let_bugs_through():
    def factory():
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        LazyServices(factory).load()


def test_bounded_input_holds_a_fast_producer_back():
    """A slow node with a small input queue keeps its producer at most that far ahead."""
    produced, consumed, ahead = [0], [0], []
    moved = threading.Condition()
    deadline = time.monotonic() + 30  # a guard against a hang, not a speed target

    def produce():
        for n in range(60):
            with moved:
                produced[0] += 1
                ahead.append(produced[0] - consumed[0])
                moved.notify_all()
            yield (n,)

    @pools.bounded_input(4)
    def consume(n):
        # slower than its producer: each item waits until the producer is as far ahead as
        # the bound lets it be (or done)
        with moved:
            moved.wait_for(
                lambda: produced[0] - consumed[0] >= 5 or produced[0] == 60,
                timeout=max(0.0, deadline - time.monotonic()),
            )
            consumed[0] += 1
        yield (n,)

    graph = bonobo.Graph()
    graph.add_chain(produce, consume)
    context = command.run(graph, {}, progress_seconds=60)
    assert context is not None and consumed[0] == 60
    # The queue holds 4; the consumer holds one more; the producer has one in hand.
    assert 5 <= max(ahead) <= 4 + 2


def test_prompt_input_waits_for_an_item_instead_of_polling(monkeypatch):
    """bonobo's nodes ask with timeout=0; the prompt queue waits for the next item: the item
    is put only once the node is asking (an event, not a delay)."""
    import queue as queues

    from bonobo.constants import BEGIN

    from warehouse.runtime.strategy import PromptInput

    asking, asked = threading.Event(), []
    queue_get = queues.Queue.get

    def watched_get(self, block=True, timeout=None):
        if self is queue:  # (other queues of the process are left alone)
            asked.append((block, timeout))
            asking.set()
        return queue_get(self, block, timeout)

    queue = PromptInput()
    monkeypatch.setattr(queues.Queue, "get", watched_get)
    queue.put(BEGIN)
    putter = threading.Thread(target=lambda: asking.wait(10) and queue.put(("late",)))
    putter.start()
    assert queue.get(timeout=0) == ("late",)
    putter.join()
    assert asked == [(True, PromptInput.WAIT)] and PromptInput.WAIT > 0


# --------------------------------------------------------------------------------------------
# one bad item never costs the others


class RecordingState:
    """A graph's state service with the run's workers and `RunState.item_failed`."""

    def __init__(self, workers):
        from warehouse.core.report import RunReport

        self.workers = workers
        self.report = RunReport("test")

    item_failed = run_module.RunState.item_failed
    skip_extras = run_module.RunState.skip_extras


def test_a_failing_item_is_reported_and_every_other_one_still_arrives(keep_root_logger):
    """Failures in the work (mid-stream: ready(); the last item: the final drain), in ``then``
    and in the node body, with many items in flight: each is reported against its item."""
    order = OutOfOrder(200)
    collected = []

    def numbers():
        yield from (SimpleNamespace(key=f"item-{n}", n=n) for n in range(200))

    def slow(item):
        order.start(item.n)  # (150 never starts: 148 waits for 151)
        try:
            if item.n in (37, 199):
                raise RuntimeError(f"worker broke on {item.n}")
            return item.n
        finally:
            order.end(item.n)

    def then(n):
        if n == 100:
            raise KeyError("decision broke")
        return [n]

    workers = WorkerPool(8)
    state = RecordingState(workers)

    @use("state")
    @pooled
    def node(pool, item, state):
        if item.n == 150:
            raise ValueError("node body broke")
        pool.submit(slow, item, then=then)
        yield from pool.ready()

    def sink(n):
        collected.append(n)

    stream = io.StringIO()
    context = bonobo.run(
        bonobo.Graph(numbers, node, sink),
        services={"state": state},
        plugins=[StatusLines(period=3600, stream=stream)],
        strategy=StartedThreadPoolStrategy(),
    )
    workers.shutdown()
    assert order.reordered_blocks() == list(range(0, 200, 4))  # (finished out of order)
    failed = {37, 100, 150, 199}
    assert collected == [n for n in range(200) if n not in failed]
    problems = {p["key"]: (p["reason"], p["detail"]) for p in state.report.problems}
    assert problems == {
        "item-37": ("internal error", "RuntimeError: worker broke on 37"),
        "item-100": ("internal error", "KeyError: 'decision broke'"),
        "item-150": ("internal error", "ValueError: node body broke"),
        "item-199": ("internal error", "RuntimeError: worker broke on 199"),
    }
    assert command.unexpected_errors(context) == 0
    assert "- node in=200 out=196 [done]" in stream.getvalue().splitlines()


def test_a_failure_in_the_final_drain_does_not_lose_what_is_behind_it(keep_root_logger):
    """Every item still in flight when the input ends: the first fails, the rest arrive."""
    release = threading.Event()
    collected = []

    def numbers():
        yield from (SimpleNamespace(key=f"item-{n}", n=n) for n in range(30))

    def held(item):
        release.wait(5)  # nothing finishes before the input has ended
        if item.n == 0:
            raise OSError("No tag to read at file position 10000")
        return item.n

    workers = WorkerPool(8)  # a window of 32: all 30 are still in flight when the input ends
    state = RecordingState(workers)
    handed_out_before_the_end = []

    @use("state")
    @pooled
    def node(pool, item, state):
        pool.submit(held, item, then=lambda n: [n])
        for output in pool.ready():
            handed_out_before_the_end.append(output)
            yield output
        if item.n == 29:
            release.set()  # the node asks for no more outputs: what is left, the drain sends

    def sink(n):
        collected.append(n)

    context = bonobo.run(
        bonobo.Graph(numbers, node, sink),
        services={"state": state},
        strategy=StartedThreadPoolStrategy(),
    )
    workers.shutdown()
    assert handed_out_before_the_end == []
    assert collected == list(range(1, 30))
    assert [p["key"] for p in state.report.problems] == ["item-0"]
    assert command.unexpected_errors(context) == 0
