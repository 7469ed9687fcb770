"""``flowkit schedules ...``, run as a real subprocess against the test Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

import flowkit

pytestmark = pytest.mark.integration

APP = ["-A", "tests.workflows"]


def schedules_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowkit.cli", "schedules", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(flowkit_env, store):
    return {**os.environ, **flowkit_env}


def ok(*args: str, env: dict) -> str:
    result = schedules_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def table(stdout: str) -> dict[str, list[str]]:
    """The rows of a printed table by id (columns split on runs of 2+ spaces)."""
    lines = stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "ID", "WORKFLOW", "CRON/EVERY", "TIMEZONE", "OVERLAP", "NEXT RUN", "PAUSED"]
    rows = [re.split(r"\s{2,}", line) for line in lines[1:]]
    return {row[0]: [*row[:5], next_run(row[5]), *row[6:]] for row in rows}


def next_run(cell: str) -> str:
    """A NEXT RUN cell without its "(in 14h 2m)", which moves as time passes."""
    if cell == "-":  # paused: none
        return cell
    stamp, _, off = cell.partition(" (in ")
    assert off.endswith(")"), cell  # how far off, as every command says times
    return stamp


def shown_at(ts: float) -> str:
    """``ts`` as the CLI prints it: this machine's local time (its processes share TZ)."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def test_create_cron_in_a_time_zone_then_list(env):
    created = json.loads(ok("create", "simple", "--cron", "0 9 * * 1-5", "--timezone",
                            "Europe/Paris", "--input", '{"n": 2}', *APP, "--json", env=env))
    assert created["id"] == "simple@0_9_*_*_1-5"
    assert (created["workflow"], created["cron"], created["every"]) == ("simple", "0 9 * * 1-5",
                                                                        None)
    assert (created["input"], created["timezone"], created["paused"]) == ({"n": 2},
                                                                          "Europe/Paris", False)
    local = datetime.fromtimestamp(created["next_at"], ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute, local.second) == (9, 0, 0) and local.weekday() < 5
    assert time.time() < created["next_at"] < time.time() + 4 * 86_400

    rows = table(ok("list", env=env))
    assert rows == {created["id"]: [created["id"], "simple", "0 9 * * 1-5", "Europe/Paris",
                                    "allow", shown_at(created["next_at"]), "no"]}
    listed = json.loads(ok("list", "--json", env=env))
    assert listed == [created]
    assert flowkit.schedules.get(created["id"]) == created  # the store the Python API reads
    assert json.loads(ok("get", created["id"], "--json", env=env)) == created


def test_create_takes_its_input_from_a_file_as_run_does(env, tmp_path):
    (tmp_path / "input.json").write_text('{"n": 7}')
    ok("create", "simple", "--every", "60", "--input", f"@{tmp_path / 'input.json'}", "--id",
       "from-file", *APP, env=env)
    assert flowkit.schedules.get("from-file")["input"] == {"n": 7}


def test_create_every_with_an_id_and_catchup_then_list(env):
    out = ok("create", "simple", "--every", "3600", "--input", '{"n": 1}', "--catchup",
             "--id", "hourly", *APP, env=env)
    stored = flowkit.schedules.get("hourly")
    assert stored["every"] == 3600 and stored["catchup"] is True and stored["cron"] is None
    expected = ["hourly", "simple", "every 3600s", "UTC", "allow", shown_at(stored["next_at"]), "no"]
    assert table(out) == {"hourly": expected}

    ok("create", "simple", "--every", "60", "--input", '{"n": 1}', *APP, env=env)
    rows = table(ok("list", env=env))
    assert sorted(rows) == ["hourly", "simple@every60s"]
    assert rows["hourly"] == expected
    assert [s["id"] for s in json.loads(ok("list", "--json", env=env))] == ["hourly",
                                                                          "simple@every60s"]


def test_an_empty_list(env):
    assert ok("list", env=env).startswith("No schedules")
    assert json.loads(ok("list", "--json", env=env)) == []


@pytest.mark.long  # it mostly waits: beside the rest (the fast tier neared 15 min)
def test_pause_and_resume_change_paused_and_the_next_run(env):
    created = json.loads(ok("create", "simple", "--cron", "0 0 1 1 *", "--input", '{"n": 1}',
                            *APP, "--json", env=env))
    paused = json.loads(ok("pause", created["id"], "--json", env=env))
    assert paused["paused"] is True and paused["next_at"] is None
    assert table(ok("list", env=env))[created["id"]][5:] == ["-", "yes"]
    assert flowkit.schedules.get(created["id"])["next_at"] is None

    out = ok("resume", created["id"], env=env)
    resumed = flowkit.schedules.get(created["id"])
    assert resumed["paused"] is False and resumed["next_at"] == created["next_at"]
    assert table(out)[created["id"]][5:] == [shown_at(created["next_at"]), "no"]

    assert table(ok("pause", created["id"], env=env))[created["id"]][5:] == ["-", "yes"]
    assert json.loads(ok("resume", created["id"], "--json", env=env))["next_at"] == \
        created["next_at"]


@pytest.mark.long  # it mostly waits: beside the rest (the fast tier neared 15 min)
def test_delete_removes_it_and_then_it_is_not_found(env):
    ok("create", "simple", "--every", "60", "--input", '{"n": 1}', "--id", "doomed", *APP,
       env=env)
    assert ok("delete", "doomed", env=env).strip() == "Deleted schedule 'doomed'."
    assert json.loads(ok("list", "--json", env=env)) == []
    ok("create", "simple", "--every", "60", "--input", '{"n": 1}', "--id", "twice", *APP,
       env=env)
    assert json.loads(ok("delete", "twice", "--json", env=env)) == {"deleted": "twice"}
    for command in ("get", "delete", "pause", "resume"):
        result = schedules_cli(command, "doomed", env=env)
        assert result.returncode == 1
        assert result.stderr == f"flowkit schedules {command}: No schedule 'doomed'.\n"
        assert result.stdout == ""


@pytest.mark.parametrize(("args", "code", "message"), [
    (["nope", "--every", "60", *APP], 1,
     "No workflow named 'nope' (in tests.workflows: abandoning, answered-while-working, "),
    (["simple", "--every", "60", "-A", "no_such_module.app"], 2,
     "cannot import 'no_such_module.app' (no module 'no_such_module' from "),
    (["simple", "--input", '{"n": 1}', *APP], 2,
     "Give --cron or --every, one of them: e.g. --cron '0 9 * * 1-5' or --every 3600."),
    (["simple", "--cron", "0 9 * * *", "--every", "60", "--input", '{"n": 1}', *APP], 2,
     "Give --cron or --every, one of them: e.g. --cron '0 9 * * 1-5' or --every 3600."),
    (["simple", "--cron", "0 9 * *", *APP], 2,
     "--cron '0 9 * *': 5 fields (minute hour day month weekday) of digits and * / , -, "
     "e.g. '0 9 * * 1-5' (quote it for your shell)."),
    (["simple", "--cron", "61 * * * *", "--input", '{"n": 1}', *APP], 2,
     "invalid cron line '61 * * * *': Invalid end range: 61 > 59."),
    (["simple", "--cron", "0 9 * * *", "--timezone", "Mars/Base", "--input", '{"n": 1}', *APP],
     2, "unknown time zone 'Mars/Base'; use an IANA name like 'Europe/Paris' or 'UTC'."),
    (["simple", "--every", "often", *APP], 2,
     "--every 'often': a number of seconds from 1 to 31622400, e.g. --every 3600."),
    (["simple", "--every", "0.5", *APP], 2,
     "--every '0.5': a number of seconds from 1 to 31622400, e.g. --every 3600."),
    (["simple", "--every", "60", "--input", "{n: 1}", *APP], 2,
     "--input must be JSON (Expecting property name enclosed in double quotes: line 1 column "
     "2 (char 1)), e.g. '{\"n\": 1}' (quote it for your shell), or @file.json."),
    (["simple", "--every", "60", "--input", '{"m": 1}', *APP], 2,
     "the input does not fit the schema of workflow 'simple' (n: Missing data for required "
     "field.; m: Unknown field.); pass --input with the JSON object each run starts with "
     "(--input '{...}' or --input @input.json)."),
    # without --input: no "_schema" key, nor an example of another workflow's input
    (["simple", "--every", "60", *APP], 2,
     "the input does not fit the schema of workflow 'simple' (Input must be a JSON object, "
     "not null: give one ({} when every field has a default).); pass --input with the JSON "
     "object each run starts with (--input '{...}' or --input @input.json)."),
    (["simple", "--every", "60", "--input", "@/nonexistent/input.json", *APP], 2,
     "--input @/nonexistent/input.json: cannot read the file (No such file or directory)."),
    (["simple", "--every", "60", "--input", '{"n": 1}', "--id", "a b", *APP], 2,
     "--id 'a b': 1 to 200 printable ASCII characters, no spaces, no // and no leading /, "
     "no . or .. between slashes, not ending in /pause or /resume."),
    (["simple", "--every", "60", "--input", '{"n": 1}', "--id", "/x", *APP], 2,
     "--id '/x': 1 to 200"),
    (["simple", "--every", "60", "--input", '{"n": 1}', "--id", "a/pause", *APP], 2,
     "--id 'a/pause': 1 to 200"),
])
def test_bad_input_is_one_clear_line_not_a_traceback(env, args, code, message):
    result = schedules_cli("create", *args, env=env)
    assert result.returncode == code
    assert result.stdout == ""
    assert result.stderr.startswith(f"flowkit schedules create: {message}")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert flowkit.schedules.list() == []  # nothing stored


def test_no_subcommand_prints_the_group_usage(env):
    result = schedules_cli(env=env)
    assert result.returncode == 2
    assert "usage: flowkit schedules" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_redis_says_what_to_do(env):
    from flowkit.testing import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    result = schedules_cli("list", env={**env, "FLOWKIT_REDIS_URL": url})
    assert result.returncode == 1
    assert result.stderr == (f"flowkit schedules list: cannot reach Redis at {url}; start it, "
                             "or point FLOWKIT_REDIS_URL at your Redis.\n")


@pytest.mark.parametrize("overlap", ["skip", "buffer", "cancel"])
def test_create_with_overlap(env, overlap):
    created = json.loads(ok("create", "simple", "--every", "60", "--input", '{"n": 1}',
                            "--overlap", overlap, *APP, "--json", env=env))
    assert created["overlap"] == overlap
