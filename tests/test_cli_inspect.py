"""``flowkit runs``, ``trace``, ``workers`` and ``doctor`` against real deployments: the
session's (a Redis without AOF, a worker on the default queue only, no beat until the last
test), and a private one kept well (AOF on, every routed queue consumed, beat sweeping)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import pytest

from flowkit.config import get_settings
from flowkit.engine.control import live_workers
from flowkit.store import Store
from flowkit.testing import LocalRedis
from tests import workflows as wf
from tests.conftest import FAST, ROOT, open_gate, reached_gate, wait_until
from tests.test_cli import HUMAN_TIME, flowkit_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def env(flowkit_env, store, worker):
    return {**os.environ, **flowkit_env}


def by_check(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for finding in report["findings"]:
        found.setdefault(finding["check"], []).append(finding)
    return found


# -- flowkit runs -------------------------------------------------------------------------


def test_runs_lists_newest_first_and_filters(env):
    first, second = wf.simple.start({"n": 1}), wf.simple.start({"n": 2})
    failed = wf.exhausted.start({"n": 1, "fail_times": 5})
    for run in (first, second, failed):
        run.wait(20)

    listed = flowkit_cli("runs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [failed.id, second.id, first.id]
    only_failed = json.loads(flowkit_cli("runs", "--state", "failed", "--json", env=env).stdout)
    assert [(r["id"], r["state"]) for r in only_failed] == [(failed.id, "failed")]
    older = json.loads(flowkit_cli("runs", "--before", second.id, "--json", env=env).stdout)
    assert [r["id"] for r in older] == [first.id]

    table = flowkit_cli("runs", "-w", "simple", "-n", "1", env=env)
    assert table.returncode == 0, table.stderr
    header, row, caption = table.stdout.splitlines()
    assert header.split() == ["RUN", "WORKFLOW", "STATE", "CREATED", "TOOK", "DETAIL"]
    assert row.startswith(f"{second.id}  simple v1  succeeded  ")
    assert HUMAN_TIME.search(row)
    assert caption == f"Older runs: flowkit runs --before {second.id}"
    failure = flowkit_cli("runs", "-s", "failed", env=env).stdout.splitlines()[1]
    assert failure.endswith("1:t.flaky: Flaky: flaky failure 2")
    assert flowkit_cli("runs", "-s", "cancelled", env=env).stdout.strip() == \
        "No runs in state cancelled."


# -- flowkit trace --------------------------------------------------------------------------


def test_trace_shows_steps_attempts_and_totals(env):
    run = wf.retrying.start({"n": 1, "fail_times": 2})
    run.result(20)

    tree = flowkit_cli("trace", run.id, env=env)
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    assert re.match(rf"retrying v1  succeeded  [0-9.]+s  started .* run {run.id}$", lines[0])
    flaky = next(i for i, line in enumerate(lines) if "1:t.flaky" in line)
    assert re.search(r"1:t\.flaky  ok  3 attempts$", lines[flaky])
    assert "attempt 1  error" in lines[flaky + 1] and "Flaky: flaky failure 1" in lines[flaky + 1]
    assert "attempt 2  error" in lines[flaky + 2]
    assert re.search(r"attempt 3  ok  [0-9.]+s", lines[flaky + 3])
    assert re.fullmatch(r"Totals: 3 steps, 5 attempts \(2 failed\); 0 LLM calls; "
                        r"time [0-9.]+s \(steps [0-9.]+s, LLM 0\.00s\)", lines[-1])

    doc = json.loads(flowkit_cli("trace", run.id, "--json", env=env).stdout)
    assert doc["run"] == run.id and doc["spans"][0]["kind"] == "workflow"
    totals = doc["totals"]
    assert (totals["steps"], totals["attempts"], totals["failed_attempts"]) == (3, 5, 2)
    assert totals["llm_calls"] == 0 and totals["cost"] is None
    assert totals["run_seconds"] == doc["spans"][0]["duration"]


# -- flowkit workers --------------------------------------------------------------------------


def test_workers_shows_live_workers_and_the_steps_they_run(env):
    run = wf.chain3.start({"n": 1})
    reached_gate(run, "gated")
    # the store fixture's flush dropped the session worker's announcement: its next beat
    # writes it again (a fresh-clone run listed no main@ worker once)
    wait_until(lambda: any(w["name"].startswith("main@") and w.get("routes")
                           for w in live_workers()), 30, "the session worker's announcement")
    try:
        doc = json.loads(flowkit_cli("workers", "--json", env=env).stdout)
        table = flowkit_cli("workers", env=env).stdout
    finally:
        open_gate(run, "gated")
    main = next(w for w in doc["workers"] if w["name"].startswith("main@"))
    assert main["queues"] == ["flowkit"] and main["pool"] == "thread"
    assert main["routes"]["lonely"] == ["lonely", "stranded"] and main["workflows"]["simple"] == "1"
    [step] = [s for s in doc["running"] if s["run"] == run.id]
    assert (step["workflow"], step["step"], step["attempt"], step["node"]) == (
        "chain3", "1:t.gated", 1, main["name"])

    # the session's other workers (of other test modules) may still be live
    assert re.match(r"\d+ live workers?\n", table)
    assert re.search(rf"{re.escape(main['name'])} +flowkit +thread x 4 +1 +1 +\S+ +[0-9.]+s ago",
                     table)
    assert "1 running step" in table
    assert re.search(rf"{run.id} +chain3 +1:t\.gated +1 +{re.escape(main['name'])}:\d+ +"
                     + HUMAN_TIME.pattern.replace("s ago", "s").replace(r"\(", r"\(in "), table)
    run.result(20)


# -- flowkit doctor ---------------------------------------------------------------------------


def test_doctor_reports_no_aof_a_queue_without_consumer_and_no_beat(env):
    # a live worker to check the queues against: the store fixture's flush dropped the
    # session worker's announcement until its next beat (no queues check at all then)
    wait_until(lambda: any(w["name"].startswith("main@") and w.get("routes")
                           for w in live_workers()), 30, "the session worker's announcement")
    result = flowkit_cli("doctor", "-A", "tests.app", "--json", env=env)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    found = by_check(report)
    assert report["ok"] is False
    [aof] = found["redis.aof"]
    assert aof["level"] == "failure" and aof["message"].startswith("AOF is off")
    assert "appendonly yes" in aof["fix"]
    unconsumed = {f["message"] for f in found["queues"] if f["level"] == "failure"}
    assert ("No live worker consumes queue lonely (workflow lonely, stranded): its steps "
            "stay queued.") in unconsumed
    assert found["beat"][0]["level"] == "failure"
    assert [f["level"] for f in found["redis"] + found["workers"]] == ["ok", "ok"]
    assert report["failures"] == sum(f["level"] == "failure" for f in report["findings"])

    human = flowkit_cli("doctor", "-A", "tests.app", env=env)
    assert human.returncode == 1
    lines = human.stdout.splitlines()
    aof_line = next(i for i, line in enumerate(lines) if line.startswith("✗ redis.aof"))
    assert lines[aof_line + 1].strip().startswith("fix: Turn it on: CONFIG SET appendonly yes")
    assert any(re.match(r"✗ queues +No live worker consumes queue lonely", line) for line in lines)
    # its own count (the session's other workers may come and go between the two calls)
    failures = sum(1 for line in lines if line.startswith("✗ "))
    assert lines[-1] == f"{failures} failures, 0 warnings: fix the failures."


def test_doctor_without_an_app_checks_the_queues_the_workers_announce(env, store, tmp_path):
    # run from a directory with no app: the default app does not import, the workers'
    # announcements still name the lonely queue (the store fixture's flush dropped the
    # session worker's announcement: wait for the next one)
    wait_until(lambda: any("lonely" in (w.get("routes") or {}) for w in live_workers(store)),
               30, "the session worker to announce its routes again")
    result = subprocess.run([sys.executable, "-m", "flowkit.cli", "doctor", "--json"],
                            env={**env, "PYTHONPATH": ""}, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    found = by_check(json.loads(result.stdout))
    assert found["app"][0]["level"] == "warning" and "-A your.module" in found["app"][0]["fix"]
    assert any("No live worker consumes queue lonely (workflow" in f["message"]
               for f in found.get("queues", [])), found


def test_doctor_sees_beat_sweep(env, beat, store):
    wait_until(lambda: store.last_sweep(), 30, "beat's first reaper sweep")
    found = by_check(json.loads(flowkit_cli("doctor", "--json", env=env).stdout))
    assert found["beat"][0]["level"] == "ok"
    assert re.fullmatch(r"The reaper swept [0-9.]+s ago\.", found["beat"][0]["message"])


# -- a deployment kept well -------------------------------------------------------------------


@pytest.fixture
def well_kept(flowkit_env, start_worker, tmp_path):
    """A private Redis with AOF, a worker on both queues of tests.doctor_app, and beat."""
    with LocalRedis(appendonly=True) as redis_server:
        env = {**flowkit_env, **FAST,
               "FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/1",
               "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/0"}
        private = Store(dataclasses.replace(get_settings(),
                                            redis_url=env["FLOWKIT_REDIS_URL"]))
        start_worker("kept", app="tests.doctor_app", env_overrides=env,
                     queues=("flowkit", "doctor-slow"))
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.doctor_app", "beat", "--schedule",
             str(tmp_path / "schedule")], env={**os.environ, **env}, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(lambda: private.last_sweep(), 30, "the private beat's first sweep")
            yield {**os.environ, **env}, private, redis_server
        finally:
            beat.kill()
            beat.wait(10)


def doctor(env: dict) -> tuple[int, dict]:
    result = flowkit_cli("doctor", "-A", "tests.doctor_app", "--json", env=env)
    return result.returncode, json.loads(result.stdout)


def test_doctor_passes_a_deployment_kept_well_then_warns_and_fails(well_kept, start_worker):
    env, private, redis_server = well_kept
    human = flowkit_cli("doctor", "-A", "tests.doctor_app", env=env)
    assert human.returncode == 0, human.stdout + human.stderr
    assert all(line.startswith("✓ ") for line in human.stdout.splitlines()[:-2])
    assert human.stdout.splitlines()[-1] == "All is well."
    code, report = doctor(env)
    found = by_check(report)
    assert code == 0 and report["failures"] == report["warnings"] == 0
    assert found["queues"][0]["message"] == \
        "Every routed queue has a live consumer: doctor-slow, flowkit."
    assert found["visibility-timeout"][0]["message"] == (
        "The broker visibility timeout (3600s) outlasts the longest step (5s).")

    # a second worker on another version of the workflow: a warning, still exit code 0
    start_worker("newer", app="tests.doctor_app", queues=("flowkit", "doctor-slow"),
                 env_overrides={**{k: env[k] for k in ("FLOWKIT_REDIS_URL", "FLOWKIT_BROKER_URL")},
                                "DOCTOR_WORKFLOW_VERSION": "2"})
    wait_until(lambda: len(private.nodes_seen_since(time.time() - 2)) == 2, 20, "two workers")
    code, report = doctor(env)
    [warning] = [f for f in report["findings"] if f["level"] == "warning"]
    assert code == 0 and warning["check"] == "versions"
    assert re.fullmatch(r"Workflow doctor_checked is served at versions 1 by kept@\S+; "
                        r"2 by newer@\S+", warning["message"])

    # a release that adds a workflow, checked before its workers run: it said all is well,
    # and the workflow's steps were dropped as unknown tasks, its runs failed
    added = flowkit_cli("doctor", "-A", "tests.doctor_app_newer", "--json", env=env)
    assert added.returncode == 1, added.stdout
    [undefined] = [f for f in by_check(json.loads(added.stdout))["queues"]
                   if f["level"] == "failure"]
    assert undefined["message"] == (
        "No live worker of queue flowkit defines workflow doctor_added: its steps are "
        "dropped as unknown tasks and its runs fail.")
    assert "FLOWKIT_WORKFLOW_MODULES" in undefined["fix"]

    # a memory limit with an eviction policy: Redis would drop runs, a failure
    private.redis.config_set("maxmemory", "500mb")
    private.redis.config_set("maxmemory-policy", "allkeys-lru")
    code, report = doctor(env)
    [policy] = by_check(report)["redis.maxmemory-policy"]
    assert code == 1 and policy["level"] == "failure"
    assert "allkeys-lru with maxmemory 524288000 bytes" in policy["message"]
    assert "maxmemory-policy noeviction" in policy["fix"]


def test_doctor_says_when_the_workers_take_steps_from_another_broker(env):
    """A shell sending to another broker (only FLOWKIT_REDIS_URL exported, the workers on
    a broker of their own; or another database) was "All is well" while its runs waited
    five minutes for the reaper."""
    wait_until(lambda: any(w["name"].startswith("main@") and w.get("broker")
                           for w in live_workers()), 30, "the session worker's announcement")
    same = by_check(json.loads(flowkit_cli("doctor", "-A", "tests.app", "--json",
                                           env=env).stdout))
    assert "broker.same" not in same
    elsewhere = env["FLOWKIT_REDIS_URL"].rsplit("/", 1)[0] + "/5"
    result = flowkit_cli("doctor", "-A", "tests.app", "--json",
                         env={**env, "FLOWKIT_BROKER_URL": elsewhere})
    [finding] = by_check(json.loads(result.stdout))["broker.same"]
    assert result.returncode == 1 and finding["level"] == "failure"
    assert finding["message"].startswith("This process sends steps to the broker at "
                                         "redis://127.0.0.1:")
    assert "/5, but worker(s) " in finding["message"] and "main@" in finding["message"]
    assert finding["fix"].startswith("Set FLOWKIT_BROKER_URL")


def test_doctor_checks_a_result_backend_of_its_own_answers(env):
    """Chords join through Celery's result backend: one on a Redis of its own
    (FLOWKIT_RESULT_BACKEND) that did not answer was "All is well" while every parallel step
    and fan-out waited for ever."""
    with LocalRedis() as backend:
        url = f"redis://127.0.0.1:{backend.port}/0"
        [ok] = by_check(json.loads(flowkit_cli(
            "doctor", "-A", "tests.app", "--json",
            env={**env, "FLOWKIT_RESULT_BACKEND": url}).stdout))["result_backend"]
        assert ok["level"] == "ok" and ok["message"].endswith(f"at {url} answers.")
    result = flowkit_cli("doctor", "-A", "tests.app", "--json",
                         env={**env, "FLOWKIT_RESULT_BACKEND": url})  # stopped now
    [down] = by_check(json.loads(result.stdout))["result_backend"]
    assert result.returncode == 1 and down["level"] == "failure"
    assert "does not answer: no parallel step or fan-out can join" in down["message"]
    assert down["fix"].startswith("Start it, or point FLOWKIT_RESULT_BACKEND at it")
    # the store's own Redis (another database) was checked as the store already
    same = by_check(json.loads(flowkit_cli(
        "doctor", "-A", "tests.app", "--json",
        env={**env, "FLOWKIT_RESULT_BACKEND": env["FLOWKIT_REDIS_URL"].rsplit("/", 1)[0] + "/3"}
    ).stdout))
    assert "result_backend" not in same
    # Celery's other Redis forms are not probed (a sentinel:// one was a traceback)
    sentinels = flowkit_cli("doctor", "-A", "tests.app", "--json",
                            env={**env, "FLOWKIT_RESULT_BACKEND": "sentinel://127.0.0.1:1"})
    assert "Traceback" not in sentinels.stderr, sentinels.stderr
    assert "result_backend" not in by_check(json.loads(sentinels.stdout))


@pytest.mark.parametrize("a, b", [
    ("redis://localhost/0", "redis://:secret@127.0.0.1:6379"),
    ("amqp://guest:guest@localhost//", "amqp://other@127.0.0.1:5672/"),
    # RabbitMQ's own spelling of the vhost "/" was another broker ("broker.same" failed)
    ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:guest@localhost:5672//"),
    ("amqp://h:5672/prod", "amqp://h:5672/%70rod"),
])
def test_two_spellings_of_one_broker_are_one_address_without_credentials(a, b):
    from flowkit.engine.doctor import broker_address  # noqa: PLC0415

    assert broker_address(a) == broker_address(b)
    assert "secret" not in broker_address(b) and "guest" not in broker_address(a)
    assert broker_address("redis://127.0.0.1:6379/1") != broker_address("redis://127.0.0.1/0")


def test_a_failover_list_of_brokers_is_announced_without_any_of_its_credentials():
    from flowkit.engine.doctor import broker_address  # noqa: PLC0415

    said = broker_address("amqp://u:s3cret@h1:5672//;amqp://u:s3cret@h2:5672//")
    assert said == "amqp://h1:5672//;amqp://h2:5672//"


def test_another_database_is_surely_another_broker_another_host_name_may_not_be():
    """A compose service name for the workers' broker was a failure, though it is likely the
    very Redis the doctor read the workers' announcements from."""
    from flowkit.engine import doctor  # noqa: PLC0415

    worker = {"name": "w1@box", "broker": doctor.broker_address("redis://redis:6379/0")}
    [named_otherwise] = doctor.same_broker("redis://localhost:6379/0", [worker])
    assert named_otherwise.level == doctor.WARNING
    assert "(unless those name the same server from where each process runs)" in \
        named_otherwise.message
    [other_db] = doctor.same_broker("redis://redis:6379/5", [worker])
    assert other_db.level == doctor.FAILURE and "unless" not in other_db.message
    assert doctor.same_broker("redis://redis/0", [worker]) == []


def test_doctor_warns_of_a_flowkit_variable_that_names_no_setting(env):
    """A misspelled variable was ignored without a word, its default used instead."""
    result = flowkit_cli("doctor", "-A", "tests.app", "--json",
                         env={**env, "FLOWKIT_BROKR_URL": env["FLOWKIT_REDIS_URL"]})
    [finding] = by_check(json.loads(result.stdout))["settings"]
    assert finding["level"] == "warning"
    assert finding["message"] == ("FLOWKIT_BROKR_URL is not a flowkit setting: flowkit ignores "
                                  "it (did you mean FLOWKIT_BROKER_URL?).")


def test_every_flowkit_variable_the_code_reads_is_known_to_the_doctor():
    """The doctor's list of what flowkit reads is the code's: a variable read outside the
    settings and left off the list would be reported as ignored."""
    from pathlib import Path  # noqa: PLC0415

    from flowkit.config import variables  # noqa: PLC0415

    root = Path(ROOT)
    read = re.compile(r"""environ(?:\.get)?[(\[]\s*["'](FLOWKIT_[A-Z0-9_]+)["']""")
    sources = [*(root / "flowkit").rglob("*.py"), root / "api" / "app.py"]
    names = {name for path in sources for name in read.findall(path.read_text())}
    assert names and names <= variables(), sorted(names - variables())


def test_trace_totals_say_when_some_calls_have_no_known_cost():
    """The known costs' sum read as the run's whole cost: an unpriced model's call, or a
    stream read only in part, has none."""
    from flowkit.cli.trace import totals, totals_line

    calls = [{"kind": "llm", "prompt_tokens": 4, "completion_tokens": 5, "cost": 0.000004},
             {"kind": "llm", "prompt_tokens": 4, "completion_tokens": 5, "cost": None},
             {"kind": "llm", "cost": 0.000003, "cached": True},  # cached: nothing paid
             {"kind": "llm", "status": "error"}]  # failed without usage: not billed
    sums = totals(calls, now=0.0)
    assert (sums["cost"], sums["unpriced_calls"]) == (0.000004, 1)
    assert "; cost $0.000004 and 1 call of unknown cost; " in totals_line(sums)
    priced = totals(calls[:1], now=0.0)
    assert "; cost $0.000004; " in totals_line(priced)


@pytest.mark.parametrize(("retries", "said"), [(1, "1 retry"), (3, "3 retries")])
def test_a_trace_s_call_line_counts_its_retries_in_english(retries, said):
    from flowkit.cli.trace import _call_line  # noqa: PLC0415 - the line alone

    line = _call_line({"kind": "llm", "operation": "chat.completions", "model": "m",
                       "status": "ok", "retries": retries}).plain
    assert said in line and "retrys" not in line  # it said "3 retrys"


def test_a_running_step_counts_its_time_so_far_in_a_trace():
    """It counted 0 s in the totals and its line said no time, where flowkit runs says
    "2.23s so far"."""
    from flowkit.cli.trace import _attempt_line, totals

    running = {"kind": "step", "step": "0:t.call", "attempt": 1, "status": "running",
               "start": 100.0}
    assert totals([running], now=102.5)["step_seconds"] == 2.5
    assert " so far" in _attempt_line(running, with_step=True).plain
