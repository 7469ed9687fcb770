"""Step keys: a step's name in its run, made from its place in the workflow.

``0:research`` (the first step), ``1.0:left`` (branch 0 of a parallel block at 1),
``2[3]:write`` (item 3 of the fan-out at 2), ``0+2:agent`` (the 2nd continuation of the
agent loop at 0), ``0:agent/1:search`` (the 2nd call made inside step 0),
``0:agent/0:research/1:search`` (the 2nd call made inside that step's first sub-step, in a
run whose record says ``sub_step_keys: nested`` or ``attempts``), ``0:agent/0:research@2/0:search``
(the first call of that sub-step's 2nd attempt, in a run whose record says ``attempts``). A
restarted run maps every step to its checkpoint by these keys.
"""

from __future__ import annotations

#: A run record's ``sub_step_keys`` when a sub-step's calls are keyed under the sub-step
#: (runs made from 2026-12-06 on: :class:`flowkit.engine.step._SubStepAttempt`); a run without
#: it keys them on its step's count, as it did when it checkpointed them.
NESTED_KEYS = "nested"

#: A run record's ``sub_step_keys`` when, besides, each retry of a sub-step keys its calls
#: apart from the attempts before it (runs made by this release on): a retry replayed the
#: calls its failed attempt had checkpointed, so a sub-step that validates an LLM's answer
#: and retries got the same answer each attempt.
ATTEMPT_KEYS = "attempts"

#: The output of a step that continues with another (an agent loop's decision).
CONTINUE = "$continue"


def step_key(path: str, component: str) -> str:
    return f"{path}:{component}"


def item_key(base: str, index: int, component: str) -> str:
    """``1`` -> ``1[3]:ask``: the step key of item 3 of the fan-out at path ``1``."""
    return f"{base}[{index}]:{component}"


def continuation_key(key: str, component: str) -> tuple[str, int]:
    """``2:agent`` -> ``2+1:search``; ``2+1:search`` -> ``2+2:<component>``."""
    path = key.partition(":")[0]
    base, _, n = path.partition("+")
    depth = int(n or 0) + 1
    return f"{base}+{depth}:{component}", depth


def continuation_of(output: object) -> dict | None:
    """The continuation a step's output asks for (component, input, policy), or None."""
    if isinstance(output, dict) and CONTINUE in output:
        return output[CONTINUE]
    return None
