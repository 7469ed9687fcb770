"""The ``flowkit`` command line. Each group of subcommands is a module of this package.

A command module has ``register(subparsers)``, adding its parser with
``set_defaults(func=...)``; ``func(args)`` returns the exit code.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import sys
from collections.abc import Sequence

from ..config import configure, get_settings, unread_variables
from ..errors import BrokerUnavailable, ConfigError, FlowkitError, StoreUnavailable
from ..store import (
    DEMOTED,
    database_out_of_range,
    demoted,
    is_redis_url,
    no_primary,
    refused_credentials,
    refused_database,
    said_no_primary,
    sentinels_refused,
)
from ..urls import SENTINELS_REFUSED, reached, redacted
from ..version import __version__
from . import dev, doctor, listing, run, runs, schedules, trace, workers
from .render import writes_unicode

#: The modules whose commands the CLI offers.
COMMAND_MODULES = [run, runs, listing, trace, workers, doctor, schedules, dev]


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusals are one line (argparse's own printed its usage
    block first: ``--help`` shows it); the exit code stays 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    root = Parser(prog="flowkit", description="Durable AI workflows on Celery.")
    root.add_argument("--version", action="version", version=f"flowkit {__version__}")
    subs = root.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subs)
    return root


#: Why writing the command's output failed, said in one line: the disk (or quota) is full,
#: or the device failed. Any other OSError is not about the output.
_OUTPUT_FAILED = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _guarded_main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the command began (its arguments, settings)
        return 130


def _guarded_main(argv: Sequence[str] | None) -> int:
    if sys.stdout is None:  # started with stdout closed (`flowkit run ... >&-`)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    for stream in (sys.stdout, sys.stderr):
        # a stdout that cannot write a mark or a run's text (PYTHONIOENCODING=ascii, a
        # Latin-1 terminal) shows "?" for it rather than ending in a UnicodeEncodeError
        if isinstance(stream, io.TextIOWrapper) and not writes_unicode(stream):
            stream.reconfigure(errors="replace")
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a reader gone early raises here, not at the interpreter's exit
    except BrokenPipeError:
        # The reader stopped reading (`flowkit trace RUN | head -1`): stop quietly, as
        # `cat | head` does. Python's recipe: stdout onto devnull, or the interpreter's
        # last flush fails again (docs.python.org/3/library/signal.html#note-on-sigpipe).
        _stdout_to_devnull()
        return 1  # as rich's console does when the pipe closes under it (`flowkit follow`)
    except OSError as exc:
        if exc.errno not in _OUTPUT_FAILED or exc.filename is not None:
            raise  # not the output's: a file's error names the file
        _stdout_to_devnull()
        print(f"flowkit: cannot write its output ({exc.strerror}): free some space, or send "
              "it elsewhere.", file=sys.stderr)
        return 1


def _stdout_to_devnull() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _broker_down(where: str, exc: BrokerUnavailable) -> int:
    """Name the URL that could not be reached, and the setting it came from."""
    settings = get_settings()
    if exc.setting == "FLOWKIT_RESULT_BACKEND":
        what, url = "Celery's result backend", settings.backend
        name = "FLOWKIT_RESULT_BACKEND" if settings.result_backend else _broker_setting(settings)
    else:
        what, url, name = "the Celery broker", settings.broker, _broker_setting(settings)
    # the reaper's stranded pass finds it queued with no message (it said "after
    # FLOWKIT_QUEUED_TIMEOUT", 300 s, where it was seconds)
    stored = (f" Run {exc.run_id} is stored: the reaper sends it once the broker is back "
              "(at its first sweep past FLOWKIT_HEARTBEAT_LAPSE since the run was stored); do "
              "not start it again." if exc.run_id else "")
    if exc.refused:  # RabbitMQ answered and refused: its reason names what to fix
        return _usage(where, f"{exc}.{stored}")
    if refused_credentials(exc):  # no outage: waiting would not help
        return _usage(where, f"{what} at {redacted(url)} refused its credentials; put the "
                             f"password in {name}, as redis://:PASSWORD@host:port/db "
                             f"(redis://USER:PASSWORD@... for an ACL user).{stored}")
    print(f"flowkit {where}: cannot reach {what} at {reached(url)}; start it, or point "
          f"{name} at yours{misspelled(name)}.{stored}", file=sys.stderr)
    return 1


def misspelled(setting: str) -> str:
    """`` (FLOWKIT_REDIS_ULR is set: did you mean FLOWKIT_REDIS_URL?)`` when ``setting`` is
    not set and a FLOWKIT_* variable flowkit does not read is a near miss of it: the
    default's "cannot reach Redis at localhost" sent the user to start a Redis that ran."""
    if os.environ.get(setting):
        return ""
    near = [name for name, close in unread_variables(os.environ).items() if close == setting]
    return f" ({near[0]} is set: did you mean {setting}?)" if near else ""


def _broker_setting(settings) -> str:
    """The variable the broker's URL came from (it defaults to the store's Redis)."""
    return "FLOWKIT_BROKER_URL" if settings.broker_url else "FLOWKIT_REDIS_URL"


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:  # a usage error, said where `flowkit schedules` alone says its own
        parser.print_help(sys.stderr)
        return 2
    where = getattr(args, "where", args.command)  # e.g. "schedules create"
    try:
        if "FLOWKIT_REDIS_RETRY_SECONDS" not in os.environ:
            configure(redis_retry_seconds=2)  # a person waits at a shell: say it is down quickly
        else:
            get_settings()
    except ConfigError as exc:  # a FLOWKIT_* variable that cannot work: say which, exit 2
        return _usage(where, str(exc))
    try:
        return args.func(args) or 0
    except StoreUnavailable as exc:
        settings = get_settings()
        if refused_database(exc):  # the broker's: the store's own is a bare ResponseError
            return _usage(where, _db_message(_broker_setting(settings), settings.broker))
        if isinstance(exc, BrokerUnavailable):
            return _broker_down(where, exc)
        url = redacted(settings.redis_url)
        why = sentinels_refused(exc)
        if why is not None:  # no outage: waiting would not help
            return _usage(where, SENTINELS_REFUSED.format(url=url, why=why))
        if no_primary(exc, settings.redis_url):
            print(f"flowkit {where}: {said_no_primary(exc, settings.redis_url)}", file=sys.stderr)
            return 1
        if demoted(exc):
            print(f"flowkit {where}: {DEMOTED.format(url=url)}", file=sys.stderr)
            return 1
        tls = (" (rediss:// speaks TLS: if that Redis serves plain connections, write "
               "redis://)" if settings.redis_url.startswith("rediss://") else "")
        print(f"flowkit {where}: cannot reach Redis at {reached(settings.redis_url)}; start "
              "it, or point "
              f"FLOWKIT_REDIS_URL at your Redis{tls}{misspelled('FLOWKIT_REDIS_URL')}.",
              file=sys.stderr)
        return 1
    except ConfigError as exc:  # credentials Redis refused: a setting to fix, as at start
        return _usage(where, str(exc))
    except FlowkitError as exc:
        print(f"flowkit {where}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)  # 2: a usage error (cli.usage.UsageError)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # redis-py's errors for a FLOWKIT_REDIS_URL that cannot work; any other is a bug
        url = get_settings().redis_url
        if refused_database(exc):
            return _usage(where, _db_message("FLOWKIT_REDIS_URL", url))
        if isinstance(exc, ValueError) and not is_redis_url(url):
            return _usage(where, f"FLOWKIT_REDIS_URL={redacted(url)} is not a Redis URL; "
                                 "write it as redis://host:port/db, e.g. "
                                 "redis://localhost:6379/0.")
        raise


def _usage(where: str, message: str) -> int:
    print(f"flowkit {where}: {message}", file=sys.stderr)
    return 2


def _db_message(name: str, url: str) -> str:
    return database_out_of_range(name, url)
