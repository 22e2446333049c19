"""A stand-in for a graph module, run by the task runner tests as ``python -m tests.fake_graph``.

Behaviour comes from the environment:

- ``FAKE_GRAPH_STDOUT``: text printed on stdout (as is);
- ``FAKE_GRAPH_STDERR``: text printed on stderr;
- ``FAKE_GRAPH_SUMMARY``: text written to the file named by ``RUN_SUMMARY_FILE``;
- ``FAKE_GRAPH_ARGV_FILE``: file receiving the arguments as JSON;
- ``FAKE_GRAPH_READY_FILE``: file created once the graph runs, before it waits;
- ``FAKE_GRAPH_UNTIL_SIGNALLED``: wait for a signal (its default action ends the process);
  the value is a guard in seconds, after which SIGALRM ends it (exit code 128 + 14);
- ``FAKE_GRAPH_EXIT``: the exit code (default 0).
"""

import json
import os
import signal
import sys
from pathlib import Path


def main() -> int:
    """Act as configured by the environment and return the exit code."""
    env = os.environ
    if "FAKE_GRAPH_ARGV_FILE" in env:
        Path(env["FAKE_GRAPH_ARGV_FILE"]).write_text(json.dumps(sys.argv[1:]))
    sys.stdout.write(env.get("FAKE_GRAPH_STDOUT", ""))
    sys.stdout.flush()
    sys.stderr.write(env.get("FAKE_GRAPH_STDERR", ""))
    if "FAKE_GRAPH_SUMMARY" in env and env.get("RUN_SUMMARY_FILE"):
        Path(env["RUN_SUMMARY_FILE"]).write_text(env["FAKE_GRAPH_SUMMARY"])
    if "FAKE_GRAPH_READY_FILE" in env:
        Path(env["FAKE_GRAPH_READY_FILE"]).write_text("ready")
    if "FAKE_GRAPH_UNTIL_SIGNALLED" in env:
        signal.alarm(int(env["FAKE_GRAPH_UNTIL_SIGNALLED"]))
        signal.pause()
    return int(env.get("FAKE_GRAPH_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
