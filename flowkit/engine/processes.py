"""What the operating system says of processes, read from ``/proc`` (Linux): a process's
state and start time, and who is whose parent. The lease keeper asks whether the processes
it beats for are alive, stopped or another under a reused pid; a drain finds the programs
its handed-over steps started. Where there is no ``/proc`` a process is alive or gone, and
no process has a parent.
"""

from __future__ import annotations

import contextlib
import os


def _fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces and
    parentheses): the state letter first, the parent second."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def process_stat(pid: int) -> tuple[str, str]:
    """The process's state letter (``ps``'s; ``"X"`` when it is gone) and when it started
    (clock ticks after boot; ``""`` where there is no ``/proc``)."""
    try:
        fields = _fields(pid)
        return fields[0].decode(), fields[19].decode()
    except FileNotFoundError:
        return "X", ""
    except OSError:  # no /proc (not Linux): alive or not is all that can be known
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "X", ""
        except PermissionError:
            pass
        return "R", ""


def process_state(pid: int) -> str:
    """The process's state letter (``ps``'s), ``"X"`` when it is gone."""
    return process_stat(pid)[0]


def parents() -> dict[int, int]:
    """Every process's parent, from ``/proc`` (nothing where there is none)."""
    found = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    found[int(entry)] = int(_fields(int(entry))[1])
    return found


def children_of(parent: int) -> list[int]:
    """The processes whose parent is ``parent``."""
    return [pid for pid, of in parents().items() if of == parent]


def descendants_of(root: int, spare: int | None = None) -> list[int]:
    """The processes under ``root`` (children, theirs, and so on), but ``spare`` and its own."""
    tree, found, frontier = parents(), [], [root]
    while frontier:
        below = [pid for pid, of in tree.items() if of in frontier and pid != spare]
        found += below
        frontier = below
    return found
