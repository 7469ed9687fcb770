"""``flowkit run`` and ``flowkit follow`` on Redis directly, run as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flowkit
from flowkit.cli.live import RunView
from flowkit.engine.broker import get_app
from tests import workflows as wf
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

APP = ["-A", "tests.workflows"]


def cli(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowkit.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(flowkit_env, store, worker):
    return {**os.environ, **flowkit_env}


def test_run_follows_each_step_and_prints_the_output(env):
    result = cli("run", "chatty", "-i", "n=4", *APP, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    run_id = re.search(r"following run (\S+)", out).group(1)
    assert "step 0:t.talker started (attempt 1)" in out
    assert "step 0:t.talker 33% word 1/3" in out
    assert "0:t.talker > alphabetagamma" in out  # its streamed text, as a whole line
    assert re.search(r"step 0:t.talker completed in \d", out)
    assert f"run {run_id} succeeded in " in out
    assert json.loads(out[out.index("{"):]) == {"n": 4, "words": 3}  # the output, last
    assert flowkit.get_run(run_id).output == {"n": 4, "words": 3}


def test_a_failed_run_exits_1_with_its_error_and_how_to_retry(env):
    result = cli("run", "exhausted", "--input", '{"n": 1}', *APP, env=env)
    assert result.returncode == 1
    assert "step 1:t.flaky attempt 1 failed, retrying" in result.stdout
    run_id = re.search(r"following run (\S+)", result.stdout).group(1)
    assert f"run {run_id} failed" in result.stdout
    assert "error in step 1:t.flaky: Flaky: flaky failure" in result.stdout
    # with the -A it was started with: retry imports the workflow, which that module names
    assert f"retry it from the failed step: flowkit retry {run_id} {' '.join(APP)}\n" \
        in result.stdout


def test_text_with_emoji_codes_and_a_step_key_like_one_are_printed_as_they_are(env):
    """rich made 🚀 of ``:rocket:`` in a run's output and streamed text, and of the step key
    ``0:rocket`` followed by ``: `` in the error line, which `flowkit retry --step` needs."""
    ok = cli("run", "emoji-codes", *APP, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "0:rocket > launch :rocket: now" in ok.stdout
    assert json.loads(ok.stdout[ok.stdout.index("{"):]) == {"said": "deploy:rocket: now"}
    failed = cli("run", "emoji-codes", "-i", "fail=true", *APP, env=env)
    assert failed.returncode == 1
    assert "error in step 0:rocket: ValueError: broke :fire: here" in failed.stdout
    assert "\N{ROCKET}" not in ok.stdout + failed.stdout


def test_input_from_a_file_with_fields_overridden(env, tmp_path):
    (tmp_path / "in.json").write_text('{"n": 1}')
    result = cli("run", "simple", "--input", f"@{tmp_path / 'in.json'}", "-i", "n:=5", "--json",
                 *APP, env=env)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "run.queued" and events[-1]["type"] == "run.succeeded"
    completed = [e for e in events if e["type"] == "step.completed"]
    assert [e["output"] for e in completed] == [{"n": 6}, {"n": 12}]


def test_detach_prints_the_run_and_follow_picks_it_up(env):
    started = cli("run", "simple", "-i", "n=2", "--detach", "--json", *APP, env=env)
    assert started.returncode == 0, started.stderr
    record = json.loads(started.stdout)
    assert record["workflow"] == "simple" and record["input"] == {"n": 2, "fail_times": 2}
    followed = cli("follow", record["id"], env=env)
    assert followed.returncode == 0, followed.stderr
    assert f"run {record['id']} succeeded" in followed.stdout
    assert '"n": 6' in followed.stdout

    human = cli("run", "simple", "-i", "n=2", "--detach", *APP, env=env)
    run_id = human.stdout.strip()  # the id alone, for RUN=$(flowkit run ... --detach)
    assert re.fullmatch(r"[0-9A-Z]{26}\n", human.stdout)
    assert f"run {run_id} queued (simple); follow it: flowkit follow {run_id}" in human.stderr


def test_ctrl_c_detaches_and_says_how_to_follow_again(env, store):
    proc = subprocess.Popen([sys.executable, "-m", "flowkit.cli", "run", "chain3", "-i", "n=1",
                             *APP], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    run_id = None
    for line in proc.stdout:
        run_id = run_id or (m.group(1) if (m := re.search(r"following run (\S+)", line)) else None)
        if "step 1:t.gated started" in line:
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    assert f"Follow it again: flowkit follow {run_id}" in proc.stderr.read()
    assert flowkit.get_run(run_id).state == "running"  # detached, not cancelled
    store.redis.rpush(f"gate:{run_id}:gated", 1)
    again = cli("follow", run_id, env=env)
    assert again.returncode == 0 and f"run {run_id} succeeded" in again.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["-i", "n=x"], "n: Not a valid integer."),
    (["-i", "nope"], "-i nope: write key=value, or key:=json for any JSON value."),
    (["-i", "n:=[1"], "-i n:=[1: the value after := must be JSON"),
    (["--input", "{bad"], "--input is not JSON"),
    (["--input", "@/nonexistent.json"], "cannot read the file (No such file or directory)"),
    (["--input", "@"], "--input @: name the file after the @, e.g. --input @input.json."),
    ([], "n: Missing data for required field."),
])
def test_bad_input_is_one_line_and_exit_2(env, args, message):
    result = cli("run", "simple", *args, *APP, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unknown_workflow_and_unknown_run(env):
    result = cli("run", "nosuch", *APP, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("flowkit run: No workflow named 'nosuch' (in ")
    result = cli("follow", "01UNKNOWN", env=env)
    assert result.returncode == 1
    assert "No run '01UNKNOWN'" in result.stderr


def test_app_resolves_from_the_current_directory_and_flowkit_app(env, tmp_path):
    (tmp_path / "myflows.py").write_text(
        "import flowkit\n"
        "@flowkit.component(name='my.hello')\n"
        "def hello(data):\n"
        "    return {'hello': data['who']}\n"
        "hi = flowkit.Workflow('my_hi', [hello])\n"
    )
    env = {**env, "PYTHONPATH": env["PYTHONPATH"]}
    missing = subprocess.run([sys.executable, "-m", "flowkit.cli", "run", "my_hi", "-A", "nomod"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "cannot import 'nomod'" in missing.stderr and "-A your.module" in missing.stderr
    # a missing import whose name begins the module's is the module's code to fix, not the -A
    # ("langchain" inside langchain_flows was "run this from your project's root")
    (tmp_path / "nomod_flows.py").write_text("import nomod\n")
    prefixed = subprocess.run([sys.executable, "-m", "flowkit.cli", "run", "my_hi", "-A",
                               "nomod_flows"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
    assert prefixed.stderr.strip() == (
        "flowkit run: importing 'nomod_flows' failed: No module named 'nomod' (at "
        "nomod_flows.py:1); fix that import."), prefixed.stderr
    # no -A and no FLOWKIT_APP: the default is the reference deployment's module, not theirs
    # ("cannot import 'workers.celery_app' ...: run this from your project's root" misled)
    only_flowkit = tmp_path / "site"
    only_flowkit.mkdir()
    (only_flowkit / "flowkit").symlink_to(Path(ROOT) / "flowkit")  # this checkout's, alone
    bare = {k: v for k, v in env.items() if k != "FLOWKIT_APP"}
    unnamed = subprocess.run([sys.executable, "-m", "flowkit.cli", "run", "my_hi"],
                             env={**bare, "PYTHONPATH": str(only_flowkit)}, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert unnamed.returncode == 2, unnamed.stderr
    assert unnamed.stderr.startswith("flowkit run: no -A given and FLOWKIT_APP is not set"), \
        unnamed.stderr
    detached = subprocess.run([sys.executable, "-m", "flowkit.cli", "run", "my_hi", "-i",
                               "who=me", "--detach", "--json"], env={**env, "FLOWKIT_APP": "myflows"},
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert detached.returncode == 0, detached.stderr
    assert json.loads(detached.stdout)["workflow"] == "my_hi"


def test_on_a_terminal_the_view_redraws_in_place(env):
    """Under a pseudo-terminal rich's live view draws the steps table (cursor moves, marks)."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "flowkit.cli", "run", "chatty", "-i", "n=1",
                             *APP], env={**env, "COLUMNS": "120", "TERM": "xterm"},
                            stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side closed (the process exited)
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert proc.wait(30) == 0
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # drawn with escape codes, not plain lines
    assert "following run" not in text  # the pipe form's header
    assert re.search(r"✓.*0:t\.talker.*100%", text)
    assert "run " in text and "succeeded" in text and '"words": 3' in text
    # the head names the run's state after each event (it is drawn at every event), not
    # the event: "running" after run.started, as the JS client and the API say it
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert re.search(r"run \w{26}  running", plain)
    assert not re.search(r"run \w{26}  (started|admitted|resumed)", plain)


def test_sigterm_while_following_in_a_terminal_gives_the_cursor_back(env):
    """The live view hides the cursor; SIGTERM's default action left the shell without it."""
    import pty
    import select

    run = wf.approval.start({"n": 1})  # it waits for a person: the follow goes on
    parent, child = pty.openpty()
    follow = subprocess.Popen([sys.executable, "-m", "flowkit.cli", "follow", run.id],
                              env={**env, "TERM": "xterm", "COLUMNS": "100"}, stdin=child,
                              stdout=child, stderr=child, close_fds=True)
    os.close(child)
    seen = b""

    def read_until(done) -> None:
        nonlocal seen
        while not done():
            ready, _, _ = select.select([parent], [], [], 30)
            assert ready, seen
            try:
                chunk = os.read(parent, 4096)
            except OSError:  # EIO: the other end closed
                return
            if not chunk:
                return
            seen += chunk

    try:
        read_until(lambda: b"\x1b[?25l" in seen)  # the live view hid the cursor
        follow.send_signal(signal.SIGTERM)
        read_until(lambda: False)  # to the end of its output
        assert follow.wait(30) == 128 + signal.SIGTERM
    finally:
        os.close(parent)
        run.cancel()
    assert b"\x1b[?25h" in seen[seen.index(b"\x1b[?25l"):], seen  # shown again after


#: A queue no worker of the session consumes: its runs stay queued.
UNSERVED = "follow-unserved"
unserved = flowkit.Workflow("follow.unserved", [wf.add_one], queue=UNSERVED,
                            input_schema=wf.number_schema)


@pytest.mark.parametrize("terminal", [False, True])
def test_a_follow_of_a_run_no_worker_takes_says_why_it_does_not_move(env, store, terminal):
    """Forgetting the worker (or its --queues): the follow showed "queued" for ever, while
    `flowkit status` and the API's waiting_for said what to start."""
    import pty
    import select

    run = unserved.start({"n": 1})
    leader, follower = pty.openpty() if terminal else os.pipe()
    follow = subprocess.Popen([sys.executable, "-m", "flowkit.cli", "follow", run.id],
                              env={**env, "TERM": "xterm", "COLUMNS": "200"}, stdout=follower,
                              stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    seen, why = b"", (f"no live worker consumes queue {UNSERVED}: start one with --queues "
                      f"{UNSERVED}").encode()
    try:
        deadline = time.monotonic() + 30
        while why not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                seen += os.read(leader, 65536)
        said = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen)
        assert why in seen, said
        if not terminal:
            assert f"run queued: {why.decode()}".encode() in said, said
        else:
            assert re.search(rb"run \w{26}  queued  " + re.escape(why), said), said
    finally:
        follow.kill()
        follow.wait(10)
        os.close(leader)
        run.cancel()
        with get_app().connection_for_write() as conn:
            conn.default_channel.queue_purge(UNSERVED)


def test_a_stall_is_told_once_per_reason_and_the_view_drops_it_when_the_run_moves():
    """A lapsed lease's reason holds its age ("lapsed 41s ago"): each read was a new reason,
    a line every 3 s; and the view's head kept a reason after the run moved on."""
    import queue as queues
    import threading

    from flowkit.cli.following import StallWatch

    reasons = iter(["step 0:a's worker (w@h) stopped beating: its lease lapsed 41s ago",
                    "step 0:a's worker (w@h) stopped beating: its lease lapsed 44s ago",
                    None, "no live worker: start one (celery -A <your app> worker)"])
    told: queues.Queue = queues.Queue()
    done = threading.Event()

    def record() -> dict:
        why = next(reasons, None)
        if why is None and done.is_set():
            raise RuntimeError("read past the script")  # the watch carries on
        return {"state": "running", "waiting_for": why}

    view = RunView("01TEST")
    with StallWatch(record, lambda state, why: told.put(why), quiet=0.05):
        first = told.get(timeout=10)
        assert first.endswith("lapsed 41s ago")
        assert told.get(timeout=10) == ""  # gone: said once, not again at 44 s
        assert told.get(timeout=10).startswith("no live worker")
        done.set()
    view.stalled("queued", first)
    assert first in view.render().renderables[0].plain
    view.feed({"type": "run.started", "ts": 1.0})
    assert first not in view.render().renderables[0].plain


def test_a_run_that_leaves_redis_while_followed_ends_the_follow_saying_so(env, store):
    """Its retention ran out while it waited, or it was deleted: the follow waited for
    ever on its missing stream."""
    run = wf.approval.start({"n": 1})
    follow = subprocess.Popen([sys.executable, "-m", "flowkit.cli", "follow", run.id, "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in follow.stdout:  # until it waits for its input
            if json.loads(line)["type"] == "run.waiting":
                break
        store.redis.delete(store.keys.events(run.id), store.keys.run(run.id))
        _, stderr = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 1, stderr
    assert stderr.strip() == (f"flowkit follow: run {run.id}: This run no longer exists (its "
                              "retention ran out, or it was deleted).")


def test_a_restart_is_told_once_in_the_line_and_kept_in_the_picture():
    """The line read "run restarted: restarted: heartbeat lapsed"."""
    view = RunView("01RUN")
    line = view.feed({"type": "run.restarted", "reason": "heartbeat lapsed", "ts": 1.0})
    assert line == "run restarted: heartbeat lapsed"
    assert (view.state, view.note) == ("queued", "restarted: heartbeat lapsed")


def test_a_run_cancelled_while_it_waited_is_not_told_to_be_answered():
    """The line read "run cancelled: input 'approval' ...; answer: flowkit input ..."."""
    view = RunView("01RUN")
    view.feed({"type": "run.waiting", "kind": "input", "name": "approval", "step": "0:a",
               "ts": 1.0})
    assert "flowkit input" in view.note
    assert view.feed({"type": "run.cancelled", "ts": 2.0}) == "run cancelled"
    assert (view.state, view.note) == ("cancelled", "")
    reason = "schedule s: its tick of 3.000 started a run in its place (overlap='cancel')"
    assert view.feed({"type": "run.cancelled", "reason": reason, "ts": 3.0}) == (
        f"run cancelled: {reason}")
