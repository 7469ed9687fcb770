"""The frontier of a run: the canvas of what remains, compiled from its checkpoints. Read
off the canvas itself (which tasks it would send, with which keys), no broker needed."""

from __future__ import annotations

import flowkit
from flowkit import component, continue_with, fan_out, parallel
from flowkit.engine.broker import CONTINUED_PRIORITY
from flowkit.engine.canvas import _leaves
from flowkit.engine.frontier import compile_frontier
from flowkit.serialization import dumps


@component(name="f.a")
def a(x):
    return x


@component(name="f.b")
def b(x):
    return x


@component(name="f.billing: charge/card")
def charge_card(x):
    return x


@component(name="f.loop")
def loop(x):
    return continue_with(loop, x)


chain_wf = flowkit.Workflow("f.chain", [a, b, a, b])
branches_wf = flowkit.Workflow("f.branches", [a, parallel(b, [a, b]), a])
fanned_wf = flowkit.Workflow("f.fanned", [a, fan_out(b), a])
looping_wf = flowkit.Workflow("f.looping", [a, loop, b])


def sent(workflow, checkpoints: dict) -> tuple[list[tuple[str, str | None]], object]:
    """(task name, step key) of every message the frontier would send, and its input."""
    canvas, first_input = compile_frontier(
        workflow, "run-1", 1, {"in": 0}, {k: dumps(v) for k, v in checkpoints.items()}, "q")
    leaves = list(_leaves(canvas))
    assert all(leaf.options.get("priority") == CONTINUED_PRIORITY for leaf in leaves)
    return [(leaf.task, leaf.kwargs.get("key")) for leaf in leaves], first_input


def test_a_chain_starts_at_its_first_step_without_a_checkpoint():
    tasks, first_input = sent(chain_wf, {"0:f.a": {"v": 1}, "1:f.b": {"v": 2}})
    assert tasks == [("flowkit.step.f.a", "2:f.a"), ("flowkit.step.f.b", "3:f.b"),
                     ("flowkit.finish", None)]
    canvas, _ = compile_frontier(chain_wf, "run-1", 1, {"in": 0},
                                 {"0:f.a": dumps({"v": 1}), "1:f.b": dumps({"v": 2})}, "q")
    # the first remaining step gets the last checkpoint's output, whatever the chain passes
    first = next(_leaves(canvas))
    assert first.args == ({"v": 2},) and first.immutable
    assert first_input == {"in": 0}


def test_a_finished_chain_sends_only_finish_with_the_last_output():
    done = {"0:f.a": 1, "1:f.b": 2, "2:f.a": 3, "3:f.b": 4}
    tasks, first_input = sent(chain_wf, done)
    assert tasks == [("flowkit.finish", None)] and first_input == 4


def test_a_parallel_block_sends_only_its_unfinished_branches_and_merges_in_order():
    tasks, _ = sent(branches_wf, {"0:f.a": 1, "1.0:f.b": "left", "1.1.0:f.a": 2})
    # flowkit.value hands the block its input (a's stored output) past the chain's first task
    assert tasks == [("flowkit.value", None), ("flowkit.step.f.b", "1.1.1:f.b"),
                     ("flowkit.merge", None),
                     ("flowkit.step.f.a", "2:f.a"), ("flowkit.finish", None)]
    canvas, _ = compile_frontier(branches_wf, "run-1", 1, {}, {
        "0:f.a": dumps(1), "1.0:f.b": dumps("left"), "1.1.0:f.a": dumps(2)}, "q")
    merge = next(leaf for leaf in _leaves(canvas) if leaf.task == "flowkit.merge")
    assert merge.kwargs["known"] == {"0": "left"} and merge.kwargs["order"] == [1]


def test_a_fan_out_with_every_item_checkpointed_is_done_and_one_missing_one_is_sent():
    done = {"0:f.a": [10, 20], "1[0]:f.b": 10, "1[1]:f.b": 20}
    tasks, _ = sent(fanned_wf, done)
    assert tasks == [("flowkit.step.f.a", "2:f.a"), ("flowkit.finish", None)]
    tasks, _ = sent(fanned_wf, {"0:f.a": [10, 20], "1[0]:f.b": 10})
    # the fan-out task is sent: it sends only the missing item (engine.fanout reads them)
    assert tasks == [("flowkit.fan_out", "1:f.b"), ("flowkit.step.f.a", "2:f.a"),
                     ("flowkit.finish", None)]


def test_an_agent_loop_goes_on_from_its_last_checkpointed_decision():
    decision = {"$continue": {"component": "f.loop", "input": {"turn": 2}}}
    tasks, _ = sent(looping_wf, {"0:f.a": 1, "1:f.loop": decision, "1+1:f.loop": decision})
    assert tasks == [("flowkit.step.f.loop", "1+2:f.loop"), ("flowkit.step.f.b", "2:f.b"),
                     ("flowkit.finish", None)]


def test_steps_a_run_checkpointed_that_the_workflow_no_longer_has_are_found():
    from flowkit.engine.frontier import unknown_steps

    done = {"0:f.a": "1", "1.0:f.b": "1", "1.1.0:f.a": "1", "1.1.0:f.a/0:f.b": "1",  # a call
            "2:f.a/0:wait:input:ok": "1"}  # a waiting step's answer
    assert unknown_steps(branches_wf, done) == []
    assert unknown_steps(fanned_wf, {"0:f.a": "1", "1[0]:f.b": "1", "1[12]:f.b/0:f.a": "1",
                                     "1[3]+1:f.loop": "1"}) == []  # an item that continued
    assert unknown_steps(looping_wf, {"0:f.a": "1", "1:f.loop": "1", "1+3:f.b": "1"}) == []
    # a step added before them moved them: their keys are no step of the workflow now
    moved = flowkit.Workflow("f.moved", [a, b, parallel(b, [a, b]), a])
    assert unknown_steps(moved, done) == ["1.0:f.b", "1.1.0:f.a", "2:f.a"]
    assert unknown_steps(moved, {"0:f.a": "1"}) == []  # still the same first step
    renamed = flowkit.Workflow("f.renamed", [a, loop, b])
    assert unknown_steps(renamed, {"0:f.a": "1", "1:f.b": "1"}) == ["1:f.b"]
    assert unknown_steps(chain_wf, {"5+1:f.b": "1"}) == ["5+1:f.b"]  # a loop at no step
    # a component's name may hold ":" and "/": its step is its whole key, not cut at a "/"
    slashed = flowkit.Workflow("f.slashed", [charge_card, a])
    assert unknown_steps(slashed, {"0:f.billing: charge/card": "1",
                                   "0:f.billing: charge/card/0:f.a": "1",
                                   "1:f.a/0:wait:input:ok": "1", "1:f.a/slot": "1",
                                   "0:f.billing: charge/card/rate": "1"}) == []
    assert unknown_steps(slashed, {"0:f.billing: charge/other/1:f.a": "1"}) == [
        "0:f.billing: charge/other"]
