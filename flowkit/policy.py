"""A component's policies (retry, cache, timeout, queue) and their tenacity form.

Policies travel inside task messages as JSON (``Policy.to_dict``), so exception
classes named in ``retry_on`` must be importable module-level classes.
"""

from __future__ import annotations

import contextvars
import email.utils
import importlib
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any

import tenacity

from .config import get_settings
from .errors import (
    ConfigError,
    RunCancelled,
    StepSuspended,
    StepTimeout,
    StoreUnavailable,
    final_reason,
)
from .numbers import is_number, is_whole


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial`` seconds, doubling, capped at ``maximum``."""

    initial: float = 1.0
    maximum: float = 30.0


def exponential(initial: float = 1.0, maximum: float = 30.0) -> Backoff:
    initial = seconds(initial, "exponential(initial=...)", zero=True)
    maximum = seconds(maximum, "exponential(maximum=...)", zero=True)
    if maximum < initial:
        raise ConfigError("exponential() needs 0 <= initial <= maximum.")
    return Backoff(initial, maximum)


#: The longest ``.timeout()``: what Python's threads can wait (``threading.TIMEOUT_MAX``,
#: about 292 years); a longer one raised OverflowError once the call had begun.
MAX_TIMEOUT = threading.TIMEOUT_MAX
#: A ``.cache()`` entry's life: whole milliseconds in Redis, at least one (a TTL under a
#: millisecond was ``PX 0``, which Redis refuses), at most about 31,000 years (``1e300``
#: was out of Redis's range); either failed the run once its step's work was done.
MIN_CACHE_TTL, MAX_CACHE_TTL = 0.001, 1e12


def seconds(value: Any, what: str, *, zero: bool = False, least: float | None = None,
            most: float | None = None) -> float:
    """``value`` as a duration: a finite number of seconds, > 0 (>= 0 with ``zero``), and
    within ``least`` and ``most`` when given; anything else is a :class:`ConfigError`
    naming ``what`` (NaN or infinity would reach a timer or a JSON message, and fail there
    far from the mistake)."""
    if not is_number(value) or value < 0 or (value == 0 and not zero):
        floor = ">= 0" if zero else "> 0"
        raise ConfigError(f"{what} is a number of seconds {floor}, not {value!r}.")
    if (least is not None and value < least) or (most is not None and value > most):
        low = f">= {least:g}" if least is not None else (">= 0" if zero else "> 0")
        high = f" and <= {most:g}" if most is not None else ""
        raise ConfigError(f"{what} is a number of seconds {low}{high}, not {value!r}.")
    return float(value)


def _qualname(cls: type[BaseException]) -> str:
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise ConfigError(f"retry_on takes exception classes, got {cls!r}.")
    name = f"{cls.__module__}.{cls.__qualname__}"
    if "<locals>" in name or _resolve(name) is not cls:
        raise ConfigError(
            f"retry_on class {name} must be defined at module level so workers can import it."
        )
    return name


@lru_cache(maxsize=256)
def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    while module:
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            return obj
        except (ImportError, AttributeError):
            module, _, head = module.rpartition(".")
            attr = f"{head}.{attr}"
    raise ConfigError(f"Cannot import {name} named in a retry policy.")


def key_spec(key: str | Callable[[Any], Any] | None, what: str) -> str | None:
    """A limit's key as it travels in messages: an input field's name (dots reach into
    nested fields), ``fn:<module>.<name>`` for a module-level function, or None (one key)."""
    if key is None:
        return None
    if isinstance(key, str):
        if not key or key.startswith("fn:"):
            raise ConfigError(f"{what}(key=...) names an input field, not {key!r}.")
        return key
    if callable(key):
        name = f"{key.__module__}.{key.__qualname__}"
        if "<" in name or _resolve(name) is not key:
            raise ConfigError(f"{what}(key=...) takes an input field's name or a module-level "
                              f"function (workers import it by name), not {name}.")
        return f"fn:{name}"
    raise ConfigError(f"{what}(key=...) is an input field's name or a function of the input.")


def key_value(spec: str | None, value: Any, what: str) -> str:
    """The key a step with input ``value`` counts under (``spec`` from :func:`key_spec`)."""
    if spec is None:
        return "*"
    found = field_value(spec, value, what)
    text = key_text(found)
    if text is None:
        raise ConfigError(f"the {what} key {spec.removeprefix('fn:')!r} is {found!r}: "
                          f"{KEY_RULE}")
    return text


def field_value(spec: str, value: Any, what: str) -> Any:
    """What ``spec`` (an input field's dotted path, or ``fn:`` a function) reads from
    ``value``."""
    if spec.startswith("fn:"):
        return _resolve(spec[3:])(value)
    found = value
    for part in spec.split("."):
        if not isinstance(found, dict) or part not in found:
            raise ConfigError(f"the input has no field {spec!r} to key its {what} by")
        found = found[part]
    return found


#: What a key (a run's concurrency key, a component's limit key) may be.
KEY_RULE = ("a key is non-empty text or a whole number (5, 5.0 and \"5\" are one key); "
            "null, true/false, lists and objects would share a key with their text")


def key_text(found: Any) -> str | None:
    """``found`` as a key's text, or None when it cannot be one: ``str()`` made tenant
    ``None`` and tenant ``"None"`` (or ``True`` and ``"True"``) one key, and so one line."""
    if isinstance(found, str):
        return found or None
    if isinstance(found, int) and not isinstance(found, bool):
        return str(found)
    if isinstance(found, float) and found.is_integer() and abs(found) <= 2**53:
        return str(int(found))  # JSON's 5.0 was refused as "not a whole number", which it is
    return None


@dataclass(frozen=True)
class StepConcurrency:
    """At most ``limit`` steps of a component run at once per key, across the fleet."""

    limit: int
    key: str | None = None


@dataclass(frozen=True)
class StepRate:
    """A component's shared token bucket (the one the LLM client uses): ``per_second``
    steps (up to ``burst`` at once) and, optionally, ``tokens_per_second`` of a cost read
    from the input by ``cost`` (a field or function, like keys)."""

    per_second: float
    burst: float
    key: str | None = None
    tokens_per_second: float = 0.0
    token_burst: float = 0.0
    cost: str | None = None


@dataclass(frozen=True)
class Policy:
    attempts: int = field(default_factory=lambda: get_settings().retry_attempts)
    backoff: Backoff = field(
        default_factory=lambda: Backoff(get_settings().retry_initial, get_settings().retry_maximum)
    )
    #: True: full jitter; a number: up to that many seconds added; False: none.
    jitter: bool | float = True
    retry_on: tuple[str, ...] = ("builtins.Exception",)
    timeout: float | None = None
    cache_ttl: float | None = None
    #: ``cache(version=...)``; None: the component's ``version`` in the code that runs the
    #: step (the worker's, not the starter's: a policy travels in its step's message).
    cache_version: str | None = None
    queue: str | None = None
    #: Input/output fields kept out of traces (``Component.secret``).
    secret_fields: tuple[str, ...] = ()
    concurrency: StepConcurrency | None = None
    rate: StepRate | None = None

    def with_retry(
        self,
        attempts: int,
        backoff: Backoff | None,
        jitter: bool | float,
        retry_on: type[BaseException] | Iterable[type[BaseException]],
    ) -> Policy:
        if not (is_whole(attempts) and attempts >= 1):
            raise ConfigError(f"retry(attempts=...) is a whole number >= 1 (1 means no "
                              f"retry), not {attempts!r}.")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigError(f"retry(backoff=...) takes flowkit.exponential(initial, maximum), "
                              f"not {backoff!r}.")
        if backoff is not None:  # one built by hand is held to exponential()'s rules
            backoff = exponential(backoff.initial, backoff.maximum)
        if not isinstance(jitter, bool) and not (isinstance(jitter, (int, float))
                                                 and math.isfinite(jitter) and jitter >= 0):
            raise ConfigError(f"retry(jitter=...) is True (full jitter), False (none) or a "
                              f"number of seconds >= 0, not {jitter!r}.")
        if isinstance(retry_on, str):  # iterated, it was refused a letter at a time
            raise ConfigError(f"retry(retry_on=...) takes exception classes, not the string "
                              f"{retry_on!r}: pass the class itself (retry_on="
                              f"{retry_on.rpartition('.')[2]}).")
        if isinstance(retry_on, type):  # one class, as ``except`` takes it
            retry_on = (retry_on,)
        if isinstance(retry_on, BaseException) or not isinstance(retry_on, Iterable):
            raise ConfigError(f"retry(retry_on=...) takes an exception class or a tuple of "
                              f"them (retry_on=(TimeoutError, ConnectionError)), not "
                              f"{retry_on!r}.")  # an instance, a number, None
        retry_on = tuple(retry_on)  # a list, a set, a generator
        if not retry_on and attempts > 1:
            raise ConfigError("retry(retry_on=()) retries on no error, so its attempts never "
                              "come; name the exception classes to retry on, or leave "
                              "retry_on out (any Exception).")
        return replace(
            self,
            attempts=attempts,
            backoff=backoff or self.backoff,
            jitter=jitter,
            retry_on=tuple(_qualname(c) for c in retry_on),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["retry_on"] = list(self.retry_on)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        data = dict(data)
        data["backoff"] = Backoff(**data["backoff"])
        data["retry_on"] = tuple(data["retry_on"])
        data["secret_fields"] = tuple(data.get("secret_fields", ()))
        if data.get("concurrency"):
            data["concurrency"] = StepConcurrency(**data["concurrency"])
        if data.get("rate"):
            data["rate"] = StepRate(**data["rate"])
        return cls(**data)

    def exception_types(self) -> tuple[type[BaseException], ...]:
        return tuple(_resolve(name) for name in self.retry_on)

    def wait(self) -> tenacity.wait.wait_base:
        b = self.backoff
        if self.jitter is True:
            base = tenacity.wait_random_exponential(multiplier=b.initial, max=b.maximum)
        elif self.jitter:
            base = tenacity.wait_exponential_jitter(
                initial=b.initial, max=b.maximum, jitter=float(self.jitter)
            )
        else:
            base = tenacity.wait_exponential(multiplier=b.initial, max=b.maximum)
        # a provider's Retry-After is honoured up to the longest the LLM client waits out
        # (or this backoff's maximum, if longer): a Retry-After: 3600 held the worker an hour
        return wait_retry_after(base, cap=max(b.maximum, get_settings().llm_max_retry_after))

    def call(self, attempt: Callable[[], Any], **hooks: Any) -> Any:
        """``attempt()`` under this retry policy (no retry machinery for a single attempt);
        ``hooks`` go to tenacity (``before_sleep``)."""
        if self.attempts == 1:
            return attempt()
        for state in self.retrying(**hooks):
            with state:
                result = attempt()
        return result

    def retrying(self, **hooks: Any) -> tenacity.Retrying:
        """A tenacity ``Retrying`` applying this policy (``reraise`` keeps the real error)."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self.wait(),
            retry=tenacity.retry_if_exception(self.retries)
            # never the engine's signals, whatever retry_on names (BaseException: a wait
            # was retried as a failure, its attempts spent before it paused)
            & tenacity.retry_if_not_exception_type((RunCancelled, StoreUnavailable,
                                                    StepSuspended)),
            reraise=True,
            **hooks,
        )

    def retries(self, exc: BaseException) -> bool:
        """Whether ``retry_on`` retries ``exc``. An error its raiser marked final (an LLM
        call's 401, 400 or over-long Retry-After: :func:`flowkit.errors.mark_final`) is
        retried only when ``retry_on`` names a class of it narrower than Exception. A
        ``SystemExit`` that reaches here is its process ending (a step's own is a
        ComponentExit by then): never retried, even under ``retry_on=BaseException``."""
        if isinstance(exc, SystemExit):
            return False
        types = self.exception_types()
        if not isinstance(exc, types):
            return False
        if final_reason(exc) is None:
            return True
        return any(isinstance(exc, t) for t in types if t not in (Exception, BaseException))


class wait_retry_after(tenacity.wait.wait_base):  # noqa: N801 - tenacity's naming
    """Honour a ``retry_after`` (seconds) carried by the exception, at most ``cap`` seconds,
    else fall back."""

    def __init__(self, fallback: tenacity.wait.wait_base, cap: float | None = None) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = retry_after_of(exc) if exc else None
        if hint is None:
            return self.fallback(retry_state)
        return hint if self.cap is None else min(hint, self.cap)


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds a provider asked us to wait: a ``retry_after`` attribute, else its response's
    headers read as the openai SDK reads them: ``retry-after-ms``, then ``retry-after`` in
    seconds, then ``retry-after`` as an HTTP date (from now)."""
    value = getattr(exc, "retry_after", None)
    if value is not None:
        return _finite_wait(value)
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        wait = _finite_wait(headers.get(name), divisor)
        if wait is not None:
            return wait
    date = headers.get("retry-after")
    try:
        parsed = email.utils.parsedate_tz(date) if isinstance(date, str) else None
        if parsed is None:
            return None
        return max(0.0, float(email.utils.mktime_tz(parsed) - time.time()))
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _finite_wait(value: Any, divisor: float = 1.0) -> float | None:
    try:
        seconds = float(value) / divisor if value is not None else None
    except (TypeError, ValueError):
        return None
    # "inf" or "nan" is no wait anyone can keep: the usual backoff applies (inf overflowed
    # time.sleep, and that OverflowError replaced the provider's own error)
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def call_with_timeout(
    fn: Callable[..., Any], args: tuple, kwargs: dict, timeout: float | None,
    on_timeout: Callable[[], None] | None = None,
) -> Any:
    """``fn(*args, **kwargs)``; with a timeout, in a helper thread abandoned when time runs
    out (``on_timeout`` is told, then StepTimeout raised). Python cannot stop a thread:
    the abandoned call runs on until it returns, and whatever it sends is refused."""
    if timeout is None:
        return fn(*args, **kwargs)
    outcome: dict[str, Any] = {}
    run_in_context = contextvars.copy_context().run

    def target() -> None:
        try:
            outcome["value"] = run_in_context(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="flowkit-step", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if on_timeout is not None:
            on_timeout()
        raise StepTimeout(f"attempt ran longer than its {timeout:g}s timeout")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
