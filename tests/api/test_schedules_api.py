"""Schedules over HTTP (``/schedules``), and the same schedules seen from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import quote

import pytest

import flowkit


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowkit.cli", "schedules", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_a_schedule_is_created_paused_resumed_and_deleted_over_http(client):
    created = client.post("/schedules", json={"workflow": "simple", "cron": "0 9 * * 1-5",
                                              "timezone": "Europe/Paris", "input": {"n": 1},
                                              "id": "acme-daily"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["id"], body["paused"], body["timezone"]) == ("acme-daily", False, "Europe/Paris")
    assert [s["id"] for s in client.get("/schedules").json()["schedules"]] == ["acme-daily"]
    paused = client.post("/schedules/acme-daily/pause").json()
    assert paused["paused"] is True and paused["next_at"] is None
    resumed = client.post("/schedules/acme-daily/resume").json()
    assert resumed["paused"] is False and resumed["next_at"] > 0
    assert client.delete("/schedules/acme-daily").status_code == 204
    missing = client.get("/schedules/acme-daily")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert flowkit.schedules.list() == []


def test_bad_schedules_get_field_messages(client):
    both = client.post("/schedules", json={"workflow": "simple", "cron": "* * * * *", "every": 5})
    assert both.status_code == 400 and "cron" in both.json()["error"]["fields"]
    cron = client.post("/schedules", json={"workflow": "simple", "cron": "every day"})
    assert cron.status_code == 400 and "cron" in cron.json()["error"]["fields"]
    zone = client.post("/schedules", json={"workflow": "simple", "every": 60, "input": {"n": 1},
                                           "timezone": "Mars/Olympus"})
    assert zone.status_code == 400 and "Mars/Olympus" in zone.json()["error"]["fields"]["timezone"][0]
    minute = client.post("/schedules", json={"workflow": "simple", "cron": "61 * * * *",
                                             "input": {"n": 1}})
    assert minute.status_code == 400 and "61" in minute.json()["error"]["fields"]["cron"][0]
    unknown = client.post("/schedules", json={"workflow": "nope", "every": 60})
    assert unknown.status_code == 404
    [said] = unknown.json()["error"]["fields"]["workflow"]  # the body's field, named
    assert said.startswith("No workflow named 'nope'. Served here: ")
    loose = client.post("/schedules", json={"workflow": "simple", "every": "60",
                                            "catchup": "yes", "input": {"n": 1}})
    assert loose.status_code == 400  # marshmallow alone took both: JSON says what it means
    # in JSON's words ("60", not Python's '60'): the client sent JSON
    assert loose.json()["error"]["fields"] == {"every": ['"60" is not of type number'],
                                               "catchup": ['"yes" is not of type boolean']}
    no_input = client.post("/schedules", json={"workflow": "simple", "every": 60})
    assert no_input.status_code == 400  # under "input", not the body's "_schema"
    assert no_input.json()["error"]["fields"] == {"input": {"_schema": [
        "Required: the workflow's input (a JSON object), which each run it starts takes."]}}
    null_input = client.post("/schedules", json={"workflow": "simple", "every": 60,
                                                 "input": None})
    assert null_input.json()["error"]["fields"] == {"input": {"_schema": [
        "Input must be a JSON object, not null: give one ({} when every field has a default)."]}}
    extra = client.post("/schedules", json={"workflow": "simple", "every": 60,
                                            "input": {"n": 1}, "extra": 1})
    assert extra.json()["error"]["fields"] == {"extra": ["Unknown field."]}  # said once
    assert flowkit.schedules.list() == []


def test_a_schedule_whose_id_has_a_slash_is_reached_over_http(client):
    """A cron line's default id keeps its slashes (simple@*/5_*_*_*_*), as may an id given."""
    for body in ({"cron": "*/5 * * * *"}, {"every": 60, "id": "acme/daily"}):
        created = client.post("/schedules", json={"workflow": "simple", "input": {"n": 1}, **body})
        assert created.status_code == 201, created.text
        path = "/schedules/" + quote(created.json()["id"], safe="")
        assert client.get(path).json()["id"] == created.json()["id"]
        assert client.post(path + "/pause").json()["paused"] is True
        assert client.post(path + "/resume").json()["paused"] is False
        assert client.delete(path).status_code == 204
        assert client.get(path).status_code == 404
    assert flowkit.schedules.list() == []


def test_a_schedule_made_over_http_is_deleted_by_the_cli_and_back(client, flowkit_env):
    client.post("/schedules", json={"workflow": "simple", "every": 60, "input": {"n": 1},
                                     "id": "via-http"})
    listed = cli("list", env=flowkit_env)
    assert listed.returncode == 0 and "via-http" in listed.stdout
    deleted = cli("delete", "via-http", env=flowkit_env)
    assert deleted.returncode == 0, deleted.stderr
    assert client.get("/schedules/via-http").status_code == 404
    made = cli("create", "simple", "--every", "30", "--input", "{\"n\": 1}", "--id", "via-cli", "-A", "tests.workflows",
               env=flowkit_env)
    assert made.returncode == 0, made.stderr
    assert client.get("/schedules/via-cli").json()["every"] == 30
    assert client.delete("/schedules/via-cli").status_code == 204
    assert cli("get", "via-cli", env=flowkit_env).returncode == 1


def test_cron_lines_celery_cannot_parse_get_field_messages(client):
    """Celery's crontab raises its own ParseException for these, which was a 500."""
    for line in ["-- - - - -", ", , , , ,", "*/ * * * *"]:
        answer = client.post("/schedules", json={"workflow": "simple", "cron": line,
                                                 "input": {"n": 1}})
        assert answer.status_code == 400, (line, answer.text)
        assert line in answer.json()["error"]["fields"]["cron"][0]
    assert flowkit.schedules.list() == []


def test_a_schedule_id_its_own_actions_would_shadow_is_refused(client):
    """``x/pause`` was stored, then no route reached it: it fired every minute for good; so
    did ``/x`` and ``a//b``, which the server's path rules redirect elsewhere (308), and
    ``.``, ``..`` and ``a/../b``, whose dot segments clients drop from a URL."""
    for schedule_id in ["x/pause", "a/b/resume", "/x", "a//b", ".", "..", "a/../b", "a/."]:
        answer = client.post("/schedules", json={"workflow": "simple", "every": 60,
                                                 "input": {"n": 1}, "id": schedule_id})
        assert answer.status_code == 400
        assert answer.json()["error"]["fields"]["id"] == [
            "1 to 200 printable ASCII characters, no spaces, no // and no leading /, no . or "
            ".. between slashes, not ending in /pause or /resume."]
    assert flowkit.schedules.list() == []


def test_a_cron_line_or_id_ending_in_a_newline_is_refused(client):
    """``$`` matched before a trailing newline: the cron line's default id ended in one, no
    URL reached it (404 to GET, pause and DELETE) and it fired for good."""
    for body, field in [({"cron": "*/5 * * * *\n"}, "cron"), ({"every": 60, "id": "daily\n"}, "id")]:
        answer = client.post("/schedules", json={"workflow": "simple", "input": {"n": 1}, **body})
        assert answer.status_code == 400, answer.text
        assert list(answer.json()["error"]["fields"]) == [field]
    assert flowkit.schedules.list() == []


def test_a_cron_line_whose_default_id_no_url_could_reach_is_refused(client):
    """A cron line of thousands of characters made a default id of as many: stored, GET,
    pause and DELETE of it were the web server's 414, and it started runs for good."""
    line = "0 0 " + ",".join(["2"] * 3000) + " * *"
    answer = client.post("/schedules", json={"workflow": "simple", "cron": line,
                                             "input": {"n": 1}})
    assert answer.status_code == 400, answer.text
    [said] = answer.json()["error"]["fields"]["cron"]
    assert said.startswith("This schedule's default id, the workflow's name and its cron "
                           "line ('simple@0_0_2,2,")
    assert said.endswith(f"{len('simple@' + line.replace(' ', '_'))} characters), is over 200 "
                         "characters: give the schedule an id (id=..., --id, \"id\" in a "
                         "POST).")
    assert flowkit.schedules.list() == []
    # with an id of its own, the same line is a schedule its paths reach
    made = client.post("/schedules", json={"workflow": "simple", "cron": line, "id": "long",
                                           "input": {"n": 1}})
    assert made.status_code == 201, made.text
    assert client.delete("/schedules/long").status_code == 204


def test_a_schedule_without_its_concurrency_key_s_field_is_refused(client):
    """Stored, each tick failed in the reaper with only a log line to say so."""
    answer = client.post("/schedules", json={"workflow": "per_tenant", "every": 60,
                                             "input": {}})
    assert answer.status_code == 400
    assert list(answer.json()["error"]["fields"]["input"]) == ["tenant"]
    assert flowkit.schedules.list() == []


def test_a_schedule_s_input_is_held_to_the_published_schema_as_a_run_s(client):
    """marshmallow alone stored 2.5 for an integer as 2, and "7" as 7: each tick would have
    started a run the API refuses."""
    for value, says in [(2.5, "2.5 is not of type integer"), ("7", '"7" is not of type '
                                                                   "integer")]:
        answer = client.post("/schedules", json={"workflow": "simple", "every": 60,
                                                 "input": {"n": value}})
        assert answer.status_code == 400
        assert answer.json()["error"]["fields"]["input"] == {"n": [says]}
        assert client.post("/workflows/simple/runs", json={"n": value}).status_code == 400
    assert flowkit.schedules.list() == []


@pytest.mark.parametrize("overlap", ["skip", "buffer", "cancel"])
def test_a_schedule_s_overlap_is_taken_over_http_and_checked(client, overlap):
    made = client.post("/schedules", json={"workflow": "simple", "every": 60, "input": {"n": 1},
                                           "id": "no-overlap", "overlap": overlap})
    assert made.status_code == 201 and made.json()["overlap"] == overlap
    assert client.get("/schedules/no-overlap").json()["overlap"] == overlap
    bad = client.post("/schedules", json={"workflow": "simple", "every": 60, "input": {"n": 1},
                                          "overlap": "sometimes"})
    assert bad.status_code == 400 and "overlap" in bad.json()["error"]["fields"]


def test_resuming_a_stored_schedule_whose_zone_this_host_lacks_is_a_409_saying_what_to_do(client):
    """It was a 500 (its next tick raised ConfigError, which the API did not map)."""
    from flowkit.store import get_store

    flowkit.schedules.create("simple", cron="0 9 * * *", input={"n": 1}, id="old-zone")
    store = get_store()
    definition, _ = store.schedule("old-zone")
    store.put_schedule({**definition, "timezone": "US/Pacific-New"}, None)  # stored paused
    answer = client.post("/schedules/old-zone/resume")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["message"].endswith(
        "unknown time zone 'US/Pacific-New'; use an IANA name like 'Europe/Paris' or 'UTC'; "
        "delete it and create it again.")
    assert client.delete("/schedules/old-zone").status_code == 204


def test_the_same_schedule_created_again_keeps_its_next_tick_and_its_pause(client):
    """A create() at each deploy or start (or a retried POST) made it anew: its next tick
    moved a whole interval past each call, so one re-made more often than its interval
    never fired, and a schedule an operator paused was resumed."""
    first = flowkit.schedules.create("simple", every=3600, input={"n": 1}, id="hourly")
    again = client.post("/schedules", json={"workflow": "simple", "every": 3600,
                                            "input": {"n": 1}, "id": "hourly"})
    assert again.status_code == 201, again.text
    assert (again.json()["next_at"], again.json()["anchor"]) == (first["next_at"], first["anchor"])
    flowkit.schedules.pause("hourly")
    assert flowkit.schedules.create("simple", every=3600, input={"n": 1}, id="hourly")["paused"]
    assert flowkit.schedules.get("hourly")["paused"] is True
    changed = flowkit.schedules.create("simple", every=3600, input={"n": 2}, id="hourly")
    assert changed["input"] == {"n": 2} and changed["paused"] is False  # replaced, as before
    flowkit.schedules.delete("hourly")
