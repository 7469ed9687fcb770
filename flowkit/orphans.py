"""Child processes that end with the process that started them, however it ends.

``flowkit dev`` and the demo start Redis, a worker, beat and a web server, each (but Redis)
in a session of its own so that a terminal's Ctrl-C reaches only the supervisor, which
stops them in order. Killed with SIGKILL (an IDE's stop button, the OOM killer), the
supervisor runs no handler, and every child was orphaned, Redis and the web port with it.
On Linux the kernel can send a child a signal when its parent dies (``PR_SET_PDEATHSIG``);
the child asks for it in a few lines of Python run before its own program (``exec``), as
``preexec_fn`` is not safe in a process with threads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["orphan_guarded"]

#: Set PR_SET_PDEATHSIG (1) to SIGTERM; a parent already gone: do not start; then exec.
_GUARD = ("import ctypes, os, signal, sys; "
          "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "
          "os.getppid() == int(sys.argv[1]) or sys.exit(0); "
          "os.execvp(sys.argv[2], sys.argv[2:])")


def orphan_guarded(argv: Sequence[str]) -> list[str]:
    """``argv``, run so that it gets SIGTERM when this process dies, however it dies (on
    Linux; elsewhere as it is). Start it from a thread that lives as long as this process:
    the kernel ties the signal to the thread that started the child."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-c", _GUARD, str(os.getpid()), *argv]
