"""The vocabularies of a run's life, each spelled once: run states, what ``begin_step``
decides, and why a restart is (or is not) made.

Python compares these enums; the Lua scripts of :mod:`flowkit.store` receive the same
names as constants (``RunState.QUEUED`` is ``QUEUED`` in Lua, see
:func:`flowkit.store.scripts.constants`), so no state is spelled twice. They are
``StrEnum``: a member is its value in Redis, in JSON and in the API.

A run moves through its states like this::

    scheduled --> queued --> running <--> waiting
                    ^          |  \
                    |          |   +--> succeeded | failed | cancelled
                    +----------+  (restart, retry, input, event, timer)

``scheduled``: a delayed start not yet due. ``waiting``: paused inside a step for input,
an event or a timer, with nothing in flight: no Celery message, no worker slot.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
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
    #: nothing in flight, none of its queues holds a message and no sign of life since a
    #: deadline, seen so twice a deadline apart: what was to move it on was lost (a message
    #: a worker took and died with, a join whose branch was never counted, a publish the
    #: broker refused)
    STRANDED = "stranded"


class WaitKind(StrEnum):
    """What a paused step waits for (``Store.begin_wait``)."""

    INPUT = "input"
    EVENT = "event"
    SLEEP = "sleep"
    #: A slot of a component's concurrency limit (engine.limits).
    SLOT = "slot"


class WaitOutcome(StrEnum):
    """What ``begin_wait`` decided, and what delivering to a wait did."""

    #: the step pauses: the run waits (or keeps running other branches)
    PAUSED = "paused"
    #: what it waits for is already there (delivered, timed out): the step goes on
    READY = "ready"
    #: the run moved on (ended, or another generation): the attempt stops
    STOPPED = "stopped"
    #: delivered, and nothing else holds the run back: the caller sends its frontier
    RESUMED = "resumed"
    #: delivered; the run still waits for another wait, or for steps in flight
    DELIVERED = "delivered"
    #: this very value was delivered already (a resend, a double click)
    SAME = "same"
    #: that wait was answered already, with another value: the first answer stands
    ANSWERED = "answered"
    #: that wait timed out (its step got the timeout's error): no answer is taken after
    TIMED_OUT = "timed_out"
    #: no wait of that name is open (another value won, or the run does not wait)
    NOT_WAITING = "not_waiting"


class RestartRefusal(StrEnum):
    """Why ``Store.restart`` opened no new generation."""

    GONE = "gone"
    #: the condition does not hold (the lease is fresh, the run moved on)
    ALIVE = "alive"
    #: the run is not in the expected state
    STATE = "state"
    #: the run had used up its restarts: it is failed instead
    GAVE_UP = "gave_up"
