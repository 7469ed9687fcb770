"""The ``flowkit`` command line, run as a real subprocess: each run command in its human form
and with ``--json``, and bad arguments (one line, exit code 2, never a traceback)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import flowkit
from flowkit import __version__
from tests import workflows as wf
from tests.conftest import open_gate, reached_gate, wait_until

pytestmark = pytest.mark.integration

#: A local date-time as the CLI prints it, with how long ago: never an epoch float.
HUMAN_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \([0-9.]+s ago\)")


def flowkit_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowkit.cli", *args], env={**env},
                          capture_output=True, text=True, timeout=60)


def rows(summary: str) -> dict[str, str]:
    """``flowkit status``'s rows: label, two spaces or more, value."""
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in summary.splitlines())


@pytest.fixture
def env(flowkit_env, store, worker):
    import os

    return {**os.environ, **flowkit_env}


def test_status_and_events_of_a_run_as_json(env):
    run = wf.simple.start({"n": 1})
    run.result(20)
    status = flowkit_cli("status", run.id, "--json", env=env)
    assert status.returncode == 0
    assert json.loads(status.stdout)["state"] == "succeeded"
    lines = flowkit_cli("events", run.id, "--json", env=env).stdout.splitlines()
    assert [json.loads(line)["type"] for line in lines][-1] == "run.succeeded"
    followed = flowkit_cli("events", "-f", run.id, "--after", json.loads(lines[0])["id"], "--json",
                           env=env)
    assert len(followed.stdout.splitlines()) == len(lines) - 1


def test_status_for_a_person_says_state_times_and_output(env):
    run = wf.simple.start({"n": 1})
    out = run.result(20)
    status = flowkit_cli("status", run.id, env=env)
    assert status.returncode == 0, status.stderr
    shown = rows(status.stdout)
    assert shown["Run"] == run.id and shown["State"] == "succeeded"
    assert shown["Workflow"] == "simple (version 1)"
    assert HUMAN_TIME.fullmatch(shown["Created"])
    assert re.fullmatch(HUMAN_TIME.pattern + r", took [0-9.]+s", shown["Finished"])
    assert json.loads(shown["Output"]) == out
    assert "\x1b[" not in status.stdout, "no colour codes into a pipe"


def test_status_of_a_failed_run_names_the_step_and_the_error(env):
    run = wf.exhausted.start({"n": 1, "fail_times": 5})
    run.wait(20)
    shown = rows(flowkit_cli("status", run.id, env=env).stdout)
    assert shown["State"] == "failed"
    # where it was raised too, as the record says (status left it out)
    assert re.fullmatch(r"Flaky in step 1:t\.flaky after 2 attempts: flaky failure 2 "
                        r"\(at tests/workflows\.py:\d+ in flaky\)", shown["Error"])


@flowkit.component(name="cli.bracketed")
def bracketed(data: dict) -> str:
    if data.get("fail"):
        raise ValueError("[crm] lookup failed for [customer]")
    return "[billing] Thanks for your order"


bracketing = flowkit.Workflow("cli-bracketed", [bracketed])


def test_status_and_runs_show_text_in_square_brackets_as_it_is(env):
    """rich read "[billing]" in a run's output or error as markup, and dropped it."""
    done = bracketing.start({})
    done.result(20)
    failed = bracketing.start({"fail": True})
    failed.wait(20)
    assert rows(flowkit_cli("status", done.id, env=env).stdout)["Output"] == (
        "[billing] Thanks for your order")
    assert "[crm] lookup failed for [customer]" in rows(
        flowkit_cli("status", failed.id, env=env).stdout)["Error"]
    listed = flowkit_cli("runs", "--workflow", "cli-bracketed", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "[crm] lookup failed for [customer]" in listed.stdout


def test_status_of_a_run_waiting_for_input_says_what_it_asks(env):
    run = wf.approval.start({"n": 1})
    wait_until(lambda: run.refresh().state == "waiting", 20, "the run to wait for input")
    waits = rows(flowkit_cli("status", run.id, env=env).stdout)["Waits for"]
    assert waits.startswith("input approval asking 'Publish this?', fields note, ok "
                            f"(answer: flowkit input {run.id} approval JSON)"), waits
    flowkit.cancel(run.id)


def test_events_for_a_person_are_one_line_each(env):
    run = wf.chatty.start({"n": 1})
    run.result(20)
    lines = flowkit_cli("events", run.id, env=env).stdout.splitlines()
    assert len(lines) == len(run.events())
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3}  [a-z]+\.[a-z]+", line) for line in lines)
    by_type = {line.split()[1]: line for line in lines}
    assert by_type["step.output"].endswith("gamma")  # the last chunk's own line
    assert re.search(r"0:t\.talker #1 +word 3/3 \(100%", by_type["step.progress"])
    assert re.search(r"took [0-9.]+s$", by_type["step.completed"])
    assert by_type["run.succeeded"].endswith('output {"n": 1, "words": 3}')


def test_a_wait_s_deadline_in_events_is_a_local_time_not_unix_seconds(env):
    """``run.waiting ... expires_at=1796642979.7812862``: the other commands print local times."""
    from datetime import datetime

    from tests.test_waits import paused

    run = wf.approval.start({"n": 1, "timeout": 3600})
    waiting = paused(run)
    [line] = [line for line in flowkit_cli("events", run.id, env=env).stdout.splitlines()
              if " run.waiting " in line]
    local = datetime.fromtimestamp(waiting.data["expires_at"]).strftime("%Y-%m-%d %H:%M:%S")
    assert f"expires_at={local} (in " in line, line
    assert str(waiting.data["expires_at"]) not in line
    run.cancel()


def test_cancel_in_both_forms(env):
    for form in ([], ["--json"]):
        run = wf.chain3.start({"n": 1})
        reached_gate(run, "gated")
        result = flowkit_cli("cancel", run.id, *form, env=env)
        open_gate(run, "gated")  # the step thread goes on, sees the cancel and stops
        assert result.returncode == 0, result.stderr
        if form:
            assert json.loads(result.stdout)["state"] == "cancelled"
        else:
            assert result.stdout.startswith(f"Cancelled run {run.id} (chain3): it is cancelled")


def test_cancel_takes_several_runs_and_says_which_it_could_not(env):
    """``flowkit cancel A B`` was argparse's "unrecognized arguments: B" (retry took several)."""
    waiting = [wf.approval.start({"n": n}) for n in (1, 2)]
    for run in waiting:
        wait_until(lambda run=run: run.refresh().state == "waiting", 20, "the run to wait")
    ended = wf.simple.start({"n": 1})
    ended.result(20)
    result = flowkit_cli("cancel", waiting[0].id, ended.id, waiting[1].id.lower(),
                         waiting[0].id, env=env)
    assert result.returncode == 1, result.stderr  # one was refused
    assert result.stdout.splitlines() == [
        "Cancelled 2 runs; a running step stops at its next event or check.",
        f"  {waiting[0].id}", f"  {waiting[1].id}", "Not cancelled (1):",
        f"  {ended.id}: Run {ended.id} already succeeded; only a run that has not ended "
        "(queued, scheduled, running or waiting) cancels."]
    assert [r.refresh().state for r in waiting] == ["cancelled", "cancelled"]
    again = flowkit_cli("cancel", waiting[0].id, "01J00000000000000000000000", "--json", env=env)
    assert again.returncode == 1
    done = json.loads(again.stdout)
    assert done["cancelled"] == [] and list(done["refused"]) == [
        waiting[0].id, "01J00000000000000000000000"]


def test_runs_of_a_misspelt_workflow_name_the_close_ones(env):
    """``flowkit runs -w simpel`` said "No runs of workflow simpel." alone, as for a
    workflow that never ran; ``runs`` imports no app, so the runs' workflows are compared."""
    wf.simple.start({"n": 1}).result(20)
    typo = flowkit_cli("runs", "-w", "simpel", env=env)
    assert typo.returncode == 0 and typo.stdout == "No runs of workflow simpel.\n"
    assert "flowkit: did you mean simple" in typo.stderr, typo.stderr
    assert "(flowkit runs -w simple)" in typo.stderr
    unlike = flowkit_cli("runs", "-w", "zzzzzz", env=env)  # nothing close: no guess
    assert unlike.stdout == "No runs of workflow zzzzzz.\n" and unlike.stderr == ""
    none_failed = flowkit_cli("runs", "-w", "simple", "-s", "cancelled", env=env)
    assert none_failed.stderr == ""  # the name is right: it is the state that has none


def test_input_to_one_of_several_steps_waiting_under_its_name_takes_step(env):
    run = wf.same_named_items.start({"n": 2})
    wait_until(lambda: len(run.refresh().waits) == 2, 20, "both items' waits")
    steps = sorted(w["step"] for w in run.refresh().waits)
    vague = flowkit_cli("input", run.id, "value", '{"value": 1}', env=env)
    assert vague.returncode == 2 and vague.stderr == (
        f"flowkit input: Several steps of run {run.id} wait for input 'value': "
        f"{', '.join(steps)}; pass the step whose wait this answers with --step STEP.\n")
    for step, value in zip(steps, (5, 7), strict=True):
        said = flowkit_cli("input", run.id, "value", f'{{"value": {value}}}', "--step", step,
                           env=env)
        assert said.returncode == 0, said.stderr
    assert run.result(20) == {"total": 12}


def test_input_and_event_in_both_forms(env):
    run = wf.approval.start({"n": 1})
    wait_until(lambda: run.refresh().state == "waiting", 20, "the run to wait for input")
    bad = flowkit_cli("input", run.id, "approval", '{"note": "x"}', env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "ok: Missing data for required field." in bad.stderr, bad.stderr
    said = flowkit_cli("input", run.id, "approval", '{"ok": true}', env=env)
    assert said.returncode == 0, said.stderr
    assert said.stdout.startswith("Input 'approval' accepted: the run resumed")
    assert run.result(20)["approved"] is True
    assert rows(flowkit_cli("status", run.id, env=env).stdout)["Steps"] == (
        "2 steps begun, 3 attempts; begun more than once (retried, restarted or resumed after a "
        "wait): 0:t.approve x2")  # it said "tried again", as if the step had failed once
    # the same value again (a resend) changes nothing, also once the run ended; another is refused
    again = flowkit_cli("input", run.id, "approval", '{"ok": true}', "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["outcome"] == "same", again.stderr
    other = flowkit_cli("input", run.id, "approval", '{"ok": false}', "--json", env=env)
    assert other.returncode == 1 and (f"Run {run.id}'s input 'approval' was answered already, "
                                      "with another value: the first answer stands") in other.stderr

    assert flowkit_cli("event", "nobody-waits", env=env).stdout.strip() == (
        "Event 'nobody-waits' sent: it woke 0 waiting runs.")
    assert json.loads(flowkit_cli("event", "nobody-waits", "--json", env=env).stdout) == {
        "woken": 0}


@pytest.mark.parametrize("command", [["status"], ["events"], ["events", "-f"], ["cancel"],
                                     ["trace"], ["status", "--json"]])
def test_unknown_run_is_a_clear_message_not_a_traceback(env, command):
    result = flowkit_cli(*command, "01UNKNOWN", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"flowkit {command[0]}: No run '01UNKNOWN' (unknown, or expired after its retention)."
    )


def test_a_run_id_in_lower_case_names_the_same_run(env):
    """ULIDs are case-insensitive: one pasted lower-case was "No run" everywhere."""
    run = wf.simple.start({"n": 1})
    run.result(20)
    result = flowkit_cli("status", run.id.lower(), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == run.id


def test_retry_of_a_run_that_did_not_fail_says_why(env):
    run = wf.simple.start({"n": 1})
    run.result(20)
    result = flowkit_cli("retry", run.id, "-A", "tests.workflows", env=env)
    assert result.returncode == 1
    assert "only failed runs can be retried" in result.stderr
    assert "Traceback" not in result.stderr


def test_retry_takes_several_runs_and_says_which_it_could_not(env):
    failed = [wf.exhausted.start({"n": n}) for n in (1, 2)]  # a third call succeeds
    for run in failed:
        assert run.wait(20).state == "failed"
    fine = wf.simple.start({"n": 1})
    fine.result(20)
    result = flowkit_cli("retry", *(r.id for r in failed), fine.id, "-A", "tests.workflows",
                         "--json", env=env)
    assert result.returncode == 1, result.stderr  # one was refused
    done = json.loads(result.stdout)
    assert done["retried"] == [r.id for r in failed]
    assert list(done["refused"]) == [fine.id]
    assert "only failed runs can be retried" in done["refused"][fine.id]
    for run in failed:
        assert flowkit.get_run(run.id).wait(20).state == "succeeded"


def test_retry_failed_retries_an_incident_s_failed_runs_of_one_workflow_and_step(env):
    """A provider down failed a hundred runs at its step: `flowkit retry` took one id, and
    a loop of it took a second per run (each imports the app)."""
    failed = [wf.exhausted.start({"n": n}) for n in (1, 2, 3)]
    other = wf.retrying.start({"n": 1, "fail_times": 9})  # another workflow's failure
    for run in (*failed, other):
        assert run.wait(20).state == "failed"
    assert failed[0].refresh().failed_step == "1:t.flaky"
    nothing = flowkit_cli("retry", "--failed", "-w", "exhausted", "--step", "0:t.add_one",
                          "-A", "tests.workflows", env=env)
    assert nothing.returncode == 0 and nothing.stdout.strip() == "No run retried."
    result = flowkit_cli("retry", "--failed", "-w", "exhausted", "--step", "t.flaky",
                         "-A", "tests.workflows", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Retrying 3 runs from their failed step.")
    assert {line.strip() for line in result.stdout.splitlines()[1:]} == {r.id for r in failed}
    for run in failed:
        assert flowkit.get_run(run.id).wait(20).state == "succeeded"
    assert flowkit.get_run(other.id).state == "failed"  # not of that workflow


def test_retry_failed_of_a_workflow_the_app_lacks_says_so(env):
    """A typo in -w retried nothing and said "No run retried.", exit 0: in an incident, it
    read as "nothing failed"."""
    result = flowkit_cli("retry", "--failed", "-w", "exhaustd", "-A", "tests.workflows",
                         env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("flowkit retry: No workflow named 'exhaustd' (in "
                                    "tests.workflows: ")
    assert "Did you mean 'exhausted'?" in result.stderr


def test_retry_failed_of_a_workflow_another_app_serves_retries_its_runs(env):
    """From an operator's shell whose -A module lacks the workflow, its failed runs are
    retried (they hold their steps): only a name with no failed run is refused."""
    failed = wf.exhausted.start({"n": 1})
    assert failed.wait(20).state == "failed"
    result = flowkit_cli("retry", "--failed", "-w", "exhausted", "-A",
                         "tests.monitoring_workflows", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Retrying 1 run from their failed step.",
                                          f"  {failed.id}"]
    assert flowkit.get_run(failed.id).wait(20).state == "succeeded"


@pytest.mark.parametrize("args, says", [
    (["retry"], "flowkit retry: name the runs to retry: flowkit retry RUN_ID [RUN_ID ...], "
                "or every failed run: flowkit retry --failed"),
    (["retry", "01X", "--failed"], "flowkit retry: give run ids or --failed, not both."),
    (["retry", "01X", "--step", "1:x"], "-w and --step choose among failed runs: add --failed."),
    (["retry", "--failed", "-n", "0"], "'0' is not a number of runs: pass 1 or more"),
])
def test_retry_without_runs_to_retry_says_how_to_name_them(args, says, env):
    result = flowkit_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") <= 2, result.stderr  # argparse's usage line may lead


@pytest.mark.parametrize("args, says", [
    (["input", "01X", "approval", "yes"], "flowkit input: the value must be JSON"),
    (["event", "key", "{bad"], "flowkit event: the data must be JSON"),
    (["retry", "01X", "-A", "no_such_module_here"], "flowkit retry: cannot import"),
    (["events", "01X", "--after", "yesterday"], "is not an event id"),
    (["runs", "--state", "done"], "invalid choice: 'done'"),
    (["runs", "--limit", "0"], "a number of runs from 1 to 1000"),
    (["status"], "the following arguments are required: RUN_ID"),
    (["doctor", "-A", "no_such_module_here"], "flowkit doctor: cannot import"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    # -A as a path, a file name, empty, relative, or with an attribute the module lacks:
    # a TypeError, "no module 'myapp.py'", the default app, or a run that ignored ":nope"
    (["retry", "01X", "-A", "../tests/workflows.py"], "-A takes a module name as Python "
                                                      "imports it, not a file path: -A "
                                                      "tests.workflows,"),
    (["retry", "01X", "-A", "myapp.py"], "not a file path: -A myapp,"),
    (["retry", "01X", "-A", ""], "flowkit retry: -A is empty: name the module"),
    (["retry", "01X", "-A", ".flows"], "-A takes an absolute module name (no leading dot)"),
    (["retry", "01X", "-A", ":app"], "flowkit retry: -A ':app' names no module before the "
                                     "':': give it as -A myapp.flows:app"),
    (["drain", "", "-A", "tests.workflows"], "flowkit drain: a worker name is empty: name each "
                                             "worker as `flowkit workers` lists it"),
    (["run", "simple", "-A", "tests.workflows:nope"], "module 'tests.workflows' has no 'nope'"),
    (["retry", "01X", "-A", "tests.exiting_app"], "importing 'tests.exiting_app' called "
                                                  "sys.exit(3); a module -A imports must not "
                                                  "exit"),
    (["retry", "01X", "-A", "tests.raising_app"], "importing 'tests.raising_app' raised "
                                                  "NameError: name 'undefined_thing' is not "
                                                  "defined (at tests/raising_app.py:5)"),
])
def test_bad_arguments_exit_2_with_what_to_do(env, args, says):
    result = flowkit_cli(*args, env=env)
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # argparse's had its usage first


@pytest.mark.parametrize("source, says", [
    # Python's own text named the bare file, "(flows.py, line 1)", not where it is
    ("def f(:\n", "importing 'myapp.flows' raised SyntaxError: invalid syntax (at "
                  "myapp/flows.py:1)"),
    # a missing module the user's code imports: said without the line that imports it
    ("import json\nimport nosuchmodule\n", "importing 'myapp.flows' failed: No module named "
                                           "'nosuchmodule' (at myapp/flows.py:2); fix that "
                                           "import.\n"),  # not "then run this again": dev
    # said it too, and starts again by itself
])
def test_a_module_that_does_not_import_says_where_in_your_code(env, tmp_path, source, says):
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "flows.py").write_text(source)
    result = subprocess.run([sys.executable, "-m", "flowkit.cli", "retry", "01X", "-A",
                             "myapp.flows"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_version():
    result = subprocess.run([sys.executable, "-m", "flowkit.cli", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"flowkit {__version__}"


@pytest.mark.parametrize("command", [[], ["schedules"]])
def test_no_command_prints_usage_on_stderr(command):
    """A usage error (exit 2), on stderr as argparse says its own: `flowkit` alone printed
    its help on stdout, `flowkit schedules` alone on stderr."""
    result = subprocess.run([sys.executable, "-m", "flowkit.cli", *command],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert f"usage: {' '.join(['flowkit', *command])}" in result.stderr


@pytest.mark.parametrize("command", [["status", "01X"], ["runs"], ["workers"], ["doctor"]])
def test_unreachable_redis_says_what_to_do(env, command):
    from flowkit.testing import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    result = flowkit_cli(*command, "-A", "tests.app", env={**env, "FLOWKIT_REDIS_URL": url}) \
        if command == ["doctor"] else flowkit_cli(*command, env={**env, "FLOWKIT_REDIS_URL": url})
    if command == ["doctor"]:  # the doctor's finding, not an error: it says the same
        assert result.returncode == 1
        assert "✗ redis" in result.stdout and f"Redis at {url} does not answer." in result.stdout
        assert "fix: Start it, or point FLOWKIT_REDIS_URL at your Redis." in result.stdout
        return
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"flowkit {command[0]}: cannot reach Redis at {url}; start it, or point FLOWKIT_REDIS_URL "
        "at your Redis."
    )


def test_a_misspelled_redis_url_is_named_where_redis_cannot_be_reached(env):
    """FLOWKIT_REDIS_ULR=...: the CLI said to start the default Redis (localhost), and the
    doctor dropped its `settings` check whenever Redis did not answer, the case the typo
    makes."""
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6379)) == 0:
            pytest.skip("a Redis listens on the default port here: the default URL reaches it")
    typo = {k: v for k, v in env.items() if k != "FLOWKIT_REDIS_URL"}
    typo["FLOWKIT_REDIS_ULR"] = env["FLOWKIT_REDIS_URL"]
    runs = flowkit_cli("runs", env=typo)
    assert runs.returncode == 1
    assert runs.stderr.strip() == (
        "flowkit runs: cannot reach Redis at redis://127.0.0.1:6379/0; start it, or point "
        "FLOWKIT_REDIS_URL at your Redis (FLOWKIT_REDIS_ULR is set: did you mean "
        "FLOWKIT_REDIS_URL?).")
    # the tests' own variable is no typo of it (the doctor's check skips FLOWKIT_TEST_* too)
    tests_own = {k: v for k, v in typo.items() if k != "FLOWKIT_REDIS_ULR"}
    tests_own["FLOWKIT_TEST_REDIS_URL"] = env["FLOWKIT_REDIS_URL"]
    assert "did you mean" not in flowkit_cli("runs", env=tests_own).stderr
    doctor = flowkit_cli("doctor", "-A", "tests.app", env=typo)
    assert doctor.returncode == 1 and "✗ redis" in doctor.stdout
    assert re.search(r"! settings +FLOWKIT_REDIS_ULR is not a flowkit setting: flowkit "
                     r"ignores it \(did you mean FLOWKIT_REDIS_URL\?\)\.", doctor.stdout), \
        doctor.stdout


def test_a_redis_url_without_a_host_is_said_with_the_address_it_means(env):
    """``FLOWKIT_REDIS_URL=redis://`` said "cannot reach Redis at redis://", which names no
    server: redis-py reads it as localhost:6379 (and ``redis://:PORT`` as localhost:PORT)."""
    from flowkit.testing import free_port

    port = free_port()
    result = flowkit_cli("runs", env={**env, "FLOWKIT_REDIS_URL": f"redis://:{port}/0"})
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"flowkit runs: cannot reach Redis at redis://:{port}/0 (localhost:{port}); start it"), \
        result.stderr


def test_a_time_past_the_year_9999_is_shown_as_a_number_not_a_traceback():
    """A deadline stored before such deadlines were refused (``sleep(1e308)``) made every
    ``flowkit status`` of its run fail with "year 33715 is out of range"."""
    from flowkit.cli.output import human_time

    assert human_time(1e12) == "1000000000000 (Unix time)"
    assert human_time(1e308).endswith(" (Unix time)")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in .+\)", human_time(2e9))


def test_an_input_to_a_run_that_failed_just_after_says_so_not_that_it_resumed():
    from flowkit.cli.runs import input_outcome

    run = {"id": "01J0000000000000000000000X", "state": "failed"}
    assert input_outcome("resumed", run) == (
        "the run resumed, and it is failed now (flowkit status 01J0000000000000000000000X "
        "says why)")
    assert input_outcome("resumed", {**run, "state": "queued"}) == (
        "the run resumed (run 01J0000000000000000000000X is queued)")


def test_status_says_a_sleep_once():
    """It said "sleep sleep until ..." (a sleep's wait is named after its kind)."""
    from flowkit.cli.runs import _waits_line  # noqa: PLC0415

    line = _waits_line({"id": "R", "state": "waiting",
                        "waits": [{"kind": "sleep", "name": "sleep", "expires_at": 4e9}]})
    assert line.startswith("sleep until ") and "sleep sleep" not in line
    line = _waits_line({"id": "R", "state": "waiting", "waits": [{"kind": "event", "name": "paid"}]})
    assert line == "event paid"
