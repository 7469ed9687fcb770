"""The Lua scripts of ``lua/``, made ready to run on a Redis client.

A run script runs as three parts joined: the vocabulary of :mod:`flowkit.states` as Lua
constants (``STATE_QUEUED = 'queued'``, ``START_RUN = 'run'``, ``CAUSE_ORPHANED =
'orphaned'``, ``REFUSED_ALIVE = 'alive'``, ``KIND_INPUT = 'input'``, ``WAIT_PAUSED =
'paused'``), ``lib.lua`` (the run keys and the helpers
every run script shares), and the script's own file. A standalone script (the rate
buckets) is its file alone. Each file's header names its KEYS and ARGV.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from importlib import resources

from ..states import RestartCause, RestartRefusal, RunState, StepStart, WaitKind, WaitOutcome

#: Lua constant prefix of each vocabulary.
_VOCABULARIES: dict[str, type[StrEnum]] = {
    "STATE": RunState, "START": StepStart, "CAUSE": RestartCause, "REFUSED": RestartRefusal,
    "KIND": WaitKind, "WAIT": WaitOutcome,
}

RUN_SCRIPTS = (
    "create", "begin", "complete", "emit", "retrying", "fail", "finish", "cancel", "restart",
    "heartbeat", "revoke", "release", "handoff", "begin_wait", "deliver", "fire_timer", "hold", "admit",
    "compact",
)
STANDALONE_SCRIPTS = ("rate_acquire", "rate_settle", "claim_tick", "take_buffered", "slots",
                      "trace", "forget_answer", "swap_answer")


@cache
def constants() -> str:
    """``local STATE_QUEUED, ... = 'queued', ...``: every vocabulary as Lua locals."""
    names, values = [], []
    for prefix, vocabulary in _VOCABULARIES.items():
        for member in vocabulary:
            names.append(f"{prefix}_{member.name}")
            values.append(f"'{member.value}'")
    return f"local {', '.join(names)} =\n  {', '.join(values)}\n"


def _file(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


@cache
def source(name: str) -> str:
    """The whole text Redis runs for script ``name``."""
    if name in STANDALONE_SCRIPTS:
        return _file(name)
    if name not in RUN_SCRIPTS:
        raise KeyError(f"no Lua script {name!r}")
    return constants() + _file("lib") + _file(name)
