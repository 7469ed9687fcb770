"""The CLI's own error: bad input on the command line (exit code 2, as argparse uses)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import FlowkitError
from ..serialization import TOO_LARGE, TOO_LONG, strict_loads


class UsageError(FlowkitError):
    """Bad input on the command line: the CLI says what to do and exits with 2."""

    exit_code = 2


class CodeError(UsageError):
    """The user's own code does not import (it raised, or lacks what the command names):
    fixed by editing it, so ``flowkit dev`` waits for that edit instead of exiting."""


def quoted(text: str, most: int = 100) -> str:
    """``text`` as a message quotes it, or said by its length past ``most`` characters: a
    100,000-character argument was echoed whole, a screenful for one typo."""
    return repr(text) if len(text) <= most else f"<{len(text)} characters>"


def whole_number(low: int, high: int | None, refusal: str) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (None: no bound), else
    argparse's one-line error, ``refusal`` with ``{text}`` the value as given (quoted)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(refusal.format(text=repr(text)))
        return n

    return parse


def seconds(text: str) -> float:
    """An argparse type: a duration in seconds, a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more, "
                                         "e.g. 30)")
    return value


def parse_json(text: str) -> Any:
    """JSON as the API reads it (:func:`flowkit.serialization.strict_loads`: no NaN or
    Infinity, no lone surrogate); ValueError saying why for any JSON the CLI cannot take,
    nested deeper than Python's recursion limit included."""
    try:
        value = strict_loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        if exc.args[:1] == (TOO_LARGE,):
            raise ValueError(f"{exc.args[1]} is {exc.args[0]}: pass it as a string") from None
        if exc.args[:1] == (TOO_LONG,):
            raise ValueError(f"{exc.args[1]}: pass it as a string") from None
        raise
    return utf8_text(value, text)


def utf8_text(value: Any, given: str) -> Any:
    """``value`` (read from the text ``given``) when UTF-8 can carry all its text, as JSON
    must to be sent or stored; else ValueError saying which character cannot: a
    ``\\ud800`` escape (half of a surrogate pair), which the JSON parser passes, or a byte
    of the command line that is not UTF-8, which Python reads as one (0xff as U+DCFF).
    The API refuses either (400 invalid_json); the CLI ended in a traceback, from httpx
    over --url and from storing it locally."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start]
        if 0xDC80 <= ord(bad) <= 0xDCFF and bad in given:  # not an escape: the byte itself
            raise ValueError(f"it holds the byte 0x{ord(bad) - 0xDC00:x}, which is not "
                             "UTF-8: give the text in UTF-8") from None
        raise ValueError(f"\\u{ord(bad):04x} is half of a surrogate pair, no character: "
                         "write the character itself, or both halves (\\ud83d\\ude00)") from None
    return value


def input_text(given: str) -> str:
    """``--input``'s text: as given, or read from the file after an ``@`` (UTF-8)."""
    if not given.startswith("@"):
        return given
    if not given[1:]:
        raise UsageError("--input @: name the file after the @, e.g. --input @input.json.")
    try:
        return Path(given[1:]).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--input {given}: cannot read the file ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise UsageError(f"--input {given}: the file is not UTF-8 text; JSON files are "
                         "UTF-8.") from None


def field_texts(fields: dict[str, Any]) -> dict[str, str]:
    """A ValidationError's field messages, each as one line of text (the CLI's wording)."""
    return {name: " ".join(map(str, said)) if isinstance(said, list) else str(said)
            for name, said in fields.items()}


def fields_line(fields: dict[str, Any]) -> str:
    """A ValidationError's field messages on one line, ``name: message; ...``; what
    concerns the value as a whole without marshmallow's ``_schema`` key, which names no
    field a user wrote."""
    return "; ".join(said if name == "_schema" else f"{name}: {said}"
                     for name, said in field_texts(fields).items())
