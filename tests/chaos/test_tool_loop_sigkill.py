"""A worker SIGKILLed in the middle of a 10-turn tool loop (flowkit.llm.run_tool_loop, and
an OpenAI Agents SDK agent run by flowkit.llm.agents_sdk.run_agent or run_agent_streamed): the restarted step replays the
completed model turns and tool calls from their checkpoints and carries on, so the model
is asked and the tool runs once per turn, counted by their side effects (the fake server's
requests, the tool's Redis list), except the one tool call in flight at the kill."""

from __future__ import annotations

import pytest

from flowkit.store import get_store
from flowkit.testing import FakeLLMServer, WorkerProcess
from tests.chaos.test_sigkill import detection_bound
from tests.conftest import ROOT
from tests.llm import workflows as wf

#: In the long session, beside the rest: each waits out a lease lapse after its SIGKILL
#: (7 s each).
pytestmark = pytest.mark.long

PROMPT = "weather in ten cities, one at a time"


@pytest.fixture
def llm_server():
    with FakeLLMServer(tool_turns=10) as server:
        yield server


@pytest.mark.parametrize(
    ("workflow", "path"),
    [("crash_looping", "/v1/chat/completions"), ("crash_agent", "/v1/responses"),
     ("crash_streamed_agent", "/v1/responses")],
    ids=["run_tool_loop", "agents_sdk", "agents_sdk_streamed"],
)
def test_a_killed_tool_loop_resumes_after_its_last_completed_call(
    store, deployment, llm_server, flowkit_env, workflow, path
):
    # the workers' deployment is their queue: beat's reaper goes to its ".reaper" queue
    env = {
        **flowkit_env,
        "TEST_LLM_PRIMARY": llm_server.base_url,
        "TEST_LLM_BACKUP": llm_server.base_url,
        "FLOWKIT_DEFAULT_QUEUE": wf.TOOL_LOOP_QUEUE,
    }
    a = WorkerProcess(
        "tests.llm.app", name="loop-a", queues=(wf.TOOL_LOOP_QUEUE,), env=env, cwd=ROOT
    )
    deployment.workers.append(a)  # stopped with the deployment, whatever happens
    a.start()
    deployment.beat(FLOWKIT_DEFAULT_QUEUE=wf.TOOL_LOOP_QUEUE)
    redis = get_store().redis
    run = getattr(wf, workflow).start({"prompt": PROMPT, "max_turns": 12})
    redis.set(f"hold-fifth:{run.id}", 1)  # read by the fifth tool call, after four turns
    assert redis.blpop(f"waiting:{run.id}:lookup", timeout=60) is not None, (
        "the fifth tool call never ran"
    )
    assert redis.llen(f"toolcalls:{run.id}") == 5
    b = WorkerProcess(
        "tests.llm.app", name="loop-b", queues=(wf.TOOL_LOOP_QUEUE,), env=env, cwd=ROOT
    )
    deployment.workers.append(b)
    b.start()
    a.kill()

    done = run.wait(detection_bound() + 60)
    assert done.state == "succeeded", (done.error, [(e.type, e.data) for e in run.events()][-6:])
    assert done.output["turns"] == 11 and done.output["calls"] == 10
    assert done.restarts == 1
    # the tool: calls 1-4 once (attempt 1), the fifth twice (killed, then again), 6-10 once
    executions = [int(x) for x in redis.lrange(f"toolcalls:{run.id}", 0, -1)]
    assert executions == [1] * 5 + [2] * 6
    # the model: eleven turns, each asked once; none replayed after the restart
    asked = [r for r in llm_server.stats.requests if r["path"] == path and r["status"] == 200]
    assert len(asked) == 11
