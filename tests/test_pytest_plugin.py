"""flowkit.testing.pytest_plugin, as a user's project loads it: a real pytest session in a
subprocess, on a project of its own, whose conftest.py and tests import the workflows at
their top (which tied the Celery app to the Redis the environment named: the user's
``flowkit dev``'s, whose worker took the test's step, or none at all)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import redis

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

FLOWS = '''
from marshmallow import fields

import flowkit

app = flowkit.create_celery_app("flows", imports=["flows"])


@flowkit.component
def ask(data: dict) -> dict:
    answer = flowkit.wait_for_input("approval", schema={"ok": fields.Boolean(required=True)})
    return {"ok": answer["ok"], "n": data["n"]}


@flowkit.component
def split(data: dict) -> list:
    return list(range(data["n"]))


@flowkit.component(name="flows.square")
def square(item: int) -> int:
    return item * item


@flowkit.component
def ask_llm(data: dict) -> str:
    from flowkit.llm import client_from_env

    reply = client_from_env().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}])
    return reply.choices[0].message.content


approval = flowkit.Workflow("approval", [ask])
asking = flowkit.Workflow("asking", [ask_llm])
squares = flowkit.Workflow("squares", [split, flowkit.fan_out(square)])
'''

CONFTEST = '''
import flows  # noqa: F401 - at the top, as users write it
'''

TESTS = '''
import flowkit

from flows import approval, asking, squares


def test_a_run_waits_and_an_answer_finishes_it(flowkit_worker, flowkit_store):
    run = approval.start({"n": 2})
    for event in flowkit.follow(run.id):
        if event.type == "run.waiting":
            break
    flowkit.send_input(run.id, "approval", {"ok": True})
    assert run.result(20) == {"ok": True, "n": 2}


def test_a_fan_out_runs_each_item(flowkit_worker, flowkit_store):
    assert squares.start({"n": 4}).result(20) == [0, 1, 4, 9]
    assert len(flowkit.list_runs()) == 1  # the store was emptied before this test


def test_an_llm_call_is_answered_by_the_local_fake(flowkit_worker, flowkit_store, flowkit_llm):
    assert asking.start({}).result(20)  # the environment's OpenAI key and URL are not used
    assert flowkit_llm is not None
'''


def test_a_project_s_tests_run_its_workflows_on_a_private_redis(tmp_path, redis_server):
    (tmp_path / "flows.py").write_text(textwrap.dedent(FLOWS))
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_flows.py").write_text(textwrap.dedent(TESTS))
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\naddopts = "-p flowkit.testing.pytest_plugin"\n')
    # the environment names the developer's own Redis (flowkit dev's): nothing may land there
    theirs = f"redis://127.0.0.1:{redis_server.port}/7"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWKIT_", "PYTEST"))}
    env.update(FLOWKIT_REDIS_URL=theirs, FLOWKIT_BROKER_URL=theirs,
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),  # this checkout's flowkit
               # a developer's real key and URL: no test may reach them (nothing listens)
               OPENAI_API_KEY="sk-not-for-tests", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    redis.Redis(port=redis_server.port, db=7).flushdb()
    session = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert session.returncode == 0, session.stdout + session.stderr
    assert "3 passed" in session.stdout
    assert "DATA AT RISK" not in session.stdout + session.stderr  # its Redis has AOF on
    assert redis.Redis(port=redis_server.port, db=7).dbsize() == 0


def test_without_redis_server_the_session_says_what_to_install_in_one_line(tmp_path):
    """It was a 63-line traceback whose advice (set FLOWKIT_REDIS_URL) the plugin overrides."""
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWKIT_", "PYTEST"))}
    env.update(PATH=os.path.dirname(sys.executable),  # no redis-server on it
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    session = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-p", "flowkit.testing.pytest_plugin"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert session.returncode == 4, session.stdout + session.stderr  # pytest's usage error
    assert "Traceback" not in session.stdout + session.stderr
    assert ("redis-server, which is not installed: run `apt-get install redis-server`, or set "
            "FLOWKIT_TEST_REDIS_URL=redis://host:port") in session.stderr, session.stderr


@pytest.mark.parametrize("store_db, says", [
    (1, "beats into its database 1, which the tests empty"),
    # flowkit dev's and the default URL's: the guard looked at database 1 alone, and the
    # dev worker took the tests' steps from the broker they share
    (0, "beats into its database 0, where the tests send their steps"),
])
def test_a_redis_of_yours_that_a_live_worker_uses_stops_the_session_untouched(tmp_path, store_db,
                                                                              says):
    """FLOWKIT_TEST_REDIS_URL naming the Redis a `flowkit dev` or a deployment uses: the
    tests emptied its store and its worker took their steps."""
    from flowkit.testing import LocalRedis, WorkerProcess
    from tests.conftest import wait_until

    (tmp_path / "flows.py").write_text(textwrap.dedent(FLOWS))
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_flows.py").write_text(textwrap.dedent(TESTS))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWKIT_", "PYTEST"))}
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    with LocalRedis() as theirs:
        base = f"redis://127.0.0.1:{theirs.port}"
        deployment = {**env, "FLOWKIT_REDIS_URL": f"{base}/{store_db}",
                      "FLOWKIT_BROKER_URL": f"{base}/0", "PYTHONPATH": path}
        with WorkerProcess("flows", name="dev", env=deployment, cwd=str(tmp_path)):
            store = redis.Redis.from_url(f"{base}/{store_db}")
            wait_until(lambda: any(m.startswith(b"dev@") for m in store.zrange("flowkit:workers", 0, -1)),
                       timeout=20, message="the worker's first beat")
            store.set("their-data", "1")
            session = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "-p", "flowkit.testing.pytest_plugin"],
                cwd=tmp_path, env={**env, "PYTHONPATH": path, "FLOWKIT_TEST_REDIS_URL": base},
                capture_output=True, text=True, timeout=180)
            said = session.stdout + session.stderr
            assert session.returncode == pytest.ExitCode.USAGE_ERROR, said
            assert "FLOWKIT_TEST_REDIS_URL" in said and "worker dev@" in said, said
            assert says in said, said
            assert "Traceback" not in said
            assert store.get("their-data") == b"1"  # not emptied


@pytest.mark.parametrize("url, store, broker", [
    ("redis://h:6379", "redis://h:6379/1", "redis://h:6379/0"),
    ("redis://h:6379/5", "redis://h:6379/1", "redis://h:6379/0"),  # it made database 51
    ("rediss://:pw@h:6380/?ssl_cert_reqs=none", "rediss://:pw@h:6380/1?ssl_cert_reqs=none",
     "rediss://:pw@h:6380/0?ssl_cert_reqs=none"),
])
def test_a_redis_of_your_own_gives_its_databases_1_and_0(url, store, broker):
    from flowkit.testing.pytest_plugin import urls_for_tests

    assert urls_for_tests(url) == (store, broker)
