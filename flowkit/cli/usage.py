"""The CLI's own error: bad input on the command line (exit code 2, as argparse uses)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..errors import FlowkitError


class UsageError(FlowkitError):
    """Bad input on the command line: the CLI says what to do and exits with 2."""

    exit_code = 2


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
