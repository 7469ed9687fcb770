"""The CLI's own error: bad input on the command line (exit code 2, as argparse uses)."""

from __future__ import annotations

from ..errors import FlowkitError


class UsageError(FlowkitError):
    """Bad input on the command line: the CLI says what to do and exits with 2."""

    exit_code = 2
