"""``flowkit dev``'s supervisor on small real programs: one log with a (coloured) name
before every child's line, readiness from a line a child prints, a stop that SIGKILLs what
ignores SIGTERM and the rest of its process group, stop signals as events, and colour
only on a terminal (NO_COLOR, FORCE_COLOR)."""

from __future__ import annotations

import io
import os
import signal
import sys
import time

import pytest

from flowkit.cli.supervisor import Child, Stopped, Supervisor, wants_colour
from tests.test_demo_signals import _tree, _wait_gone

pytestmark = pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="reads /proc")


def _program(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _wait_exited(supervisor: Supervisor, names: set[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while names:
        event = supervisor.next_event(deadline - time.monotonic())
        assert event is not None, f"{names} did not exit in {timeout}s"
        if event[0] == "exited":
            names.discard(event[1].name)


@pytest.mark.parametrize("colour", [True, False])
def test_every_line_of_every_child_comes_under_its_name(colour):
    out = io.StringIO()
    supervisor = Supervisor(out=out, colour=colour)
    supervisor.add(Child("api", _program("print('one'); print('serving now')"),
                         ready_line=r"serving now$"))
    supervisor.add(Child("beat", _program("print('two'); print('noise 1'); print('three')"),
                         quiet=r"^noise"))
    supervisor.start("api")
    supervisor.start("beat")
    supervisor.wait_ready(["api"], timeout=20)
    assert supervisor.children["api"].ready
    _wait_exited(supervisor, {"api", "beat"})
    lines = out.getvalue().splitlines()
    if colour:  # a colour per child, the name padded to one width
        assert "\033[36mapi    |\033[0m one" in lines
        assert "\033[35mbeat   |\033[0m two" in lines
    else:
        assert "api    | one" in lines and "api    | serving now" in lines
        assert "beat   | two" in lines and "beat   | three" in lines
        assert not any("\033[" in line for line in lines)
    assert not any("noise" in line for line in lines)  # the quiet pattern drops it


@pytest.mark.timeout(60)
def test_stop_kills_a_child_that_ignores_sigterm_and_the_rest_of_its_group():
    stubborn = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(\"grandchild up\", flush=True); "
        "time.sleep(120)'])\n"
        "time.sleep(120)\n"
    )
    supervisor = Supervisor(out=io.StringIO(), colour=False)
    supervisor.add(Child("stubborn", _program(stubborn), ready_line="grandchild up"))
    child = supervisor.start("stubborn")
    supervisor.wait_ready(["stubborn"], timeout=20)
    procs = {pid: v for pid, v in _tree(os.getpid()).items()
             if pid == child.proc.pid or pid in _tree(child.proc.pid)}
    assert len(procs) == 2, procs  # the child and its grandchild

    started = time.monotonic()
    supervisor.stop(["stubborn"], grace=0.5)
    assert time.monotonic() - started < 10
    # the grandchild's end is not awaited by stop(): poll until it is gone
    assert not _wait_gone(procs, timeout=5), "SIGKILL reaches the rest of its group"
    assert child.proc.returncode == -signal.SIGKILL


def test_a_stop_signal_becomes_an_event_and_a_second_one_hurries_the_stop():
    supervisor = Supervisor(out=io.StringIO(), colour=False)
    with supervisor.signals():
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Stopped) as stopped:
            supervisor.next_event(10)
        assert stopped.value.signum == signal.SIGTERM and stopped.value.name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)
        assert supervisor._hurry  # stop() waits no longer for what is left
    assert signal.getsignal(signal.SIGTERM) is not supervisor._on_signal  # handlers restored


def test_colour_on_a_terminal_unless_no_color_and_forced_by_force_color(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    leader, follower = os.openpty()
    with open(leader, "rb") as _, open(follower, "w") as terminal, \
            open(tmp_path / "log", "w") as plain_file:
        assert wants_colour(terminal) and not wants_colour(plain_file)
        monkeypatch.setenv("NO_COLOR", "1")
        assert not wants_colour(terminal)
        monkeypatch.delenv("NO_COLOR")
        monkeypatch.setenv("FORCE_COLOR", "1")
        assert wants_colour(plain_file)
