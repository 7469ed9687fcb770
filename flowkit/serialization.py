"""JSON in and out: the only wire format flowkit uses (never pickle)."""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
from typing import Any

from .config import get_settings
from .errors import PayloadTooLarge

#: Deepest nesting of objects and arrays a run's input or an API body may have. Redaction,
#: schemas and the trace walk payloads recursively: past a few hundred levels a worker's
#: stack gives out while it reports the step, and the run stopped there.
MAX_DEPTH = 64


def dumps(value: Any) -> str:
    """``value`` as JSON; NaN and Infinity are refused (ValueError), as JSON has neither:
    a browser's ``JSON.parse`` and most other readers fail on the whole document."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                          default=_not_json, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        raise ValueError("it holds NaN or Infinity, which JSON cannot carry; use None or a "
                         "string") from None


def comparable(value: Any) -> str:
    """``value`` as JSON, to compare two values as the store keeps them: NaN is let through,
    so a value an older release stored with one (before :func:`dumps` refused it) compares
    as different from what the code holds now, and never raises where it is only read.
    Objects' keys are sorted: one input sent again with its keys in another order (a client
    retrying a start) is the same input (it was an IdempotencyConflict)."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str,
                          allow_nan=True, sort_keys=True)
    except TypeError:  # keys of several types (1 and "a"), which do not sort
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str,
                          allow_nan=True)


def canonical(text: str) -> str:
    """JSON ``text`` (as :func:`dumps` wrote it) with every object's keys sorted: two texts
    of one value, whatever their key order, are then one text."""
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False,
                      sort_keys=True)


_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8_json(text: str) -> str:
    """JSON text Redis can store: a lone surrogate (UTF-8 has none) written out as the
    six characters ``\\ud800`` inside its string. For what must be stored whatever it
    holds (a trace, whose attempt failed because its output held one)."""
    if text.isascii():
        return text
    return _SURROGATE.sub(lambda m: f"\\\\u{ord(m.group()):04x}", text)


def loads(text: str | bytes) -> Any:
    return json.loads(text)


def _not_json(value: Any) -> Any:
    """json's ``default``: what cannot be JSON, said plainly (a coroutine is the usual
    mistake: an async component called from sync code without ``await``)."""
    if inspect.iscoroutine(value):
        value.close()  # never to be awaited: no "never awaited" warning on top of this
        raise TypeError("it holds a coroutine: an async component called without await; "
                        "make the calling step `async def` and await it")
    if callable(getattr(value, "model_dump", None)):  # a pydantic model: the SDK's answers
        raise TypeError(f"it holds a {type(value).__name__}, a pydantic model (as the OpenAI "
                        "SDK's answers are); return value.model_dump(mode='json'), or the "
                        "part you need (reply.choices[0].message.content)")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps_bounded(value: Any, what: str) -> str:
    """Serialise ``value``; refuse it when over FLOWKIT_MAX_PAYLOAD_BYTES or not JSON."""
    try:
        text = dumps(value)
        size = len(text.encode())
    except UnicodeEncodeError as exc:  # a lone surrogate: Redis's UTF-8 cannot carry it
        bad = exc.object[exc.start:exc.end].encode("utf-8", "backslashreplace").decode()
        raise TypeError(f"{what} must be UTF-8 text: it holds a lone surrogate ({bad}), as "
                        "text decoded with errors='surrogateescape' does; decode it with "
                        "errors='replace'") from None
    except (TypeError, ValueError) as exc:
        where = culprit(value)
        at = f" (at {where})" if where else ""
        raise TypeError(f"{what} must be JSON-serialisable{at}: {exc}") from None
    limit = get_settings().max_payload_bytes
    if size > limit:
        raise PayloadTooLarge(
            f"{what} is {size} bytes, over the {limit}-byte limit "
            "(FLOWKIT_MAX_PAYLOAD_BYTES); store large data elsewhere and pass a reference."
        )
    # two keys written as one need a key JSON wrote from a number, bool or None: looked for
    # in the text first (a scan), the value walked only when the text holds one
    if _KEY_FROM_NON_STR.search(text) and _mixed_keys(value):
        clash = key_clash(value)
        if clash:
            raise TypeError(f"{what} cannot be JSON as it is: {clash}, and JSON's readers keep "
                            "only the last of two same keys: give that object keys of one "
                            "type (str)")
    return text


#: What JSON takes as an object's key (json writes int, float, bool and None as strings).
_KEY_TYPES = (str, int, float, bool, type(None))
_NONE = object()


_CONTAINERS = (dict, list, tuple)
#: A key as JSON writes an int, a float, a bool or None (``"1":``, ``"null":``), as
#: :func:`dumps` separates it; a str key of such text matches too (then the walk decides).
#: (The lookahead turns most quotes away at their first character: 3 ms for 800 KB.)
_KEY_FROM_NON_STR = re.compile(
    r'"(?=[-0-9tfnNI])(?:-?[0-9][0-9.eE+-]*|true|false|null|NaN|-?Infinity)":')
_is_str = str.__instancecheck__


def _mixed_keys(value: Any) -> bool:
    """Whether some object in ``value`` has a key that is not a str (the only place two
    keys can become one in JSON: ``1`` and ``"1"``): a walk over its containers only,
    ``dict`` subclasses (an OrderedDict) included."""
    stack = [value] if isinstance(value, _CONTAINERS) else []
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        if isinstance(item, dict):
            if not all(map(_is_str, item)):
                return True
            children: Any = item.values()
        else:
            children = item
        extend([v for v in children if isinstance(v, _CONTAINERS)])
    return False


def key_clash(value: Any) -> str | None:
    """Where in ``value`` an object has two keys JSON writes as one (``1`` and ``"1"``,
    ``None`` and ``"null"``), said as ``['a'] keys 1 and '1' are both "1"``; None if no
    object has. json writes both, and every reader keeps only the last: data lost."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            written: dict[str, Any] = {}
            for key in item:
                text = key if isinstance(key, str) else json.dumps(key)
                if text in written:
                    where = f"at {path} " if path else ""
                    return (f"{where}keys {written[text]!r} and {key!r} are both "
                            f"{json.dumps(text)}")
                written[text] = key
            stack.extend((v, f"{path}[{k!r}]") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
    return None


def culprit(value: Any) -> str | None:
    """Where in ``value`` the first part JSON cannot carry is, as Python indexes it
    (``['items'][3]['when']``; ``""`` for ``value`` itself), or None if every part can.
    Walked only after :func:`dumps` refused ``value``: a deep output's error then says
    which part to fix, not just its type. A container inside itself (a reference cycle)
    is such a part; one merely held twice is not."""
    # each part with the containers it is inside (its ancestors): a cycle has no end
    stack: list[tuple[Any, str, frozenset[int]]] = [(value, "", frozenset())]
    while stack:
        item, path, inside = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if id(item) in inside:
                return f"{path}, which holds itself (a reference cycle)"
            inside = inside | {id(item)}
        if isinstance(item, dict):
            bad = next((k for k in item if not isinstance(k, _KEY_TYPES)), _NONE)
            if bad is not _NONE:
                return f"{path} key {bad!r}".lstrip()
            stack.extend((v, f"{path}[{k!r}]", inside) for k, v in reversed(item.items()))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]", inside)
                         for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path
        elif not isinstance(item, (str, int, bool, type(None))):
            return path
    return None


def nested_too_deeply(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels deep (walked
    without recursion: the value may be far deeper than Python's stack)."""
    stack = [(value, 1)] if isinstance(value, (dict, list, tuple)) else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list, tuple)))
    return False


#: The first argument of :func:`strict_loads`'s ValueError for a number it cannot take,
#: the second the number (its first characters), or what it is.
TOO_LARGE = "a number past a float's range"
TOO_LONG = "an integer past Python's digit limit"


def strict_loads(raw: str | bytes) -> Any:
    """JSON as a browser's ``JSON.parse`` reads it: no NaN or Infinity (nor 1e400, which
    Python reads as Infinity); ValueError otherwise, RecursionError when nested past
    Python's limit. Lone surrogates pass (the API's request bodies refuse them)."""
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except ValueError as exc:
        # past sys.get_int_max_str_digits() (4300 digits) int() refuses a number that is
        # still JSON (not a parse_int hook: that would take integers off json's fast path)
        if "integer string conversion" in str(exc):
            raise ValueError(TOO_LONG, f"an integer of more than "
                                       f"{sys.get_int_max_str_digits()} digits") from None
        raise


def _finite(text: str) -> float:
    # json would read 1e400 as Infinity, which no JSON document may then hold
    number = float(text)
    if math.isinf(number):
        raise ValueError(TOO_LARGE, text[:40])
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON: use null or a string")
