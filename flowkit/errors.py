"""flowkit's exceptions.

Every exception flowkit raises on purpose derives from :class:`FlowkitError`::

    FlowkitError
    ├── ConfigError          bad settings or a worker that must refuse to start
    ├── ValidationError      workflow input rejected (carries marshmallow's field messages)
    ├── PayloadTooLarge      an input, output or event over MAX_PAYLOAD_BYTES
    ├── NotFound
    │   ├── WorkflowNotFound
    │   └── RunNotFound
    ├── InvalidState         e.g. retrying a run that has not failed
    ├── IdempotencyConflict  an idempotency key reused with another input
    ├── StepError            a step failed after its retries (raised by Run.result())
    ├── RunCancelled         raised inside a step whose run was cancelled or superseded
    ├── StoreUnavailable     flowkit's Redis stayed unreachable past FLOWKIT_REDIS_RETRY_SECONDS
    │   ├── BrokerUnavailable  the Celery broker (or its result backend) did: a run stored
    │   │                      meanwhile is sent by the reaper once the broker is back
    │   └── Demoted          (flowkit.store.connection) a plain URL's Redis refused writes as
    │                        a read-only replica (also redis-py's ConnectionError, resent)
    ├── StepTimeout          one attempt of a step ran longer than its timeout (also a TimeoutError)
    ├── WaitTimeout          a paused step's wait ran out (also a TimeoutError)
    │   ├── InputTimeout     wait_for_input got no input in time
    │   └── EventTimeout     wait_for_event got no event in time
    ├── RateLimitWait        a shared rate-limit budget did not free up in time (flowkit.llm
    │                        fails over to the next provider)
    ├── ComponentExit        a step's code raised SystemExit, or another BaseException that is
    │                        no signal: its step fails with this (a run's error type)
    └── ApiError             (flowkit.api.errors) an HTTP error the API answers as it is

Two stand apart, on purpose::

    BaseException
    ├── StepSuspended        a step pauses (a wait): raised through the component's code to
    │                        the engine, which frees the worker; not an Exception, so an
    │                        ``except Exception`` in a component does not swallow it
    └── KeyboardInterrupt
        └── Stopped          (flowkit.cli.supervisor) ``flowkit dev`` got a stop signal
                             (SIGINT, SIGTERM, SIGHUP): it stops everything it started

Anything else that escapes flowkit is a bug, or an error of the code it runs (a
component's own exception is the step's error, recorded in the run).
"""

from __future__ import annotations

import asyncio
import os
import sysconfig
import traceback
from typing import Any


class FlowkitError(Exception):
    """Root of flowkit's exceptions."""


class ConfigError(FlowkitError):
    """Settings are inconsistent; the message says which one to change."""


class ValidationError(FlowkitError):
    """Input failed its schema (a workflow's, a wait's) or a rule (an event key's length).
    ``fields`` maps each field to its messages."""

    def __init__(self, fields: dict[str, Any], message: str = "Invalid workflow input.") -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        """The message, then the field messages it does not already say: an uncaught one
        said only "Invalid workflow input." (``message`` alone is what the API answers)."""
        said = [f"{name}: {text}" for name, text in _field_lines(self.fields)
                if text not in self.message]
        return f"{self.message} ({'; '.join(said)})"[:2000] if said else self.message


def _field_lines(fields: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted field name, its messages as one line) of a marshmallow-shaped error dict."""
    if not isinstance(fields, dict):
        return []
    lines = []
    for name, said in fields.items():
        if isinstance(said, dict):
            lines += _field_lines(said, f"{prefix}{name}.")
        else:
            text = " ".join(map(str, said)) if isinstance(said, list) else str(said)
            lines.append((f"{prefix}{name}", text))
    return lines


class PayloadTooLarge(FlowkitError):
    """A JSON payload is larger than the configured limit."""


class NotFound(FlowkitError):
    """Something looked up by name or id does not exist (or has expired)."""


class WorkflowNotFound(NotFound):
    pass


class RunNotFound(NotFound):
    pass


class InvalidState(FlowkitError):
    """The run is not in a state that allows this operation."""


class IdempotencyConflict(FlowkitError):
    """The idempotency key already names a run started with a different input."""


class StepError(FlowkitError):
    """A run failed: ``step`` failed with ``error`` after ``attempts``."""

    def __init__(self, message: str, step: str | None = None, attempts: list | None = None):
        super().__init__(message)
        self.step = step
        self.attempts = attempts or []


class RunCancelled(FlowkitError):
    """The run of the current step was cancelled (or restarted elsewhere): stop working."""


class StoreUnavailable(FlowkitError):
    """flowkit's Redis is unreachable: an infrastructure failure, not the step's own error.

    The attempt is abandoned without failing the run; the reaper restarts the run once
    Redis is back (or the task's message is redelivered)."""


class BrokerUnavailable(StoreUnavailable):
    """The Celery broker, or the result backend Celery reaches while sending, is unreachable.
    ``setting`` names the one to fix (``FLOWKIT_BROKER_URL``, ``FLOWKIT_RESULT_BACKEND``).

    A run stored before its message could go is not lost: the reaper sends it once
    FLOWKIT_QUEUED_TIMEOUT passes."""

    def __init__(self, message: str, setting: str = "FLOWKIT_BROKER_URL",
                 refused: bool = False) -> None:
        super().__init__(message)
        self.setting = setting
        #: The broker answered and refused (RabbitMQ: credentials, vhost, a queue's
        #: arguments): a setting to fix, not an outage to wait out.
        self.refused = refused
        #: The run stored before its message could go (a start), else None.
        self.run_id: str | None = None


class StepTimeout(FlowkitError, TimeoutError):
    """One attempt of a step exceeded the component's timeout."""


class WaitTimeout(FlowkitError, TimeoutError):
    """A wait of a paused step ran out; raised inside the step (its error boundary and retry
    policy decide what follows). A replay of the step raises it again at the same wait."""


class InputTimeout(WaitTimeout):
    """``wait_for_input`` got no input before its timeout."""


class EventTimeout(WaitTimeout):
    """``wait_for_event`` got no event before its timeout."""


class ComponentExit(FlowkitError):
    """A component's code raised SystemExit (``sys.exit()`` in a library), a
    KeyboardInterrupt off the main thread, or a BaseException of its own: its step fails
    with this, as with any error. Let through, it escaped into Celery's pool: a threads
    pool lost the slot for good (the task never ended), a prefork child died and the step
    ran again at each restart until the run failed as "worker lost"."""


class StepSuspended(BaseException):  # noqa: N818 - a signal to the engine, not an error
    """The running step paused to wait: the engine frees its worker and the run waits.
    ``resume_gen`` > 0: its pause left nothing in flight of a run whose other waits were
    answered meanwhile, and opened that generation; the engine enqueues its frontier."""

    def __init__(self, message: str, resume_gen: int = 0) -> None:
        super().__init__(message)
        self.resume_gen = resume_gen


#: BaseExceptions an attempt raises that are signals, not its error: the engine's own
#: pause, a generator or coroutine being closed (a task cancelled).
ATTEMPT_SIGNALS = (StepSuspended, GeneratorExit, asyncio.CancelledError)


class RateLimitWait(FlowkitError):
    """The shared budget did not free up in time; the caller fails over to the next provider."""


def mark_final(exc: BaseException, why: str) -> None:
    """Say that ``exc`` cannot succeed if its call is made again as it was (a 401, a 400, a
    Retry-After over the longest waited out): a step's retry with the default ``retry_on``
    does not retry it (one that names its class does)."""
    exc.flowkit_final = why  # type: ignore[attr-defined]


def final_reason(exc: BaseException) -> str | None:
    """Why ``exc`` was marked final (:func:`mark_final`), or None."""
    why = getattr(exc, "flowkit_final", None)
    return why if isinstance(why, str) else None


#: The most of an error's message a run, an event or a trace keeps: its start and its end
#: (a message embedding a provider's response body ran to megabytes, written twice per
#: failure, past FLOWKIT_MAX_PAYLOAD_BYTES).
MAX_ERROR_CHARS = 4000
_KEPT_END = 500


def error_message(exc: BaseException) -> str:
    """``str(exc)`` as a run may keep it: UTF-8 text (a lone surrogate, ``\\ud800``,
    written out), at most :data:`MAX_ERROR_CHARS`, and never raising (an ``__str__`` that
    raised, or text Redis could not encode, failed the failure's own record: the run
    stayed running until the reaper ran the step again)."""
    try:
        text = str(exc)
    except Exception as inner:
        text = f"<its message could not be read: {type(inner).__name__} in __str__>"
    return bounded_text(text)


def bounded_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` encodable as UTF-8 and cut to ``limit`` characters (its start and end)."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        cut = len(text) - limit
        text = (f"{text[:limit - _KEPT_END]} [... {cut} characters cut ...] "
                f"{text[-_KEPT_END:]}")
    return text


def describe_error(exc: BaseException) -> str:
    """``"TypeError: message"``: how events and traces name an error."""
    return f"{type(exc).__name__}: {error_message(exc)}"


#: Where code that is not the application's lives: flowkit, the standard library, and
#: installed packages (an error raised inside a library is placed at the app's call).
_NOT_APP = tuple({os.path.dirname(os.path.abspath(__file__)) + os.sep,
                  *(os.path.abspath(sysconfig.get_paths()[name]) + os.sep
                    for name in ("stdlib", "platstdlib", "purelib", "platlib"))})


def error_origin(exc: BaseException) -> str | None:
    """``"myapp/flows.py:12 in helper"``: the innermost line of the application's own code
    that the error went through (its path relative to the working directory when under it),
    or None when none did. Read from the traceback's frames alone (no source is read)."""
    frames = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__),
                                            lookup_lines=False)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if frame.filename.startswith("<") or path.startswith(_NOT_APP):
            continue
        return f"{shown_path(path)}:{frame.lineno} in {frame.name}"
    return None


def raised_at(exc: BaseException) -> str:
    """`` (at myapp/flows.py:12)`` from :func:`error_origin`, or "" when it has none."""
    origin = error_origin(exc)
    return f" (at {origin.rpartition(' in ')[0]})" if origin else ""


def described(exc: BaseException) -> str:
    """``NameError: name 'x' is not defined (at myapp/flows.py:12)``: an error raised while
    importing the user's code, with the line of it that raised; a SyntaxError with its
    file's path (Python's own text names the bare file: ``(flows.py, line 12)``)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__}: {exc.msg} (at {shown_path(exc.filename)}:{exc.lineno})"
    return f"{type(exc).__name__}: {exc}{raised_at(exc)}"


def shown_path(path: str) -> str:
    """``path`` relative to the working directory when it is under it, else absolute."""
    path = os.path.abspath(path)
    return os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path
