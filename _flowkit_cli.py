"""The ``flowkit`` command's entry point, outside the ``flowkit`` package on purpose.

Importing ``flowkit`` takes about half a second (Celery, redis-py, marshmallow): a Ctrl-C
in that time raised KeyboardInterrupt inside an import, before any of flowkit's code could
catch it, and printed a traceback of thirty lines (or was swallowed by a library's bare
``except:`` around an optional import, and the command ran on). Nothing has been done
yet then, so the command ends at once, by the signal, as a C program does (the shell
says 130); from the first line of its own code on, Ctrl-C is flowkit's to handle.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    interrupt = signal.getsignal(signal.SIGINT)
    if interrupt is signal.default_int_handler:  # not one ignored by `nohup` or the shell
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    from flowkit.cli import main as flowkit_main

    signal.signal(signal.SIGINT, interrupt)
    return flowkit_main()


if __name__ == "__main__":
    sys.exit(main())
