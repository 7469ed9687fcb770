"""Bad input to the ``flowkit`` command line, run as a real subprocess: a Redis URL that is
not one, a database the server does not have, bad numbers, a reader that stops reading.
Each is one line (or argparse's usage and one line) and an exit code, never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import redis

import flowkit
from flowkit.testing import LocalRedis
from flowkit.testing.redis import free_port
from flowkit.urls import credentials_in_userinfo, redacted
from tests import workflows as wf
from tests.conftest import ROOT, wait_until

# long: 135 subprocesses, a second each of an interpreter starting and importing flowkit,
# the fast tier's largest file (2.5 of its 15.5 minutes on 2 cores); the long sessions,
# which mostly wait, run it beside the rest (scripts/test)
pytestmark = [pytest.mark.integration, pytest.mark.long]

APP = ["-A", "tests.workflows"]

#: Commands that read or write flowkit's Redis (FLOWKIT_REDIS_URL).
STORE_COMMANDS = [["status", "01X"], ["runs"], ["workers"], ["schedules", "list"],
                  ["event", "key"], ["doctor", *APP], ["follow", "01X"],
                  ["run", "simple", "-i", "n=1", *APP]]


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowkit.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(flowkit_env, store, worker):
    return {**os.environ, **flowkit_env}


def where(command: list[str]) -> str:
    return " ".join(command[:2]) if command[0] == "schedules" else command[0]


def one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


@pytest.mark.parametrize("args, says", [
    (["follow", "01X", "--after", "bogus"], "'bogus' is not an event id"),
    (["dev", *APP, "--port", "-1"], "argument --port: '-1' is not a port: pass one from 1 "
                                    "to 65535"),
    (["dev", *APP, "--port", "65536"], "'65536' is not a port"),
    (["dev", *APP, "--port", "http"], "'http' is not a port"),
    (["dev", *APP, "--concurrency", "-3"], "argument --concurrency: '-3' is not a number of "
                                           "steps to run at once: pass 1 or more"),
    (["dev", *APP, "--concurrency", "0"], "'0' is not a number of steps"),
])
def test_bad_numbers_are_refused_before_anything_starts(env, args, says):
    result = cli(*args, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [error] = result.stderr.strip().splitlines()  # one line (argparse's had its usage first)
    assert error.startswith(f"flowkit {args[0]}: error: ") and says in error
    assert "starting" not in result.stdout + result.stderr


def test_an_event_key_the_api_refuses_is_refused_here_too(env):
    result = cli("event", "k" * 201, env=env)
    assert result.returncode == 2
    assert one_line(result) == ("flowkit event: Invalid event key: 1 to 200 characters of "
                                "text, not 201 characters.")


def test_event_data_or_an_input_nested_past_64_levels_is_refused_here_as_over_the_api(env):
    """The API refuses such a body (400); the CLI and send_event/send_input took it, and
    the run it woke failed as its step reported it."""
    deep = "[" * 70 + "]" * 70
    result = cli("event", "k", deep, env=env)
    assert result.returncode == 2
    assert one_line(result) == ("flowkit event: The data of event 'k' nests objects and arrays "
                                "more than 64 levels deep; flatten it.")
    with pytest.raises(flowkit.ValidationError) as err:
        flowkit.send_event("k", json.loads(deep))
    assert err.value.fields == {"data": ["Nests objects and arrays more than 64 levels deep; "
                                         "flatten it."]}
    assert flowkit.store.get_store().redis.keys("*:sent:*") == []  # nor kept for a look-back
    with pytest.raises(flowkit.ValidationError) as err:
        flowkit.send_input("01M93X05HT2RHYGESAXCMYWMBZ", "approval", json.loads(deep))
    assert str(err.value).startswith("Input 'approval' nests objects and arrays more than 64")


def test_input_that_misses_its_schema_says_how_to_type_a_string(env):
    """``-i topic=42`` types 42 as a number, as ``gh api -F`` does: when the schema wants a
    string the message says how to write one; the run is not started."""
    result = cli("run", "content", "-i", "topic=42", "-i", "audience=null",
                 "-A", "examples.content", env=env)
    assert result.returncode == 2
    assert one_line(result) == (
        "flowkit run: the input does not fit the schema of workflow 'content' (topic: Not a "
        "valid string.; audience: Field may not be null.) (-i topic=42 typed it as a number: "
        "write topic:='\"42\"' for the string) (-i audience=null typed it as null: write "
        "audience:='\"null\"' for the string); set fields with -i key=value or --input JSON.")
    plain = cli("run", "simple", "-i", "n=x", *APP, env=env)
    assert plain.returncode == 2
    assert one_line(plain) == ("flowkit run: the input does not fit the schema of workflow "
                               "'simple' (n: Not a valid integer.); set fields with -i "
                               "key=value or --input JSON.")
    assert flowkit.list_runs() == []


def test_a_fraction_for_an_integer_is_refused_here_as_over_the_api_not_cut(env):
    """Without --url the CLI (and ``start()``) held the input to marshmallow alone, which
    made 7 of 7.9 and started the run, where the API refused it."""
    result = cli("run", "simple", "-i", "n:=7.9", "--detach", *APP, env=env)
    assert result.returncode == 2
    assert one_line(result) == ("flowkit run: the input does not fit the schema of workflow "
                                "'simple' (n: 7.9 is not of type integer); set fields with -i "
                                "key=value or --input JSON.")
    with pytest.raises(flowkit.ValidationError) as err:
        wf.simple.start({"n": 7.9})
    assert err.value.fields == {"n": ["7.9 is not of type integer"]}
    with pytest.raises(flowkit.ValidationError):
        wf.simple.start({"n": "7"})  # a string of digits, as the API refuses it
    assert flowkit.list_runs() == []
    assert wf.simple.start({"n": 7}).result(20) == {"n": 16}


def test_events_after_a_cursor_past_the_run_s_end_says_so_as_follow_does(env):
    """It printed nothing and exited 0: a mistyped cursor read as "no events"."""
    run = wf.simple.start({"n": 1})
    run.result(20)
    last = flowkit.history(run.id)[-1].id
    result = cli("events", run.id, "--after", "99999999999999-0", env=env)
    assert result.returncode == 2
    assert one_line(result).startswith(f"flowkit events: Cursor 99999999999999-0 is past run "
                                       f"{run.id}'s events (")
    with pytest.raises(flowkit.ValidationError) as err:
        flowkit.history(run.id, after="99999999999999-0")
    assert list(err.value.fields) == ["after"]
    assert flowkit.history(run.id, after=last) == []  # at its end: nothing more, no error
    assert cli("events", run.id, "--after", last, env=env).returncode == 0


@pytest.mark.parametrize("flag", ["--token", "--api-key"])
def test_a_credential_without_url_says_it_goes_with_url(env, flag):
    """It was dropped without a word: the command read Redis, and a user holding only a
    token was told Redis could not be reached."""
    plain = {k: v for k, v in env.items() if k != "FLOWKIT_URL"}
    result = cli("follow", "01M93X05HT2RHYGESAXCMYWMBZ", flag, "secret", env=plain)
    assert result.returncode == 2
    assert one_line(result) == (f"flowkit follow: {flag} goes with --url (or FLOWKIT_URL): "
                                "give the address of your app's flowkit API, e.g. --url "
                                f"http://127.0.0.1:8000/flowkit, or leave {flag} out to use "
                                "Redis.")


def test_follow_takes_a_good_after_as_events_does(env):
    run = wf.simple.start({"n": 1})
    run.result(20)
    first = json.loads(cli("events", run.id, "--json", env=env).stdout.splitlines()[0])
    result = cli("follow", run.id, "--after", first["id"], "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["type"] for line in result.stdout.splitlines()][0] != "run.queued"


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_a_redis_url_that_is_not_one_says_its_form(env, command):
    result = cli(*command, env={**env, "FLOWKIT_REDIS_URL": "notaurl"})
    assert result.returncode == 2
    assert one_line(result) == (
        f"flowkit {where(command)}: FLOWKIT_REDIS_URL=notaurl is not a Redis URL; write it as "
        "redis://host:port/db, e.g. redis://localhost:6379/0.")


def test_a_bad_redis_url_does_not_show_its_password(env):
    result = cli("status", "01X", env={**env, "FLOWKIT_REDIS_URL": "redis://:s3cret@host:99999/0"})
    assert result.returncode == 2
    assert "s3cret" not in one_line(result) and "is not a Redis URL" in result.stderr


def test_a_password_in_the_query_string_is_not_shown_either(env):
    """It printed ``?password=`` and ``?sentinel_password=`` values as given."""
    where = f"redis://127.0.0.1:{free_port()}/0"
    result = cli("runs", env={**env, "FLOWKIT_REDIS_URL": f"{where}?password=s3cret&db=0"})
    assert result.returncode == 1
    assert one_line(result) == (
        f"flowkit runs: cannot reach Redis at {where}?password=***&db=0; start it, or point "
        "FLOWKIT_REDIS_URL at your Redis.")


@pytest.mark.parametrize("url, shown", [
    ("redis://:p@ss@h:6379/0", "redis://***@h:6379/0"),
    ("redis://h/0?password=a@b&db=1", "redis://h/0?password=***&db=1"),
    ("redis+sentinel://u:p@h1:1,h2:2/svc?sentinel_password=x",
     "redis+sentinel://***@h1:1,h2:2/svc?sentinel_password=***"),
    ("sentinel://:p;w@h1:1/0;sentinel://:p;w@h2:2/0", "sentinel://***@h1:1/0;sentinel://***@h2:2/0"),
    ("redis://h/0?PASSWORD=z", "redis://h/0?PASSWORD=***"),
    ("redis://h/0?pass%77ord=z&db=0", "redis://h/0?pass%77ord=***&db=0"),
    ("redis://h/0?db=0&client_name=password", "redis://h/0?db=0&client_name=password"),
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    # a scheme mistyped: the password was shown ("redis//:s3cret://***@h")
    ("redis//:s3cret@h:6379/0", "redis//:***@h:6379/0"),
    ("redis:/:s3cret@h:6379/0", "redis:/:***@h:6379/0"),
    ("amqp//guest:s3cret@rabbit:5672//", "amqp//***@rabbit:5672//"),
    ("redis+sentinel//:s3cret@s1:26379/fk/0", "redis+sentinel//:***@s1:26379/fk/0"),
    ("guest:s3cret@rabbit:5672", "***@rabbit:5672"),
])
def test_redacted_hides_every_password_of_a_url(url, shown):
    assert redacted(url) == shown


def db_out_of_range(command: list[str], name: str, url: str) -> str:
    return (f"flowkit {where(command)}: the database index in {name}={url} is out of range for "
            "that Redis server (Redis has 16, 0-15, unless `databases` in redis.conf says "
            "more); use one it has, e.g. redis://host:port/0.")


def test_a_sentinel_url_s_database_out_of_range_is_shown_a_sentinel_url():
    """It was shown redis://host:port/0, as if the sentinels were to be left out."""
    from flowkit.cli import _db_message  # noqa: PLC0415 - the message alone

    said = _db_message("FLOWKIT_REDIS_URL", "redis+sentinel://s1:26379/mymaster/99")
    assert said.endswith("use one it has, e.g. redis+sentinel://host:port,.../service/0.")


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_a_database_the_server_does_not_have_says_so(env, redis_server, command):
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    result = cli(*command, env={**env, "FLOWKIT_REDIS_URL": url})
    assert result.returncode == 2
    assert one_line(result) == db_out_of_range(command, "FLOWKIT_REDIS_URL", url)


def test_run_with_the_broker_on_a_missing_database_does_not_say_redis_is_down(env, redis_server):
    """Without FLOWKIT_BROKER_URL the broker is FLOWKIT_REDIS_URL's Redis too: Celery's
    send fails on the database first, which said "cannot reach Redis"."""
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    bare = {k: v for k, v in env.items() if k != "FLOWKIT_BROKER_URL"}
    result = cli("run", "simple", "-i", "n=1", *APP, env={**bare, "FLOWKIT_REDIS_URL": url})
    assert result.returncode == 2
    assert one_line(result) == db_out_of_range(["run"], "FLOWKIT_REDIS_URL", url)
    broker = {**env, "FLOWKIT_BROKER_URL": url}
    result = cli("run", "simple", "-i", "n=1", *APP, env=broker)
    assert result.returncode == 2
    assert one_line(result) == db_out_of_range(["run"], "FLOWKIT_BROKER_URL", url)


BROKER_FORM = ("is not a broker URL; write a Redis one (redis://host:6379/0) or RabbitMQ's "
               "(amqp://user:password@host:5672/vhost), or unset it to use FLOWKIT_REDIS_URL.")
#: amqp:// (which the Cluster message advised) and a typo passed: the worker then died at
#: start with Celery's traceback, and `flowkit run` printed one.
BACKEND_FORM = ("is not a Redis URL; write one (redis://host:6379/0: Celery's result backend, "
                "through which chords join, is a Redis; RabbitMQ has none), or unset it to use "
                "the broker's Redis.")


@pytest.mark.parametrize("name, url, form", [
    ("FLOWKIT_BROKER_URL", "redis//host:6379/0", BROKER_FORM),
    ("FLOWKIT_BROKER_URL", "bogus://host/0", BROKER_FORM),
    ("FLOWKIT_RESULT_BACKEND", "amqp://guest:guest@127.0.0.1:5672//", BACKEND_FORM),
    ("FLOWKIT_RESULT_BACKEND", "reddis://h:6379/0", BACKEND_FORM),
    ("FLOWKIT_RESULT_BACKEND", "redis//h:6379/0", BACKEND_FORM),
])
def test_a_broker_or_result_backend_url_that_is_not_one_says_its_form(env, name, url, form):
    result = cli("run", "simple", "-i", "n=1", *APP, env={**env, name: url})
    assert result.returncode == 2
    assert one_line(result) == f"flowkit run: {name}={redacted(url)!r} {form}"


@pytest.mark.parametrize("command", [("run", "simple", "-i", "n=1", *APP), ("doctor", *APP)])
def test_a_rabbitmq_url_option_of_seconds_that_is_no_number_is_one_line(env, command):
    """?heartbeat=x was a ValueError traceback from the doctor and the worker."""
    url = "amqp://ops:pw@127.0.0.1:1/prod?heartbeat=x"
    result = cli(*command, env={**env, "FLOWKIT_BROKER_URL": url})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert one_line(result) == (
        f"flowkit {command[0]}: FLOWKIT_BROKER_URL='amqp://***@127.0.0.1:1/prod?heartbeat=x': its "
        "?heartbeat= is a number of seconds, not 'x'; fix it (heartbeat=60) or leave it out.")


@pytest.mark.parametrize("query, named", [
    ("sentinel_password=spw&ssl=true&ssl_cert_reqs=required", "ssl"),
    ("sentinel_pasword=spw", "sentinel_pasword"),
])
def test_a_sentinel_url_s_option_it_does_not_take_is_refused_not_dropped(env, query, named):
    """Every option but sentinel_password was dropped unsaid: ?ssl=true connected in plain
    text, and a misspelt sentinel_password was ignored (and shown in clear)."""
    url = f"redis+sentinel://:pw@127.0.0.1:26379/flowkit/0?{query}"
    result = cli("runs", env={**env, "FLOWKIT_REDIS_URL": url})
    assert result.returncode == 2
    assert one_line(result) == (
        f"flowkit runs: redis+sentinel://***@127.0.0.1:26379/flowkit/0: a Sentinel URL takes no "
        f"?{named}=, only ?sentinel_password= (TLS through sentinels is not supported): "
        "redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]"
        "[?sentinel_password=...].")
    assert "spw" not in result.stderr


def test_a_cluster_store_s_result_backend_is_advised_a_redis_only():
    """It advised RabbitMQ (amqp://...) for the result backend too, which has none."""
    from flowkit.errors import ConfigError  # noqa: PLC0415
    from flowkit.urls import not_a_cluster  # noqa: PLC0415

    with pytest.raises(ConfigError) as said:
        not_a_cluster("redis+cluster://h:7000", "FLOWKIT_RESULT_BACKEND")
    assert str(said.value).endswith("set FLOWKIT_RESULT_BACKEND to a plain Redis "
                                    "(redis://host:port/0).")
    with pytest.raises(ConfigError, match=r"a plain Redis \(redis://host:port/0\) or RabbitMQ"):
        not_a_cluster("redis+cluster://h:7000", "FLOWKIT_BROKER_URL")


def test_a_setting_that_cannot_work_is_one_line(env):
    result = cli("runs", env={**env, "FLOWKIT_MAX_RESTARTS": "lots"})
    assert result.returncode == 2
    assert one_line(result) == ("flowkit runs: FLOWKIT_MAX_RESTARTS='lots' is not a valid int; "
                                "unset it or give a value like 3.")


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_broker_out_of_reach_is_named_and_the_stored_run_is_not_lost(env, scheme):
    """It said "cannot reach Redis" with the store's URL (RabbitMQ), or printed Celery's
    result backend traceback after 20 s (a Redis broker of its own)."""
    url = f"{scheme}://flowkit:secret@127.0.0.1:{free_port()}/0"
    result = cli("run", "simple", "-i", "n=1", *APP, env={**env, "FLOWKIT_BROKER_URL": url})
    assert result.returncode == 1
    said = one_line(result)
    assert said.startswith(f"flowkit run: cannot reach the Celery broker at {scheme}://***@"
                           "127.0.0.1:"), said
    run_id = said.split("Run ")[1].split(" ")[0]
    assert said.endswith(f"; start it, or point FLOWKIT_BROKER_URL at yours. Run {run_id} is "
                         "stored: the reaper sends it once the broker is back (at its first "
                         "sweep past FLOWKIT_HEARTBEAT_LAPSE since the run was stored); do not "
                         "start it again.")
    assert flowkit.get_run(run_id).state in ("queued", "running", "succeeded")


@pytest.mark.parametrize("command", [["status"], ["trace"], ["events"], ["follow"],
                                     ["status", "--json"]])
def test_a_reader_that_stops_reading_ends_the_command_quietly(env, command):
    """``flowkit trace RUN | head -1``: the pipe is closed before the command writes; it
    ends as rich ends ``follow`` then, exit code 1 and nothing on stderr."""
    run = wf.retrying.start({"n": 1, "fail_times": 2})
    run.result(20)
    proc = subprocess.Popen([sys.executable, "-m", "flowkit.cli", command[0], run.id,
                             *command[1:]], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone
    stderr = proc.stderr.read()
    assert proc.wait(60) == 1, stderr
    assert stderr == ""


def test_follow_in_a_pipe_numbers_each_failed_attempt(env):
    run = wf.retrying.start({"n": 1, "fail_times": 2})
    run.result(20)
    result = cli("follow", run.id, env=env)
    assert result.returncode == 0, result.stderr
    failed = [line for line in result.stdout.splitlines() if "failed, retrying" in line]
    assert [line.split(" failed")[0] for line in failed] == [
        "step 1:t.flaky attempt 1", "step 1:t.flaky attempt 2"]


DEEP = "[" * 50_000 + "]" * 50_000  # past Python's recursion limit when parsed


@pytest.mark.parametrize("args, says", [
    (["run", "simple", "--input", DEEP, *APP], "flowkit run: --input is not JSON (nested too "
                                               "deeply)"),
    (["run", "simple", "-i", f"n:={DEEP}", *APP], "flowkit run: -i n:=[[[["),
    (["event", "key", DEEP], "flowkit event: "),
    (["schedules", "create", "simple", "--every", "60", "--input", DEEP, *APP],
     "flowkit schedules create: --input must be JSON"),
])
def test_json_nested_too_deeply_is_refused_in_one_line(env, args, says):
    result = cli(*args, env=env)
    assert result.returncode == 2
    assert one_line(result).startswith(says)
    assert flowkit.list_runs() == []


@pytest.mark.parametrize("args, says", [
    (["event", "key", "NaN"], "flowkit event: the data must be JSON (NaN is not JSON: use null "
                              "or a string)"),
    (["event", "key", '{"x": -Infinity}'], "flowkit event: the data must be JSON (-Infinity is "
                                           "not JSON"),
    (["input", "01X", "approval", "[1e400]"], "flowkit input: the value must be JSON (1e400 is "
                                              "a number past a float's range: pass it as a "
                                              "string)"),
    (["run", "simple", "-i", "n:=NaN", *APP], "flowkit run: -i n:=NaN: the value after := must "
                                              "be JSON (NaN is not JSON"),
    # a number as -i key=value reads it: Infinity and a traceback (int()'s digit limit)
    (["run", "simple", "-i", "n=1e400", *APP], "flowkit run: -i n=1e400: 1e400 is a number "
                                               "past a float's range: pass it as a string "
                                               "(n:='\"...\"')."),
    (["run", "simple", "-i", "n=" + "9" * 5000, *APP], "flowkit run: -i n=99999999999999999999"
                                                      "...: an integer of more than 4300 "
                                                      "digits: pass it as a string"),
    (["schedules", "create", "simple", "--every", "60", "--input", '{"n": NaN}', *APP],
     "flowkit schedules create: --input must be JSON"),
])
def test_nan_and_infinity_are_refused_as_not_json_in_one_line(env, args, says):
    """Python's json reads NaN and Infinity, which the API refuses: ``flowkit event k NaN``
    and ``flowkit input`` ended in a TypeError traceback."""
    result = cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert one_line(result).startswith(says)
    assert flowkit.list_runs() == []


LONE = '{"n": 1, "s": "\\ud800"}'  # JSON, but of no text: UTF-8 has no lone surrogate


@pytest.mark.parametrize("args, says", [
    (["run", "pacing", "--detach", "--input", LONE, *APP], "flowkit run: --input is not JSON (\\ud800 is "
                                               "half of a surrogate pair"),
    (["run", "pacing", "--detach", "-i", "n=1", "-i", 's:="\\udfff"', *APP],
     "flowkit run: -i s:=\"\\udfff\": the value after := must be JSON (\\udfff is half"),
    (["event", "key", LONE], "flowkit event: the data must be JSON (\\ud800 is half"),
    (["input", "01X", "approval", '["\\udc00"]'], "flowkit input: the value must be JSON "
                                                  "(\\udc00 is half"),
    (["schedules", "create", "pacing", "--every", "60", "--input", LONE, *APP],
     "flowkit schedules create: --input must be JSON (\\ud800 is half"),
    # not an escape: bytes of the command line that are not UTF-8 (Python reads 0xff as
    # \udcff), in JSON or in a -i key=value string
    (["run", "pacing", "--detach", "--input", '{"n": 1, "s": "\udcff"}', *APP],
     "flowkit run: --input is not JSON (it holds the byte 0xff, which is not UTF-8"),
    (["run", "pacing", "--detach", "-i", "n=1", "-i", "s=caf\udce9", *APP],
     "flowkit run: -i s=caf\\udce9: it holds the byte 0xe9, which is not UTF-8"),
])
def test_json_of_a_lone_surrogate_is_refused_in_one_line_as_the_api_refuses_it(env, args, says):
    """The API refuses it (400 invalid_json); the CLI ended in a traceback: locally a
    TypeError from storing it, over --url httpx's UnicodeEncodeError (test_cli_remote.py)."""
    result = cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert one_line(result).startswith(says)
    assert flowkit.list_runs() == [] and flowkit.schedules.list() == []


@pytest.mark.parametrize("args, says", [
    (["input", "01X", "k" * 100_000, "1"], "flowkit input: An input's name is 1 to 200 "
                                           "characters without '/', not 100000 characters."),
    (["status", "r" * 100_000], "flowkit status: No run with a 100000-character id (unknown"),
    (["schedules", "get", "s" * 5000], "flowkit schedules get: No schedule with a "
                                       "5000-character id."),
    (["schedules", "create", "simple", "--every", "60", "--id", "i" * 5000, *APP],
     "flowkit schedules create: --id of 5000 characters: 1 to 200"),
    (["run", "w" * 100_000, *APP], "flowkit run: No workflow named <100000 characters> (in "),
    (["schedules", "create", "w" * 100_000, "--every", "60", *APP],
     "flowkit schedules create: No workflow named <100000 characters> (in "),
    (["runs", "--before", "b" * 100_000], "flowkit runs: --before <100000 characters> is not "
                                          "a run id"),
])
def test_a_very_long_argument_is_not_echoed_whole(env, args, says):
    """A 100,000-character name came back twice in a 200 KB message."""
    result = cli(*args, env=env)
    assert result.returncode in (1, 2)
    assert one_line(result).startswith(says) and len(result.stderr) < 600, result.stderr[:300]


def test_a_listing_of_a_very_long_workflow_name_does_not_echo_it(env):
    result = cli("runs", "-w", "w" * 100_000, env=env)
    assert result.returncode == 0 and result.stdout == "No runs of workflow <100000 characters>.\n"


def test_a_tls_url_to_a_plain_redis_says_it_speaks_tls(env, redis_server):
    """The handshake times out against a plain Redis: "start it" sent the user to start a
    server that was running."""
    url = f"rediss://127.0.0.1:{redis_server.port}/1"
    result = cli("runs", env={**env, "FLOWKIT_REDIS_URL": url})
    assert result.returncode == 1
    assert one_line(result) == (
        f"flowkit runs: cannot reach Redis at {url}; start it, or point FLOWKIT_REDIS_URL at "
        "your Redis (rediss:// speaks TLS: if that Redis serves plain connections, write "
        "redis://).")


def test_an_empty_url_is_refused_not_taken_for_none(env):
    """``--url ''`` (an unset variable in a script) ran the command on Redis, without a
    word of it."""
    result = cli("run", "simple", "-i", "n=1", "--url", "", *APP, env=env)
    assert result.returncode == 2 and flowkit.list_runs() == []
    assert one_line(result).startswith("flowkit run: --url is empty: give the address of")


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_stdout_that_cannot_write_the_marks_gets_ascii_ones(env, encoding):
    """``flowkit doctor`` ended in a UnicodeEncodeError on its first mark (a Latin-1
    terminal, PYTHONIOENCODING=ascii); a run's own text shows "?" where it cannot."""
    out = {**env, "PYTHONIOENCODING": encoding}
    result = cli("doctor", *APP, env=out)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines()[0].startswith("+ app ")
    run = wf.simple.start({"n": 1})
    run.result(20)
    shown = cli("status", run.id, env=out)
    assert shown.returncode == 0 and re.match(rf"Run +{run.id}\n", shown.stdout), shown.stderr


def test_an_input_file_that_is_not_utf8_is_refused_in_one_line(env, tmp_path):
    path = tmp_path / "input.json"
    path.write_bytes(b"\xff\xfe\x00")
    result = cli("run", "simple", "--input", f"@{path}", *APP, env=env)
    assert result.returncode == 2
    assert one_line(result) == (f"flowkit run: --input @{path}: the file is not UTF-8 text; "
                                "JSON files are UTF-8.")


@pytest.mark.parametrize("name, value, says", [
    ("FLOWKIT_REDIS_URL", "redis://127.0.0.1:6379/abc", "the database after the port must be "
                                                        "a number"),
    ("FLOWKIT_BROKER_URL", "redis://127.0.0.1:6379/abc", "the database after the port must "
                                                         "be a number"),
    ("FLOWKIT_RESULT_BACKEND", "redis://127.0.0.1:6379/x1", "the database after the port must "
                                                            "be a number"),
    ("FLOWKIT_REDIS_SOCKET_TIMEOUT", "nan", "is not a valid float"),
    ("FLOWKIT_HEARTBEAT_LAPSE", "inf", "is not a valid float"),
])
def test_settings_no_client_can_use_are_one_line(env, name, value, says):
    """A database that is not a number went unnoticed by redis-py (database 0) and failed
    Celery's result backend with a traceback; nan failed redis-py's socket."""
    result = cli("run", "simple", "-i", "n=1", *APP, env={**env, name: value})
    assert result.returncode == 2
    said = one_line(result)
    assert said.startswith(f"flowkit run: {name}=") and says in said


@pytest.mark.parametrize("value", ["1e10", "1e308"])
def test_a_time_setting_longer_than_python_can_wait_is_one_line(env, value):
    """A socket cannot wait 1e10 s: redis-py's ``settimeout`` ended the command in an
    OverflowError traceback."""
    result = cli("runs", env={**env, "FLOWKIT_REDIS_SOCKET_TIMEOUT": value})
    assert result.returncode == 2
    assert one_line(result) == (
        "flowkit runs: FLOWKIT_REDIS_SOCKET_TIMEOUT (redis_socket_timeout=) is at most "
        f"9223372036 (about 292 years, the longest Python can wait), not {float(value)!r}.")


@pytest.mark.parametrize("host, says", [
    ("bogus.invalid", "no such address"),
    ("192.0.2.1", "cannot listen there"),  # TEST-NET-1: no interface of this machine
])
def test_dev_on_an_address_it_cannot_listen_on_is_one_line(env, host, says):
    result = cli("dev", *APP, "--host", host, env=env)
    assert result.returncode == 2
    said = one_line(result)
    assert said.startswith(f"flowkit dev: --host {host}: {says}") and "0.0.0.0" in said


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "soon"])
def test_drain_takes_seconds_only(env, value):
    result = cli("drain", "w@x", "--grace", value, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"flowkit drain: error: argument --grace: '{value}' is not a number of seconds (0 or "
        "more, e.g. 30)")


def test_drain_with_the_broker_out_of_reach_is_one_line(env):
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = cli("drain", "w@x", *APP, env={**env, "FLOWKIT_BROKER_URL": url})
    assert result.returncode == 1
    assert one_line(result) == (f"flowkit drain: cannot reach the Celery broker at {url}; "
                                "start it, or point FLOWKIT_BROKER_URL at yours.")


def test_an_unknown_workflow_names_those_the_app_has(env):
    result = cli("run", "nosuch", *APP, env=env)
    assert result.returncode == 1
    said = one_line(result)
    assert said.startswith("flowkit run: No workflow named 'nosuch' (in tests.workflows: ")
    assert "approval, backing-off, batched" in said and said.endswith("pass -A/--app with the module that imports "
                                              "your workflows.")
    typo = one_line(cli("run", "aproval", *APP, env=env))
    assert "(in tests.workflows: " in typo and "). Did you mean 'approval'? Check the name" in typo


@pytest.fixture
def locked_redis():
    with LocalRedis() as server:
        redis.Redis(port=server.port).config_set("requirepass", "right")
        yield server


def test_a_password_in_the_query_string_reaches_the_broker_too(env, locked_redis):
    """redis-py takes ``?password=``; kombu took it as a second password and every publish
    failed with a TypeError."""
    bare = {k: v for k, v in env.items() if k != "FLOWKIT_BROKER_URL"}
    url = f"redis://127.0.0.1:{locked_redis.port}/0?password=right"
    result = cli("run", "simple", "-i", "n=1", "--detach", "--json", *APP,
                 env={**bare, "FLOWKIT_REDIS_URL": url})
    assert result.returncode == 0, result.stderr
    broker = redis.Redis(port=locked_redis.port, password="right")
    # the queue's lists: kombu keeps one per priority step ("flowkit\x06\x169" for a
    # default run's first message, which carries its priority)
    queued = sum(broker.llen(key) for key in
                 ["flowkit", *(f"flowkit\x06\x16{step}" for step in range(10))])
    assert json.loads(result.stdout)["state"] == "queued" and queued == 1


def test_a_broker_that_refuses_the_password_says_where_it_goes(env, locked_redis):
    url = f"redis://:wrong@127.0.0.1:{locked_redis.port}/0"
    result = cli("run", "simple", "-i", "n=1", *APP, env={**env, "FLOWKIT_BROKER_URL": url})
    assert result.returncode == 2
    said = one_line(result)
    assert said.startswith("flowkit run: the Celery broker at redis://***@127.0.0.1:")
    assert ("refused its credentials; put the password in FLOWKIT_BROKER_URL, as "
            "redis://:PASSWORD@host:port/db") in said


@pytest.mark.parametrize("command", [["status", "01X"], ["runs"], ["workers"],
                                     ["schedules", "list"], ["event", "key"]])
def test_a_store_that_refuses_the_password_is_exit_2_from_every_command(env, locked_redis,
                                                                        command):
    """``run`` said exit 2 and every other command 1, for the same setting to fix."""
    url = f"redis://:wrong@127.0.0.1:{locked_redis.port}/0"
    result = cli(*command, env={**env, "FLOWKIT_REDIS_URL": url})
    assert result.returncode == 2
    where = " ".join(command[:2]) if command[0] == "schedules" else command[0]
    assert one_line(result).startswith(f"flowkit {where}: flowkit's Redis refused its "
                                       "credentials (")


def test_doctor_reports_a_password_the_store_refuses_as_its_redis_check(env, locked_redis):
    """It printed the one-line error and no report at all."""
    url = f"redis://:wrong@127.0.0.1:{locked_redis.port}/0"
    result = cli("doctor", *APP, "--json", env={**env, "FLOWKIT_REDIS_URL": url})
    assert result.returncode == 1, result.stderr
    [redis_check] = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "redis"]
    assert redis_check["level"] == "failure"
    assert redis_check["message"].startswith("Redis at redis://***@127.0.0.1:")
    assert "refused the credentials" in redis_check["message"]
    assert redis_check["fix"].startswith("Put the password in FLOWKIT_REDIS_URL")


def test_runs_before_what_is_not_a_run_id_is_a_usage_error(env):
    result = cli("runs", "--before", "nosuch", env=env)
    assert result.returncode == 2
    assert one_line(result) == ("flowkit runs: --before 'nosuch' is not a run id: pass the "
                                "last RUN of the page before (flowkit runs prints the "
                                "command).")


@pytest.mark.parametrize("command", [["follow"], ["events", "-f"]])
def test_following_from_past_a_run_s_events_is_a_usage_error_before_any_output(env, command):
    """It printed "following run ..." first, then the error, with exit code 1."""
    run = wf.simple.start({"n": 1})
    run.result(20)
    last = run.events()[-1].id
    past = f"{int(last.split('-')[0]) + 3_600_000}-0"  # an hour on: no stream gave that id
    result = cli(*command[:1], run.id, *command[1:], "--after", past, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_line(result) == (
        f"flowkit {command[0]}: Cursor {past} is past run {run.id}'s events (its last event is "
        f"{last}): resume from an id its stream gave you, or from the start.")


@pytest.mark.parametrize("url, celery_reads", [
    ("redis://h:6379/0?password=x", "redis://:x@h:6379/0"),
    ("redis://:@h:6379/0?password=x", "redis://:x@h:6379/0"),  # empty before the host
    ("redis://:p@h:6379/0?password=x", "redis://:p@h:6379/0"),  # the one before wins
    ("redis://h:6379/0?username=u&password=p%40ss&db=1", "redis://u:p%40ss@h:6379/0?db=1"),
    ("redis://h:6379/0", "redis://h:6379/0"),
])
def test_a_redis_url_s_query_credentials_move_where_celery_reads_them(url, celery_reads):
    """kombu added the query's password to the one it parsed and failed every publish."""
    assert credentials_in_userinfo(url) == celery_reads


def test_a_sentinel_service_name_the_sentinels_do_not_monitor_says_so(env, tmp_path):
    """It said "cannot reach Redis ...; start it" though the sentinels answered."""
    import shutil  # noqa: PLC0415

    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n")
    sentinel = subprocess.Popen([shutil.which("redis-server"), str(conf), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(port), 10, "the sentinel to listen")
        url = f"redis+sentinel://127.0.0.1:{port}/nosuchservice/0"
        result = cli("runs", env={**env, "FLOWKIT_REDIS_URL": url,
                                  "FLOWKIT_REDIS_RETRY_SECONDS": "1"})
        assert result.returncode == 1
        assert one_line(result) == (
            f"flowkit runs: the sentinels of {url} name no primary of that service that is up: "
            "check the service name in FLOWKIT_REDIS_URL (redis-cli -p 26379 SENTINEL MASTERS "
            "lists those they monitor), or wait for a failover to end.")
    finally:
        sentinel.kill()
        sentinel.wait(10)


def test_a_sentinel_url_that_names_a_redis_server_says_it_is_no_sentinel(env, redis_server):
    """The data's port written for the sentinels' (6379 for 26379) was said as a service
    name to check."""
    url = f"redis+sentinel://127.0.0.1:{redis_server.port}/flowkit/0"
    result = cli("runs", env={**env, "FLOWKIT_REDIS_URL": url, "FLOWKIT_REDIS_RETRY_SECONDS": "1"})
    assert result.returncode == 1
    assert one_line(result) == (
        f"flowkit runs: the servers of {url} answered as no sentinel does (they know no "
        "SENTINEL command): list the sentinels' addresses in FLOWKIT_REDIS_URL (port 26379 by "
        "default), not the Redis servers'.")


def test_sentinels_none_of_which_answers_are_said_to_be_unreachable(env):
    """redis-py says "no master found" when no sentinel could be reached either, which read
    "check the service name" for sentinels that were down."""
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/flowkit/0"
    result = cli("runs", env={**env, "FLOWKIT_REDIS_URL": url, "FLOWKIT_REDIS_RETRY_SECONDS": "0.3"})
    assert result.returncode == 1
    assert one_line(result) == (f"flowkit runs: cannot reach Redis at {url}; start it, or point "
                                "FLOWKIT_REDIS_URL at your Redis.")


def _answers(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).ping()
    except redis.ConnectionError:
        return False


@pytest.mark.parametrize("name", ["FLOWKIT_WEB_THREADS", "FLOWKIT_WEB_WORKERS"])
def test_a_web_server_count_that_is_not_one_is_one_line_and_exit_2(env, name):
    """It was gunicorn's "Failed to read config file" with a ValueError traceback."""
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    result = subprocess.run([gunicorn, "-c", "python:flowkit.api.gunicorn_config",
                             "flowkit.api.devapp:app"], env={**env, name: "abc"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert one_line(result) == (f"flowkit web refuses to start: {name}='abc' is a whole number "
                                ">= 1; unset it or give a value like "
                                f"{1200 if name.endswith('THREADS') else 1}.")


def test_ctrl_c_while_flowkit_imports_ends_the_command_at_once_by_the_signal(flowkit_env):
    """A Ctrl-C in the command's first half second, while flowkit imports, printed a
    traceback of thirty lines ending in KeyboardInterrupt (or a library's bare ``except:``
    swallowed it and the command ran on). ``-X importtime`` says when the import is under
    way: marshmallow is among its first modules, Celery far later."""
    import signal

    command = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "_flowkit_cli", "runs"],
        env={**os.environ, **flowkit_env}, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        # as a shell's foreground command has it (a session run in the background, as
        # scripts/test runs the long tests, passes SIGINT on ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    imported = []  # "import time:  self [us] | cumulative | imported package"
    for line in command.stderr:
        imported.append(line.split("|")[-1].strip())
        if imported[-1] == "marshmallow":
            command.send_signal(signal.SIGINT)
            break
    rest = command.stderr.read()
    command.wait(30)
    assert imported[-1] == "marshmallow" and "celery" not in imported  # mid-import
    lines = [line for line in rest.splitlines() if not line.startswith("import time:")]
    # ended by SIGINT itself, as a C program is (the shell says 130), with nothing said
    assert lines == [] and command.returncode == -signal.SIGINT, (command.returncode, lines)


def test_the_flowkit_command_starts_at_the_launcher():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="flowkit")
    assert script.value == "_flowkit_cli:main"


def test_a_full_stdout_is_one_line_and_a_detached_run_s_id_is_kept(env):
    """``> /dev/full`` ended in an OSError traceback; `run --detach` started its run and
    printed neither its id nor the line to follow it."""
    with open("/dev/full", "w") as full:
        status = subprocess.run([sys.executable, "-m", "flowkit.cli", "runs", "--json"],
                                env=env, stdout=full, stderr=subprocess.PIPE, text=True,
                                timeout=60)
        detached = subprocess.run(
            [sys.executable, "-m", "flowkit.cli", "run", "simple", "-i", "n=1", *APP,
             "--detach"], env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    for result in (status, detached):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.splitlines()[-1] == (
            "flowkit: cannot write its output (No space left on device): free some space, "
            "or send it elsewhere.")
    started = re.match(r"run (\w{26}) queued \(simple\); follow it: ", detached.stderr)
    assert started, detached.stderr
    assert flowkit.get_run(started.group(1)).wait(20).state == "succeeded"


def test_a_closed_stdout_is_no_traceback(env):
    result = subprocess.run(f"exec {sys.executable} -m flowkit.cli runs >&-", shell=True,
                            env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")


def test_a_module_raising_a_base_exception_of_its_own_is_one_line(env, tmp_path):
    (tmp_path / "halting.py").write_text(
        "class Halt(BaseException):\n    pass\n\n\nraise Halt('not today')\n")
    result = subprocess.run([sys.executable, "-m", "flowkit.cli", "doctor", "-A", "halting"],
                            env={**env, "PYTHONPATH": f"{tmp_path}:{ROOT}"}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    assert "importing 'halting' raised Halt: not today (at halting.py:5)" in result.stderr
