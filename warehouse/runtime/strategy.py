"""How a graph is run: bonobo's thread-per-node strategy, changed only through the hooks bonobo
offers (the node contexts it creates, the start of the graph context), plus one cache.

Each change rests on a fact about the pinned ``bonobo2`` that ``tests/test_runtime.py`` checks
(a premise test), so a new bonobo that breaks one fails a test instead of the runs.
"""

from __future__ import annotations

import functools
import time

from bonobo.config import processors
from bonobo.execution.contexts.graph import GraphExecutionContext
from bonobo.execution.contexts.node import NodeExecutionContext
from bonobo.execution.strategies.executor import ThreadPoolExecutorStrategy
from bonobo.structs.inputs import Input


def cache_node_signatures() -> None:
    """bonobo binds every input to its node with ``processors.signature(node)`` (a module
    global), computed again on every call (about 6 % of the loader's CPU); a node's signature
    never changes, so compute it once per node."""
    if not hasattr(processors.signature, "cache_info"):
        processors.signature = functools.lru_cache(maxsize=1024)(processors.signature)


cache_node_signatures()


class PromptInput(Input):
    """A node's input queue that waits for the next item instead of polling for it.

    bonobo asks for an item with ``input.get(timeout=0)`` and, when there is none, sleeps
    0.2 s: at every stage of a graph an item (or the end of the stream) could wait that long.
    Waiting on the queue itself wakes the node as soon as something arrives.
    """

    WAIT = 1.0

    def get(self, block=True, timeout=None):
        return super().get(block, self.WAIT if timeout == 0 else timeout)


class PromptNodeExecutionContext(NodeExecutionContext):
    """bonobo's node context with a `PromptInput`."""

    QueueType = PromptInput


def input_size(node) -> int | None:
    """The input queue size a node asks for (`warehouse.runtime.pools.bounded_input`)."""
    return getattr(node, "__input_size__", None)


class PromptGraphExecutionContext(GraphExecutionContext):
    """bonobo's graph context with prompt nodes whose queues have the size each node asks
    for, watched 20 times a second, that returns from `start` only once every node has
    started, so a graph never looks finished ("context cannot be stopped as it never
    started") while threads are still slow to start."""

    NodeExecutionContextType = PromptNodeExecutionContext
    TICK_PERIOD = 0.05

    def __init__(self, *args, **kwargs):
        #: Nodes whose thread could not be submitted: never waited for.
        self.unstartable: set = set()
        super().__init__(*args, **kwargs)

    def create_node_execution_context_for(self, node):
        context = super().create_node_execution_context_for(node)
        size = input_size(node)
        if size is not None:
            context.input.maxsize = size
        return context

    def start(self, starter=None):
        super().start(starter)
        while not all(node.started or node in self.unstartable for node in self.nodes):
            time.sleep(0.005)


class StartedThreadPoolStrategy(ThreadPoolExecutorStrategy):
    """bonobo's thread-per-node strategy on `PromptGraphExecutionContext`; it tells the
    context which nodes could not be submitted, so the context never waits for them."""

    GraphExecutionContextType = PromptGraphExecutionContext

    def get_starter(self, executor, futures):
        start = super().get_starter(executor, futures)

        def start_node(node):
            submitted = len(futures)
            start(node)  # bonobo logs a submission that fails
            if len(futures) == submitted:
                node.parent.unstartable.add(node)

        return start_node
