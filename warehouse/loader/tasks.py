"""What passes between the loader's nodes: one `Task` per raw input or write, and its stamp."""

from __future__ import annotations

from collections import namedtuple

from warehouse.listing.raw import raw_stamp

#: One item between the loader's nodes. ``action`` is ``clinical`` or ``image`` (a raw file to
#: process), ``copy`` (copy ``key`` to ``target``), ``metadata`` (``payload`` is the header of
#: image ``key``, to write at ``target``) or ``write`` (``payload`` is the bytes for ``target``).
Task = namedtuple("Task", "action key size target payload")


def input_stamp(task: Task) -> tuple[int, str]:
    """A raw input's size and modification time from the listing (how the next run knows it
    unchanged: `listing.raw.raw_stamp`)."""
    return raw_stamp(task.payload, task.size)
