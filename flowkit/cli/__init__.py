"""The ``flowkit`` command line. Each group of subcommands is a module of this package.

A command module has ``register(subparsers)``, adding its parser with
``set_defaults(func=...)``; ``func(args)`` returns the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..config import configure, get_settings
from ..errors import FlowkitError, StoreUnavailable
from ..version import __version__
from . import dev, doctor, listing, run, runs, schedules, trace, workers

#: The modules whose commands the CLI offers.
COMMAND_MODULES = [run, runs, listing, trace, workers, doctor, schedules, dev]


def build_parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="flowkit", description="Durable AI workflows on Celery.")
    root.add_argument("--version", action="version", version=f"flowkit {__version__}")
    subs = root.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subs)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if "FLOWKIT_REDIS_RETRY_SECONDS" not in os.environ:
        configure(redis_retry_seconds=2)  # a person waits at a shell: say it is down quickly
    if not args.command:
        parser.print_help()
        return 2
    where = getattr(args, "where", args.command)  # e.g. "schedules create"
    try:
        return args.func(args) or 0
    except StoreUnavailable:
        url = get_settings().redis_url
        print(f"flowkit {where}: cannot reach Redis at {url}; start it, or point "
              "FLOWKIT_REDIS_URL at your Redis.", file=sys.stderr)
        return 1
    except FlowkitError as exc:
        print(f"flowkit {where}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)  # 2: a usage error (cli.usage.UsageError)
    except KeyboardInterrupt:
        return 130

