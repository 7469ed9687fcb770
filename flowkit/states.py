"""The vocabularies of a run's life, each spelled once: run states, what ``begin_step``
decides, and why a restart is (or is not) made.

Python compares these enums; the Lua scripts of :mod:`flowkit.store` receive the same
names as constants (``RunState.QUEUED`` is ``QUEUED`` in Lua, see
:func:`flowkit.store.scripts.constants`), so no state is spelled twice. They are
``StrEnum``: a member is its value in Redis, in JSON and in the API.

A run moves through its states like this::

    queued --> running --> succeeded | failed | cancelled
       ^          |
       +----------+  (restart: reaper, drain handover, retry of a failed run)
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def live(self) -> bool:
        return not self.terminal


TERMINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
LIVE_STATES = frozenset(RunState) - TERMINAL_STATES


class StepStart(StrEnum):
    """What ``Store.begin_step`` decided for one delivery of a step's message."""

    #: the lease is taken: run a new attempt (or the same one, when the call was resent)
    RUN = "run"
    #: the step is checkpointed: pass its stored output on
    CHECKPOINT = "checkpoint"
    #: the message belongs to an older generation of the run
    STALE = "stale"
    #: another live attempt holds the step's lease (a duplicate message)
    LEASED = "leased"
    #: the run has ended
    TERMINAL = "terminal"
    #: the run is unknown (expired, or never existed)
    GONE = "gone"


class RestartCause(StrEnum):
    """The condition a restart checks atomically before it opens a new generation."""

    #: a retry by request or a drain handover: no condition beyond the expected state
    REQUESTED = "requested"
    #: the lease of a step has lapsed (its worker died or froze)
    LEASE_LAPSED = "lease_lapsed"
    #: the run has been queued since before a deadline (its message was lost)
    QUEUED_TOO_LONG = "queued_too_long"
    #: nothing in flight, no activity since a deadline, and its last holder is gone too
    ORPHANED = "orphaned"
    #: nothing in flight and no activity since a (long) deadline
    STALLED = "stalled"


class RestartRefusal(StrEnum):
    """Why ``Store.restart`` opened no new generation."""

    GONE = "gone"
    #: the condition does not hold (the lease is fresh, the run moved on)
    ALIVE = "alive"
    #: the run is not in the expected state
    STATE = "state"
    #: the run had used up its restarts: it is failed instead
    GAVE_UP = "gave_up"
