"""Components: plain functions made durable.

``@component`` registers a function under a stable name; every Celery app flowkit
makes registers a task ``flowkit.step.<name>`` for it (:mod:`flowkit.worker.tasks`
listens to :data:`registered_hooks`). Fluent methods return a new, configured
component and leave the original untouched. Called outside a run, a component simply
runs (with its retry and timeout policy); called inside a step, the call is a durable
sub-step, checkpointed under ``<step>/<call index>:<name>``.

An ``async def`` function makes an async component: calling it returns a coroutine (await
it; inside a step that awaits it, it is a durable sub-step as above), and as a step of a
run the engine runs it on an event loop (:mod:`flowkit.coroutines`).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, overload

from .context import current
from .coroutines import call_with_policy, is_async
from .errors import ConfigError, NotFound
from .flow import Rate
from .numbers import is_number, is_whole
from .policy import (
    MAX_CACHE_TTL,
    MAX_TIMEOUT,
    MIN_CACHE_TTL,
    Backoff,
    Policy,
    StepConcurrency,
    StepRate,
    call_with_timeout,
    key_spec,
)
from .policy import seconds as policy_seconds

TASK_PREFIX = "flowkit.step."
_registry: dict[str, Component] = {}
#: Called with each component registered from now on (a Celery app registers its task).
registered_hooks: list[Callable[[Component], None]] = []


class Component:
    """A durable function. Create with :func:`component`."""

    def __init__(self, fn: Callable[..., Any], name: str, version: str, policy: Policy) -> None:
        self.fn = fn
        self.name = name
        self.version = version
        self.policy = policy
        #: True for an ``async def`` function: calling the component returns a coroutine.
        self.is_async = is_async(fn)
        # the name, docs and module only: a callable object's own attributes (its name,
        # fn, timeout) merged into ours would override them
        functools.update_wrapper(self, fn, updated=())

    @property
    def task_name(self) -> str:
        return TASK_PREFIX + self.name

    def _configured(self, **changes: Any) -> Component:
        clone = copy.copy(self)
        clone.policy = replace(self.policy, **changes)
        return clone

    def retry(
        self,
        attempts: int = 3,
        backoff: Backoff | None = None,
        jitter: bool | float = True,
        retry_on: type[BaseException] | Iterable[type[BaseException]] = (Exception,),
    ) -> Component:
        """Retry failed attempts: ``attempts`` in all, waiting per ``backoff`` (+ jitter).

        A provider's ``Retry-After`` (``exc.retry_after`` or the response header) wins
        over the backoff.
        """
        clone = copy.copy(self)
        clone.policy = self.policy.with_retry(attempts, backoff, jitter, retry_on)
        return clone

    def cache(self, ttl: float, version: str | None = None) -> Component:
        """Reuse the output of an earlier call with the same input (any run) for ``ttl`` s."""
        ttl = policy_seconds(ttl, "cache(ttl=...)", least=MIN_CACHE_TTL, most=MAX_CACHE_TTL)
        if version is not None and not (isinstance(version, str) and version):
            raise ConfigError(f"cache(version=...) is a non-empty string (or None: the "
                              f"component's version), not {version!r}.")
        return self._configured(cache_ttl=ttl, cache_version=version)

    def timeout(self, seconds: float) -> Component:
        """Fail an attempt that runs longer than ``seconds`` (then the retry policy applies)."""
        return self._configured(timeout=policy_seconds(seconds, "timeout(seconds)",
                                                       most=MAX_TIMEOUT))

    def queue(self, name: str) -> Component:
        """Run this component's steps on the Celery queue ``name``."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"queue(name) is the name of a Celery queue, not {name!r}.")
        return self._configured(queue=name)

    def concurrency(self, limit: int, key: str | Callable[[Any], Any] | None = None) -> Component:
        """At most ``limit`` of this component's steps run at once per ``key`` (an input
        field's name, a module-level function of the input, or None: one for all), across
        every worker. A step over the limit pauses without holding a worker and starts, in
        the order steps asked, when a slot frees."""
        if not (is_whole(limit) and limit >= 1):
            raise ConfigError(f"concurrency(limit) is a whole number >= 1, not {limit!r}.")
        return self._configured(concurrency=StepConcurrency(limit, key_spec(key, "concurrency")))

    def rate_limit(
        self, rate: str, key: str | Callable[[Any], Any] | None = None, *,
        tokens: str | None = None, cost: str | Callable[[Any], Any] | None = None,
        burst: float | None = None,
    ) -> Component:
        """Start at most ``rate`` steps (``"60/m"``, ``"5/s"``) per ``key`` across every
        worker, from a shared Redis token bucket (the LLM client's). ``tokens="90000/m"``
        adds a budget of units each step costs, read from its input by ``cost`` (a field or
        function). The buckets hold one second's worth (at least one step), so no period
        sees much more than ``rate``; ``burst=`` lets that many start at once after a lull.
        A short wait sleeps; a long one pauses the step without a worker."""
        steps = Rate.parse(rate)
        budget = Rate.parse(tokens) if tokens is not None else None
        if burst is not None and not (is_number(burst) and burst >= 1):
            raise ConfigError(f"rate_limit(burst=...) is a number >= 1, not {burst!r}.")
        if budget is not None and cost is None:
            raise ConfigError("rate_limit(tokens=...) needs cost=: the input field (or "
                              "function) giving what one step costs.")
        return self._configured(rate=StepRate(
            per_second=steps.per_second,
            burst=float(burst) if burst is not None else max(1.0, steps.per_second),
            key=key_spec(key, "rate_limit"),
            tokens_per_second=budget.per_second if budget else 0.0,
            token_burst=budget.per_second if budget else 0.0,
            cost=key_spec(cost, "rate_limit cost") if budget else None,
        ))

    def secret(self, *field_names: str) -> Component:
        """Mark input/output fields (dict keys, at any depth) as secret: traces redact them."""
        for field_name in field_names:
            if not isinstance(field_name, str) or not field_name:
                raise ConfigError(f"secret() takes field names, not {field_name!r}.")
        return self._configured(secret_fields=tuple(sorted({*self.policy.secret_fields, *field_names})))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        step = current()
        if self.is_async:
            if step is not None:  # the sub-step's key is taken now, in call order
                return step.call_async(self, args, kwargs)
            return call_with_policy(self.fn, args, kwargs, self.policy)
        if step is not None:
            return step.call(self, args, kwargs)
        pol = self.policy
        return pol.call(lambda: call_with_timeout(self.fn, args, kwargs, pol.timeout))

    def __repr__(self) -> str:
        return f"<Component {self.name} {self.policy}>"


def _register(comp: Component) -> None:
    existing = _registry.get(comp.name)
    if existing is not None and existing.fn is not comp.fn and not _reloaded(existing.fn, comp.fn):
        raise ConfigError(
            f"Two components are named {comp.name!r} ({_shown(existing.fn)} and "
            f"{_shown(comp.fn)}); give one of them another name=."
        )
    _registry[comp.name] = comp
    if existing is None:
        for hook in list(registered_hooks):
            hook(comp)


def _reloaded(before: Callable, after: Callable) -> bool:
    """Whether ``after`` is ``before``'s definition run again (a module reloaded, a notebook
    cell run again), not another function under its name. A named function of one module
    and qualified name is. A lambda or a nested function is only if it was compiled again
    from the same place: two functions a factory made share one code object (the later
    would run the earlier's steps), two lambdas of a file start at their own line and
    column. A notebook cell run again, edited, comes from another file name: in
    ``__main__``, the same first line will do."""
    if inspect.ismethod(before) and inspect.ismethod(after):
        # one class's method bound to two objects: the later object's would run for both
        if before.__func__ is after.__func__:
            return before.__self__ is after.__self__
        return _reloaded(before.__func__, after.__func__)
    if not hasattr(before, "__qualname__") or not hasattr(after, "__qualname__"):
        return False  # a partial or a callable object: nothing says where it was defined
    same_name = (before.__module__, before.__qualname__) == (after.__module__, after.__qualname__)
    if not same_name or "<" not in after.__qualname__:
        return same_name
    first, second = getattr(before, "__code__", None), getattr(after, "__code__", None)
    if first is None or second is None or first is second:
        return False
    if first.co_filename == second.co_filename:
        return _start(first) == _start(second)
    return after.__module__ == "__main__" and first.co_firstlineno == second.co_firstlineno


def _shown(fn: Callable) -> str:
    """Where ``fn`` was defined, for a message (a partial or a callable object: its repr;
    a bound method: which object too)."""
    if inspect.ismethod(fn):
        return f"{_shown(fn.__func__)} of {object.__repr__(fn.__self__)}"
    if hasattr(fn, "__qualname__"):
        return f"{getattr(fn, '__module__', '?')}.{fn.__qualname__}"
    return repr(fn)


def _start(code: Any) -> tuple[int, Any]:
    """Where a function's body starts in its file: its first line, and the first (line,
    column) its instructions name (two lambdas of one line differ in it)."""
    spots = [(line, column) for line, _, column, _ in code.co_positions()
             if line is not None and column]
    return code.co_firstlineno, min(spots, default=None)


@dataclass(frozen=True)
class _Options:
    name: str | None = None
    version: str = "1"


@overload
def component(fn: Callable[..., Any]) -> Component: ...
@overload
def component(*, name: str | None = None, version: str = "1") -> Callable[[Callable], Component]: ...


def component(fn=None, *, name=None, version="1"):
    """Make ``fn`` a component: ``@component``, ``@component(name=..., version=...)``."""

    def make(f: Callable[..., Any]) -> Component:
        if not callable(f) or inspect.isclass(f):
            raise ConfigError("@component decorates a function.")
        if isinstance(f, Component):
            raise ConfigError(f"{f.name!r} is a component already: configure it with its "
                              "methods (.retry(), .timeout(), ...), or make another one from "
                              "its function: component(name=...)(step.fn).")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError(f"@component(name=...) is a non-empty string, not {name!r}.")
        if name is None and not hasattr(f, "__qualname__"):
            raise ConfigError(f"@component needs name= for {f!r}: a functools.partial or a "
                              "callable object has no name of its own.")
        comp = Component(f, name or f"{f.__module__}.{f.__qualname__}", str(version), Policy())
        _register(comp)
        return comp

    return make(fn) if fn is not None else make


def lookup(name: str) -> Component:
    try:
        return _registry[name]
    except KeyError:
        raise NotFound(
            f"No component named {name!r} in this process; import the module that defines "
            "it in the worker: create_celery_app(..., imports=['myapp.flows']), or name it "
            "with celery -A."
        ) from None


def registered() -> dict[str, Component]:
    return dict(_registry)


@dataclass(frozen=True)
class Continue:
    """Returned by a step to decide at run time what runs next (an agent loop)."""

    component: Component
    input: Any


def continue_with(next_component: Component, input: Any) -> Continue:
    """End this step by handing ``input`` to ``next_component``, which runs as the next step."""
    if not isinstance(next_component, Component):
        raise ConfigError("continue_with() takes a component (a function decorated with @component).")
    return Continue(next_component, input)
