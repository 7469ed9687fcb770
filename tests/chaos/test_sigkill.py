"""A worker SIGKILLed in the middle of a long step: the run resumes elsewhere and succeeds."""

from __future__ import annotations

import time

from flowkit import config
from flowkit.engine import trace
from flowkit.events import superseded_attempts
from tests.chaos.conftest import of_type, open_gate, reruns, side_effects, waiting
from tests.chaos.workflows import held

HOLD = "1:chaos.hold"


def detection_bound() -> float:
    """Lease lapse + one reaper period, plus slack for beat, the broker and a loaded machine."""
    s = config.get_settings()
    return s.heartbeat_lapse + 2 * s.reaper_interval + 6.0


def test_sigkilled_worker_mid_step_resumes_on_another_within_the_bound(chaos_app, deployment):
    a = deployment.worker("a")
    deployment.beat()
    run = held.start({"n": 0, "chunks": 2, "pause": 0.01})
    first = waiting(run)
    assert first == {"attempt": 1, "worker": first["worker"]}
    assert first["worker"].startswith("a@")
    deployment.worker("b")

    killed = time.monotonic()
    a.kill()
    second = waiting(run, timeout=detection_bound() + 10)
    resumed_after = time.monotonic() - killed

    assert second["attempt"] == 2 and second["worker"].startswith("b@")
    assert resumed_after < detection_bound(), f"resumed {resumed_after:.1f}s after the kill"
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded", done.error
    assert done.output["n"] == 3 and done.restarts == 1

    # checkpointed steps ran exactly once; the step in flight ran again, to completion once
    assert side_effects(run, "started") == {"0:chaos.work": 1, HOLD: 2, "2:chaos.work": 1}
    assert side_effects(run, "finished") == {"0:chaos.work": 1, HOLD: 1, "2:chaos.work": 1}
    assert reruns(run) == 0
    history = run.events()
    [restarted] = of_type(history, "run.restarted")
    assert "worker lost" in restarted.data["reason"] and HOLD in restarted.data["reason"]
    assert restarted.data["superseded"] == [{"step": HOLD, "attempt": 1, "worker": first["worker"]}]
    assert superseded_attempts(history) == {(HOLD, 1)}
    # the same from the JSON the SSE and WebSocket streams send (it raised AttributeError)
    assert superseded_attempts([e.to_dict() for e in history]) == {(HOLD, 1)}
    assert [e.type for e in history].count("run.succeeded") == 1 and history[-1].terminal

    # the killed attempt never closed its span: the trace ends it, saying why
    spans = {(s["step"], s["attempt"]): s for s in trace.read(run.id) if s["kind"] == "step"}
    killed_span = spans[(HOLD, 1)]
    assert killed_span["status"] == "superseded" and "worker lost" in killed_span["reason"]
    assert killed_span["end"] == restarted.data["ts"] >= killed_span["start"]
    assert spans[(HOLD, 2)]["status"] == "ok"
    assert [s for s in spans.values() if s["status"] == "running"] == []
